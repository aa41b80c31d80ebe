package l7

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// callLoops is how many times each BenchmarkCallCost program repeats its body per run.
const callLoops = 100

// callCostProgram is a tc program that runs body callLoops times (R6 holds the context, R7 the
// count; the body may use R0-R5 and the stack), with subprograms placed after its exit.
func callCostProgram(b *testing.B, body, subprograms asm.Instructions) *ebpf.Program {
	b.Helper()
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.Mov.Imm(asm.R7, 0),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("loop"),
	}
	insns = append(insns, body...)
	insns = append(insns,
		asm.Add.Imm(asm.R7, 1),
		asm.JLT.Imm(asm.R7, callLoops, "loop"),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	)
	insns = append(insns, subprograms...)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, Instructions: insns, License: "GPL"})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkCallCost measures what this machine charges for the calls a BPF program makes, by the
// time BPF_PROG_TEST_RUN reports for callLoops of each body, as ns per body: an empty body (the
// loop alone), a BPF-to-BPF call of a function that only returns, the helpers l7_fast and the
// guard call per request (bpf_ktime_get_ns, bpf_skb_load_bytes of 20 bytes, a hash map lookup that
// finds its key and one that does not, a per-CPU array lookup, which the verifier inlines), and the
// same 20 bytes read in place (direct packet access, what skb_bytes() does for headers). A call's
// cost here is mostly its return: the kernel returns through the SRSO safe-return thunk
// (/sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow) and makes indirect calls
// through retpolines. Root.
func BenchmarkCallCost(b *testing.B) {
	requireRoot(b)
	hash, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: 65536})
	if err != nil {
		b.Fatal(err)
	}
	defer hash.Close()
	for k := uint64(7); k < 30000; k += 2 { // odd keys: 7 is there, 8 is not
		if err := hash.Put(k, k); err != nil {
			b.Fatal(err)
		}
	}
	percpu, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 8})
	if err != nil {
		b.Fatal(err)
	}
	defer percpu.Close()
	lookup := func(m *ebpf.Map, key int64) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Imm(asm.R1, int32(key)),
			asm.StoreMem(asm.RFP, -16, asm.R1, asm.DWord),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -16),
			asm.FnMapLookupElem.Call(),
		}
	}
	// struct __sk_buff's data and data_end
	const skbData, skbDataEnd = 76, 80
	for _, c := range []struct {
		name       string
		body, subs asm.Instructions
	}{
		{"empty", nil, nil},
		{"bpf-to-bpf-call", asm.Instructions{asm.Call.Label("sub")},
			asm.Instructions{asm.Mov.Imm(asm.R0, 0).WithSymbol("sub"), asm.Return()}},
		{"ktime-get-ns", asm.Instructions{asm.FnKtimeGetNs.Call()}, nil},
		{"skb-load-bytes-20", asm.Instructions{
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Imm(asm.R2, 14),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -40),
			asm.Mov.Imm(asm.R4, 20),
			asm.FnSkbLoadBytes.Call(),
		}, nil},
		{"in-place-20", asm.Instructions{
			asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
			asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14+20),
			asm.JGT.Reg(asm.R4, asm.R3, "short"),
			asm.LoadMem(asm.R0, asm.R2, 14+16, asm.Word),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("short"),
		}, nil},
		{"hash-lookup-hit", lookup(hash, 7), nil},
		{"hash-lookup-miss", lookup(hash, 8), nil},
		{"percpu-array-lookup", lookup(percpu, 1), nil},
	} {
		b.Run(c.name, func(b *testing.B) {
			prog := callCostProgram(b, c.body, c.subs)
			defer prog.Close()
			frame := make([]byte, 14+20+20+64)
			frame[12], frame[13] = 0x08, 0x00
			ret, d, err := prog.Benchmark(frame, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			if ret != 0 {
				b.Fatalf("returned %d", ret)
			}
			b.ReportMetric(float64(d.Nanoseconds())/callLoops, "ns/body")
		})
	}
}

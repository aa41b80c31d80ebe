package l7

import (
	"context"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// deliveryBench is what both server-side benchmarks share: the test environment with the server
// started, a reader of the flow events as the agent reads them, the modes, and use, which switches
// to a mode (new connections get it).
type deliveryBench struct {
	e       *testEnv
	modes   []deliveryMode
	use     func(name string, d Delivery)
	passAll *ebpf.Program
	busy    map[string]*ebpf.Program // the floor plus a fixed BPF time (busyPass)
	rq      []byte
}

type deliveryMode struct {
	name     string
	delivery Delivery
}

func newDeliveryBench(b *testing.B) *deliveryBench {
	requireRoot(b)
	b.Setenv("L7_TEST_SERVER_QUIET", "1")
	e := newTestEnvOptions(b, Options{Delivery: DeliverDirect, JudgeBeforeTCP: true})
	const port, peer = 8080, 5000
	e.judge(b, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
	e.startServer(b, port, false)
	// Events are read as the agent reads them (every EventPollInterval, or when a quarter of the
	// ring is unread).
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	go func() {
		// PORTCULLIS_BENCH_READER_CPU=n: the reader runs on CPU n (the agent's reader is off
		// the requests' path; with client and server pinned to one CPU, it would otherwise add
		// its time to every round trip).
		if v := os.Getenv("PORTCULLIS_BENCH_READER_CPU"); v != "" {
			cpu, err := strconv.Atoi(v)
			if err == nil {
				var set unix.CPUSet
				set.Set(cpu)
				runtime.LockOSThread()
				err = unix.SchedSetaffinity(0, &set)
			}
			if err != nil {
				b.Errorf("PORTCULLIS_BENCH_READER_CPU=%s: %v", v, err)
			}
		}
		for range e.l.ReadEvents(ctx) {
		}
	}()
	passAll, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SkSKB, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { passAll.Close() })
	busy := map[string]*ebpf.Program{"floor+1us": busyPass(b, 1000), "floor+2us": busyPass(b, 2000)}
	use := func(name string, d Delivery) {
		b.Helper()
		// l7_fast sits on the server's interfaces only in its own mode: elsewhere it would add its
		// look at every segment to the other modes.
		cfg, srvNS := e.l.config&^configBeforeTCP, "/run/netns/"+e.srvNS
		if err := e.l.DetachNetns(srvNS); err != nil {
			b.Fatal(err)
		}
		if name == "before-tcp" {
			cfg |= configBeforeTCP
			if err := e.l.AttachNetns(srvNS); err != nil {
				b.Fatal(err)
			}
		}
		if err := e.l.setConfig(cfg); err != nil {
			b.Fatal(err)
		}
		if name == "none" {
			if err := e.l.DeletePort(e.srvAddr, port); err != nil {
				b.Fatal(err)
			}
			return
		}
		if err := e.l.attachSockhashPrograms(d); err != nil {
			b.Fatal(err)
		}
		if name == "sockmap-no-programs" {
			for _, typ := range []ebpf.AttachType{ebpf.AttachSkSKBStreamVerdict, ebpf.AttachSkSKBStreamParser} {
				if _, err := detachAll(e.l.objs.L7Socks, typ); err != nil {
					b.Fatal(err)
				}
			}
		}
		if p := map[string]*ebpf.Program{"sockmap-floor": passAll, "floor+1us": busy["floor+1us"], "floor+2us": busy["floor+2us"]}[name]; p != nil {
			if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: e.l.objs.L7Socks.FD(), Program: p, Attach: ebpf.AttachSkSKBStreamVerdict}); err != nil {
				b.Fatal(err)
			}
		}
		if err := e.l.SetPort(e.srvAddr, port, 1); err != nil {
			b.Fatal(err)
		}
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stats.Close() })
	modes := []deliveryMode{{"none", 0}, {"before-tcp", DeliverDirect}, {"sockmap-no-programs", DeliverDirect},
		{"sockmap-floor", DeliverDirect}, {"floor+1us", DeliverDirect}, {"floor+2us", DeliverDirect},
		{"direct", DeliverDirect}, {"redirect", DeliverRedirect}}
	// PORTCULLIS_BENCH_MODES="none,direct,..." runs only those (more rounds in the same time).
	if v := os.Getenv("PORTCULLIS_BENCH_MODES"); v != "" {
		modes = slices.DeleteFunc(modes, func(m deliveryMode) bool { return !slices.Contains(strings.Split(v, ","), m.name) })
	}
	return &deliveryBench{e: e, use: use, passAll: passAll, busy: busy, rq: []byte(req("GET", "/allowed/quiet")), modes: modes}
}

// busyPass is a verdict program that spins for ns nanoseconds (by bpf_ktime_get_ns, at most 3,000
// reads of the clock) and returns SK_PASS: the SOCKHASH floor plus a known amount of BPF time, to
// tell what a microsecond of a verdict program's time adds to a round trip.
func busyPass(b *testing.B, ns int32) *ebpf.Program {
	b.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SkSKB, License: "GPL", Instructions: asm.Instructions{
		asm.FnKtimeGetNs.Call(),
		asm.Mov.Reg(asm.R6, asm.R0),
		asm.Mov.Imm(asm.R7, 3000),
		asm.FnKtimeGetNs.Call().WithSymbol("spin"),
		asm.Sub.Reg(asm.R0, asm.R6),
		asm.JGE.Imm(asm.R0, ns, "done"),
		asm.Sub.Imm(asm.R7, 1),
		asm.JNE.Imm(asm.R7, 0, "spin"),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("done"),
		asm.Return(),
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// bpfTime is the run time of each mode's programs so far (the kernel's BPF statistics; the redirect
// delivery's parser and verdict together).
func (d *deliveryBench) bpfTime(b *testing.B) map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, progs := range map[string][]*ebpf.Program{
		"sockmap-floor": {d.passAll}, "floor+1us": {d.busy["floor+1us"]}, "floor+2us": {d.busy["floor+2us"]}, "before-tcp": {d.e.l.objs.L7Fast},
		"direct": {d.e.l.objs.L7Stream}, "redirect": {d.e.l.objs.L7Parser, d.e.l.objs.L7Verdict},
	} {
		out[name] = runTime(b, progs...)
	}
	return out
}

// runTime is how long progs have run so far, together (the kernel's BPF statistics, which the
// caller has enabled).
func runTime(b *testing.B, progs ...*ebpf.Program) time.Duration {
	var sum time.Duration
	for _, p := range progs {
		st, err := p.Stats()
		if err != nil {
			b.Fatal(err)
		}
		sum += st.Runtime
	}
	return sum
}

// BenchmarkServerSideDelivery measures what judging at the server's socket adds to a keep-alive round
// trip between two network namespaces (a client in one, the helper server in the other; "GET
// /allowed/quiet", a 2-byte answer; one rule), for each delivery against no judging, in the same run,
// and the floor of any design on the SOCKHASH receive path: "sockmap-floor" is a verdict program
// that only returns SK_PASS (no framing, no judging); "floor+1us" and "floor+2us" spin that long
// before they return it, to tell what a verdict program's own time adds (direct delivery's is
// about 2 µs).
// The modes alternate, rounds × one connection × roundTrips requests each; each reports its median
// and p99 over all its round trips, its added p10 and median against "none", the median over rounds
// of its median minus "none"'s in the same round (paired), its request rate as a ratio to "none",
// the time its programs ran per request (the kernel's BPF statistics; the redirect delivery's parser
// and verdict together) and the guard's (which runs in every mode). The flow events are read as the
// agent reads them (PORTCULLIS_BENCH_READER_CPU=n: on CPU n only). Run with -benchtime=1x (one
// iteration is the whole comparison), and with -exec 'taskset -c 1' to keep client and server on one
// CPU; root.
func BenchmarkServerSideDelivery(b *testing.B) {
	d := newDeliveryBench(b)
	e, modes, use, rq := d.e, d.modes, d.use, d.rq
	const port = 8080
	// Short rounds: the machine's drift over a round (several µs on this VM) lands on every mode
	// alike.
	const rounds, roundTrips = 40, 1000
	buf := make([]byte, 4096)
	pct := func(ds []time.Duration, p int) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)*p/100]
	}
	for range b.N {
		lat := map[string][]time.Duration{}
		busy := map[string]time.Duration{}
		roundP50 := map[string][]time.Duration{} // each round's median, for the paired estimate
		guardTime := map[string]time.Duration{}  // the guard's run time in each mode's rounds
		for r := 0; r < rounds; r++ {
			for _, m := range modes {
				use(m.name, m.delivery)
				guard0 := runTime(b, e.l.objs.L7Guard, e.l.objs.L7GuardEgress)
				c := e.dial(b, port, false)
				start := time.Now()
				for i := 0; i < roundTrips; i++ {
					t0 := time.Now()
					if err := quietRoundTrip(c, rq, buf); err != nil {
						b.Fatalf("%s: round trip %d: %v", m.name, i, err)
					}
					lat[m.name] = append(lat[m.name], time.Since(t0))
				}
				busy[m.name] += time.Since(start)
				guardTime[m.name] += runTime(b, e.l.objs.L7Guard, e.l.objs.L7GuardEgress) - guard0
				roundP50[m.name] = append(roundP50[m.name], pct(lat[m.name][len(lat[m.name])-roundTrips:], 50))
				c.Close()
			}
		}
		// The programs' own time per request, from the kernel's BPF statistics.
		for name, runtime := range d.bpfTime(b) {
			b.ReportMetric(float64(runtime.Nanoseconds())/float64(rounds*roundTrips), name+"-bpf-ns/req")
		}
		if st, err := e.l.objs.L7Fast.Stats(); err == nil {
			b.ReportMetric(float64(st.RunCount)/float64(rounds*roundTrips), "before-tcp-runs/req")
		}
		if st, err := e.l.objs.L7Stream.Stats(); err == nil {
			b.ReportMetric(float64(st.RunCount)/float64(rounds*roundTrips), "direct-runs/req")
		}
		// The before-tcp connections stayed judged before TCP: none handed to its socket.
		b.ReportMetric(float64(e.counter(b, ReasonFastHanded)+e.counter(b, ReasonFastWait)), "before-tcp-handed+waits")
		base := pct(lat["none"], 50)
		for _, m := range modes {
			p50 := pct(lat[m.name], 50)
			b.ReportMetric(float64((pct(lat[m.name], 10)-pct(lat["none"], 10)).Nanoseconds())/1e3, m.name+"-added-p10-µs")
			b.ReportMetric(float64(p50.Nanoseconds())/1e3, m.name+"-p50-µs")
			b.ReportMetric(float64(pct(lat[m.name], 99).Nanoseconds())/1e3, m.name+"-p99-µs")
			b.ReportMetric(float64((p50-base).Nanoseconds())/1e3, m.name+"-added-p50-µs")
			// The paired estimate: the median over rounds of (this mode's median − none's
			// median in the same round), which a drift of the machine between rounds leaves out.
			diffs := make([]time.Duration, rounds)
			for r := range diffs {
				diffs[r] = roundP50[m.name][r] - roundP50["none"][r]
			}
			b.ReportMetric(float64(pct(diffs, 50).Nanoseconds())/1e3, m.name+"-paired-added-p50-µs")
			b.ReportMetric(busy["none"].Seconds()/busy[m.name].Seconds(), m.name+"-ratio")
			b.ReportMetric(float64(guardTime[m.name].Nanoseconds())/float64(rounds*roundTrips), m.name+"-guard-ns/req")
		}
	}
}

// BenchmarkServerSideThroughput is BenchmarkServerSideDelivery's comparison at 16 connections: the
// lab's c=16 target (HTTP rules at ≥ 0.95 of the requests per second without them) measured
// without the lab's control plane, agents and wrk sharing the two cores. Each round runs every mode
// for roundTime, 16 connections each sending requests back to back from this process (the client's
// network namespace) to the helper server; it reports each mode's requests per second as a ratio to
// "none" over all rounds, and its programs' time per request. Run with -benchtime=1x; root.
func BenchmarkServerSideThroughput(b *testing.B) {
	d := newDeliveryBench(b)
	const port, conns = 8080, 16
	const rounds, roundTime = 20, 500 * time.Millisecond
	for range b.N {
		reqs := map[string]int64{}
		busy := map[string]time.Duration{}
		for r := 0; r < rounds; r++ {
			for _, m := range d.modes {
				d.use(m.name, m.delivery)
				cs := make([]net.Conn, conns)
				for i := range cs {
					cs[i] = d.e.dial(b, port, false)
				}
				var n atomic.Int64
				var wg sync.WaitGroup
				errs := make(chan error, conns)
				start := time.Now()
				end := start.Add(roundTime)
				for _, c := range cs {
					wg.Go(func() {
						buf := make([]byte, 4096)
						for time.Now().Before(end) {
							if err := quietRoundTrip(c, d.rq, buf); err != nil {
								errs <- err
								return
							}
							n.Add(1)
						}
					})
				}
				wg.Wait()
				busy[m.name] += time.Since(start)
				for _, c := range cs {
					c.Close()
				}
				select {
				case err := <-errs:
					b.Fatalf("%s: %v", m.name, err)
				default:
				}
				reqs[m.name] += n.Load()
			}
		}
		rate := func(name string) float64 { return float64(reqs[name]) / busy[name].Seconds() }
		for _, m := range d.modes {
			b.ReportMetric(rate(m.name)/rate("none"), m.name+"-ratio")
		}
		b.ReportMetric(rate("none"), "none-req/s")
		for name, runtime := range d.bpfTime(b) {
			b.ReportMetric(float64(runtime.Nanoseconds())/float64(reqs[name]), name+"-bpf-ns/req")
		}
		// Requests whose flow event the ring could not take (the reader is the agent's).
		b.ReportMetric(float64(d.e.counter(b, ReasonEventLost)), "events-lost")
	}
}

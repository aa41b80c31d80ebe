package l7

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// BenchmarkServerSideDelivery measures what judging at the server's socket adds to a keep-alive round
// trip between two network namespaces (a client in one, the helper server in the other; "GET
// /allowed/quiet", a 2-byte answer; one rule), for each delivery against no judging, in the same run,
// and the floor of any design on the SOCKHASH receive path: "sockmap-floor" is a verdict program
// that only returns SK_PASS (no framing, no judging).
// The modes alternate, rounds × one connection × roundTrips requests each; each reports its median
// and p99 over all its round trips, its added median against "none", its request rate as a ratio
// to "none", and the time its programs ran per request (the kernel's BPF statistics; the redirect
// delivery's parser and verdict together). The flow events are read as the agent reads them. Run with -benchtime=1x (one iteration is the whole comparison); root.
func BenchmarkServerSideDelivery(b *testing.B) {
	requireRoot(b)
	b.Setenv("L7_TEST_SERVER_QUIET", "1")
	e := newTestEnvOptions(b, Options{Delivery: DeliverDirect})
	const port, peer = 8080, 5000
	e.judge(b, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
	e.startServer(b, port, false)
	// Events are read as the agent reads them (every EventPollInterval, or when a quarter of the
	// ring is unread).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for range e.l.ReadEvents(ctx) {
		}
	}()
	// Short rounds: the machine's drift over a round (several µs on this VM) lands on every mode
	// alike.
	const rounds, roundTrips = 40, 1000
	modes := []struct {
		name     string
		delivery Delivery
	}{{"none", 0}, {"sockmap-floor", DeliverDirect}, {"direct", DeliverDirect}, {"redirect", DeliverRedirect}}
	passAll, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SkSKB, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer passAll.Close()
	use := func(name string, d Delivery) {
		b.Helper()
		if name == "none" {
			if err := e.l.DeletePort(e.srvAddr, port); err != nil {
				b.Fatal(err)
			}
			return
		}
		if err := e.l.attachSockhashPrograms(d); err != nil {
			b.Fatal(err)
		}
		if name == "sockmap-floor" {
			if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: e.l.objs.L7Socks.FD(), Program: passAll, Attach: ebpf.AttachSkSKBStreamVerdict}); err != nil {
				b.Fatal(err)
			}
		}
		if err := e.l.SetPort(e.srvAddr, port, 1); err != nil {
			b.Fatal(err)
		}
	}
	rq := []byte(req("GET", "/allowed/quiet"))
	buf := make([]byte, 4096)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	for range b.N {
		lat := map[string][]time.Duration{}
		busy := map[string]time.Duration{}
		for r := 0; r < rounds; r++ {
			for _, m := range modes {
				use(m.name, m.delivery)
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
				c.Close()
			}
		}
		pct := func(d []time.Duration, p int) time.Duration {
			s := slices.Clone(d)
			slices.Sort(s)
			return s[len(s)*p/100]
		}
		// The programs' own time per request, from the kernel's BPF statistics.
		for name, progs := range map[string][]*ebpf.Program{
			"sockmap-floor": {passAll}, "direct": {e.l.objs.L7Stream}, "redirect": {e.l.objs.L7Parser, e.l.objs.L7Verdict},
		} {
			var runtime time.Duration
			for _, p := range progs {
				st, err := p.Stats()
				if err != nil {
					b.Fatal(err)
				}
				runtime += st.Runtime
			}
			b.ReportMetric(float64(runtime.Nanoseconds())/float64(rounds*roundTrips), name+"-bpf-ns/req")
		}
		base := pct(lat["none"], 50)
		for _, m := range modes {
			p50 := pct(lat[m.name], 50)
			b.ReportMetric(float64(p50.Nanoseconds())/1e3, m.name+"-p50-µs")
			b.ReportMetric(float64(pct(lat[m.name], 99).Nanoseconds())/1e3, m.name+"-p99-µs")
			b.ReportMetric(float64((p50-base).Nanoseconds())/1e3, m.name+"-added-p50-µs")
			b.ReportMetric(busy["none"].Seconds()/busy[m.name].Seconds(), m.name+"-ratio")
		}
	}
}

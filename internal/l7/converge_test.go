package l7

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Converge reads the kernel: a second call with the same input writes nothing, and entries
// changed, removed or added behind its back are put back as wanted.
func TestPrivilegedConvergeRepairsRuleSetsAndPorts(t *testing.T) {
	requireRoot(t)
	l, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	a := netip.MustParseAddr("10.0.0.1")
	ports := []Port{{Addr: a, Port: 80, EndpointID: 7}, {Addr: a, Port: 443, EndpointID: 7, Egress: true}}
	k1, k2 := RuleKey{EndpointID: 7, PeerIdentity: 300, Port: 80}, RuleKey{EndpointID: 7, Port: 80}
	rules := map[RuleKey]RuleSet{
		k1: {Rules: []string{`method="GET" path="/a"`}},
		k2: {Rules: []string{`method="GET" path="/b"`}, Audit: true},
	}
	if n, err := l.Converge(ports, rules); err != nil || n != 4 {
		t.Fatalf("first converge: %d changes, %v; want 4", n, err)
	}
	if n, err := l.Converge(ports, rules); err != nil || n != 0 {
		t.Fatalf("second converge: %d changes, %v; want none", n, err)
	}
	get := []byte("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	if r, err := l.Judge(k1, get); err != nil || r.Decision != Allow {
		t.Fatalf("judge %+v %v", r, err)
	}
	if r, err := l.Judge(RuleKey{EndpointID: 7, PeerIdentity: 999, Port: 80}, get); err != nil || r.Decision != Deny || !r.Audit {
		t.Fatalf("a peer without its own set is judged by the wildcard set in audit mode: %+v %v", r, err)
	}

	// Behind its back: a port removed, a rule set replaced, and an extra rule set that would allow
	// a peer the policy does not name.
	if err := l.DeletePort(a, 80); err != nil {
		t.Fatal(err)
	}
	if err := l.SetRules(k1, []string{"any"}); err != nil {
		t.Fatal(err)
	}
	extra := RuleKey{EndpointID: 7, PeerIdentity: 400, Port: 80}
	if err := l.SetRules(extra, []string{"any"}); err != nil {
		t.Fatal(err)
	}
	if n, err := l.Converge(ports, rules); err != nil || n != 3 {
		t.Fatalf("repair: %d changes, %v; want 3", n, err)
	}
	if r, _ := l.Judge(k1, []byte("GET /other HTTP/1.1\r\nHost: x\r\n\r\n")); r.Decision != Deny {
		t.Fatalf("replaced rule set not restored: %+v", r)
	}
	if r, _ := l.Judge(extra, []byte("GET /b2 HTTP/1.1\r\nHost: x\r\n\r\n")); r.Decision != Deny || !r.Audit {
		t.Fatalf("extra rule set not removed (peer 400 must fall back to the wildcard set): %+v", r)
	}
	var v httpL7PortValue
	k := portKey(a, 80, false)
	if err := l.objs.L7Ports.Lookup(&k, &v); err != nil || v.EndpointId != 7 {
		t.Fatalf("port not restored: %+v %v", v, err)
	}
	// A DFA table changed behind its back: every transition of k1's path DFA loops on its start
	// state, which accepts, so the rule would allow any path.
	var rs httpL7Ruleset
	rk := k1.kernel()
	if err := l.objs.L7Rulesets.Lookup(&rk, &rs); err != nil {
		t.Fatal(err)
	}
	var d httpL7Dfa
	if err := l.objs.L7Dfas.Lookup(rs.Rules[0].PathDfa, &d); err != nil {
		t.Fatal(err)
	}
	nt := d.Nstates * uint32(d.Nclasses)
	tampered := make([]uint16, nt+d.Nstates)
	for i := range tampered {
		tampered[i] = d.Start
		if uint32(i) >= nt {
			tampered[i] = 1
		}
	}
	if err := l.writeCells(d.Base, tampered); err != nil {
		t.Fatal(err)
	}
	other := []byte("GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
	if r, _ := l.Judge(k1, other); r.Decision != Allow {
		t.Fatalf("the tampered table should allow any path (the test's premise): %+v", r)
	}
	if n, err := l.Converge(ports, rules); err != nil || n != 1 {
		t.Fatalf("table repair: %d changes, %v; want 1", n, err)
	}
	if r, _ := l.Judge(k1, other); r.Decision != Deny {
		t.Fatalf("repaired table still allows: %+v", r)
	}
	if n, err := l.Converge(nil, nil); err != nil || n != 4 {
		t.Fatalf("converge to nothing: %d changes, %v; want 4 deletions", n, err)
	}
}

// Converge also repairs what Load set up: a SOCKHASH program detached behind its back (new
// connections would go unjudged), a stream parser attached to l7_socks under direct delivery, and
// l7_config.
func TestPrivilegedConvergeRepairsProgramsAndConfig(t *testing.T) {
	requireRoot(t)
	for _, d := range []Delivery{DeliverDirect, DeliverRedirect} {
		t.Run(d.String(), func(t *testing.T) {
			l, err := Load(Options{Delivery: d, JudgeAtSource: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			if n, err := l.Converge(nil, nil); err != nil || n != 0 {
				t.Fatalf("converge after load: %d changes, %v; want none", n, err)
			}
			attached := func(typ ebpf.AttachType) int {
				t.Helper()
				res, err := link.QueryPrograms(link.QueryOptions{Target: l.objs.L7Socks.FD(), Attach: typ})
				if err != nil {
					t.Fatal(err)
				}
				return len(res.Programs)
			}
			verdict := l.objs.L7Stream
			if d != DeliverDirect {
				verdict = l.objs.L7Verdict
			}
			if err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: l.objs.L7Socks.FD(), Program: verdict, Attach: ebpf.AttachSkSKBStreamVerdict}); err != nil {
				t.Fatal(err)
			}
			if attached(ebpf.AttachSkSKBStreamVerdict) != 0 {
				t.Fatal("the verdict program is still attached (the test's premise)")
			}
			if err := l.objs.L7Config.Update(uint32(0), uint32(0), ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
			if n, err := l.Converge(nil, nil); err != nil || n != 2 {
				t.Fatalf("repair: %d changes, %v; want 2 (verdict program, config)", n, err)
			}
			if attached(ebpf.AttachSkSKBStreamVerdict) != 1 {
				t.Fatal("the verdict program was not re-attached")
			}
			var cfg uint32
			if err := l.objs.L7Config.Lookup(uint32(0), &cfg); err != nil || cfg != configAtSource {
				t.Fatalf("config %d (%v), want %d", cfg, err, configAtSource)
			}
			// Connections said to wait for an upgrade's answer that no longer exist (their close
			// unseen) are forgotten: the guards would otherwise look up every segment's connection.
			if err := l.objs.L7Upgrades.Update(uint32(0), uint64(3), ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
			if n, err := l.Converge(nil, nil); err != nil || n != 1 {
				t.Fatalf("upgrade count: %d changes, %v; want 1", n, err)
			}
			var waiting uint64
			if err := l.objs.L7Upgrades.Lookup(uint32(0), &waiting); err != nil || waiting != 0 {
				t.Fatalf("upgrade count %d (%v) after the repair, want 0", waiting, err)
			}
			if d != DeliverDirect {
				return
			}
			// A stray stream parser would frame messages for a program that expects segments.
			if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: l.objs.L7Socks.FD(), Program: l.objs.L7Parser, Attach: ebpf.AttachSkSKBStreamParser}); err != nil {
				t.Fatal(err)
			}
			if n, err := l.Converge(nil, nil); err != nil || n != 1 {
				t.Fatalf("stray parser: %d changes, %v; want 1", n, err)
			}
			if attached(ebpf.AttachSkSKBStreamParser) != 0 {
				t.Fatal("the stray stream parser is still attached")
			}
		})
	}
}

// The guards look l7_ports up only for a direction l7_config says may have judged ports: the bit is
// set before the first port of its direction is written (SetPort, Converge), cleared once none is
// left (Converge), put back when changed behind the agent's back, and read from the ports an
// earlier agent pinned.
func TestPrivilegedGuardsLookUpOnlyDirectionsWithPorts(t *testing.T) {
	requireRoot(t)
	dir := mountBPFFS(t)
	l, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			l.Close()
		}
	})
	bits := func(l *L7) uint32 {
		t.Helper()
		var cfg uint32
		if err := l.objs.L7Config.Lookup(uint32(0), &cfg); err != nil {
			t.Fatal(err)
		}
		return cfg & (configIngressPorts | configEgressPorts)
	}
	want := func(l *L7, step string, b uint32) {
		t.Helper()
		if got := bits(l); got != b {
			t.Fatalf("%s: port bits %#x, want %#x", step, got, b)
		}
	}
	addr := netip.MustParseAddr("10.0.0.1")
	want(l, "after load", 0)
	if err := l.SetPort(addr, 80, 1); err != nil {
		t.Fatal(err)
	}
	want(l, "SetPort", configIngressPorts)
	in, out := Port{Addr: addr, Port: 80, EndpointID: 1}, Port{Addr: addr, Port: 443, EndpointID: 1, Egress: true}
	if _, err := l.Converge([]Port{in, out}, nil); err != nil {
		t.Fatal(err)
	}
	want(l, "ingress and egress ports", configIngressPorts|configEgressPorts)
	if _, err := l.Converge([]Port{in}, nil); err != nil {
		t.Fatal(err)
	}
	want(l, "the egress port removed", configIngressPorts)
	// Cleared behind the agent's back, the bit would let the guards pass the data of judged
	// connections unlooked-at: Converge puts it back.
	if err := l.objs.L7Config.Update(uint32(0), uint32(0), ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if n, err := l.Converge([]Port{in}, nil); err != nil || n != 1 {
		t.Fatalf("repair: %d changes, %v; want 1 (config)", n, err)
	}
	want(l, "repaired", configIngressPorts)
	// A new agent finds the pinned port and sets its bit before it attaches anything.
	closed = true
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l2.Unpin(); l2.Close() })
	want(l2, "after a restart", configIngressPorts)
	if _, err := l2.Converge(nil, nil); err != nil {
		t.Fatal(err)
	}
	want(l2, "no ports", 0)
}

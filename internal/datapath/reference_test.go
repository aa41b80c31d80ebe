package datapath

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// The reference model of policy precedence, written from the rules rather than from the lookup:
// among all entries matching a packet, an enforced deny drops, else an audited deny audits, else the
// most specific allow (by the six-level order) allows, else default deny or default audit.

type refPacket struct {
	dir   Direction
	peer  Identity
	proto Protocol
	port  uint16
}

func (k PolicyKey) matches(ep uint32, p refPacket) bool {
	if k.EndpointID != ep || k.Direction != p.dir {
		return false
	}
	if k.PeerIdentity != IdentityAny && k.PeerIdentity != p.peer {
		return false
	}
	if k.Protocol != ProtocolAny && k.Protocol != p.proto {
		return false
	}
	return k.Port == 0 || (p.proto.HasPorts() && k.Port == p.port)
}

// level is the position of a key's shape in the kernel's lookup order (0 first).
func level(k PolicyKey) int {
	switch {
	case k.PeerIdentity != IdentityAny && k.Port != 0:
		return 0
	case k.PeerIdentity != IdentityAny && k.Protocol != ProtocolAny:
		return 1
	case k.PeerIdentity != IdentityAny:
		return 2
	case k.Port != 0:
		return 3
	case k.Protocol != ProtocolAny:
		return 4
	}
	return 5
}

type refResult struct {
	verdict Verdict
	reason  Reason
	// policy is the attributed policy id; -1 when several are correct (overlapping denies).
	policy int64
}

func reference(rules map[PolicyKey]PolicyEntry, ep Endpoint, p refPacket) refResult {
	enforced, audit := ep.IngressEnforced, ep.IngressAudit
	if p.dir == Egress {
		enforced, audit = ep.EgressEnforced, ep.EgressAudit
	}
	if !enforced {
		// Deny entries apply even where default deny is off; without any, nothing is looked up.
		hasDeny := false
		for k, e := range rules {
			if k.EndpointID == ep.ID && k.Direction == p.dir && e.Action == Deny {
				hasDeny = true
			}
		}
		if !hasDeny {
			return refResult{Forwarded, ReasonNotEnforced, 0}
		}
	}
	var denies, audits int
	bestAllow, bestLevel := PolicyEntry{}, 99
	for k, e := range rules {
		if !k.matches(ep.ID, p) {
			continue
		}
		switch {
		case e.Action == Deny && !e.Audit:
			denies++
		case e.Action == Deny:
			audits++
		case level(k) < bestLevel:
			bestAllow, bestLevel = e, level(k)
		}
	}
	// An audited deny reports what the enforcing view lets through; where that view drops (default
	// deny from an enforcing policy, no allow), the packet drops.
	enforcingDrop := enforced && !audit && bestLevel == 99
	switch {
	case denies > 0:
		return refResult{Dropped, ReasonDenied, -1}
	case audits > 0 && enforcingDrop:
		return refResult{Dropped, ReasonDenied, -1}
	case audits > 0:
		return refResult{Audited, ReasonAudited, -1}
	case bestLevel < 99:
		return refResult{Forwarded, ReasonAllowed, int64(bestAllow.PolicyID)}
	case !enforced:
		return refResult{Forwarded, ReasonNotEnforced, 0}
	case audit:
		return refResult{Audited, ReasonAudited, 0}
	}
	return refResult{Dropped, ReasonNoPolicy, 0}
}

// firstHit is the kernel's lookup, in Go, over a resolved map.
func firstHit(m map[PolicyKey]PolicyEntry, ep uint32, p refPacket) (PolicyEntry, bool) {
	port := p.port
	if !p.proto.HasPorts() {
		port = 0
	}
	for _, id := range []Identity{p.peer, IdentityAny} {
		var keys []PolicyKey
		if port != 0 {
			keys = append(keys, PolicyKey{ep, p.dir, id, p.proto, port})
		}
		keys = append(keys, PolicyKey{ep, p.dir, id, p.proto, 0}, PolicyKey{ep, p.dir, id, ProtocolAny, 0})
		for _, k := range keys {
			if e, ok := m[k]; ok {
				return e, true
			}
		}
	}
	return PolicyEntry{}, false
}

var (
	genIdentities = []Identity{IdentityWorld, 2001, 2002, 2003}
	genProtocols  = []Protocol{ProtocolTCP, ProtocolUDP, ProtocolICMP}
	genPorts      = []uint16{22, 80, 443}
)

// genRules draws a policy for endpoint epID over a small domain, so that overlaps are frequent.
func genRules(r *rand.Rand) map[PolicyKey]PolicyEntry {
	rules := map[PolicyKey]PolicyEntry{}
	n := 1 + r.IntN(12)
	for i := 0; i < n; i++ {
		k := PolicyKey{EndpointID: epID, Direction: Direction(r.IntN(2))}
		if r.IntN(3) > 0 {
			k.PeerIdentity = genIdentities[r.IntN(len(genIdentities))]
		}
		if r.IntN(4) > 0 {
			k.Protocol = genProtocols[r.IntN(len(genProtocols))]
			if k.Protocol.HasPorts() && r.IntN(2) == 0 {
				k.Port = genPorts[r.IntN(len(genPorts))]
			}
		}
		e := PolicyEntry{Action: Allow, PolicyID: uint32(100 + i)}
		switch r.IntN(5) {
		case 0:
			e.Action = Deny
		case 1:
			e.Action, e.Audit = Deny, true
		}
		rules[k] = e
	}
	return rules
}

func genPacket(r *rand.Rand) refPacket {
	p := refPacket{
		dir:   Direction(r.IntN(2)),
		peer:  genIdentities[r.IntN(len(genIdentities))],
		proto: genProtocols[r.IntN(len(genProtocols))],
	}
	if p.proto.HasPorts() {
		p.port = genPorts[r.IntN(len(genPorts))]
	}
	return p
}

func TestResolveGivesDenyPrecedenceUnderFirstHitLookup(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ep := enforcedEndpoint()
	for i := 0; i < 5000; i++ {
		rules := genRules(r)
		resolved, err := Resolve(rules)
		if err != nil {
			t.Fatal(err)
		}
		// Converge applies this after Resolve; the first hit is judged on the same map.
		auditUnderEnforcedDefaultDeny(resolved, rules, map[int]Endpoint{loIfindex: ep})
		for j := 0; j < 20; j++ {
			p := genPacket(r)
			want := reference(rules, ep, p)
			got := refResult{Dropped, ReasonNoPolicy, 0}
			if e, ok := firstHit(resolved, ep.ID, p); ok {
				switch {
				case e.Action == Allow:
					got = refResult{Forwarded, ReasonAllowed, int64(e.PolicyID)}
				case e.Audit:
					got = refResult{Audited, ReasonAudited, -1}
				default:
					got = refResult{Dropped, ReasonDenied, -1}
				}
			}
			if got != want {
				t.Fatalf("rules %v\nresolved %v\npacket %+v: got %+v, want %+v", rules, resolved, p, got, want)
			}
		}
	}
}

func TestResolveAddsNothingWithoutDenies(t *testing.T) {
	rules := map[PolicyKey]PolicyEntry{egressKey(idA, ProtocolTCP, 80): allow(1), egressKey(IdentityAny, ProtocolAny, 0): allow(2)}
	got, err := Resolve(rules)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(rules) {
		t.Fatalf("Resolve changed allow-only rules: %v", got)
	}
}

func TestResolveRejectsInvalidKeys(t *testing.T) {
	for _, k := range []PolicyKey{
		{EndpointID: 0, Direction: Egress},
		{EndpointID: 1, Direction: 7},
		{EndpointID: 1, Direction: Egress, Protocol: ProtocolAny, Port: 80},
		{EndpointID: 1, Direction: Egress, Protocol: ProtocolICMP, Port: 80},
	} {
		if _, err := Resolve(map[PolicyKey]PolicyEntry{k: allow(1)}); err == nil {
			t.Errorf("Resolve accepted invalid key %+v", k)
		}
	}
}

// The kernel compared with the reference model on generated policies and packets.
func TestPrivilegedKernelMatchesReferenceModel(t *testing.T) {
	d := mustLoad(t, Options{})
	r := rand.New(rand.NewPCG(3, 4))
	addrOf := map[Identity]netip.Addr{
		IdentityWorld: unknown4,
		2001:          netip.MustParseAddr("10.0.1.1"),
		2002:          netip.MustParseAddr("10.0.2.5"),
		2003:          netip.MustParseAddr("10.0.3.3"),
	}
	ipcache := map[netip.Prefix]Identity{
		netip.MustParsePrefix("10.0.1.1/32"): 2001,
		netip.MustParsePrefix("10.0.2.0/24"): 2002,
		netip.MustParsePrefix("10.0.3.0/24"): 2003,
	}
	sport := uint16(1024)
	for i := 0; i < 200; i++ {
		rules := genRules(r)
		ep := Endpoint{ID: epID, Identity: podID,
			IngressEnforced: r.IntN(4) > 0, EgressEnforced: r.IntN(4) > 0,
			IngressAudit: r.IntN(4) == 0, EgressAudit: r.IntN(4) == 0}
		if _, err := d.Converge(State{Endpoints: map[int]Endpoint{loIfindex: ep}, IPCache: ipcache, Policy: rules}); err != nil {
			t.Fatal(err)
		}
		for j := 0; j < 25; j++ {
			p := genPacket(r)
			want := reference(rules, ep, p)
			sport++ // a fresh tuple each time: every packet opens a new connection
			if sport == 0 {
				sport = 1024
			}
			pk := packet{proto: p.proto, sport: sport, dport: p.port, tcpFlags: tcpSYN}
			if p.proto == ProtocolICMP {
				pk.icmpType, pk.sport, pk.dport = 8, 0, sport
			}
			if p.dir == Egress {
				pk.src, pk.dst = podIP4, addrOf[p.peer]
			} else {
				pk.src, pk.dst = addrOf[p.peer], podIP4 // policy matches the pod's (destination) port
			}
			before, err := d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			ret := run(t, d, p.dir, pk.bytes())
			wantRet := retNext
			if want.verdict == Dropped {
				wantRet = retDrop
			}
			if ret != wantRet {
				t.Fatalf("rules %v endpoint %+v packet %+v: returned %#x, want %+v", rules, ep, p, ret, want)
			}
			after, err := d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			grew := false
			for k, c := range after {
				if c.Packets == before[k].Packets || k.Reason == ReasonEventLost {
					continue
				}
				grew = true
				if k.Reason != want.reason || k.Direction != p.dir || (want.policy >= 0 && int64(k.PolicyID) != want.policy) {
					t.Fatalf("rules %v endpoint %+v packet %+v: counted as %+v, want %+v", rules, ep, p, k, want)
				}
			}
			if !grew {
				t.Fatalf("packet %+v: no counter grew", p)
			}
		}
	}
}

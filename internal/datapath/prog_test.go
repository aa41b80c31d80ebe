package datapath

import (
	"net/netip"
	"testing"
	"time"
)

// Addresses and identities of the test world.
var (
	podIP4   = netip.MustParseAddr("10.0.0.10")
	podIP6   = netip.MustParseAddr("fd00::10")
	peerA4   = netip.MustParseAddr("10.0.1.1")  // identity 2001
	peerB4   = netip.MustParseAddr("10.0.2.5")  // in 10.0.2.0/24, identity 2002
	peerC6   = netip.MustParseAddr("fd00:1::7") // in fd00:1::/64, identity 2003
	unknown4 = netip.MustParseAddr("192.0.2.1") // not in the IP cache: world
)

const (
	epID       = 10
	podID      = Identity(1000)
	idA        = Identity(2001)
	idB        = Identity(2002)
	idC        = Identity(2003)
	pidAllow   = 1
	pidDeny    = 2
	pidAudit   = 3
	pidL7      = 4
	pidAllowUD = 5
)

func testIPCache() map[netip.Prefix]Identity {
	return map[netip.Prefix]Identity{
		netip.MustParsePrefix("10.0.0.10/32"): podID,
		netip.MustParsePrefix("fd00::10/128"): podID,
		netip.MustParsePrefix("10.0.1.1/32"):  idA,
		netip.MustParsePrefix("10.0.2.0/24"):  idB,
		netip.MustParsePrefix("fd00:1::/64"):  idC,
	}
}

func enforcedEndpoint() Endpoint {
	return Endpoint{ID: epID, Identity: podID, IngressEnforced: true, EgressEnforced: true}
}

func egressKey(id Identity, proto Protocol, port uint16) PolicyKey {
	return PolicyKey{EndpointID: epID, Direction: Egress, PeerIdentity: id, Protocol: proto, Port: port}
}

func ingressKey(id Identity, proto Protocol, port uint16) PolicyKey {
	k := egressKey(id, proto, port)
	k.Direction = Ingress
	return k
}

func allow(pid uint32) PolicyEntry { return PolicyEntry{Action: Allow, PolicyID: pid} }
func deny(pid uint32) PolicyEntry  { return PolicyEntry{Action: Deny, PolicyID: pid} }

func tcpSyn(src, dst netip.Addr, sport, dport uint16) packet {
	return packet{src: src, dst: dst, proto: ProtocolTCP, sport: sport, dport: dport, tcpFlags: tcpSYN}
}

func udp(src, dst netip.Addr, sport, dport uint16) packet {
	return packet{src: src, dst: dst, proto: ProtocolUDP, sport: sport, dport: dport}
}

// step is one packet through one program, and what must come of it.
type step struct {
	name   string
	dir    Direction
	pkt    packet
	ret    uint32
	reason Reason // the counter that must grow by this packet
	policy uint32 // ... under this policy id
	// event, when set, is the flow event the packet must produce; nil means none.
	event *Flow
	// change, when set, runs before the packet (a policy change mid-connection).
	change func(t *testing.T, d *Datapath)
}

func flowOf(p packet, dir Direction, v Verdict, r Reason, pid uint32, src, dst Identity) *Flow {
	return &Flow{
		Src: p.src, Dst: p.dst, SrcPort: p.sport, DstPort: p.dport, Protocol: p.proto,
		EndpointID: epID, Ifindex: loIfindex, SrcIdentity: src, DstIdentity: dst,
		Direction: dir, Verdict: v, Reason: r, PolicyID: pid,
	}
}

func TestPrivilegedPolicyDecisions(t *testing.T) {
	d := mustLoad(t, Options{})
	events := newEventReader(t, d)

	synA80 := tcpSyn(podIP4, peerA4, 40000, 80)
	udpDNS := udp(podIP4, unknown4, 40001, 53)
	pingB := packet{src: podIP4, dst: peerB4, proto: ProtocolICMP, icmpType: 8, dport: 77}
	synV6 := tcpSyn(podIP6, peerC6, 40002, 80)

	cases := []struct {
		name     string
		endpoint Endpoint
		policy   map[PolicyKey]PolicyEntry
		steps    []step
	}{
		{
			name:     "allow by identity and port, other ports denied by default",
			endpoint: enforcedEndpoint(),
			policy:   map[PolicyKey]PolicyEntry{egressKey(idA, ProtocolTCP, 80): allow(pidAllow)},
			steps: []step{
				{name: "allowed port", dir: Egress, pkt: synA80, ret: retNext, reason: ReasonAllowed, policy: pidAllow,
					event: flowOf(synA80, Egress, Forwarded, ReasonAllowed, pidAllow, podID, idA)},
				{name: "other port", dir: Egress, pkt: tcpSyn(podIP4, peerA4, 40000, 81), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(tcpSyn(podIP4, peerA4, 40000, 81), Egress, Dropped, ReasonNoPolicy, 0, podID, idA)},
				{name: "other identity", dir: Egress, pkt: tcpSyn(podIP4, peerB4, 40000, 80), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(tcpSyn(podIP4, peerB4, 40000, 80), Egress, Dropped, ReasonNoPolicy, 0, podID, idB)},
			},
		},
		{
			name:     "deny wins over a more specific allow",
			endpoint: enforcedEndpoint(),
			policy: map[PolicyKey]PolicyEntry{
				egressKey(idA, ProtocolTCP, 0):          allow(pidAllow),
				egressKey(IdentityAny, ProtocolTCP, 22): deny(pidDeny),
			},
			steps: []step{
				{name: "denied port", dir: Egress, pkt: tcpSyn(podIP4, peerA4, 40010, 22), ret: retDrop, reason: ReasonDenied, policy: pidDeny,
					event: flowOf(tcpSyn(podIP4, peerA4, 40010, 22), Egress, Dropped, ReasonDenied, pidDeny, podID, idA)},
				{name: "other port allowed", dir: Egress, pkt: tcpSyn(podIP4, peerA4, 40010, 23), ret: retNext, reason: ReasonAllowed, policy: pidAllow,
					event: flowOf(tcpSyn(podIP4, peerA4, 40010, 23), Egress, Forwarded, ReasonAllowed, pidAllow, podID, idA)},
			},
		},
		{
			name:     "wildcards: any identity, any protocol",
			endpoint: enforcedEndpoint(),
			policy: map[PolicyKey]PolicyEntry{
				egressKey(IdentityAny, ProtocolUDP, 53): allow(pidAllowUD),
				egressKey(idB, ProtocolAny, 0):          allow(pidAllow),
			},
			steps: []step{
				{name: "udp 53 to anyone", dir: Egress, pkt: udpDNS, ret: retNext, reason: ReasonAllowed, policy: pidAllowUD,
					event: flowOf(udpDNS, Egress, Forwarded, ReasonAllowed, pidAllowUD, podID, IdentityWorld)},
				{name: "icmp to identity B", dir: Egress, pkt: pingB, ret: retNext, reason: ReasonAllowed, policy: pidAllow,
					event: flowOf(pingB, Egress, Forwarded, ReasonAllowed, pidAllow, podID, idB)},
				{name: "udp 54 to world", dir: Egress, pkt: udp(podIP4, unknown4, 40001, 54), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(udp(podIP4, unknown4, 40001, 54), Egress, Dropped, ReasonNoPolicy, 0, podID, IdentityWorld)},
			},
		},
		{
			name:     "unknown peer is world",
			endpoint: enforcedEndpoint(),
			policy:   map[PolicyKey]PolicyEntry{egressKey(IdentityWorld, ProtocolTCP, 443): allow(pidAllow)},
			steps: []step{
				{name: "unknown address allowed as world", dir: Egress, pkt: tcpSyn(podIP4, unknown4, 40020, 443), ret: retNext, reason: ReasonAllowed, policy: pidAllow,
					event: flowOf(tcpSyn(podIP4, unknown4, 40020, 443), Egress, Forwarded, ReasonAllowed, pidAllow, podID, IdentityWorld)},
				{name: "known address is not world", dir: Egress, pkt: tcpSyn(podIP4, peerA4, 40020, 443), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(tcpSyn(podIP4, peerA4, 40020, 443), Egress, Dropped, ReasonNoPolicy, 0, podID, idA)},
			},
		},
		{
			name:     "direction not enforced passes",
			endpoint: Endpoint{ID: epID, Identity: podID, IngressEnforced: true},
			steps: []step{
				{name: "egress passes", dir: Egress, pkt: tcpSyn(podIP4, peerA4, 40030, 9999), ret: retNext, reason: ReasonNotEnforced,
					event: flowOf(tcpSyn(podIP4, peerA4, 40030, 9999), Egress, Forwarded, ReasonNotEnforced, 0, podID, idA)},
				{name: "ingress enforced", dir: Ingress, pkt: tcpSyn(peerA4, podIP4, 40031, 9999), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(tcpSyn(peerA4, podIP4, 40031, 9999), Ingress, Dropped, ReasonNoPolicy, 0, idA, podID)},
			},
		},
		{
			name:     "ingress allow by identity and port",
			endpoint: enforcedEndpoint(),
			policy:   map[PolicyKey]PolicyEntry{ingressKey(idA, ProtocolTCP, 8080): allow(pidAllow)},
			steps: []step{
				{name: "from A", dir: Ingress, pkt: tcpSyn(peerA4, podIP4, 50000, 8080), ret: retNext, reason: ReasonAllowed, policy: pidAllow,
					event: flowOf(tcpSyn(peerA4, podIP4, 50000, 8080), Ingress, Forwarded, ReasonAllowed, pidAllow, idA, podID)},
				{name: "from B", dir: Ingress, pkt: tcpSyn(peerB4, podIP4, 50000, 8080), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(tcpSyn(peerB4, podIP4, 50000, 8080), Ingress, Dropped, ReasonNoPolicy, 0, idB, podID)},
				{name: "egress rule does not apply to ingress", dir: Egress, pkt: tcpSyn(podIP4, peerA4, 50001, 8080), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(tcpSyn(podIP4, peerA4, 50001, 8080), Egress, Dropped, ReasonNoPolicy, 0, podID, idA)},
			},
		},
		{
			name:     "IPv6 with extension headers",
			endpoint: enforcedEndpoint(),
			policy:   map[PolicyKey]PolicyEntry{egressKey(idC, ProtocolTCP, 80): allow(pidAllow)},
			steps: []step{
				{name: "plain", dir: Egress, pkt: synV6, ret: retNext, reason: ReasonAllowed, policy: pidAllow,
					event: flowOf(synV6, Egress, Forwarded, ReasonAllowed, pidAllow, podID, idC)},
				{name: "hop-by-hop and destination options skipped", dir: Egress,
					pkt: packet{src: podIP6, dst: peerC6, proto: ProtocolTCP, sport: 40003, dport: 80, tcpFlags: tcpSYN, v6ext: []uint8{0, 60}},
					ret: retNext, reason: ReasonAllowed, policy: pidAllow},
				{name: "chain longer than six dropped", dir: Egress,
					pkt: packet{src: podIP6, dst: peerC6, proto: ProtocolTCP, sport: 40004, dport: 80, tcpFlags: tcpSYN, v6ext: []uint8{0, 60, 60, 60, 60, 60, 60}},
					ret: retDrop, reason: ReasonUnsupported},
				{name: "v4-mapped address in an IPv6 header dropped", dir: Egress,
					pkt: tcpSyn(podIP6, netip.MustParseAddr("::ffff:10.0.1.1"), 40005, 80), ret: retDrop, reason: ReasonMalformed},
			},
		},
		{
			name:     "neighbour discovery and ARP pass under default deny",
			endpoint: enforcedEndpoint(),
			steps: []step{
				{name: "arp", dir: Ingress, pkt: packet{ethertype: 0x0806}, ret: retNext, reason: ReasonNeighbor},
				{name: "neighbour solicitation", dir: Egress, pkt: packet{src: podIP6, dst: peerC6, proto: ProtocolICMPv6, icmpType: 135},
					ret: retNext, reason: ReasonNeighbor},
				{name: "vlan-tagged frame dropped", dir: Egress, pkt: packet{src: podIP4, dst: peerA4, proto: ProtocolUDP, ethertype: 0x8100},
					ret: retDrop, reason: ReasonUnsupported},
			},
		},
		{
			name:     "audit forwards and reports",
			endpoint: Endpoint{ID: epID, Identity: podID, EgressEnforced: true, EgressAudit: true},
			policy: map[PolicyKey]PolicyEntry{
				egressKey(idA, ProtocolTCP, 0):  allow(pidAllow),
				egressKey(idA, ProtocolTCP, 22): {Action: Deny, Audit: true, PolicyID: pidAudit},
			},
			steps: []step{
				{name: "audited deny", dir: Egress, pkt: tcpSyn(podIP4, peerA4, 40040, 22), ret: retNext, reason: ReasonAudited, policy: pidAudit,
					event: flowOf(tcpSyn(podIP4, peerA4, 40040, 22), Egress, Audited, ReasonAudited, pidAudit, podID, idA)},
				{name: "audited default deny", dir: Egress, pkt: tcpSyn(podIP4, peerB4, 40041, 22), ret: retNext, reason: ReasonAudited,
					event: flowOf(tcpSyn(podIP4, peerB4, 40041, 22), Egress, Audited, ReasonAudited, 0, podID, idB)},
				{name: "audited connection then established without events", dir: Egress,
					pkt: packet{src: podIP4, dst: peerA4, proto: ProtocolTCP, sport: 40040, dport: 22, tcpFlags: tcpACK},
					ret: retNext, reason: ReasonEstablished, policy: pidAudit},
			},
		},
		{
			name:     "enforced deny wins over audited deny",
			endpoint: enforcedEndpoint(),
			policy: map[PolicyKey]PolicyEntry{
				egressKey(idA, ProtocolTCP, 22):        {Action: Deny, Audit: true, PolicyID: pidAudit},
				egressKey(IdentityAny, ProtocolTCP, 0): deny(pidDeny),
			},
			steps: []step{
				{name: "dropped", dir: Egress, pkt: tcpSyn(podIP4, peerA4, 40050, 22), ret: retDrop, reason: ReasonDenied, policy: pidDeny},
			},
		},
		{
			name:     "L7 entries allow at L4",
			endpoint: enforcedEndpoint(),
			policy:   map[PolicyKey]PolicyEntry{egressKey(idA, ProtocolTCP, 80): {Action: Allow, L7: true, PolicyID: pidL7}},
			steps: []step{
				{name: "allowed with L7 mark", dir: Egress, pkt: tcpSyn(podIP4, peerA4, 40060, 80), ret: retNext, reason: ReasonAllowed, policy: pidL7,
					event: func() *Flow {
						f := flowOf(tcpSyn(podIP4, peerA4, 40060, 80), Egress, Forwarded, ReasonAllowed, pidL7, podID, idA)
						f.L7 = true
						return f
					}()},
			},
		},
		{
			name:     "replies of allowed connections pass under default-deny ingress",
			endpoint: enforcedEndpoint(),
			policy: map[PolicyKey]PolicyEntry{
				egressKey(idA, ProtocolTCP, 80):         allow(pidAllow),
				egressKey(IdentityAny, ProtocolUDP, 53): allow(pidAllowUD),
				egressKey(idB, ProtocolICMP, 0):         allow(pidAllow),
			},
			steps: []step{
				{name: "syn out", dir: Egress, pkt: synA80, ret: retNext, reason: ReasonAllowed, policy: pidAllow,
					event: flowOf(synA80, Egress, Forwarded, ReasonAllowed, pidAllow, podID, idA)},
				{name: "syn-ack in", dir: Ingress, pkt: synA80.reply(tcpSYN | tcpACK), ret: retNext, reason: ReasonEstablished, policy: pidAllow},
				{name: "ack out", dir: Egress, pkt: synA80.reply(tcpSYN | tcpACK).reply(tcpACK), ret: retNext, reason: ReasonEstablished, policy: pidAllow},
				{name: "new syn in from the same peer", dir: Ingress, pkt: tcpSyn(peerA4, podIP4, 80, 40000), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(tcpSyn(peerA4, podIP4, 80, 40000), Ingress, Dropped, ReasonNoPolicy, 0, idA, podID)},
				{name: "udp out", dir: Egress, pkt: udpDNS, ret: retNext, reason: ReasonAllowed, policy: pidAllowUD,
					event: flowOf(udpDNS, Egress, Forwarded, ReasonAllowed, pidAllowUD, podID, IdentityWorld)},
				{name: "udp reply in", dir: Ingress, pkt: udpDNS.reply(0), ret: retNext, reason: ReasonEstablished, policy: pidAllowUD},
				{name: "udp from another port in", dir: Ingress, pkt: udp(unknown4, podIP4, 54, 40001), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(udp(unknown4, podIP4, 54, 40001), Ingress, Dropped, ReasonNoPolicy, 0, IdentityWorld, podID)},
				{name: "icmp unreachable about the udp flow", dir: Ingress,
					pkt: packet{src: unknown4, dst: podIP4, proto: ProtocolICMP, icmpType: 3, inner: &udpDNS},
					ret: retNext, reason: ReasonEstablished},
				{name: "echo request out", dir: Egress, pkt: pingB, ret: retNext, reason: ReasonAllowed, policy: pidAllow,
					event: flowOf(pingB, Egress, Forwarded, ReasonAllowed, pidAllow, podID, idB)},
				{name: "echo reply in", dir: Ingress, pkt: pingB.reply(0), ret: retNext, reason: ReasonEstablished, policy: pidAllow},
				{name: "echo request in", dir: Ingress, pkt: packet{src: peerB4, dst: podIP4, proto: ProtocolICMP, icmpType: 8, dport: 78},
					ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(packet{src: peerB4, dst: podIP4, proto: ProtocolICMP, icmpType: 8, dport: 78, sport: 78}, Ingress, Dropped, ReasonNoPolicy, 0, idB, podID)},
			},
		},
		{
			name:     "policy change: established flows continue, new connections judged anew",
			endpoint: enforcedEndpoint(),
			policy:   map[PolicyKey]PolicyEntry{egressKey(idA, ProtocolTCP, 80): allow(pidAllow)},
			steps: []step{
				{name: "syn out", dir: Egress, pkt: synA80, ret: retNext, reason: ReasonAllowed, policy: pidAllow,
					event: flowOf(synA80, Egress, Forwarded, ReasonAllowed, pidAllow, podID, idA)},
				{name: "established after the allow is removed", dir: Egress,
					change: func(t *testing.T, d *Datapath) {
						if _, err := d.Converge(State{Endpoints: map[int]Endpoint{loIfindex: enforcedEndpoint()}, IPCache: testIPCache()}); err != nil {
							t.Fatal(err)
						}
					},
					pkt: synA80.reply(tcpACK).reply(tcpACK), ret: retNext, reason: ReasonEstablished, policy: pidAllow},
				{name: "new syn on the same tuple is judged and dropped", dir: Egress, pkt: synA80, ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(synA80, Egress, Dropped, ReasonNoPolicy, 0, podID, idA)},
				{name: "the dropped syn removed the entry", dir: Egress,
					pkt: synA80.reply(tcpACK).reply(tcpACK), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(synA80.reply(tcpACK).reply(tcpACK), Egress, Dropped, ReasonNoPolicy, 0, podID, idA)},
			},
		},
		{
			name:     "RST ends the connection; flush re-judges established flows",
			endpoint: enforcedEndpoint(),
			policy: map[PolicyKey]PolicyEntry{
				egressKey(idA, ProtocolTCP, 80): allow(pidAllow),
				egressKey(idA, ProtocolUDP, 0):  allow(pidAllowUD),
			},
			steps: []step{
				{name: "syn out", dir: Egress, pkt: synA80, ret: retNext, reason: ReasonAllowed, policy: pidAllow,
					event: flowOf(synA80, Egress, Forwarded, ReasonAllowed, pidAllow, podID, idA)},
				{name: "udp out", dir: Egress, pkt: udp(podIP4, peerA4, 40070, 5000), ret: retNext, reason: ReasonAllowed, policy: pidAllowUD,
					event: flowOf(udp(podIP4, peerA4, 40070, 5000), Egress, Forwarded, ReasonAllowed, pidAllowUD, podID, idA)},
				{name: "rst in passes", dir: Ingress, pkt: synA80.reply(tcpRST), ret: retNext, reason: ReasonEstablished, policy: pidAllow,
					change: func(t *testing.T, d *Datapath) {
						if _, err := d.Converge(State{Endpoints: map[int]Endpoint{loIfindex: enforcedEndpoint()}, IPCache: testIPCache()}); err != nil {
							t.Fatal(err)
						}
					}},
				{name: "ack after rst is a new, denied flow", dir: Egress, pkt: synA80.reply(tcpACK).reply(tcpACK), ret: retDrop, reason: ReasonNoPolicy,
					event: flowOf(synA80.reply(tcpACK).reply(tcpACK), Egress, Dropped, ReasonNoPolicy, 0, podID, idA)},
				{name: "udp flow dropped after a conntrack flush", dir: Egress, pkt: udp(podIP4, peerA4, 40070, 5000), ret: retDrop, reason: ReasonNoPolicy,
					change: func(t *testing.T, d *Datapath) {
						if n, err := d.FlushConntrack(epID); err != nil || n == 0 {
							t.Fatalf("FlushConntrack = %d, %v; want > 0 entries", n, err)
						}
					},
					event: flowOf(udp(podIP4, peerA4, 40070, 5000), Egress, Dropped, ReasonNoPolicy, 0, podID, idA)},
			},
		},
		{
			name:     "non-first fragments match only port-less entries",
			endpoint: enforcedEndpoint(),
			policy: map[PolicyKey]PolicyEntry{
				egressKey(idA, ProtocolUDP, 5000): allow(pidAllowUD),
				egressKey(idB, ProtocolUDP, 0):    allow(pidAllow),
			},
			steps: []step{
				{name: "fragment to port rule dropped", dir: Egress, pkt: packet{src: podIP4, dst: peerA4, proto: ProtocolUDP, fragOffset: 10},
					ret: retDrop, reason: ReasonNoPolicy},
				{name: "fragment to any-port rule allowed", dir: Egress, pkt: packet{src: podIP4, dst: peerB4, proto: ProtocolUDP, fragOffset: 10},
					ret: retNext, reason: ReasonAllowed, policy: pidAllow},
				{name: "IPv6 fragment to port rule dropped", dir: Egress, pkt: packet{src: podIP6, dst: peerC6, proto: ProtocolUDP, fragOffset: 10},
					ret: retDrop, reason: ReasonNoPolicy},
			},
		},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := d.Converge(State{
				Endpoints: map[int]Endpoint{loIfindex: tc.endpoint},
				IPCache:   testIPCache(),
				Policy:    tc.policy,
			}); err != nil {
				t.Fatalf("Converge: %v", err)
			}
			if _, err := d.FlushConntrack(0); err != nil {
				t.Fatal(err)
			}
			events.drain(t)
			for _, s := range tc.steps {
				if s.change != nil {
					s.change(t, d)
				}
				before, err := d.Counters()
				if err != nil {
					t.Fatal(err)
				}
				frame := s.pkt.bytes()
				if got := run(t, d, s.dir, frame); got != s.ret {
					t.Errorf("%s: returned %#x, want %#x", s.name, got, s.ret)
				}
				after, err := d.Counters()
				if err != nil {
					t.Fatal(err)
				}
				ck := CounterKey{PolicyID: s.policy, Reason: s.reason, Direction: s.dir}
				if got := after[ck].Packets - before[ck].Packets; got != 1 {
					t.Errorf("%s: counter %+v grew by %d packets, want 1", s.name, ck, got)
				}
				if got := after[ck].Bytes - before[ck].Bytes; got != uint64(len(frame)) {
					t.Errorf("%s: counter %+v grew by %d bytes, want %d", s.name, ck, got, len(frame))
				}
				got := events.drain(t)
				if s.event == nil {
					// Drops always report; forwarded packets report only when they open a connection.
					if s.ret == retNext && s.reason != ReasonAllowed && s.reason != ReasonAudited && s.reason != ReasonNotEnforced && len(got) != 0 {
						t.Errorf("%s: unexpected flow events %+v", s.name, got)
					}
					continue
				}
				if len(got) != 1 {
					t.Errorf("%s: got %d flow events %+v, want 1", s.name, len(got), got)
					continue
				}
				want := *s.event
				if want.Protocol == ProtocolICMP && want.SrcPort == 0 {
					want.SrcPort = want.DstPort // echo: both ports carry the identifier
				}
				g := got[0]
				if g.Time.IsZero() {
					t.Errorf("%s: event without time", s.name)
				}
				g.Time = time.Time{}
				if g != want {
					t.Errorf("%s: event\n got %+v\nwant %+v", s.name, g, want)
				}
			}
		})
	}
}

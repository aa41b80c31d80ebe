package datapath

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkPolicyLookup measures the programs on one packet through BPF_PROG_TEST_RUN, with the policy
// map holding n entries for the endpoint. Each case is a TCP SYN, so conntrack never short-cuts the
// policy lookup:
//   - exact: the first of the six lookups hits (allow by identity, protocol and port);
//   - miss: all six lookups miss and default deny drops.
//
// Both include the conntrack lookup and write, a counter update and a flow event (once the ring buffer
// is full, the event-lost counter instead). Established packets skip the policy lookup entirely:
// "established" measures that path.
func BenchmarkPolicyLookup(b *testing.B) {
	for _, n := range []int{100, 10_000, 100_000} {
		d := mustLoad(b, Options{PolicyMaxEntries: 131072})
		policy := make(map[PolicyKey]PolicyEntry, n)
		for i := 0; len(policy) < n-1; i++ {
			// Spread entries over identities and ports like a large real policy.
			k := egressKey(Identity(3000+i/1000), ProtocolTCP, uint16(1+i%1000))
			policy[k] = allow(uint32(i%50 + 1))
		}
		policy[egressKey(idA, ProtocolTCP, 80)] = allow(pidAllow)
		start := time.Now()
		if _, err := d.Converge(State{
			Endpoints: map[int]Endpoint{loIfindex: enforcedEndpoint()},
			IPCache:   testIPCache(),
			Policy:    policy,
		}); err != nil {
			b.Fatal(err)
		}
		b.Logf("Converge of %d policy entries took %v", len(policy), time.Since(start))

		for _, tc := range []struct {
			name string
			pkt  packet
			want uint32
		}{
			{"exact", tcpSyn(podIP4, peerA4, 40000, 80), retNext},
			{"miss", tcpSyn(podIP4, peerB4, 40000, 9), retDrop},
			{"established", packet{src: podIP4, dst: peerA4, proto: ProtocolTCP, sport: 40000, dport: 80, tcpFlags: tcpACK}, retNext},
		} {
			b.Run(fmt.Sprintf("entries=%d/%s", n, tc.name), func(b *testing.B) {
				frame := tc.pkt.bytes()
				if tc.name == "established" {
					run(b, d, Egress, tcpSyn(podIP4, peerA4, 40000, 80).bytes())
				}
				ret, per, err := d.objs.PeFromPod.Benchmark(frame, b.N, b.ResetTimer)
				if err != nil {
					b.Fatal(err)
				}
				if ret != tc.want {
					b.Fatalf("returned %#x, want %#x", ret, tc.want)
				}
				b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
			})
		}
	}
}

// BenchmarkBaselineNotEnforced is the same program on the same SYN for an endpoint whose egress is
// not enforced: parsing, the endpoint lookup, a counter, and BPF_PROG_TEST_RUN's own overhead, with no
// policy lookup and no conntrack entry. Subtracting it from BenchmarkPolicyLookup's cases isolates
// the cost of the policy path.
func BenchmarkBaselineNotEnforced(b *testing.B) {
	d := mustLoad(b, Options{})
	ep := enforcedEndpoint()
	ep.EgressEnforced = false
	if _, err := d.Converge(State{Endpoints: map[int]Endpoint{loIfindex: ep}, IPCache: testIPCache(), Policy: map[PolicyKey]PolicyEntry{}}); err != nil {
		b.Fatal(err)
	}
	frame := tcpSyn(podIP4, peerA4, 40000, 80).bytes()
	ret, per, err := d.objs.PeFromPod.Benchmark(frame, b.N, b.ResetTimer)
	if err != nil {
		b.Fatal(err)
	}
	if ret != retNext {
		b.Fatalf("returned %#x, want pass", ret)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
}

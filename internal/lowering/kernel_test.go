package lowering_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/compiler"
	"github.com/portcullis-dev/portcullis/internal/datapath"
	"github.com/portcullis-dev/portcullis/internal/evaluator"
	"github.com/portcullis-dev/portcullis/internal/identity"
	"github.com/portcullis-dev/portcullis/internal/lowering"
	"github.com/portcullis-dev/portcullis/internal/policy"
)

// The kernel and the reference evaluator must agree on every L3/L4 verdict. This test generates
// clusters of policies, compiles them with the operator's compiler, lowers the node's NodePolicy into
// the dataplane's maps, and judges generated first packets twice: with the real BPF programs through
// BPF_PROG_TEST_RUN, and with internal/evaluator on the same NodePolicy. Any disagreement fails.

type pod struct {
	ns, name, node string
	labels         map[string]string
	v4, v6         netip.Addr
}

var (
	nsLabels = map[string]map[string]string{"a": {"team": "x"}, "b": {"team": "y"}}
	pods     = []pod{
		{"a", "web-1", "node-a", map[string]string{"app": "web", "tier": "front"}, netip.MustParseAddr("10.1.1.1"), netip.MustParseAddr("fd00:1::1")},
		{"a", "api-1", "node-a", map[string]string{"app": "api", "tier": "back"}, netip.MustParseAddr("10.1.1.2"), netip.MustParseAddr("fd00:1::2")},
		{"a", "db-1", "node-b", map[string]string{"app": "db", "tier": "back"}, netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fd00:2::3")},
		{"b", "web-2", "node-a", map[string]string{"app": "web", "tier": "front"}, netip.MustParseAddr("10.1.1.4"), netip.MustParseAddr("fd00:1::4")},
		{"b", "api-2", "node-b", map[string]string{"app": "api", "tier": "back"}, netip.MustParseAddr("10.1.2.5"), netip.MustParseAddr("fd00:2::5")},
		{"b", "db-2", "node-a", map[string]string{"app": "db"}, netip.MustParseAddr("10.1.1.6"), netip.MustParseAddr("fd00:1::6")},
	}
	nodeIPs  = map[string]netip.Addr{"node-a": netip.MustParseAddr("172.30.0.10"), "node-b": netip.MustParseAddr("172.30.0.11")}
	worldIPs = []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.200"),
		netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("2001:db9::1")}
	ports = []uint16{53, 80, 443, 8005, 9000}
)

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func randPeers(r *rand.Rand, ingress bool) v1alpha1.IngressCommonRule {
	var c v1alpha1.IngressCommonRule
	switch r.IntN(9) {
	case 0: // no peer field
	case 1:
		c.FromEndpoints = []metav1.LabelSelector{{MatchLabels: map[string]string{"app": pick(r, []string{"web", "api", "db"})}}}
	case 2:
		c.FromEndpoints = []metav1.LabelSelector{{}}
	case 3:
		c.FromEndpoints = []metav1.LabelSelector{}
	case 4:
		c.FromEndpoints = []metav1.LabelSelector{{MatchLabels: map[string]string{"io.kubernetes.pod.namespace": pick(r, []string{"a", "b"}), "tier": "back"}}}
	case 5:
		c.FromEntities = []v1alpha1.Entity{pick(r, []v1alpha1.Entity{"world", "cluster", "host", "remote-node", "all", "world-ipv6"})}
	case 6:
		c.FromCIDR = []v1alpha1.CIDR{pick(r, []v1alpha1.CIDR{"198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"})}
	case 7:
		c.FromCIDRSet = []v1alpha1.CIDRRule{{Cidr: "198.51.100.0/24", ExceptCIDRs: []v1alpha1.CIDR{"198.51.100.128/25"}}}
	case 8:
		c.FromCIDR = []v1alpha1.CIDR{"10.1.0.0/16"} // inside the cluster: must match no pod
	}
	return c
}

func randPorts(r *rand.Rand, l7 bool) []v1alpha1.PortProtocol {
	switch r.IntN(4) {
	case 0:
		return []v1alpha1.PortProtocol{{Port: "8000", EndPort: 8010, Protocol: pick(r, []v1alpha1.L4Proto{"TCP", "UDP"})}}
	case 1:
		if !l7 {
			return []v1alpha1.PortProtocol{{Port: fmt.Sprint(pick(r, ports)), Protocol: "ANY"}}
		}
	}
	proto := v1alpha1.L4Proto("TCP")
	if !l7 && r.IntN(2) == 0 {
		proto = "UDP"
	}
	return []v1alpha1.PortProtocol{{Port: fmt.Sprint(pick(r, ports)), Protocol: proto}}
}

func randPolicy(r *rand.Rand, i int) compiler.Policy {
	spec := &v1alpha1.PolicySpec{EndpointSelector: &metav1.LabelSelector{}}
	if r.IntN(3) > 0 {
		spec.EndpointSelector.MatchLabels = map[string]string{"app": pick(r, []string{"web", "api", "db"})}
	}
	if r.IntN(7) == 0 {
		spec.EnforcementMode = v1alpha1.EnforcementModeAudit
	}
	if r.IntN(8) == 0 {
		f := false
		spec.EnableDefaultDeny = &v1alpha1.DefaultDenyConfig{Ingress: &f}
	}
	for range 1 + r.IntN(3) {
		peers := randPeers(r, true)
		var toPorts []v1alpha1.PortRule
		var denyPorts []v1alpha1.PortDenyRule
		if r.IntN(3) > 0 {
			l7 := r.IntN(4) == 0
			pr := v1alpha1.PortRule{Ports: randPorts(r, l7)}
			if l7 {
				pr.Rules = &v1alpha1.L7Rules{HTTP: []v1alpha1.PortRuleHTTP{{Method: "GET"}}}
			}
			toPorts = []v1alpha1.PortRule{pr}
			denyPorts = []v1alpha1.PortDenyRule{{Ports: randPorts(r, false)}}
		}
		eg := v1alpha1.EgressCommonRule{ToEndpoints: peers.FromEndpoints, ToCIDR: peers.FromCIDR, ToCIDRSet: peers.FromCIDRSet, ToEntities: peers.FromEntities}
		switch r.IntN(5) {
		case 0, 1:
			spec.Ingress = append(spec.Ingress, v1alpha1.IngressRule{IngressCommonRule: peers, ToPorts: toPorts})
		case 2:
			spec.Egress = append(spec.Egress, v1alpha1.EgressRule{EgressCommonRule: eg, ToPorts: toPorts})
		case 3:
			spec.IngressDeny = append(spec.IngressDeny, v1alpha1.IngressDenyRule{IngressCommonRule: peers, ToPorts: denyPorts})
		case 4:
			spec.EgressDeny = append(spec.EgressDeny, v1alpha1.EgressDenyRule{EgressCommonRule: eg, ToPorts: denyPorts})
		}
	}
	ref := v1alpha1.PolicyReference{Kind: "ClusterAccessPolicy", Name: fmt.Sprintf("p%d", i), Generation: 1}
	if r.IntN(2) == 0 {
		ref.Kind, ref.Namespace = "AccessPolicy", pick(r, []string{"a", "b"})
	}
	return compiler.Policy{Ref: ref, Spec: spec}
}

func TestPrivilegedKernelAgreesWithTheReferenceEvaluator(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("privileged test cannot run: not root (CI=true)")
		}
		t.Skip("needs root")
	}
	dp, err := datapath.Load(datapath.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })

	cases, flows, disagreements := 0, 0, 0
	verdicts := map[string]int{}
	// Seeds 2, 3 and 20-27 each found a real disagreement once — world-ipv6 rules matching IPv4 world
	// addresses, deny rules ignored where default deny was off, audited denies forwarding what the
	// enforcing policies drop, an audited deny merged over an allow — so they stay in the set.
	for _, seed := range []uint64{2026, 2, 3, 20, 21, 22, 23, 24, 25, 26, 27} {
		r := rand.New(rand.NewPCG(seed, 11))
		for c := 0; c < 150 && disagreements < 5; c++ {
			comp := compiler.New(compiler.Options{})
			ids := map[string]identity.ID{}
			var ipc []v1alpha1.IPCacheEntry
			for _, p := range pods {
				labels := identity.SecurityLabels(p.ns, p.labels, nsLabels[p.ns])
				id, ok := ids[labels.Key()]
				if !ok {
					id = identity.ID(256 + len(ids))
					ids[labels.Key()] = id
					comp.SetIdentity(id, labels)
				}
				comp.SetEndpoint(compiler.Endpoint{Namespace: p.ns, Name: p.name, Node: p.node, IPs: []netip.Addr{p.v4, p.v6}, Identity: id})
				for _, ip := range []netip.Addr{p.v4, p.v6} {
					ipc = append(ipc, v1alpha1.IPCacheEntry{IP: ip.String(), Identity: uint32(id), Node: p.node, Pod: p.ns + "/" + p.name})
				}
			}
			for n, ip := range nodeIPs {
				ipc = append(ipc, v1alpha1.IPCacheEntry{IP: ip.String(), Identity: uint32(identity.RemoteNode), Node: n})
			}
			var applied []compiler.Policy
			for i := range 1 + r.IntN(4) {
				p := randPolicy(r, i)
				if errs := policy.Validate(p.Ref.Kind, p.Spec); len(errs) > 0 {
					continue
				}
				if err := comp.SetPolicy(p); err != nil {
					t.Fatalf("compiler refused a valid policy: %v", err)
				}
				applied = append(applied, p)
			}
			spec := comp.NodePolicy("node-a")

			// The endpoint under test sits on the test-run interface.
			local := pick(r, []pod{pods[0], pods[1], pods[3], pods[5]})
			low := lowering.Lower(lowering.Input{Node: "node-a", Spec: spec, IPCache: ipc,
				Interfaces: map[string]int{local.ns + "/" + local.name: datapath.TestRunIfindex}})
			if _, err := dp.Converge(low.State); err != nil {
				t.Fatalf("converge: %v", err)
			}
			evIPC := evaluator.MapIPCache{}
			for _, e := range ipc {
				id := identity.ID(e.Identity)
				if e.Node == "node-a" && id == identity.RemoteNode {
					id = identity.Host
				}
				evIPC[netip.MustParseAddr(e.IP)] = id
			}
			ev, err := evaluator.New(spec, evIPC)
			if err != nil {
				t.Fatalf("evaluator: %v", err)
			}
			cases++
			for f := 0; f < 40; f++ {
				v6 := r.IntN(3) == 0
				var peer netip.Addr
				switch r.IntN(3) {
				case 0:
					pp := pick(r, pods)
					peer = pp.v4
					if v6 {
						peer = pp.v6
					}
				case 1:
					if v6 {
						continue // the lab's node addresses are IPv4 only
					}
					peer = nodeIPs[pick(r, []string{"node-a", "node-b"})]
				case 2:
					peer = pick(r, worldIPs)
					v6 = peer.Is6()
				}
				self := local.v4
				if v6 {
					self = local.v6
				}
				if peer == self {
					continue
				}
				dir, edir := datapath.Ingress, evaluator.Ingress
				src, dst := peer, self
				if r.IntN(2) == 0 {
					dir, edir, src, dst = datapath.Egress, evaluator.Egress, self, peer
				}
				proto, eproto := datapath.ProtocolTCP, "TCP"
				if r.IntN(3) == 0 {
					proto, eproto = datapath.ProtocolUDP, "UDP"
				}
				port := pick(r, ports)
				frame, err := datapath.FirstPacket(src, dst, proto, uint16(30000+f), port)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := dp.FlushConntrack(0); err != nil {
					t.Fatal(err)
				}
				passed, err := dp.RunFrame(dir, frame)
				if err != nil {
					t.Fatal(err)
				}
				res, err := ev.Evaluate(evaluator.Flow{Direction: edir, Source: src, Destination: dst, Protocol: eproto, Port: port})
				if err != nil {
					t.Fatalf("evaluate: %v", err)
				}
				flows++
				verdicts[res.Verdict.String()]++
				want := res.Verdict != evaluator.Deny
				if passed != want {
					disagreements++
					specYAML, _ := yaml.Marshal(applied)
					npYAML, _ := yaml.Marshal(spec)
					t.Errorf("case %d: %s %s %s→%s:%d: kernel passed=%v, evaluator %s (%s)\npolicies:\n%s\nnode policy:\n%s\nunsupported: %v",
						c, dir, eproto, src, dst, port, passed, res.Verdict, res.Reason, specYAML, npYAML, low.Unsupported)
				}
			}
		}
	}
	t.Logf("%d generated clusters, %d flows judged by both: %v", cases, flows, verdicts)
	if flows < 20000 || verdicts["Allow"] == 0 || verdicts["Deny"] == 0 {
		t.Errorf("the generator did not exercise both verdicts enough: %d flows, %v", flows, verdicts)
	}
}

package lab

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
)

func TestSeedTopologyHasTheArticlesServicesOnTwoNodes(t *testing.T) {
	topo, err := LoadTopology(filepath.Join("..", "..", "examples", "lab", "seed.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := topo.Objects()
	if err != nil {
		t.Fatal(err)
	}
	ports := map[string][]int32{}
	nodes := map[string]bool{}
	for _, p := range objs.Pods {
		if p.Namespace != "production" || p.Labels["app"] != p.Name {
			t.Errorf("pod %s/%s: labels %v", p.Namespace, p.Name, p.Labels)
		}
		nodes[p.Spec.NodeName] = true
		for _, cp := range p.Spec.Containers[0].Ports {
			ports[p.Name] = append(ports[p.Name], cp.ContainerPort)
		}
		if !strings.Contains(p.Status.PodIP, ".") || len(p.Status.PodIPs) != 2 {
			t.Errorf("pod %s: IPs %v", p.Name, p.Status.PodIPs)
		}
	}
	if len(objs.Pods) != 8 || len(nodes) != 2 {
		t.Errorf("%d pods on %d nodes, want 8 on 2", len(objs.Pods), len(nodes))
	}
	for name, want := range map[string][]int32{
		"user-service":    {8080, 5353},
		"billing-service": {9000, 9090, 5353},
		"order-service":   {50051, 9090, 5353},
	} {
		if got := ports[name]; len(got) != len(want) || got[0] != want[0] {
			t.Errorf("%s ports %v, want %v", name, got, want)
		}
	}
	for _, p := range objs.Pods {
		scrape := p.Name == "billing-service" || p.Name == "order-service"
		if (p.Labels["metrics.internal/scrape"] == "true") != scrape {
			t.Errorf("%s: metrics.internal/scrape label %q", p.Name, p.Labels["metrics.internal/scrape"])
		}
	}
	if len(topo.ExternalHosts) != 1 {
		t.Errorf("%d external hosts, want 1", len(topo.ExternalHosts))
	}
}

func TestAddressesAreAllocatedAroundFixedOnes(t *testing.T) {
	topo, err := ParseTopology([]byte(testTopology))
	if err != nil {
		t.Fatal(err)
	}
	p, err := topo.plan()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{
		"production/client": {"10.0.1.10", "fd00:10:1::a"},
		"production/web":    {"10.0.1.11", "fd00:10:1::b"},
		"production/api":    {"10.0.2.42", "fd00:10:2::a"},
		"world":             {"198.51.100.10", "2001:db8:100::10"},
	}
	for ref, w := range want {
		ep := p.byRef[ref]
		if ep.ipv4.String() != w[0] || ep.ipv6.String() != w[1] {
			t.Errorf("%s: %s %s, want %s %s", ref, ep.ipv4, ep.ipv6, w[0], w[1])
		}
	}
	if p.nodes[1].fabric4 != netip.MustParseAddr("172.30.0.11") || p.externals[0].fabric6 != netip.MustParseAddr("fd00:fab::c") {
		t.Errorf("fabric addresses: node-b %s, world %s", p.nodes[1].fabric4, p.externals[0].fabric6)
	}
	if n := p.byRef["production/web"].hostIf; len(n) != 15 || !strings.HasPrefix(n, "pcl") {
		t.Errorf("host interface name %q", n)
	}
}

func TestInvalidTopologiesAreRejectedWithTheReason(t *testing.T) {
	const node = "nodes: [{name: n1, podCIDRv4: 10.0.1.0/24, podCIDRv6: 'fd00:10:1::/64'}]\nnamespaces: [{name: ns}]\n"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"no nodes", "nodes: []", "at least one node"},
		{"unknown field", node + "pods: [{namespace: ns, name: p, node: n1, colour: red}]", "unknown field"},
		{"bad CIDR", "nodes: [{name: n1, podCIDRv4: 10.0.1.0/33, podCIDRv6: 'fd00::/64'}]", "podCIDRv4"},
		{"host bits", "nodes: [{name: n1, podCIDRv4: 10.0.1.1/24, podCIDRv6: 'fd00::/64'}]", "host bits set"},
		{"wrong family", "nodes: [{name: n1, podCIDRv4: 'fd00::/64', podCIDRv6: 'fd01::/64'}]", "not an IPv4 range"},
		{"overlapping nodes", "nodes: [{name: a, podCIDRv4: 10.0.0.0/16, podCIDRv6: 'fd00:1::/64'}, {name: b, podCIDRv4: 10.0.1.0/24, podCIDRv6: 'fd00:2::/64'}]", "overlaps"},
		{"overlaps fabric", "nodes: [{name: a, podCIDRv4: 172.30.0.0/16, podCIDRv6: 'fd00:1::/64'}]", "overlaps fabric.ipv4"},
		{"duplicate node", "nodes: [{name: a, podCIDRv4: 10.0.1.0/24, podCIDRv6: 'fd00:1::/64'}, {name: a, podCIDRv4: 10.0.2.0/24, podCIDRv6: 'fd00:2::/64'}]", "duplicate node"},
		{"bad node name", "nodes: [{name: Node_A, podCIDRv4: 10.0.1.0/24, podCIDRv6: 'fd00:1::/64'}]", "invalid name"},
		{"unknown namespace", node + "pods: [{namespace: other, name: p, node: n1}]", `namespace "other" is not listed`},
		{"unknown node", node + "pods: [{namespace: ns, name: p, node: n9}]", `node "n9" is not listed`},
		{"duplicate pod", node + "pods: [{namespace: ns, name: p, node: n1}, {namespace: ns, name: p, node: n1}]", "duplicate pod"},
		{"bad label", node + "pods: [{namespace: ns, name: p, node: n1, labels: {'a b': x}}]", "label key"},
		{"bad protocol", node + "pods: [{namespace: ns, name: p, node: n1, ports: [{port: 80, protocol: SCTP}]}]", "must be TCP or UDP"},
		{"bad port", node + "pods: [{namespace: ns, name: p, node: n1, ports: [{port: 0}]}]", "1 to 65535"},
		{"duplicate port", node + "pods: [{namespace: ns, name: p, node: n1, ports: [{port: 80}, {port: 80, protocol: TCP}]}]", "duplicate port 80/TCP"},
		{"fixed IP outside range", node + "pods: [{namespace: ns, name: p, node: n1, ipv4: 10.0.2.5}]", "outside node"},
		{"fixed IP twice", node + "pods: [{namespace: ns, name: p, node: n1, ipv4: 10.0.1.5}, {namespace: ns, name: q, node: n1, ipv4: 10.0.1.5}]", "already used"},
		{"network address", node + "pods: [{namespace: ns, name: p, node: n1, ipv4: 10.0.1.0}]", "network or broadcast"},
		{"external inside cluster", node + "externalHosts: [{name: w, ipv4: 10.0.1.7, ipv6: '2001:db8::1'}]", "outside every cluster range"},
		{"external without IPv6", node + "externalHosts: [{name: w, ipv4: 198.51.100.1}]", "ipv6 missing"},
		{"external loopback", node + "externalHosts: [{name: w, ipv4: 127.0.0.1, ipv6: '2001:db8::1'}]", "not a global unicast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTopology([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestLabPrefixesNeverClaimEachOthersNamespaces(t *testing.T) {
	a := paths{prefix: "pcl-"}
	for name, want := range map[string]bool{
		"pcl-fabric": true, "pcl-n-node-a": true, "pcl-p-production.web": true, "pcl-x-world": true,
		"pcl2-n-node-a": false, "pclx-fabric": false, "pcl-other": false, "cni-1234": false,
	} {
		if got := a.ownsNetns(name); got != want {
			t.Errorf("ownsNetns(%q) = %v, want %v", name, got, want)
		}
	}
	for _, bad := range []string{"", "pcl", "PCL-", "a-b-", "toolongprefix-"} {
		o := Options{Prefix: bad, CgroupRoot: "/x", Binary: "/bin/true"}
		if bad == "" {
			continue // empty means the default
		}
		if _, err := o.resolve(); err == nil {
			t.Errorf("prefix %q accepted", bad)
		}
	}
}

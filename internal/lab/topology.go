// Package lab simulates a Kubernetes cluster's network on one Linux machine: nodes and pods are network
// namespaces wired as a routed CNI wires them, every pod runs a small HTTP and UDP echo server in its own
// cgroup, and external hosts stand for the world outside the cluster. Traffic between them is real kernel
// traffic, so the Portcullis agent enforces policy on it exactly as it would in a cluster.
//
// See docs/lab.md for the topology, the addressing plan and what cleanup does.
package lab

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// Protocol is a transport protocol of a pod port.
type Protocol string

// The transport protocols a lab port can use.
const (
	TCP Protocol = "TCP"
	UDP Protocol = "UDP"
)

// Topology describes a simulated cluster: its nodes, namespaces, pods and the external hosts that stand for
// the world. It is loaded from YAML with LoadTopology or ParseTopology and checked with Validate.
type Topology struct {
	// Fabric holds the addresses of the shared segment that connects nodes and external hosts. Optional:
	// the defaults are 172.30.0.0/24 and fd00:fab::/64.
	Fabric Fabric `json:"fabric,omitzero"`
	// Nodes are the simulated nodes; at least one.
	Nodes []Node `json:"nodes"`
	// Namespaces are the Kubernetes namespaces pods live in, with their labels.
	Namespaces []Namespace `json:"namespaces,omitempty"`
	// Pods are the simulated pods, each on one node.
	Pods []Pod `json:"pods,omitempty"`
	// ExternalHosts are hosts outside every cluster range ("the world").
	ExternalHosts []ExternalHost `json:"externalHosts,omitempty"`
}

// Fabric is the layer-2 segment (a Linux bridge) that connects every node and external host.
type Fabric struct {
	// IPv4 is the IPv4 range node and external-host fabric addresses are taken from.
	IPv4 netip.Prefix `json:"ipv4,omitzero"`
	// IPv6 is the IPv6 range node and external-host fabric addresses are taken from.
	IPv6 netip.Prefix `json:"ipv6,omitzero"`
}

// Node is a simulated node: a network namespace that routes for its pods.
type Node struct {
	// Name is the Kubernetes node name (a DNS subdomain).
	Name string `json:"name"`
	// PodCIDRv4 is the node's IPv4 pod range, for example 10.0.1.0/24.
	PodCIDRv4 netip.Prefix `json:"podCIDRv4"`
	// PodCIDRv6 is the node's IPv6 pod range, for example fd00:10:1::/64.
	PodCIDRv6 netip.Prefix `json:"podCIDRv6"`
}

// Namespace is a Kubernetes namespace of the lab.
type Namespace struct {
	// Name is the namespace name (a DNS label).
	Name string `json:"name"`
	// Labels are the namespace's labels.
	Labels map[string]string `json:"labels,omitempty"`
}

// Pod is a simulated pod: a network namespace with one veth to its node and a server process.
type Pod struct {
	// Namespace is the pod's namespace; it must be listed in Topology.Namespaces.
	Namespace string `json:"namespace"`
	// Name is the pod name (a DNS subdomain).
	Name string `json:"name"`
	// Labels are the pod's labels.
	Labels map[string]string `json:"labels,omitempty"`
	// Node is the name of the node the pod runs on.
	Node string `json:"node"`
	// Ports are the ports the pod's server listens on: HTTP/1.1 on TCP ports, an echo on UDP ports.
	Ports []Port `json:"ports,omitempty"`
	// IPv4 is a fixed IPv4 address inside the node's IPv4 pod range; allocated when empty.
	IPv4 netip.Addr `json:"ipv4,omitzero"`
	// IPv6 is a fixed IPv6 address inside the node's IPv6 pod range; allocated when empty.
	IPv6 netip.Addr `json:"ipv6,omitzero"`
}

// Ref returns the pod's reference, "namespace/name", as the Lab methods take it.
func (p Pod) Ref() string { return p.Namespace + "/" + p.Name }

// Port is a port a pod or external host serves.
type Port struct {
	// Name is the port's name (an IANA service name), as a container port names it. Optional.
	Name string `json:"name,omitempty"`
	// Port is the port number, 1 to 65535.
	Port int `json:"port"`
	// Protocol is TCP (an HTTP/1.1 server) or UDP (an echo); TCP when empty.
	Protocol Protocol `json:"protocol,omitempty"`
}

// ExternalHost is a host outside the cluster, reached through the fabric. It stands for "the world" in
// CIDR and entity tests, and serves HTTP and UDP echo like a pod.
type ExternalHost struct {
	// Name names the host (a DNS label); the Lab methods take it where they take a pod reference.
	Name string `json:"name"`
	// IPv4 is the host's IPv4 address, outside every cluster range (for example 198.51.100.10).
	IPv4 netip.Addr `json:"ipv4"`
	// IPv6 is the host's IPv6 address, outside every cluster range (for example 2001:db8:100::10).
	IPv6 netip.Addr `json:"ipv6"`
	// Ports are the ports the host serves; when empty, TCP 80 and 443 (plain HTTP) and UDP 5353.
	Ports []Port `json:"ports,omitempty"`
}

// Default fabric ranges, used when Topology.Fabric leaves them empty.
var (
	DefaultFabricIPv4 = netip.MustParsePrefix("172.30.0.0/24")
	DefaultFabricIPv6 = netip.MustParsePrefix("fd00:fab::/64")
)

// defaultExternalPorts are served by an external host that lists no ports.
var defaultExternalPorts = []Port{
	{Name: "http", Port: 80, Protocol: TCP},
	{Name: "https", Port: 443, Protocol: TCP},
	{Name: "echo", Port: 5353, Protocol: UDP},
}

// First host number of allocated addresses: pods get .10, .11, ... of their node's range; nodes get .10,
// .11, ... of the fabric and external hosts the numbers after the nodes.
const firstHost = 10

// LoadTopology reads a topology from a YAML (or JSON) file and validates it.
func LoadTopology(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	t, err := ParseTopology(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ParseTopology parses a topology from YAML (or JSON), rejecting unknown fields, and validates it.
func ParseTopology(data []byte) (*Topology, error) {
	var t Topology
	if err := yaml.UnmarshalStrict(data, &t); err != nil {
		if where := badAddressField(data); where != "" {
			return nil, fmt.Errorf("parse topology: %s: %w", where, err)
		}
		return nil, fmt.Errorf("parse topology: %w", err)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// badAddressField names the first address or range field of a YAML topology that does not parse, since
// the decoder's error does not say where it is.
func badAddressField(data []byte) string {
	var raw map[string]any
	if yaml.Unmarshal(data, &raw) != nil {
		return ""
	}
	check := func(where string, obj any, fields ...string) string {
		m, _ := obj.(map[string]any)
		for _, f := range fields {
			v, ok := m[f].(string)
			if !ok {
				continue
			}
			var err error
			if strings.HasPrefix(f, "podCIDR") || where == "fabric" {
				_, err = netip.ParsePrefix(v)
			} else {
				_, err = netip.ParseAddr(v)
			}
			if err != nil {
				return fmt.Sprintf("%s.%s %q", where, f, v)
			}
		}
		return ""
	}
	if w := check("fabric", raw["fabric"], "ipv4", "ipv6"); w != "" {
		return w
	}
	for _, list := range []struct {
		key    string
		fields []string
	}{{"nodes", []string{"podCIDRv4", "podCIDRv6"}}, {"pods", []string{"ipv4", "ipv6"}}, {"externalHosts", []string{"ipv4", "ipv6"}}} {
		items, _ := raw[list.key].([]any)
		for i, item := range items {
			if w := check(fmt.Sprintf("%s[%d]", list.key, i), item, list.fields...); w != "" {
				return w
			}
		}
	}
	return ""
}

// Validate checks the topology and returns every problem found, joined, each naming the offending item.
func (t *Topology) Validate() error {
	_, err := t.plan()
	return err
}

// Endpoint addresses allocated for a pod or an external host.
type endpointPlan struct {
	ref      string // "ns/name" for pods, the name for external hosts
	pod      *Pod
	ext      *ExternalHost
	node     *Node // nil for external hosts
	nodeIdx  int
	ipv4     netip.Addr
	ipv6     netip.Addr
	fabric4  netip.Addr // external hosts only
	fabric6  netip.Addr
	ports    []Port
	hostIf   string // host-side veth in the node namespace (pods only)
	index    int    // position among pods or among external hosts
	isExtern bool
}

type nodePlan struct {
	node    *Node
	fabric4 netip.Addr
	fabric6 netip.Addr
	pods    []*endpointPlan
}

type plan struct {
	fabric4, fabric6 netip.Prefix
	nodes            []*nodePlan
	nodeByName       map[string]*nodePlan
	pods             []*endpointPlan
	externals        []*endpointPlan
	byRef            map[string]*endpointPlan
	namespaces       map[string]*Namespace
	nsOrder          []string
}

// plan validates the topology and allocates every address. It never changes t.
func (t *Topology) plan() (*plan, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	p := &plan{
		fabric4:    t.Fabric.IPv4,
		fabric6:    t.Fabric.IPv6,
		nodeByName: map[string]*nodePlan{},
		byRef:      map[string]*endpointPlan{},
		namespaces: map[string]*Namespace{},
	}
	if !p.fabric4.IsValid() {
		p.fabric4 = DefaultFabricIPv4
	}
	if !p.fabric6.IsValid() {
		p.fabric6 = DefaultFabricIPv6
	}
	checkPrefix := func(what string, pfx netip.Prefix, v6 bool) bool {
		switch {
		case !pfx.IsValid():
			bad("%s: missing", what)
		case pfx.Addr().Is6() != v6 || pfx.Addr().Is4In6():
			bad("%s %s: not an %s range", what, pfx, map[bool]string{false: "IPv4", true: "IPv6"}[v6])
		case pfx != pfx.Masked():
			bad("%s %s: host bits set (did you mean %s?)", what, pfx, pfx.Masked())
		case pfx.Addr().BitLen()-pfx.Bits() < 2:
			bad("%s %s: range too small", what, pfx)
		default:
			return true
		}
		return false
	}
	fabricOK := checkPrefix("fabric.ipv4", p.fabric4, false)
	fabricOK = checkPrefix("fabric.ipv6", p.fabric6, true) && fabricOK

	// Every range the cluster owns, to check for overlaps and to keep external hosts outside.
	type owned struct {
		what string
		pfx  netip.Prefix
	}
	var ranges []owned
	if fabricOK {
		ranges = append(ranges, owned{"fabric.ipv4", p.fabric4}, owned{"fabric.ipv6", p.fabric6})
	}

	if len(t.Nodes) == 0 {
		bad("nodes: at least one node is needed")
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		what := fmt.Sprintf("nodes[%d] %q", i, n.Name)
		if msgs := validation.IsDNS1123Subdomain(n.Name); len(msgs) > 0 {
			bad("%s: invalid name: %s", what, strings.Join(msgs, "; "))
		}
		if _, dup := p.nodeByName[n.Name]; dup {
			bad("%s: duplicate node name", what)
		}
		np := &nodePlan{node: n}
		p.nodes = append(p.nodes, np)
		p.nodeByName[n.Name] = np
		ok4 := checkPrefix(what+" podCIDRv4", n.PodCIDRv4, false)
		ok6 := checkPrefix(what+" podCIDRv6", n.PodCIDRv6, true)
		for _, r := range []struct {
			ok  bool
			pfx netip.Prefix
			fam string
		}{{ok4, n.PodCIDRv4, "podCIDRv4"}, {ok6, n.PodCIDRv6, "podCIDRv6"}} {
			if !r.ok {
				continue
			}
			for _, o := range ranges {
				if o.pfx.Overlaps(r.pfx) {
					bad("%s %s %s overlaps %s %s", what, r.fam, r.pfx, o.what, o.pfx)
				}
			}
			ranges = append(ranges, owned{what + " " + r.fam, r.pfx})
		}
	}

	for i := range t.Namespaces {
		ns := &t.Namespaces[i]
		what := fmt.Sprintf("namespaces[%d] %q", i, ns.Name)
		if msgs := validation.IsDNS1123Label(ns.Name); len(msgs) > 0 {
			bad("%s: invalid name: %s", what, strings.Join(msgs, "; "))
		}
		if _, dup := p.namespaces[ns.Name]; dup {
			bad("%s: duplicate namespace", what)
		} else {
			p.nsOrder = append(p.nsOrder, ns.Name)
		}
		p.namespaces[ns.Name] = ns
		checkLabels(what, ns.Labels, bad)
	}

	usedIP := map[netip.Addr]string{}
	claim := func(what string, a netip.Addr) {
		if other, dup := usedIP[a]; dup {
			bad("%s: address %s already used by %s", what, a, other)
		}
		usedIP[a] = what
	}

	// Pods: check, then claim fixed addresses, then allocate the rest in a second pass.
	for i := range t.Pods {
		pod := &t.Pods[i]
		what := fmt.Sprintf("pods[%d] %q", i, pod.Ref())
		if msgs := validation.IsDNS1123Subdomain(pod.Name); len(msgs) > 0 {
			bad("%s: invalid name: %s", what, strings.Join(msgs, "; "))
		}
		if _, ok := p.namespaces[pod.Namespace]; !ok {
			bad("%s: namespace %q is not listed in namespaces", what, pod.Namespace)
		}
		if _, dup := p.byRef[pod.Ref()]; dup {
			bad("%s: duplicate pod", what)
		}
		checkLabels(what, pod.Labels, bad)
		ports := checkPorts(what, pod.Ports, bad)
		ep := &endpointPlan{ref: pod.Ref(), pod: pod, ports: ports, index: i, hostIf: hostIfName(pod.Ref())}
		p.byRef[ep.ref] = ep
		p.pods = append(p.pods, ep)
		np, ok := p.nodeByName[pod.Node]
		if !ok {
			bad("%s: node %q is not listed in nodes", what, pod.Node)
			continue
		}
		ep.node = np.node
		np.pods = append(np.pods, ep)
		for _, fixed := range []struct {
			a   netip.Addr
			pfx netip.Prefix
			fam string
			dst *netip.Addr
		}{{pod.IPv4, np.node.PodCIDRv4, "ipv4", &ep.ipv4}, {pod.IPv6, np.node.PodCIDRv6, "ipv6", &ep.ipv6}} {
			if !fixed.a.IsValid() {
				continue
			}
			if !fixed.pfx.IsValid() || !fixed.pfx.Contains(fixed.a) {
				bad("%s: %s %s is outside node %q's pod range %s", what, fixed.fam, fixed.a, np.node.Name, fixed.pfx)
				continue
			}
			if fixed.a == fixed.pfx.Addr() || (fixed.a.Is4() && fixed.a == lastAddr(fixed.pfx)) {
				bad("%s: %s %s is the network or broadcast address of %s", what, fixed.fam, fixed.a, fixed.pfx)
				continue
			}
			claim(what, fixed.a)
			*fixed.dst = fixed.a
		}
	}
	for ni, np := range p.nodes {
		np.fabric4 = hostAddr(p.fabric4, firstHost+ni)
		np.fabric6 = hostAddr(p.fabric6, firstHost+ni)
		next4, next6 := firstHost, firstHost
		for _, ep := range np.pods {
			ep.nodeIdx = ni
			if !ep.ipv4.IsValid() && np.node.PodCIDRv4.IsValid() {
				ep.ipv4, next4 = allocate(np.node.PodCIDRv4, next4, usedIP)
				if !ep.ipv4.IsValid() {
					bad("pod %q: node %q's range %s is full", ep.ref, np.node.Name, np.node.PodCIDRv4)
				}
				claim("pod "+ep.ref, ep.ipv4)
			}
			if !ep.ipv6.IsValid() && np.node.PodCIDRv6.IsValid() {
				ep.ipv6, next6 = allocate(np.node.PodCIDRv6, next6, usedIP)
				if !ep.ipv6.IsValid() {
					bad("pod %q: node %q's range %s is full", ep.ref, np.node.Name, np.node.PodCIDRv6)
				}
				claim("pod "+ep.ref, ep.ipv6)
			}
		}
	}

	for i := range t.ExternalHosts {
		x := &t.ExternalHosts[i]
		what := fmt.Sprintf("externalHosts[%d] %q", i, x.Name)
		if msgs := validation.IsDNS1123Label(x.Name); len(msgs) > 0 {
			bad("%s: invalid name: %s", what, strings.Join(msgs, "; "))
		}
		if strings.Contains(x.Name, "/") {
			bad("%s: invalid name", what)
		}
		if _, dup := p.byRef[x.Name]; dup {
			bad("%s: duplicate external host", what)
		}
		for _, a := range []struct {
			a   netip.Addr
			fam string
			v6  bool
		}{{x.IPv4, "ipv4", false}, {x.IPv6, "ipv6", true}} {
			switch {
			case !a.a.IsValid():
				bad("%s: %s missing", what, a.fam)
				continue
			case a.a.Is6() != a.v6 || a.a.Is4In6():
				bad("%s: %s %s is not an %s address", what, a.fam, a.a, strings.ToUpper(a.fam[:2])+a.fam[2:])
				continue
			case !a.a.IsGlobalUnicast():
				bad("%s: %s %s is not a global unicast address", what, a.fam, a.a)
				continue
			}
			for _, o := range ranges {
				if o.pfx.Contains(a.a) {
					bad("%s: %s %s is inside %s %s; an external host must be outside every cluster range", what, a.fam, a.a, o.what, o.pfx)
				}
			}
			claim(what, a.a)
		}
		ports := x.Ports
		if len(ports) == 0 {
			ports = defaultExternalPorts
		}
		ep := &endpointPlan{ref: x.Name, ext: x, ipv4: x.IPv4, ipv6: x.IPv6, ports: checkPorts(what, ports, bad),
			index: i, isExtern: true,
			fabric4: hostAddr(p.fabric4, firstHost+len(t.Nodes)+i),
			fabric6: hostAddr(p.fabric6, firstHost+len(t.Nodes)+i)}
		p.byRef[ep.ref] = ep
		p.externals = append(p.externals, ep)
	}
	if fabricOK {
		last := firstHost + len(t.Nodes) + len(t.ExternalHosts)
		if a := hostAddr(p.fabric4, last); !p.fabric4.Contains(a) || a == lastAddr(p.fabric4) {
			bad("fabric.ipv4 %s: too small for %d nodes and %d external hosts", p.fabric4, len(t.Nodes), len(t.ExternalHosts))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("invalid topology: %w", errors.Join(errs...))
	}
	return p, nil
}

func checkLabels(what string, labels map[string]string, bad func(string, ...any)) {
	for k, v := range labels {
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			bad("%s: label key %q: %s", what, k, strings.Join(msgs, "; "))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			bad("%s: label %q value %q: %s", what, k, v, strings.Join(msgs, "; "))
		}
	}
}

// checkPorts validates ports and returns them with the protocol defaulted.
func checkPorts(what string, ports []Port, bad func(string, ...any)) []Port {
	out := make([]Port, 0, len(ports))
	names := map[string]bool{}
	seen := map[Port]bool{}
	for i, pt := range ports {
		pw := fmt.Sprintf("%s ports[%d]", what, i)
		if pt.Protocol == "" {
			pt.Protocol = TCP
		}
		if pt.Protocol != TCP && pt.Protocol != UDP {
			bad("%s: protocol %q: must be TCP or UDP", pw, pt.Protocol)
		}
		if pt.Port < 1 || pt.Port > 65535 {
			bad("%s: port %d: must be 1 to 65535", pw, pt.Port)
		}
		if pt.Name != "" {
			if msgs := validation.IsValidPortName(pt.Name); len(msgs) > 0 {
				bad("%s: name %q: %s", pw, pt.Name, strings.Join(msgs, "; "))
			}
			if names[pt.Name] {
				bad("%s: duplicate port name %q", pw, pt.Name)
			}
			names[pt.Name] = true
		}
		key := Port{Port: pt.Port, Protocol: pt.Protocol}
		if seen[key] {
			bad("%s: duplicate port %d/%s", pw, pt.Port, pt.Protocol)
		}
		seen[key] = true
		out = append(out, pt)
	}
	return out
}

// hostAddr returns the address n after the start of pfx.
func hostAddr(pfx netip.Prefix, n int) netip.Addr {
	b := pfx.Addr().AsSlice()
	v := new(big.Int).SetBytes(b)
	v.Add(v, big.NewInt(int64(n)))
	out := v.FillBytes(make([]byte, len(b)))
	a, _ := netip.AddrFromSlice(out)
	return a
}

// lastAddr returns the last address of pfx (the IPv4 broadcast address).
func lastAddr(pfx netip.Prefix) netip.Addr {
	b := pfx.Addr().AsSlice()
	for i := range b {
		bit := i * 8
		for j := 0; j < 8; j++ {
			if bit+j >= pfx.Bits() {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// allocate returns the first free address of pfx at host number next or later, and the next number to try.
func allocate(pfx netip.Prefix, next int, used map[netip.Addr]string) (netip.Addr, int) {
	for ; ; next++ {
		a := hostAddr(pfx, next)
		if !pfx.Contains(a) || (a.Is4() && a == lastAddr(pfx)) {
			return netip.Addr{}, next
		}
		if _, taken := used[a]; !taken {
			return a, next + 1
		}
	}
}

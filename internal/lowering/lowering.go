// Package lowering turns a node's compiled policy (a NodePolicySpec) and the cluster's IP cache into
// the kernel encodings of the dataplane: endpoint, IP cache and policy map entries. It is pure Go:
// the agent feeds it what it read from the API and what it found on the node, and converges the
// kernel to the result.
package lowering

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/datapath"
	"github.com/portcullis-dev/portcullis/internal/identity"
)

// cidrIdentityBase is the first local identity given to a CIDR peer. Local identities live above the
// 16-bit cluster range, as Cilium's do (its local scope starts at bit 24), so they never collide with
// an allocated identity.
const cidrIdentityBase = 1 << 24

// Input is what the agent knows.
type Input struct {
	// Node is the agent's node; its addresses in the IP cache become host.
	Node string
	// Spec is the node's compiled policy.
	Spec *v1alpha1.NodePolicySpec
	// IPCache holds the entries of every IPCacheShard.
	IPCache []v1alpha1.IPCacheEntry
	// Interfaces maps "namespace/pod" to the ifindex of the pod's host-side interface; endpoints
	// without one are reported in Result.Missing and not enforced yet.
	Interfaces map[string]int
}

// Result is the desired kernel state and what could not be lowered.
type Result struct {
	// State is what datapath.Converge should make the maps equal to.
	State datapath.State
	// Missing lists endpoints ("namespace/pod") whose host-side interface was not found.
	Missing []string
	// Unsupported lists entries the dataplane cannot enforce yet, with the reason; they enforce
	// nothing (a missing allow is a deny), which is the safe side.
	Unsupported []string
	// HTTPRuleSets are the HTTP rules that judge the requests on each judged port of an endpoint, per
	// peer: requests peers send to it (ingress) and requests it sends to them (egress). A peer that an
	// L4-only rule also allows on that port gets ["any"].
	HTTPRuleSets []HTTPRuleSet
	// HTTPPorts are the local addresses and ports whose requests are judged.
	HTTPPorts []HTTPPort
	// Policies maps the policy ids in the kernel to the policies (Kind/namespace/name) they stand for,
	// to attribute counters and flow events.
	Policies map[uint32]string
}

// HTTPRuleSet is the set of normalized HTTP rules (policy.ParseHTTPRule strings) for requests from
// one peer identity (0: any peer) to one port of an endpoint. Rules are OR-ed.
type HTTPRuleSet struct {
	EndpointID   uint32
	PeerIdentity datapath.Identity
	// Port is the server's port: the endpoint's own for ingress, the peer's for egress.
	Port   uint16
	Egress bool
	Rules  []string
	// Audit: the direction's default deny comes from Audit-mode policies only, so requests the
	// rules do not allow are forwarded and reported.
	Audit bool
	// Origins names, for each rule, the policies it comes from (as PolicyEntry.Origins), so that a
	// request's event can name the policy that allowed it.
	Origins map[string][]string
}

// HTTPPort is a local address and port of an endpoint whose requests are judged at the socket.
type HTTPPort struct {
	Addr       netip.Addr
	Port       uint16
	EndpointID uint32
	// Egress: connections the endpoint opens to port on any server are judged (client side).
	Egress bool
}

// maxHTTPPortRange bounds how many ports one HTTP rule may cover: each judged port is a kernel key.
const maxHTTPPortRange = 1024

// PolicyID is the stable number that attributes kernel entries to a policy origin.
func PolicyID(origin string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(origin))
	if id := h.Sum32(); id != 0 {
		return id
	}
	return 1
}

// Lower computes the desired kernel state. It never fails as a whole: what cannot be lowered is
// reported and left out, so that the rest is enforced.
func Lower(in Input) Result {
	r := Result{
		State: datapath.State{
			Endpoints: map[int]datapath.Endpoint{},
			IPCache:   map[netip.Prefix]datapath.Identity{},
			Policy:    map[datapath.PolicyKey]datapath.PolicyEntry{},
		},
		Policies: map[uint32]string{},
	}
	l := &lowerer{in: in, r: &r, groups: map[string][]datapath.Identity{}, cidrs: map[netip.Prefix]datapath.Identity{}}
	l.ipcache()
	l.cidrIdentities()
	if in.Spec == nil {
		return r
	}
	for _, g := range in.Spec.PeerGroups {
		ids := make([]datapath.Identity, 0, len(g.Identities))
		for _, id := range g.Identities {
			ids = append(ids, datapath.Identity(id))
		}
		l.groups[g.Name] = ids
	}
	ruleSets := map[string]*v1alpha1.RuleSet{}
	for i := range in.Spec.RuleSets {
		ruleSets[in.Spec.RuleSets[i].Name] = &in.Spec.RuleSets[i]
	}
	for _, ep := range in.Spec.Endpoints {
		name := ep.Namespace + "/" + ep.Pod
		ifindex, ok := in.Interfaces[name]
		if !ok || ifindex <= 0 {
			r.Missing = append(r.Missing, name)
			continue
		}
		inRS, egRS := ruleSets[ep.IngressRuleSet], ruleSets[ep.EgressRuleSet]
		dep := datapath.Endpoint{ID: uint32(ifindex), Identity: datapath.Identity(ep.Identity)}
		if inRS == nil || egRS == nil {
			// A rule set the spec does not define: deny everything rather than guess.
			missing := ep.IngressRuleSet
			if inRS != nil {
				missing = ep.EgressRuleSet
			}
			dep.IngressEnforced, dep.EgressEnforced = true, true
			r.Unsupported = append(r.Unsupported, fmt.Sprintf("%s: rule set %q missing from the spec; denying all", name, missing))
			r.State.Endpoints[ifindex] = dep
			continue
		}
		dep.IngressEnforced, dep.IngressAudit = inRS.Enforced, inRS.Enforced && len(inRS.EnforcedBy) == 0 && len(inRS.AuditEnforcedBy) > 0
		dep.EgressEnforced, dep.EgressAudit = egRS.Enforced, egRS.Enforced && len(egRS.EnforcedBy) == 0 && len(egRS.AuditEnforcedBy) > 0
		r.State.Endpoints[ifindex] = dep
		l.direction(uint32(ifindex), datapath.Ingress, &inRS.DirectionPolicy, name)
		l.direction(uint32(ifindex), datapath.Egress, &egRS.DirectionPolicy, name)
		var addrs []netip.Addr
		for _, s := range ep.IPs {
			if a, err := netip.ParseAddr(s); err == nil {
				addrs = append(addrs, a.Unmap())
			}
		}
		l.http(uint32(ifindex), addrs, &inRS.DirectionPolicy, name, false)
		l.http(uint32(ifindex), addrs, &egRS.DirectionPolicy, name, true)
	}
	slices.Sort(r.Missing)
	slices.Sort(r.Unsupported)
	slices.SortFunc(r.HTTPRuleSets, func(a, b HTTPRuleSet) int {
		return cmp.Or(cmp.Compare(a.EndpointID, b.EndpointID), compareBool(a.Egress, b.Egress), cmp.Compare(a.Port, b.Port), cmp.Compare(a.PeerIdentity, b.PeerIdentity))
	})
	slices.SortFunc(r.HTTPPorts, func(a, b HTTPPort) int {
		return cmp.Or(cmp.Compare(a.EndpointID, b.EndpointID), compareBool(a.Egress, b.Egress), a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	return r
}

type lowerer struct {
	in     Input
	r      *Result
	groups map[string][]datapath.Identity
	cidrs  map[netip.Prefix]datapath.Identity
	// podIDs are the identities of the cluster's pods, for the cluster entity.
	podIDs []datapath.Identity
}

func (l *lowerer) ipcache() {
	// Addresses outside every known prefix are the world, told apart by family so that world-ipv4 and
	// world-ipv6 rules can be enforced (as Cilium does in dual-stack clusters).
	l.r.State.IPCache[netip.MustParsePrefix("0.0.0.0/0")] = datapath.Identity(identity.WorldIPv4)
	l.r.State.IPCache[netip.MustParsePrefix("::/0")] = datapath.Identity(identity.WorldIPv6)
	seen := map[datapath.Identity]bool{}
	for _, e := range l.in.IPCache {
		ip, err := netip.ParseAddr(e.IP)
		if err != nil {
			continue
		}
		ip = ip.Unmap()
		id := datapath.Identity(e.Identity)
		if identity.ID(e.Identity) == identity.RemoteNode && e.Node == l.in.Node {
			id = datapath.IdentityHost
		}
		l.r.State.IPCache[netip.PrefixFrom(ip, ip.BitLen())] = id
		if !identity.ID(e.Identity).IsReserved() && !seen[id] {
			seen[id] = true
			l.podIDs = append(l.podIDs, id)
		}
	}
	slices.Sort(l.podIDs)
}

// cidrIdentities gives every CIDR a policy names its own local identity, in sorted order so that the
// numbers are stable while the set of CIDRs is.
func (l *lowerer) cidrIdentities() {
	if l.in.Spec == nil {
		return
	}
	var prefixes []netip.Prefix
	for _, rs := range l.in.Spec.RuleSets {
		for _, e := range rs.Entries {
			if p, ok := strings.CutPrefix(e.Peer, "cidr:"); ok {
				if pfx, err := netip.ParsePrefix(p); err == nil {
					prefixes = append(prefixes, pfx.Masked())
				}
			}
		}
	}
	slices.SortFunc(prefixes, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	prefixes = slices.Compact(prefixes)
	for i, p := range prefixes {
		id := datapath.Identity(cidrIdentityBase + i)
		l.cidrs[p] = id
		// A pod or node address inside the prefix keeps its own, longer, entry: CIDR rules match only
		// addresses outside the cluster.
		if _, taken := l.r.State.IPCache[p]; !taken {
			l.r.State.IPCache[p] = id
		}
	}
}

// peers returns the identities an entry's peer stands for; nil with a reason when it cannot be lowered.
func (l *lowerer) peers(peer string) ([]datapath.Identity, string) {
	kind, val, _ := strings.Cut(peer, ":")
	switch kind {
	case "any":
		return []datapath.Identity{datapath.IdentityAny}, ""
	case "group":
		ids, ok := l.groups[val]
		if !ok {
			return nil, "peer group " + val + " missing from the spec"
		}
		return ids, ""
	case "identity":
		n, err := strconv.ParseUint(val, 10, 32)
		if err != nil {
			return nil, "bad identity " + val
		}
		return []datapath.Identity{datapath.Identity(n)}, ""
	case "cidr":
		p, err := netip.ParsePrefix(val)
		if err != nil {
			return nil, "bad prefix " + val
		}
		// The prefix's own identity and those of the longer prefixes inside it: the IP cache gives an
		// address the identity of its longest prefix.
		var ids []datapath.Identity
		for q, id := range l.cidrs {
			if q.Bits() >= p.Bits() && p.Contains(q.Addr()) {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		return ids, ""
	case "entity":
		return l.entity(val)
	case "fqdn":
		return nil, "toFQDNs peers are not resolved by the agent yet"
	}
	return nil, "unknown peer kind " + kind
}

func (l *lowerer) entity(name string) ([]datapath.Identity, string) {
	world := func(bits int) []datapath.Identity {
		var ids []datapath.Identity
		switch bits {
		case 0:
			ids = []datapath.Identity{datapath.IdentityWorld, datapath.Identity(identity.WorldIPv4), datapath.Identity(identity.WorldIPv6)}
		case 32:
			ids = []datapath.Identity{datapath.Identity(identity.WorldIPv4)}
		case 128:
			ids = []datapath.Identity{datapath.Identity(identity.WorldIPv6)}
		}
		for p, id := range l.cidrs {
			if bits == 0 || p.Addr().BitLen() == bits {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		return ids
	}
	switch v1alpha1.Entity(name) {
	case v1alpha1.EntityAll:
		return []datapath.Identity{datapath.IdentityAny}, ""
	case v1alpha1.EntityNone:
		return nil, ""
	case v1alpha1.EntityWorld:
		return world(0), ""
	case v1alpha1.EntityWorldIPv4:
		return world(32), ""
	case v1alpha1.EntityWorldIPv6:
		return world(128), ""
	case v1alpha1.EntityCluster:
		ids := slices.Clone(l.podIDs)
		for _, r := range []identity.ID{identity.Host, identity.RemoteNode, identity.Init, identity.Health, identity.Unmanaged, identity.KubeAPIServer, identity.Ingress} {
			ids = append(ids, datapath.Identity(r))
		}
		slices.Sort(ids)
		return ids, ""
	}
	if id, ok := identity.ReservedByName(name); ok {
		return []datapath.Identity{datapath.Identity(id)}, ""
	}
	return nil, "unknown entity " + name
}

func protocols(p string) ([]datapath.Protocol, bool) {
	switch p {
	case "TCP":
		return []datapath.Protocol{datapath.ProtocolTCP}, true
	case "UDP":
		return []datapath.Protocol{datapath.ProtocolUDP}, true
	case "SCTP":
		return []datapath.Protocol{datapath.Protocol(132)}, true
	case "ANY", "":
		return []datapath.Protocol{datapath.ProtocolAny}, true
	}
	return nil, false
}

func portRange(s string) (uint16, uint16, error) {
	if s == "*" || s == "" || s == "0" {
		return 0, 0, nil
	}
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return 0, 0, fmt.Errorf("bad port %q", s)
	}
	if !isRange {
		return uint16(a), uint16(a), nil
	}
	b, err := strconv.ParseUint(hi, 10, 16)
	if err != nil || b < a {
		return 0, 0, fmt.Errorf("bad port range %q", s)
	}
	return uint16(a), uint16(b), nil
}

func (l *lowerer) direction(epID uint32, dir datapath.Direction, dp *v1alpha1.DirectionPolicy, ep string) {
	for _, e := range dp.Entries {
		if e.Audit && e.Action != "Deny" && len(dp.EnforcedBy) > 0 {
			// An Audit policy's allow never opens what an Enforce policy's default deny closes; in a
			// single kernel lookup it could only hide that deny, so it is left out. (Where default
			// deny comes from Audit policies alone, the allow stays: it silences the audit report.)
			continue
		}
		ids, why := l.peers(e.Peer)
		if why != "" {
			l.r.Unsupported = append(l.r.Unsupported, fmt.Sprintf("%s %s %s %s/%s: %s", ep, dir, e.Action, e.Protocol, e.Ports, why))
			continue
		}
		protos, ok := protocols(e.Protocol)
		if !ok {
			l.r.Unsupported = append(l.r.Unsupported, fmt.Sprintf("%s %s: unknown protocol %q", ep, dir, e.Protocol))
			continue
		}
		lo, hi, err := portRange(e.Ports)
		if err != nil {
			l.r.Unsupported = append(l.r.Unsupported, fmt.Sprintf("%s %s: %v", ep, dir, err))
			continue
		}
		if lo != 0 && protos[0] == datapath.ProtocolAny {
			// A port with protocol ANY means that port over every protocol that has ports.
			protos = []datapath.Protocol{datapath.ProtocolTCP, datapath.ProtocolUDP}
		}
		origin := ""
		if len(e.Origins) > 0 {
			origin = slices.Min(e.Origins)
		}
		pid := PolicyID(origin)
		l.r.Policies[pid] = origin
		val := datapath.PolicyEntry{Action: datapath.Allow, Audit: e.Audit, L7: len(e.HTTP) > 0, PolicyID: pid}
		if e.Action == "Deny" {
			val.Action = datapath.Deny
		}
		for _, proto := range protos {
			if lo != 0 && !proto.HasPorts() {
				l.r.Unsupported = append(l.r.Unsupported, fmt.Sprintf("%s %s: ports on protocol %d are not matched by the dataplane", ep, dir, proto))
				continue
			}
			for _, id := range ids {
				keys, err := datapath.ExpandPorts(datapath.PolicyKey{EndpointID: epID, Direction: dir, PeerIdentity: id, Protocol: proto}, lo, hi)
				if err != nil {
					l.r.Unsupported = append(l.r.Unsupported, fmt.Sprintf("%s %s: %v", ep, dir, err))
					continue
				}
				for _, k := range keys {
					l.r.State.Policy[k] = merge(l.r.State.Policy[k], val)
				}
			}
		}
	}
}

// http computes the HTTP rule sets of an endpoint's ingress: for each TCP port that has HTTP rules,
// each peer allowed there gets the union of the HTTP rules that apply to it (its own and those for
// every peer: the kernel looks up a peer's own set first and does not fall back), or ["any"] when an
// L4-only rule also allows it there (Cilium: an L4 allow on the same port wins over L7 rules).
func (l *lowerer) http(epID uint32, addrs []netip.Addr, dp *v1alpha1.DirectionPolicy, ep string, egress bool) {
	type portPeer struct {
		port uint16
		peer datapath.Identity
	}
	rules := map[portPeer]map[string]bool{}
	l4 := map[portPeer]bool{}
	judged := map[uint16]bool{}
	origins := map[string]map[string]bool{}
	audit := dp.Enforced && len(dp.EnforcedBy) == 0 && len(dp.AuditEnforcedBy) > 0
	type allow struct {
		lo, hi uint16
		ids    []datapath.Identity
	}
	var l4allows []allow
	for _, e := range dp.Entries {
		if e.Action == "Deny" || (e.Audit && len(dp.EnforcedBy) > 0) || (e.Protocol != "TCP" && e.Protocol != "ANY") {
			continue
		}
		ids, why := l.peers(e.Peer)
		if why != "" {
			continue
		}
		lo, hi, err := portRange(e.Ports)
		if err != nil {
			continue
		}
		if len(e.HTTP) == 0 {
			l4allows = append(l4allows, allow{lo, hi, ids})
			continue
		}
		if lo == 0 || int(hi)-int(lo) >= maxHTTPPortRange {
			l.r.Unsupported = append(l.r.Unsupported, fmt.Sprintf("%s HTTP rules on ports %s: at most %d ports per rule", ep, e.Ports, maxHTTPPortRange))
			continue
		}
		for p := int(lo); p <= int(hi); p++ {
			judged[uint16(p)] = true
			for _, id := range ids {
				k := portPeer{uint16(p), id}
				if rules[k] == nil {
					rules[k] = map[string]bool{}
				}
				for _, r := range e.HTTP {
					rules[k][r] = true
					if origins[r] == nil {
						origins[r] = map[string]bool{}
					}
					for _, o := range e.Origins {
						origins[r][o] = true
					}
				}
			}
		}
	}
	for port := range judged {
		for _, a := range l4allows {
			if a.lo == 0 || (port >= a.lo && port <= a.hi) {
				for _, id := range a.ids {
					l4[portPeer{port, id}] = true
				}
			}
		}
		peers := map[datapath.Identity]bool{}
		for k := range rules {
			if k.port == port {
				peers[k.peer] = true
			}
		}
		for k := range l4 {
			if k.port == port {
				peers[k.peer] = true
			}
		}
		anyPeer := portPeer{port, datapath.IdentityAny}
		if audit {
			// Peers without rules of their own are judged by the wildcard set: in audit mode it
			// must exist (possibly empty), so that their requests are forwarded and reported.
			peers[datapath.IdentityAny] = true
		}
		for peer := range peers {
			k := portPeer{port, peer}
			var set []string
			if l4[k] || l4[anyPeer] {
				set = []string{"any"}
			} else {
				union := map[string]bool{}
				for r := range rules[k] {
					union[r] = true
				}
				for r := range rules[anyPeer] {
					union[r] = true
				}
				for r := range union {
					set = append(set, r)
				}
				slices.Sort(set)
			}
			var orig map[string][]string
			for _, r := range set {
				if len(origins[r]) > 0 {
					if orig == nil {
						orig = map[string][]string{}
					}
					orig[r] = slices.Sorted(maps.Keys(origins[r]))
				}
			}
			l.r.HTTPRuleSets = append(l.r.HTTPRuleSets, HTTPRuleSet{EndpointID: epID, PeerIdentity: peer, Port: port, Egress: egress,
				Rules: set, Audit: audit, Origins: orig})
		}
		for _, a := range addrs {
			l.r.HTTPPorts = append(l.r.HTTPPorts, HTTPPort{Addr: a, Port: port, EndpointID: epID, Egress: egress})
		}
	}
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

// merge combines two entries for one key: a deny beats an allow (and an enforced deny an audited
// one), and an L4-only allow beats an L7 allow, as the compiler's semantics say.
func merge(old, add datapath.PolicyEntry) datapath.PolicyEntry {
	if old.Action == 0 {
		return add
	}
	switch {
	case old.Action == datapath.Deny && add.Action == datapath.Deny:
		if !add.Audit {
			old.Audit, old.PolicyID = false, add.PolicyID
		}
		old.OverAllow = old.OverAllow || add.OverAllow
		return old
	case old.Action == datapath.Deny:
		// An audited deny over an allow of the same key: the enforcing view allows, the audit reports.
		old.OverAllow = old.OverAllow || (old.Audit && add.Action == datapath.Allow)
		return old
	case add.Action == datapath.Deny:
		add.OverAllow = add.Audit
		return add
	}
	if !add.L7 && old.L7 {
		return add
	}
	return old
}

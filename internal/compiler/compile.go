package compiler

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/identity"
	"github.com/portcullis-dev/portcullis/internal/policy"
)

// resolvedPort is a port range after named ports are resolved.
type resolvedPort struct {
	proto  string
	lo, hi uint16
	l7     *policy.L7
}

func portsText(lo, hi uint16) string {
	switch {
	case lo == 0 && hi == 65535:
		return "*"
	case lo == hi:
		return strconv.Itoa(int(lo))
	}
	return strconv.Itoa(int(lo)) + "-" + strconv.Itoa(int(hi))
}

type entryKey struct {
	peer, proto string
	lo, hi      uint16
	deny, audit bool
}

type entryAcc struct {
	l7      *policy.L7
	origins []string
}

// fragment is one policy's contribution to one direction: its entries, with named ports resolved,
// in the order of its rules, peers and ports, and the peer groups they name.
type fragment struct {
	items  []fragItem
	groups []*selEntry
}

type fragItem struct {
	key entryKey
	l7  *policy.L7
}

// fragmentOf returns p's contribution to a direction, cached on p unless it depends on the
// endpoint's named ports.
func (c *Compiler) fragmentOf(p *cpolicy, egress bool, named map[string]NamedPort) *fragment {
	switch {
	case egress && p.egFrag != nil:
		return p.egFrag
	case !egress && p.inFrag != nil:
		return p.inFrag
	}
	tmpls := p.ingress
	if egress {
		tmpls = p.egress
	}
	f := &fragment{}
	for _, t := range tmpls {
		ports := c.resolvePorts(t.ports, egress, named)
		for _, pr := range t.peers {
			if pr.group != nil && !slices.Contains(f.groups, pr.group) {
				f.groups = append(f.groups, pr.group)
			}
			for _, rp := range ports {
				k := entryKey{peer: pr.text, proto: rp.proto, lo: rp.lo, hi: rp.hi, deny: t.deny, audit: p.norm.Audit}
				f.items = append(f.items, fragItem{key: k, l7: rp.l7})
			}
		}
	}
	switch {
	case egress:
		p.egFrag = f
	case !p.usesIngressNamed:
		p.inFrag = f
	}
	return f
}

// compileDir merges the contributions of the policies to one direction into a rule set. The
// policies are sorted by origin, so that the result does not depend on the order of changes.
func (c *Compiler) compileDir(pols []*cpolicy, egress bool, named map[string]NamedPort) *dirSet {
	e := &dirSet{policies: pols}
	d := &e.rs.DirectionPolicy
	accs := map[entryKey]*entryAcc{}
	var groups []*selEntry
	for _, p := range pols {
		dd := p.norm.DefaultDenyIngress
		if egress {
			dd = p.norm.DefaultDenyEgress
		}
		if dd {
			d.Enforced = true
			if p.norm.Audit {
				d.AuditEnforcedBy = append(d.AuditEnforcedBy, p.origin)
			} else {
				d.EnforcedBy = append(d.EnforcedBy, p.origin)
			}
		}
		f := c.fragmentOf(p, egress, named)
		groups = append(groups, f.groups...)
		for _, it := range f.items {
			a := accs[it.key]
			if a == nil {
				a = &entryAcc{l7: it.l7}
				accs[it.key] = a
			} else if !it.key.deny {
				a.l7 = policy.MergeL7(a.l7, it.l7)
			}
			a.origins = append(a.origins, p.origin)
		}
	}
	keys := slices.SortedFunc(maps.Keys(accs), func(a, b entryKey) int {
		return cmp.Or(strings.Compare(a.peer, b.peer), strings.Compare(a.proto, b.proto),
			cmp.Compare(a.lo, b.lo), cmp.Compare(a.hi, b.hi), boolCmp(a.deny, b.deny), boolCmp(a.audit, b.audit))
	})
	if len(keys) > 0 {
		d.Entries = make([]v1alpha1.PolicyEntry, 0, len(keys))
	}
	for _, k := range keys {
		a := accs[k]
		pe := v1alpha1.PolicyEntry{Peer: k.peer, Protocol: k.proto, Ports: portsText(k.lo, k.hi), Action: "Allow", Audit: k.audit}
		if k.deny {
			pe.Action = "Deny"
		} else if a.l7 != nil {
			pe.HTTP, pe.DNS = a.l7.HTTP, a.l7.DNS
		}
		slices.Sort(a.origins)
		pe.Origins = slices.Compact(a.origins)
		d.Entries = append(d.Entries, pe)
	}
	slices.SortFunc(groups, func(a, b *selEntry) int { return strings.Compare(a.name, b.name) })
	e.groups = slices.Compact(groups)
	e.hash = c.directionHash(d)
	prefix := "in-"
	if egress {
		prefix = "eg-"
	}
	e.rs.Name = prefix + e.hash[:12]
	return e
}

// directionHash hashes the content of a direction, name excluded.
func (c *Compiler) directionHash(d *v1alpha1.DirectionPolicy) string {
	w := hashInput{b: c.hashBuf[:0]}
	defer func() { c.hashBuf = w.b }()
	w.flag(d.Enforced)
	w.list(d.EnforcedBy)
	w.list(d.AuditEnforcedBy)
	w.count(len(d.Entries))
	for i := range d.Entries {
		pe := &d.Entries[i]
		w.str(pe.Peer)
		w.str(pe.Protocol)
		w.str(pe.Ports)
		w.str(pe.Action)
		w.flag(pe.Audit)
		w.list(pe.HTTP)
		w.list(pe.DNS)
		w.list(pe.Origins)
	}
	return w.sum()
}

// hashInput serializes content for hashing without reflection: every string and list is prefixed
// with its length, so that distinct contents give distinct inputs.
type hashInput struct{ b []byte }

func (w *hashInput) count(n int) { w.b = binary.BigEndian.AppendUint64(w.b, uint64(n)) }

func (w *hashInput) str(s string) {
	w.count(len(s))
	w.b = append(w.b, s...)
}

func (w *hashInput) list(ss []string) {
	w.count(len(ss))
	for _, s := range ss {
		w.str(s)
	}
}

func (w *hashInput) flag(v bool) {
	if v {
		w.b = append(w.b, 1)
	} else {
		w.b = append(w.b, 0)
	}
}

// sum returns the hex SHA-256 of the input.
func (w *hashInput) sum() string {
	s := sha256.Sum256(w.b)
	return hex.EncodeToString(s[:])
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

var allPorts = []resolvedPort{{proto: string(v1alpha1.ProtoAny), lo: 0, hi: 65535}}

// resolvePorts turns normalized ports into ranges. Ingress named ports resolve against the
// selected endpoint's own container ports; egress named ports against every port of that name
// in the cluster (the peer's port, as Cilium does). A name that resolves to nothing contributes
// no entry.
func (c *Compiler) resolvePorts(ports []policy.Port, egress bool, named map[string]NamedPort) []resolvedPort {
	if ports == nil {
		return allPorts
	}
	out := make([]resolvedPort, 0, len(ports))
	add := func(p policy.Port, np NamedPort) {
		np = canonicalNamedPort(np)
		proto := p.Protocol
		if proto == string(v1alpha1.ProtoAny) {
			proto = np.Protocol
		} else if proto != np.Protocol {
			return
		}
		out = append(out, resolvedPort{proto: proto, lo: np.Port, hi: np.Port, l7: p.L7})
	}
	for _, p := range ports {
		switch {
		case p.Name == "":
			out = append(out, resolvedPort{proto: p.Protocol, lo: p.Low, hi: p.High, l7: p.L7})
		case egress:
			nps := slices.SortedFunc(maps.Keys(c.egressPorts[p.Name]), func(a, b NamedPort) int {
				return cmp.Or(strings.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
			})
			for _, np := range nps {
				add(p, np)
			}
		default:
			if np, ok := named[p.Name]; ok {
				add(p, np)
			}
		}
	}
	return out
}

// peerGroup returns the cached PeerGroup of a selector entry.
func (e *selEntry) peerGroup() (*v1alpha1.PeerGroup, string) {
	if e.group == nil {
		ids := make([]uint32, 0, len(e.members))
		for id := range e.members {
			ids = append(ids, uint32(id))
		}
		slices.Sort(ids)
		e.group = &v1alpha1.PeerGroup{Name: e.name, Selector: e.key, Identities: ids}
		h := sha256.New()
		h.Write([]byte(e.key))
		var b [4]byte
		for _, id := range ids {
			binary.BigEndian.PutUint32(b[:], id)
			h.Write(b[:])
		}
		e.groupHash = hex.EncodeToString(h.Sum(nil))
	}
	return e.group, e.groupHash
}

// NodePolicy returns the compiled policy of a node. A node without endpoints gets an empty spec.
// The result is shared with the compiler's cache: treat it as read-only.
func (c *Compiler) NodePolicy(node string) *v1alpha1.NodePolicySpec {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[node]
	if n == nil {
		spec := &v1alpha1.NodePolicySpec{NodeName: node}
		_, spec.ContentHash = groupsAndHash(c.baseHash(node, nil, c.endpointsHash(nil), nil, nil), nil)
		return spec
	}
	if n.spec != nil && !n.stale {
		if n.groupsStale {
			spec := *n.spec
			spec.PeerGroups, spec.ContentHash = groupsAndHash(n.baseHash, n.groupList)
			n.spec, n.groupsStale = &spec, false
		}
		return n.spec
	}
	spec := &v1alpha1.NodePolicySpec{NodeName: node}
	if n.sorted == nil {
		n.sorted = slices.SortedFunc(maps.Values(n.endpoints), func(a, b *cendpoint) int {
			return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
		})
		n.epsHash = c.endpointsHash(n.sorted)
	}
	sets := map[*dirSet]struct{}{}
	groups := map[*selEntry]struct{}{}
	c.rank()
	polMarks := make([]bool, len(c.byRank)) // by rank
	seenIDs := map[identity.ID]struct{}{}
	addSet := func(e *dirSet) {
		if _, ok := sets[e]; !ok {
			sets[e] = struct{}{}
			for _, g := range e.groups {
				groups[g] = struct{}{}
			}
		}
	}
	spec.Endpoints = make([]v1alpha1.NodeEndpoint, 0, len(n.sorted))
	for _, ep := range n.sorted {
		in, eg, ps := c.ruleSetsFor(ep)
		addSet(in)
		addSet(eg)
		if _, seen := seenIDs[ep.Identity]; !seen {
			seenIDs[ep.Identity] = struct{}{}
			for _, p := range ps {
				polMarks[p.rank] = true
			}
		}
		spec.Endpoints = append(spec.Endpoints, v1alpha1.NodeEndpoint{Namespace: ep.Namespace, Pod: ep.Name, IPs: ep.ips,
			Identity: uint32(ep.Identity), IngressRuleSet: in.rs.Name, EgressRuleSet: eg.rs.Name})
	}
	// Rule sets compiled from different policies may have the same content, and then the same name.
	setList := slices.SortedFunc(maps.Keys(sets), func(a, b *dirSet) int { return strings.Compare(a.rs.Name, b.rs.Name) })
	setList = slices.CompactFunc(setList, func(a, b *dirSet) bool { return a.rs.Name == b.rs.Name })
	spec.RuleSets = make([]v1alpha1.RuleSet, 0, len(setList))
	rsHashes := make([]string, 0, len(setList))
	for _, e := range setList {
		spec.RuleSets = append(spec.RuleSets, e.rs)
		rsHashes = append(rsHashes, e.hash)
	}
	var pols []*cpolicy
	for rank, marked := range polMarks {
		if marked {
			pols = append(pols, c.byRank[rank])
		}
	}
	if len(pols) > 0 {
		spec.Policies = make([]v1alpha1.PolicyReference, 0, len(pols))
	}
	for _, p := range pols {
		spec.Policies = append(spec.Policies, p.ref)
	}
	n.baseHash = c.baseHash(node, pols, n.epsHash, spec.Endpoints, rsHashes)
	n.groupList = slices.SortedFunc(maps.Keys(groups), func(a, b *selEntry) int { return strings.Compare(a.name, b.name) })
	spec.PeerGroups, spec.ContentHash = groupsAndHash(n.baseHash, n.groupList)
	// Record which groups this node uses, so that a change of their members marks it.
	for g := range n.groups {
		if _, ok := groups[g]; !ok {
			delete(g.nodes, node)
		}
	}
	for g := range groups {
		g.nodes[node] = struct{}{}
	}
	n.groups = groups
	n.spec, n.stale, n.groupsStale = spec, false, false
	return spec
}

// groupsAndHash builds the peer groups of a node and the content hash of its spec.
func groupsAndHash(base string, groups []*selEntry) ([]v1alpha1.PeerGroup, string) {
	var out []v1alpha1.PeerGroup
	if len(groups) > 0 {
		out = make([]v1alpha1.PeerGroup, 0, len(groups))
	}
	h := sha256.New()
	h.Write([]byte(base))
	writeLen(h, len(groups))
	for _, g := range groups {
		pg, gh := g.peerGroup()
		out = append(out, *pg)
		h.Write([]byte(gh))
	}
	return out, hex.EncodeToString(h.Sum(nil))
}

// baseHash hashes everything in a node's spec except ContentHash and the peer groups: the node
// name, the references of the policies (in the spec's order), the endpoints and the rule sets;
// groupsAndHash completes it with the groups. Endpoints enter through epsHash (see endpointsHash)
// and the rule sets they name, rule sets and peer groups through their own content hashes,
// computed once per change, so that a node is hashed without serializing it.
func (c *Compiler) baseHash(node string, pols []*cpolicy, epsHash string, eps []v1alpha1.NodeEndpoint, rsHashes []string) string {
	w := hashInput{b: c.hashBuf[:0]}
	defer func() { c.hashBuf = w.b }()
	w.str(node)
	w.count(len(pols))
	for _, p := range pols {
		w.b = append(w.b, p.refText...)
	}
	w.str(epsHash)
	w.count(len(eps))
	for _, ep := range eps {
		w.str(ep.IngressRuleSet)
		w.str(ep.EgressRuleSet)
	}
	w.list(rsHashes)
	return w.sum()
}

// endpointsHash hashes what a node's spec says of its endpoints, in order, except the rule sets
// they name; it changes only when the endpoints do.
func (c *Compiler) endpointsHash(eps []*cendpoint) string {
	w := hashInput{b: c.hashBuf[:0]}
	defer func() { c.hashBuf = w.b }()
	w.count(len(eps))
	for _, ep := range eps {
		w.str(ep.Namespace)
		w.str(ep.Name)
		w.list(ep.ips)
		w.count(int(ep.Identity))
	}
	return w.sum()
}

func writeLen(h hash.Hash, n int) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	h.Write(b[:])
}

// DirtyNodes returns the nodes whose NodePolicy may have changed since the previous call, sorted,
// and forgets them. A node that lost its last endpoint is listed once; its NodePolicy is then empty.
func (c *Compiler) DirtyNodes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := slices.Sorted(maps.Keys(c.dirty))
	clear(c.dirty)
	for _, n := range c.nodes {
		n.listed = false
	}
	return out
}

// Nodes returns the nodes that have endpoints, sorted.
func (c *Compiler) Nodes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.nodes))
}

// PolicyStatus returns the number of endpoints a policy selects and the nodes they run on (the
// nodes that must enforce it), sorted. An unknown policy selects nothing.
func (c *Compiler) PolicyStatus(ref v1alpha1.PolicyReference) (selectedEndpoints int, nodes []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.policies[policyKey{ref.Kind, ref.Namespace, ref.Name}]
	if p == nil {
		return 0, nil
	}
	set := map[string]struct{}{}
	for id := range p.epSel.members {
		for _, ep := range c.epsByID[id] {
			selectedEndpoints++
			set[ep.Node] = struct{}{}
		}
	}
	return selectedEndpoints, slices.Sorted(maps.Keys(set))
}

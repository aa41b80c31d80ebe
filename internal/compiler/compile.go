package compiler

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"hash"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
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

// compileRuleSet merges the rules of the selecting policies into one rule set.
func (c *Compiler) compileRuleSet(pols []*cpolicy, named map[string]NamedPort) *ruleSetEntry {
	e := &ruleSetEntry{policies: pols}
	groups := map[*selEntry]struct{}{}
	e.rs.Ingress = c.compileDir(pols, false, named, groups)
	e.rs.Egress = c.compileDir(pols, true, named, groups)
	e.groups = slices.SortedFunc(maps.Keys(groups), func(a, b *selEntry) int { return strings.Compare(a.name, b.name) })
	js, _ := json.Marshal(e.rs)
	sum := sha256.Sum256(js)
	e.hash = hex.EncodeToString(sum[:])
	e.rs.Name = "rs-" + e.hash[:12]
	return e
}

func (c *Compiler) compileDir(pols []*cpolicy, egress bool, named map[string]NamedPort, groups map[*selEntry]struct{}) v1alpha1.DirectionPolicy {
	var d v1alpha1.DirectionPolicy
	accs := map[entryKey]*entryAcc{}
	for _, p := range pols {
		dd, tmpls := p.norm.DefaultDenyIngress, p.ingress
		if egress {
			dd, tmpls = p.norm.DefaultDenyEgress, p.egress
		}
		if dd {
			d.Enforced = true
			if p.norm.Audit {
				d.AuditEnforcedBy = append(d.AuditEnforcedBy, p.origin)
			} else {
				d.EnforcedBy = append(d.EnforcedBy, p.origin)
			}
		}
		for _, t := range tmpls {
			ports := c.resolvePorts(t.ports, egress, named)
			for _, pr := range t.peers {
				if pr.group != nil {
					groups[pr.group] = struct{}{}
				}
				for _, rp := range ports {
					k := entryKey{peer: pr.text, proto: rp.proto, lo: rp.lo, hi: rp.hi, deny: t.deny, audit: p.norm.Audit}
					a := accs[k]
					if a == nil {
						a = &entryAcc{l7: rp.l7}
						accs[k] = a
					} else if !t.deny {
						a.l7 = policy.MergeL7(a.l7, rp.l7)
					}
					a.origins = append(a.origins, p.origin)
				}
			}
		}
	}
	keys := slices.SortedFunc(maps.Keys(accs), func(a, b entryKey) int {
		return cmp.Or(strings.Compare(a.peer, b.peer), strings.Compare(a.proto, b.proto),
			cmp.Compare(a.lo, b.lo), cmp.Compare(a.hi, b.hi), boolCmp(a.deny, b.deny), boolCmp(a.audit, b.audit))
	})
	d.Entries = make([]v1alpha1.PolicyEntry, 0, len(keys))
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
	if len(d.Entries) == 0 {
		d.Entries = nil
	}
	return d
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
		_, spec.ContentHash = groupsAndHash(baseHash(spec, nil), nil)
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
	eps := slices.SortedFunc(maps.Values(n.endpoints), func(a, b *Endpoint) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	rsByName := map[string]*ruleSetEntry{}
	groups := map[*selEntry]struct{}{}
	pols := map[*cpolicy]struct{}{}
	spec.Endpoints = make([]v1alpha1.NodeEndpoint, 0, len(eps))
	for _, ep := range eps {
		rs := c.ruleSetFor(ep)
		if rsByName[rs.rs.Name] == nil {
			rsByName[rs.rs.Name] = rs
			for _, g := range rs.groups {
				groups[g] = struct{}{}
			}
			for _, p := range rs.policies {
				pols[p] = struct{}{}
			}
		}
		ips := make([]string, len(ep.IPs))
		for i, ip := range ep.IPs {
			ips[i] = ip.String()
		}
		slices.Sort(ips)
		spec.Endpoints = append(spec.Endpoints, v1alpha1.NodeEndpoint{Namespace: ep.Namespace, Pod: ep.Name, IPs: ips, Identity: uint32(ep.Identity), RuleSet: rs.rs.Name})
	}
	rsNames := slices.Sorted(maps.Keys(rsByName))
	rsHashes := make([]string, 0, len(rsNames))
	for _, name := range rsNames {
		spec.RuleSets = append(spec.RuleSets, rsByName[name].rs)
		rsHashes = append(rsHashes, rsByName[name].hash)
	}
	for _, p := range slices.SortedFunc(maps.Keys(pols), func(a, b *cpolicy) int { return strings.Compare(a.origin, b.origin) }) {
		spec.Policies = append(spec.Policies, p.ref)
	}
	n.baseHash = baseHash(spec, rsHashes)
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

// baseHash hashes everything in spec except ContentHash and the peer groups; groupsAndHash
// completes it with the groups. Rule sets and peer groups enter through their own content hashes,
// computed once per change, so that a node is hashed without serializing it.
func baseHash(spec *v1alpha1.NodePolicySpec, rsHashes []string) string {
	h := sha256.New()
	w := func(s string) {
		writeLen(h, len(s))
		h.Write([]byte(s))
	}
	w(spec.NodeName)
	writeLen(h, len(spec.Policies))
	for _, p := range spec.Policies {
		w(p.Kind)
		w(p.Namespace)
		w(p.Name)
		w(strconv.FormatInt(p.Generation, 10))
	}
	writeLen(h, len(spec.Endpoints))
	for _, ep := range spec.Endpoints {
		w(ep.Namespace)
		w(ep.Pod)
		w(strings.Join(ep.IPs, ","))
		w(strconv.FormatUint(uint64(ep.Identity), 10))
		w(ep.RuleSet)
	}
	writeLen(h, len(rsHashes))
	for _, s := range rsHashes {
		w(s)
	}
	return hex.EncodeToString(h.Sum(nil))
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

package compiler

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/identity"
	"github.com/portcullis-dev/portcullis/internal/policy"
)

// ErrInvalidPolicy is wrapped by SetPolicy errors for a policy that fails validation.
var ErrInvalidPolicy = errors.New("invalid policy")

// Compiler compiles policies for the endpoints of each node. It is safe for concurrent use: every
// method takes one lock. The specs NodePolicy returns are shared with the compiler's cache and
// must be treated as read-only (DeepCopy one before changing it).
type Compiler struct {
	mu sync.Mutex

	policies map[policyKey]*cpolicy
	nextID   int
	// byRank are the policies in the order of origins (each policy's rank is its index); valid when
	// ranked.
	byRank []*cpolicy
	ranked bool

	idents     map[identity.ID]*cident
	identsByNS map[string]map[identity.ID]*cident

	sels     map[string]*selEntry
	selsByNS map[string]map[*selEntry]struct{}
	selsAll  map[*selEntry]struct{} // selectors not limited to listed namespaces

	endpoints map[epKey]*cendpoint
	epsByID   map[identity.ID]map[epKey]*cendpoint
	nodes     map[string]*cnode
	dirty     map[string]struct{}

	// egressPorts indexes every endpoint's named ports: name → port → number of endpoints.
	egressPorts map[string]map[NamedPort]int
	// egressNamedUsers are the policies whose egress rules use a named port, by name.
	egressNamedUsers map[string]map[*cpolicy]struct{}

	// ruleSets are the compiled rule sets of one direction, by direction, selecting policies and
	// (for ingress rules with named ports) the endpoint's named ports.
	ruleSets map[string]*dirSet

	// hashBuf is scratch space for the content hashes, kept to spare allocations.
	hashBuf []byte
}

type policyKey struct{ kind, namespace, name string }

type epKey struct{ namespace, name string }

// New returns an empty Compiler.
func New(_ Options) *Compiler {
	return &Compiler{
		policies:         map[policyKey]*cpolicy{},
		idents:           map[identity.ID]*cident{},
		identsByNS:       map[string]map[identity.ID]*cident{},
		sels:             map[string]*selEntry{},
		selsByNS:         map[string]map[*selEntry]struct{}{},
		selsAll:          map[*selEntry]struct{}{},
		endpoints:        map[epKey]*cendpoint{},
		epsByID:          map[identity.ID]map[epKey]*cendpoint{},
		nodes:            map[string]*cnode{},
		dirty:            map[string]struct{}{},
		egressPorts:      map[string]map[NamedPort]int{},
		egressNamedUsers: map[string]map[*cpolicy]struct{}{},
		ruleSets:         map[string]*dirSet{},
	}
}

// cpolicy is a validated, normalized policy with its selectors resolved to cache entries.
type cpolicy struct {
	key    policyKey
	ref    v1alpha1.PolicyReference
	origin string
	id     int
	rank   int // position in the order of origins; valid when the compiler is ranked
	// refText is ref serialized for the content hash of NodePolicies.
	refText []byte
	norm    policy.NormalizedPolicy
	normJS  string

	epSel    *selEntry
	peerSels []*selEntry

	ingress, egress  []tmpl
	usesIngressNamed bool
	egressNamed      []string
	// hasIngress and hasEgress say whether the policy contributes to the direction at all (a
	// default-deny or a rule); a rule set of a direction is compiled from the policies that do.
	hasIngress, hasEgress bool
	// inFrag and egFrag are the policy's compiled contributions to each direction; nil when not
	// computed yet. inFrag stays nil when ingress rules use named ports (they depend on the
	// endpoint); egFrag is dropped when the cluster's named ports it resolves change.
	inFrag, egFrag *fragment

	cacheKeys map[string]struct{}
}

// tmpl is one rule of a policy with its peers resolved to entry peer strings.
type tmpl struct {
	deny  bool
	peers []peerRef
	ports []policy.Port // nil: every port
}

type peerRef struct {
	text  string
	group *selEntry
}

// selEntry is a scoped peer or endpoint selector and the identities it matches.
type selEntry struct {
	key     string
	name    string
	sel     policy.Selector
	nss     []string
	nsLimit bool
	refs    int

	members    map[identity.ID]struct{}
	group      *v1alpha1.PeerGroup // cached, nil when members changed
	groupHash  string
	epPolicies map[*cpolicy]struct{}
	nodes      map[string]struct{} // nodes whose last assembled spec lists the group
}

type cident struct {
	id       identity.ID
	labels   identity.Labels
	lmap     map[string]string
	ns       string
	memberOf map[*selEntry]struct{}

	// The selecting policies, sorted by origin, all of them and those that contribute to each
	// direction, with the rule set cache keys of the directions; valid when polsValid.
	pols           []*cpolicy
	inPols, egPols []*cpolicy
	inKey, egKey   string
	inNamed        bool // an ingress policy uses named ports: the key needs the endpoint's
	polsValid      bool
	// inSet and egSet are the rule sets of the keys, once looked up; inSet stays nil when inNamed.
	// They are valid with the policies: a rule set leaves the cache only when one of its policies
	// changes, which invalidates the policies of every identity it selects.
	inSet, egSet *dirSet
}

// cendpoint is an Endpoint with what the NodePolicy needs of it precomputed.
type cendpoint struct {
	Endpoint
	node     *cnode
	ips      []string // sorted text of IPs
	namedKey string   // canonical text of NamedPorts
	// inKey is the ingress rule set cache key of the endpoint when its identity's ingress
	// policies use named ports (inKeyOf, the identity's key, followed by namedKey).
	inKey, inKeyOf string
}

type cnode struct {
	name      string
	endpoints map[epKey]*cendpoint
	sorted    []*cendpoint // endpoints by namespace and name; nil when endpoints changed
	epsHash   string       // hash of the sorted endpoints, rule sets excluded
	spec      *v1alpha1.NodePolicySpec
	stale     bool // endpoints, rule sets or policies may have changed: rebuild
	// groupsStale says only the members of some peer groups changed: refresh the groups alone.
	groupsStale bool
	groups      map[*selEntry]struct{}
	groupList   []*selEntry // groups, sorted by name
	baseHash    string      // hash of everything but the groups
	listed      bool        // in the compiler's dirty set
}

// dirSet is a compiled rule set of one direction.
type dirSet struct {
	rs       v1alpha1.RuleSet
	hash     string // of the content, name excluded
	groups   []*selEntry
	policies []*cpolicy // the policies it was compiled from
}

// refString names a policy in error messages.
func refString(ref v1alpha1.PolicyReference) string {
	if ref.Namespace == "" {
		return ref.Kind + "/" + ref.Name
	}
	return ref.Kind + "/" + ref.Namespace + "/" + ref.Name
}

// SetPolicy adds or replaces a policy. A policy that fails validation is rejected with an error
// wrapping ErrInvalidPolicy and the compiled state stays exactly as it was.
func (c *Compiler) SetPolicy(p Policy) error {
	switch {
	case p.Ref.Name == "":
		return fmt.Errorf("%w: the policy reference has no name", ErrInvalidPolicy)
	case p.Ref.Kind == policy.KindAccessPolicy && p.Ref.Namespace == "":
		return fmt.Errorf("%w: AccessPolicy %s has no namespace", ErrInvalidPolicy, p.Ref.Name)
	case p.Ref.Kind == policy.KindClusterAccessPolicy && p.Ref.Namespace != "":
		return fmt.Errorf("%w: ClusterAccessPolicy %s must not have a namespace", ErrInvalidPolicy, p.Ref.Name)
	}
	if errs := policy.Validate(p.Ref.Kind, p.Spec); len(errs) > 0 {
		return fmt.Errorf("%w %s: %w", ErrInvalidPolicy, refString(p.Ref), errs.ToAggregate())
	}
	norm := policy.Normalize(p.Spec)
	js, err := json.Marshal(norm)
	if err != nil {
		return fmt.Errorf("encode normalized policy %s: %w", refString(p.Ref), err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	key := policyKey{p.Ref.Kind, p.Ref.Namespace, p.Ref.Name}
	old := c.policies[key]
	if old != nil && old.normJS == string(js) && old.ref == p.Ref {
		return nil
	}
	np := c.buildPolicy(key, p.Ref, norm, string(js))
	if old != nil {
		c.removePolicy(old)
	}
	c.policies[key] = np
	c.ranked = false
	c.policySelectionChanged(np)
	return nil
}

// DeletePolicy removes a policy; it does nothing when the policy is unknown.
func (c *Compiler) DeletePolicy(ref v1alpha1.PolicyReference) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.policies[policyKey{ref.Kind, ref.Namespace, ref.Name}]; old != nil {
		c.removePolicy(old)
	}
}

// buildPolicy resolves a normalized policy's selectors and rule templates.
func (c *Compiler) buildPolicy(key policyKey, ref v1alpha1.PolicyReference, norm policy.NormalizedPolicy, js string) *cpolicy {
	c.nextID++
	p := &cpolicy{key: key, ref: ref, origin: policy.Origin(ref.Kind, ref.Namespace, ref.Name), id: c.nextID, norm: norm, normJS: js, cacheKeys: map[string]struct{}{}}
	namespaced := ref.Kind == policy.KindAccessPolicy
	epSel := norm.EndpointSelector
	if namespaced {
		epSel = andNamespace(epSel, ref.Namespace)
	}
	p.epSel = c.acquireSel(epSel)
	p.epSel.epPolicies[p] = struct{}{}
	build := func(rules []policy.Rule, deny, egress bool) []tmpl {
		out := make([]tmpl, 0, len(rules))
		for _, r := range rules {
			t := tmpl{deny: deny, ports: r.Ports}
			t.peers = c.peerRefs(p, r.Peers, namespaced, ref.Namespace)
			for _, pt := range r.Ports {
				if pt.Name == "" {
					continue
				}
				if egress {
					p.egressNamed = append(p.egressNamed, pt.Name)
				} else {
					p.usesIngressNamed = true
				}
			}
			out = append(out, t)
		}
		return out
	}
	p.ingress = append(build(norm.Ingress, false, false), build(norm.IngressDeny, true, false)...)
	p.egress = append(build(norm.Egress, false, true), build(norm.EgressDeny, true, true)...)
	p.hasIngress = norm.DefaultDenyIngress || len(p.ingress) > 0
	p.hasEgress = norm.DefaultDenyEgress || len(p.egress) > 0
	var w hashInput
	w.str(ref.Kind)
	w.str(ref.Namespace)
	w.str(ref.Name)
	w.count(int(ref.Generation))
	p.refText = w.b
	slices.Sort(p.egressNamed)
	p.egressNamed = slices.Compact(p.egressNamed)
	for _, n := range p.egressNamed {
		if c.egressNamedUsers[n] == nil {
			c.egressNamedUsers[n] = map[*cpolicy]struct{}{}
		}
		c.egressNamedUsers[n][p] = struct{}{}
	}
	return p
}

// andNamespace limits a selector to one namespace unconditionally (endpoint selectors of an
// AccessPolicy never reach beyond its namespace).
func andNamespace(s policy.Selector, ns string) policy.Selector {
	reqs := append(slices.Clone(s.Requirements), policy.Requirement{Key: identity.NamespaceKey, Op: policy.OpEquals, Values: []string{ns}})
	slices.SortFunc(reqs, func(a, b policy.Requirement) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		if c := strings.Compare(a.Op, b.Op); c != 0 {
			return c
		}
		return slices.Compare(a.Values, b.Values)
	})
	reqs = slices.CompactFunc(reqs, func(a, b policy.Requirement) bool {
		return a.Key == b.Key && a.Op == b.Op && slices.Equal(a.Values, b.Values)
	})
	return policy.Selector{Requirements: reqs}
}

// peerRefs turns a normalized peer set into entry peers.
func (c *Compiler) peerRefs(p *cpolicy, ps policy.Peers, namespaced bool, ns string) []peerRef {
	if ps.All {
		return []peerRef{{text: "any"}}
	}
	var out []peerRef
	for _, s := range ps.Endpoints {
		if namespaced {
			s = s.InNamespace(ns)
		}
		e := c.acquireSel(s)
		p.peerSels = append(p.peerSels, e)
		out = append(out, peerRef{text: "group:" + e.name, group: e})
	}
	for _, cidr := range ps.CIDRs {
		out = append(out, peerRef{text: "cidr:" + cidr})
	}
	for _, e := range ps.Entities {
		out = append(out, peerRef{text: "entity:" + e})
	}
	for _, f := range ps.FQDNs {
		out = append(out, peerRef{text: "fqdn:" + f})
	}
	return out
}

// removePolicy forgets a policy and marks what it touched.
func (c *Compiler) removePolicy(p *cpolicy) {
	c.policySelectionChanged(p)
	c.purgeCache(p)
	delete(c.policies, p.key)
	c.ranked = false
	delete(p.epSel.epPolicies, p)
	c.releaseSel(p.epSel)
	for _, e := range p.peerSels {
		c.releaseSel(e)
	}
	for _, n := range p.egressNamed {
		delete(c.egressNamedUsers[n], p)
		if len(c.egressNamedUsers[n]) == 0 {
			delete(c.egressNamedUsers, n)
		}
	}
}

// policySelectionChanged marks the identities a policy selects and their nodes.
func (c *Compiler) policySelectionChanged(p *cpolicy) {
	for id := range p.epSel.members {
		if ci := c.idents[id]; ci != nil {
			ci.polsValid = false
			c.touchIdentity(ci)
		}
	}
}

// purgeCache drops the compiled rule sets that include p.
func (c *Compiler) purgeCache(p *cpolicy) {
	for k := range p.cacheKeys {
		if e := c.ruleSets[k]; e != nil {
			for _, q := range e.policies {
				if q != p {
					delete(q.cacheKeys, k)
				}
			}
			delete(c.ruleSets, k)
		}
	}
	clear(p.cacheKeys)
}

func (c *Compiler) touchIdentity(ci *cident) {
	for _, ep := range c.epsByID[ci.id] {
		if !ep.node.stale || !ep.node.listed {
			c.touch(ep.Node)
		}
	}
}

func (c *Compiler) touch(node string) {
	c.dirty[node] = struct{}{}
	if n := c.nodes[node]; n != nil {
		n.stale, n.listed = true, true
	}
}

// acquireSel returns the cache entry of a selector, creating it (and computing its members) when
// no policy used it yet.
func (c *Compiler) acquireSel(s policy.Selector) *selEntry {
	key := s.String()
	if e := c.sels[key]; e != nil {
		e.refs++
		return e
	}
	sum := sha256.Sum256([]byte(key))
	e := &selEntry{key: key, name: "g-" + hex.EncodeToString(sum[:8]), sel: s, refs: 1,
		members: map[identity.ID]struct{}{}, epPolicies: map[*cpolicy]struct{}{}, nodes: map[string]struct{}{}}
	e.nss, e.nsLimit = s.Namespaces()
	c.sels[key] = e
	if e.nsLimit {
		for _, ns := range e.nss {
			if c.selsByNS[ns] == nil {
				c.selsByNS[ns] = map[*selEntry]struct{}{}
			}
			c.selsByNS[ns][e] = struct{}{}
			for _, ci := range c.identsByNS[ns] {
				c.matchInto(e, ci)
			}
		}
	} else {
		c.selsAll[e] = struct{}{}
		for _, ci := range c.idents {
			c.matchInto(e, ci)
		}
	}
	return e
}

func (c *Compiler) matchInto(e *selEntry, ci *cident) {
	if e.sel.Matches(ci.lmap) {
		e.members[ci.id] = struct{}{}
		ci.memberOf[e] = struct{}{}
	}
}

func (c *Compiler) releaseSel(e *selEntry) {
	e.refs--
	if e.refs > 0 {
		return
	}
	delete(c.sels, e.key)
	if e.nsLimit {
		for _, ns := range e.nss {
			delete(c.selsByNS[ns], e)
			if len(c.selsByNS[ns]) == 0 {
				delete(c.selsByNS, ns)
			}
		}
	} else {
		delete(c.selsAll, e)
	}
	for id := range e.members {
		if ci := c.idents[id]; ci != nil {
			delete(ci.memberOf, e)
		}
	}
	for n := range e.nodes {
		c.touch(n)
	}
}

// groupChanged records that a selector's members changed.
func (c *Compiler) groupChanged(e *selEntry, ci *cident) {
	e.group = nil
	for name := range e.nodes {
		c.dirty[name] = struct{}{}
		if n := c.nodes[name]; n != nil {
			n.groupsStale, n.listed = true, true
		}
	}
	if len(e.epPolicies) > 0 {
		ci.polsValid = false
		c.touchIdentity(ci)
	}
}

// SetIdentity adds an identity or replaces its labels. Labels are normalized (sorted, distinct).
func (c *Compiler) SetIdentity(id identity.ID, labels identity.Labels) {
	labels = labels.Normalized()
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.idents[id]; old != nil {
		if old.labels.Key() == labels.Key() {
			return
		}
		c.removeIdentity(old)
	}
	ci := &cident{id: id, labels: labels, lmap: labels.Map(), ns: labels.Namespace(), memberOf: map[*selEntry]struct{}{}}
	c.idents[id] = ci
	if c.identsByNS[ci.ns] == nil {
		c.identsByNS[ci.ns] = map[identity.ID]*cident{}
	}
	c.identsByNS[ci.ns][id] = ci
	check := func(e *selEntry) {
		if e.sel.Matches(ci.lmap) {
			e.members[id] = struct{}{}
			ci.memberOf[e] = struct{}{}
			c.groupChanged(e, ci)
		}
	}
	for e := range c.selsByNS[ci.ns] {
		check(e)
	}
	for e := range c.selsAll {
		check(e)
	}
	c.touchIdentity(ci)
}

// DeleteIdentity removes an identity. Endpoints that still carry it get the PendingRuleSet.
func (c *Compiler) DeleteIdentity(id identity.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ci := c.idents[id]; ci != nil {
		c.removeIdentity(ci)
	}
}

func (c *Compiler) removeIdentity(ci *cident) {
	for e := range ci.memberOf {
		delete(e.members, ci.id)
		c.groupChanged(e, ci)
	}
	delete(c.idents, ci.id)
	delete(c.identsByNS[ci.ns], ci.id)
	if len(c.identsByNS[ci.ns]) == 0 {
		delete(c.identsByNS, ci.ns)
	}
	c.touchIdentity(ci)
}

// SetEndpoint adds or replaces an endpoint (a pod on a node).
func (c *Compiler) SetEndpoint(ep Endpoint) {
	ce := &cendpoint{Endpoint: ep}
	ce.IPs = slices.Clone(ep.IPs)
	ce.NamedPorts = maps.Clone(ep.NamedPorts)
	ce.ips = make([]string, len(ep.IPs))
	for i, ip := range ep.IPs {
		ce.ips[i] = ip.String()
	}
	slices.Sort(ce.ips)
	ce.namedKey = namedPortsKey(ep.NamedPorts)
	c.mu.Lock()
	defer c.mu.Unlock()
	k := epKey{ep.Namespace, ep.Name}
	if old := c.endpoints[k]; old != nil {
		if endpointEqual(&old.Endpoint, &ce.Endpoint) {
			return
		}
		c.removeEndpoint(old)
	}
	c.addEndpoint(ce)
}

// DeleteEndpoint removes an endpoint; it does nothing when the endpoint is unknown.
func (c *Compiler) DeleteEndpoint(namespace, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.endpoints[epKey{namespace, name}]; old != nil {
		c.removeEndpoint(old)
	}
}

func endpointEqual(a, b *Endpoint) bool {
	return a.Node == b.Node && a.Identity == b.Identity && slices.Equal(a.IPs, b.IPs) && maps.Equal(a.NamedPorts, b.NamedPorts)
}

func (c *Compiler) addEndpoint(ep *cendpoint) {
	k := epKey{ep.Namespace, ep.Name}
	c.endpoints[k] = ep
	if c.epsByID[ep.Identity] == nil {
		c.epsByID[ep.Identity] = map[epKey]*cendpoint{}
	}
	c.epsByID[ep.Identity][k] = ep
	n := c.nodes[ep.Node]
	if n == nil {
		n = &cnode{name: ep.Node, endpoints: map[epKey]*cendpoint{}, groups: map[*selEntry]struct{}{}}
		c.nodes[ep.Node] = n
	}
	n.endpoints[k] = ep
	n.sorted = nil
	ep.node = n
	c.touch(ep.Node)
	c.indexNamedPorts(ep, 1)
}

func (c *Compiler) removeEndpoint(ep *cendpoint) {
	k := epKey{ep.Namespace, ep.Name}
	delete(c.endpoints, k)
	delete(c.epsByID[ep.Identity], k)
	if len(c.epsByID[ep.Identity]) == 0 {
		delete(c.epsByID, ep.Identity)
	}
	c.touch(ep.Node)
	if n := c.nodes[ep.Node]; n != nil {
		delete(n.endpoints, k)
		n.sorted = nil
		if len(n.endpoints) == 0 {
			for e := range n.groups {
				delete(e.nodes, n.name)
			}
			delete(c.nodes, n.name)
		}
	}
	c.indexNamedPorts(ep, -1)
}

// indexNamedPorts maintains the cluster-wide named port index that egress rules resolve against,
// and invalidates the rule sets of policies whose egress named ports gain or lose a number.
func (c *Compiler) indexNamedPorts(ep *cendpoint, delta int) {
	for name, np := range ep.NamedPorts {
		m := c.egressPorts[name]
		if m == nil {
			m = map[NamedPort]int{}
			c.egressPorts[name] = m
		}
		np = canonicalNamedPort(np)
		before := m[np]
		m[np] += delta
		if m[np] <= 0 {
			delete(m, np)
		}
		if len(m) == 0 {
			delete(c.egressPorts, name)
		}
		if (before == 0) != (m[np] == 0) {
			for p := range c.egressNamedUsers[name] {
				p.egFrag = nil
				c.purgeCache(p)
				c.policySelectionChanged(p)
			}
		}
	}
}

func canonicalNamedPort(np NamedPort) NamedPort {
	np.Protocol = strings.ToUpper(np.Protocol)
	if np.Protocol == "" {
		np.Protocol = string(v1alpha1.ProtoTCP)
	}
	return np
}

// selectingPolicies computes, once per change, the policies that select an identity (sorted by
// origin), those that contribute to each direction, and the rule set cache keys of the directions.
func (c *Compiler) selectingPolicies(ci *cident) {
	if ci.polsValid {
		return
	}
	pols := make([]*cpolicy, 0, len(ci.pols))
	for e := range ci.memberOf {
		for p := range e.epPolicies {
			pols = append(pols, p)
		}
	}
	c.sortByOrigin(pols)
	ci.pols, ci.inPols, ci.egPols, ci.inNamed = pols, make([]*cpolicy, 0, len(pols)), make([]*cpolicy, 0, len(pols)), false
	in, eg := append(make([]byte, 0, 64), "in:"...), append(make([]byte, 0, 64), "eg:"...)
	for _, p := range pols {
		if p.hasIngress {
			ci.inPols = append(ci.inPols, p)
			in = strconv.AppendInt(in, int64(p.id), 10)
			in = append(in, ',')
			ci.inNamed = ci.inNamed || p.usesIngressNamed
		}
		if p.hasEgress {
			ci.egPols = append(ci.egPols, p)
			eg = strconv.AppendInt(eg, int64(p.id), 10)
			eg = append(eg, ',')
		}
	}
	ci.inKey, ci.egKey, ci.polsValid = string(in), string(eg), true
	ci.inSet, ci.egSet = nil, nil
}

// sortByOrigin sorts policies by origin, comparing ranks rather than strings: the order of origins
// is computed once per change of the set of policies, and identities and nodes sort by it often.
func (c *Compiler) sortByOrigin(pols []*cpolicy) {
	c.rank()
	slices.SortFunc(pols, func(a, b *cpolicy) int { return cmp.Compare(a.rank, b.rank) })
}

// rank orders the policies by origin, when the set of policies changed since the last time.
func (c *Compiler) rank() {
	if c.ranked {
		return
	}
	c.byRank = slices.SortedFunc(maps.Values(c.policies), func(a, b *cpolicy) int { return strings.Compare(a.origin, b.origin) })
	for i, p := range c.byRank {
		p.rank = i
	}
	c.ranked = true
}

// pendingRuleSet is the rule set of both directions of an endpoint whose identity is not known.
var pendingRuleSet = &dirSet{rs: v1alpha1.RuleSet{Name: PendingRuleSet, DirectionPolicy: v1alpha1.DirectionPolicy{Enforced: true}}, hash: PendingRuleSet}

// ruleSetsFor returns the compiled ingress and egress rule sets of an endpoint, from the cache when
// possible, and the policies that select it.
func (c *Compiler) ruleSetsFor(ep *cendpoint) (in, eg *dirSet, pols []*cpolicy) {
	ci := c.idents[ep.Identity]
	if ci == nil {
		return pendingRuleSet, pendingRuleSet, nil
	}
	c.selectingPolicies(ci)
	if ci.egSet == nil {
		ci.egSet = c.dirSetFor(ci.egPols, true, ci.egKey, nil)
	}
	if !ci.inNamed {
		if ci.inSet == nil {
			ci.inSet = c.dirSetFor(ci.inPols, false, ci.inKey, nil)
		}
		return ci.inSet, ci.egSet, ci.pols
	}
	if ep.inKeyOf != ci.inKey {
		ep.inKey, ep.inKeyOf = ci.inKey+"|"+ep.namedKey, ci.inKey
	}
	return c.dirSetFor(ci.inPols, false, ep.inKey, ep.NamedPorts), ci.egSet, ci.pols
}

// dirSetFor returns the cached rule set of one direction, compiling it on a miss.
func (c *Compiler) dirSetFor(pols []*cpolicy, egress bool, key string, named map[string]NamedPort) *dirSet {
	if e := c.ruleSets[key]; e != nil {
		return e
	}
	e := c.compileDir(pols, egress, named)
	c.ruleSets[key] = e
	for _, p := range pols {
		p.cacheKeys[key] = struct{}{}
	}
	return e
}

func namedPortsKey(m map[string]NamedPort) string {
	keys := slices.Sorted(maps.Keys(m))
	var b strings.Builder
	for _, k := range keys {
		np := canonicalNamedPort(m[k])
		fmt.Fprintf(&b, "%s=%s/%d;", k, np.Protocol, np.Port)
	}
	return b.String()
}

package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// State is the desired content of the endpoint, IP cache and policy maps.
type State struct {
	// Endpoints by the ifindex of the pod's host-side veth.
	Endpoints map[int]Endpoint
	// IPCache maps prefixes to identities; the longest matching prefix wins and addresses matching
	// none are IdentityWorld. IPv4-mapped IPv6 prefixes are treated as their IPv4 form.
	IPCache map[netip.Prefix]Identity
	// Policy holds the entries as the policy says them; Converge adds what deny precedence needs
	// (see Resolve).
	Policy map[PolicyKey]PolicyEntry
}

// MapChanges counts the writes and deletes Converge made in one map.
type MapChanges struct {
	Added, Updated, Deleted int
}

// Total is the number of entries written or deleted.
func (c MapChanges) Total() int { return c.Added + c.Updated + c.Deleted }

// String renders the counts compactly, e.g. "+3 ~1 -0".
func (c MapChanges) String() string {
	return fmt.Sprintf("+%d ~%d -%d", c.Added, c.Updated, c.Deleted)
}

// Changes reports what Converge changed in the kernel. Nonzero changes when the desired state did not
// change mean something else modified the maps (drift).
type Changes struct {
	Endpoints, IPCache, Policy MapChanges
}

// Empty reports whether nothing was written or deleted.
func (c Changes) Empty() bool {
	return c.Endpoints.Total()+c.IPCache.Total()+c.Policy.Total() == 0
}

// String renders the changes per map.
func (c Changes) String() string {
	return fmt.Sprintf("endpoints %v, ipcache %v, policy %v", c.Endpoints, c.IPCache, c.Policy)
}

// Converge makes the endpoint, IP cache and policy maps equal to desired: it writes only entries whose
// value differs, deletes entries that are not desired, and reports what it did. The whole desired state
// is validated before anything is written. Maps are converged in the order IP cache, policy, endpoints,
// so that an endpoint starts being enforced only when its policy is in place, and within the policy map
// denies are written first and allows last, so that no intermediate state allows what neither the old
// nor the new state allows. On error the maps hold a mix of old and new state; converging again
// repairs it.
func (d *Datapath) Converge(desired State) (Changes, error) {
	var ch Changes

	denies := map[uint32]map[Direction]bool{}
	for k, e := range desired.Policy {
		if e.Action == Deny {
			if denies[k.EndpointID] == nil {
				denies[k.EndpointID] = map[Direction]bool{}
			}
			denies[k.EndpointID][k.Direction] = true
		}
	}
	endpoints := make(map[uint32]portcullisEndpointInfo, len(desired.Endpoints))
	for ifindex, e := range desired.Endpoints {
		if err := validateEndpoint(ifindex, e); err != nil {
			return ch, err
		}
		endpoints[uint32(ifindex)] = endpointValue(e, denies[e.ID])
	}
	ipcache := make(map[portcullisIpcacheKey]portcullisIpcacheValue, len(desired.IPCache))
	for p, id := range desired.IPCache {
		cp, err := canonicalPrefix(p)
		if err != nil {
			return ch, err
		}
		if id == IdentityAny {
			return ch, fmt.Errorf("prefix %v: identity 0 is the policy wildcard", p)
		}
		k := ipcacheKey(cp)
		if prev, dup := ipcache[k]; dup && prev.Identity != uint32(id) {
			return ch, fmt.Errorf("prefix %v given twice (also as an IPv4-mapped or unmasked form) with identities %d and %d", cp, prev.Identity, id)
		}
		ipcache[k] = portcullisIpcacheValue{Identity: uint32(id)}
	}
	resolved, err := Resolve(desired.Policy)
	if err != nil {
		return ch, err
	}
	auditUnderEnforcedDefaultDeny(resolved, desired.Policy, desired.Endpoints)
	policy := make(map[portcullisPolicyKey]portcullisPolicyValue, len(resolved))
	for k, e := range resolved {
		policy[policyKey(k)] = policyValue(e)
	}

	if ch.IPCache, err = convergeMap(d.objs.Ipcache, ipcache, nil); err != nil {
		return ch, fmt.Errorf("converge ip cache: %w", err)
	}
	isDeny := func(v portcullisPolicyValue) bool { return v.Action != uint8(Allow) }
	if ch.Policy, err = convergeMap(d.objs.Policy, policy, isDeny); err != nil {
		return ch, fmt.Errorf("converge policy: %w", err)
	}
	if ch.Endpoints, err = convergeMap(d.objs.Endpoints, endpoints, nil); err != nil {
		return ch, fmt.Errorf("converge endpoints: %w", err)
	}
	return ch, nil
}

// convergeMap makes m equal to want. With restrictive set, writes of restrictive values come first,
// then deletes of permissive entries, then deletes of restrictive ones, then writes of permissive values.
func convergeMap[K, V comparable](m *ebpf.Map, want map[K]V, restrictive func(V) bool) (MapChanges, error) {
	var ch MapChanges
	if restrictive == nil {
		restrictive = func(V) bool { return false }
	}

	// Read first, change after: deleting during iteration restarts or skips hash map walks.
	var (
		k       K
		v       V
		have    = make(map[K]V, len(want))
		iterErr error
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		have[k] = v
	}
	if iterErr = it.Err(); iterErr != nil {
		return ch, fmt.Errorf("read map %s: %w", m, iterErr)
	}

	type write struct {
		key   K
		value V
		added bool
	}
	var strictWrites, looseWrites []write
	for k, w := range want {
		cur, ok := have[k]
		if ok && cur == w {
			continue
		}
		wr := write{k, w, !ok}
		if restrictive(w) {
			strictWrites = append(strictWrites, wr)
		} else {
			looseWrites = append(looseWrites, wr)
		}
	}
	var looseDeletes, strictDeletes []K
	for k, cur := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if restrictive(cur) {
			strictDeletes = append(strictDeletes, k)
		} else {
			looseDeletes = append(looseDeletes, k)
		}
	}

	put := func(ws []write) error {
		for _, w := range ws {
			if err := m.Update(&w.key, &w.value, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("write %+v: %w", w.key, err)
			}
			if w.added {
				ch.Added++
			} else {
				ch.Updated++
			}
		}
		return nil
	}
	del := func(ks []K) error {
		for _, k := range ks {
			err := m.Delete(&k)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("delete %+v: %w", k, err)
			}
			ch.Deleted++
		}
		return nil
	}
	if err := put(strictWrites); err != nil {
		return ch, err
	}
	if err := del(looseDeletes); err != nil {
		return ch, err
	}
	if err := del(strictDeletes); err != nil {
		return ch, err
	}
	if err := put(looseWrites); err != nil {
		return ch, err
	}
	return ch, nil
}

// Policy returns the policy map as the kernel holds it (after Resolve), for drift checks and tools.
func (d *Datapath) Policy() (map[PolicyKey]PolicyEntry, error) {
	out := map[PolicyKey]PolicyEntry{}
	var k portcullisPolicyKey
	var v portcullisPolicyValue
	it := d.objs.Policy.Iterate()
	for it.Next(&k, &v) {
		out[policyKeyFromKernel(k)] = policyEntryFromKernel(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read policy map: %w", err)
	}
	return out, nil
}

// IPCache returns the IP cache as the kernel holds it.
func (d *Datapath) IPCache() (map[netip.Prefix]Identity, error) {
	out := map[netip.Prefix]Identity{}
	var k portcullisIpcacheKey
	var v portcullisIpcacheValue
	it := d.objs.Ipcache.Iterate()
	for it.Next(&k, &v) {
		out[prefixFromIPCacheKey(k)] = Identity(v.Identity)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read ip cache: %w", err)
	}
	return out, nil
}

// auditUnderEnforcedDefaultDeny makes an audited deny drop where the enforcing policies would drop
// anyway. An Audit policy reports what it would deny among what the Enforce policies let through; in a
// direction whose default deny comes from an Enforce policy, a packet that no allow covers is dropped
// whatever the Audit policies say. The kernel takes the first (most specific) hit, so an audited deny
// would otherwise forward such packets. For each audited deny K there: where an allow covers all of K,
// K stays audited; otherwise K becomes an enforcing deny, and each part of K that an allow does cover
// (the intersection of K and the allow, a more specific key, so looked up first) gets K's audited deny,
// unless an enforcing deny covers that part.
func auditUnderEnforcedDefaultDeny(policy, asGiven map[PolicyKey]PolicyEntry, endpoints map[int]Endpoint) {
	type epDir struct {
		id  uint32
		dir Direction
	}
	enforcing := map[epDir]bool{}
	for _, e := range endpoints {
		enforcing[epDir{e.ID, Ingress}] = e.IngressEnforced && !e.IngressAudit
		enforcing[epDir{e.ID, Egress}] = e.EgressEnforced && !e.EgressAudit
	}
	allows := map[epDir][]PolicyKey{}
	var audited []PolicyKey
	for k, e := range asGiven {
		if e.Action == Allow {
			allows[epDir{k.EndpointID, k.Direction}] = append(allows[epDir{k.EndpointID, k.Direction}], k)
		}
	}
	for k, e := range policy {
		if e.Action == Deny && e.Audit && !e.OverAllow && enforcing[epDir{k.EndpointID, k.Direction}] {
			audited = append(audited, k)
		}
	}
	// The enforcing denies as the policy gives them, before any audited deny is turned into one here.
	var enforcingDenies []PolicyKey
	for d, e := range policy {
		if e.Action == Deny && !e.Audit {
			enforcingDenies = append(enforcingDenies, d)
		}
	}
	enforcingDenyCovers := func(k PolicyKey) bool {
		return slices.ContainsFunc(enforcingDenies, func(d PolicyKey) bool {
			return d.EndpointID == k.EndpointID && d.Direction == k.Direction && covers(d, k)
		})
	}
	for _, k := range audited {
		entry := policy[k]
		as := allows[epDir{k.EndpointID, k.Direction}]
		if slices.ContainsFunc(as, func(a PolicyKey) bool { return covers(a, k) }) {
			continue
		}
		for _, a := range as {
			part, ok := intersect(a, k)
			if !ok || enforcingDenyCovers(part) {
				continue
			}
			if cur, exists := policy[part]; exists && cur.Action == Deny {
				continue
			}
			policy[part] = entry
		}
		entry.Audit = false
		policy[k] = entry
	}
}

// covers reports whether key a matches every packet key k matches.
func covers(a, k PolicyKey) bool {
	return (a.PeerIdentity == IdentityAny || a.PeerIdentity == k.PeerIdentity) &&
		(a.Protocol == ProtocolAny || a.Protocol == k.Protocol) &&
		(a.Port == 0 || a.Port == k.Port)
}

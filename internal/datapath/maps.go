package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Kernel encodings of the Go types. Every conversion is total and checked here, so that the setters and
// Converge never write a key the programs would not look up.

// endpointValue encodes an endpoint; denies says, per direction, whether the policy map holds deny
// entries for it (they must be looked up even where default deny is off).
func endpointValue(e Endpoint, denies map[Direction]bool) portcullisEndpointInfo {
	var flags portcullisEndpointFlags
	if denies[Ingress] {
		flags |= portcullisEndpointFlagsEP_F_INGRESS_DENIES
	}
	if denies[Egress] {
		flags |= portcullisEndpointFlagsEP_F_EGRESS_DENIES
	}
	if e.IngressEnforced {
		flags |= portcullisEndpointFlagsEP_F_INGRESS_ENFORCED
	}
	if e.EgressEnforced {
		flags |= portcullisEndpointFlagsEP_F_EGRESS_ENFORCED
	}
	if e.IngressAudit {
		flags |= portcullisEndpointFlagsEP_F_INGRESS_AUDIT
	}
	if e.EgressAudit {
		flags |= portcullisEndpointFlagsEP_F_EGRESS_AUDIT
	}
	return portcullisEndpointInfo{EndpointId: e.ID, Identity: uint32(e.Identity), Flags: uint32(flags)}
}

func validateEndpoint(ifindex int, e Endpoint) error {
	if ifindex <= 0 || ifindex > 1<<31-1 {
		return fmt.Errorf("endpoint %d: invalid ifindex %d", e.ID, ifindex)
	}
	if e.ID == 0 {
		return fmt.Errorf("endpoint on ifindex %d: id 0 is reserved", ifindex)
	}
	if e.Identity == IdentityAny {
		return fmt.Errorf("endpoint %d: identity 0 is the policy wildcard", e.ID)
	}
	return nil
}

// canonicalPrefix returns the prefix with host bits cleared, and IPv4-mapped IPv6 prefixes as IPv4.
func canonicalPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("invalid prefix %v", p)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("prefix %v: zones are not supported", p)
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("prefix %v spans IPv4-mapped and other IPv6 addresses", p)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func ipcacheKey(p netip.Prefix) portcullisIpcacheKey {
	// As16 gives the IPv4-mapped form ::ffff:a.b.c.d for IPv4, as the programs expect.
	k := portcullisIpcacheKey{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}
	if p.Addr().Is4() {
		k.Prefixlen += 96
	}
	return k
}

func prefixFromIPCacheKey(k portcullisIpcacheKey) netip.Prefix {
	a := netip.AddrFrom16(k.Addr)
	if a.Is4In6() && k.Prefixlen >= 96 {
		return netip.PrefixFrom(a.Unmap(), int(k.Prefixlen)-96)
	}
	return netip.PrefixFrom(a, int(k.Prefixlen))
}

func validatePolicyKey(k PolicyKey) error {
	if k.EndpointID == 0 {
		return fmt.Errorf("policy key %v: endpoint id 0 is reserved", k)
	}
	if k.Direction != Ingress && k.Direction != Egress {
		return fmt.Errorf("policy key %v: invalid direction", k)
	}
	if k.Port != 0 && !k.Protocol.HasPorts() {
		return fmt.Errorf("policy key %v: ports are matched only for TCP and UDP", k)
	}
	return nil
}

func validatePolicyEntry(k PolicyKey, e PolicyEntry) error {
	if e.Action != Allow && e.Action != Deny {
		return fmt.Errorf("policy key %v: invalid action %v", k, e.Action)
	}
	return nil
}

func policyKey(k PolicyKey) portcullisPolicyKey {
	return portcullisPolicyKey{
		EndpointId:   k.EndpointID,
		PeerIdentity: uint32(k.PeerIdentity),
		Dport:        k.Port,
		Proto:        uint8(k.Protocol),
		Direction:    uint8(k.Direction),
	}
}

func policyKeyFromKernel(k portcullisPolicyKey) PolicyKey {
	return PolicyKey{
		EndpointID:   k.EndpointId,
		Direction:    Direction(k.Direction),
		PeerIdentity: Identity(k.PeerIdentity),
		Protocol:     Protocol(k.Proto),
		Port:         k.Dport,
	}
}

func policyValue(e PolicyEntry) portcullisPolicyValue {
	var flags portcullisPolicyFlags
	if e.Audit {
		flags |= portcullisPolicyFlagsPOLICY_F_AUDIT
	}
	if e.L7 {
		flags |= portcullisPolicyFlagsPOLICY_F_L7
	}
	return portcullisPolicyValue{Action: uint8(e.Action), Flags: uint8(flags), PolicyId: e.PolicyID}
}

func policyEntryFromKernel(v portcullisPolicyValue) PolicyEntry {
	return PolicyEntry{
		Action:   Action(v.Action),
		Audit:    v.Flags&uint8(portcullisPolicyFlagsPOLICY_F_AUDIT) != 0,
		L7:       v.Flags&uint8(portcullisPolicyFlagsPOLICY_F_L7) != 0,
		PolicyID: v.PolicyId,
	}
}

// putIfDifferent writes value under key unless the map already holds exactly that value. It reports
// whether it wrote.
func putIfDifferent[K, V comparable](m *ebpf.Map, key K, value V) (bool, error) {
	var cur V
	err := m.Lookup(&key, &cur)
	switch {
	case err == nil && cur == value:
		return false, nil
	case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
		return false, err
	}
	if err := m.Update(&key, &value, ebpf.UpdateAny); err != nil {
		return false, err
	}
	return true, nil
}

// deleteIfPresent deletes key and reports whether it was there.
func deleteIfPresent[K any](m *ebpf.Map, key K) (bool, error) {
	err := m.Delete(&key)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	return err == nil, err
}

// SetEndpoint writes the endpoint for the host-side interface ifindex, unless the map already holds it.
// It reports whether it wrote. Not knowing the policy map, it makes the programs consult it in both
// directions, so that deny entries apply where default deny is off; Converge sets this precisely.
func (d *Datapath) SetEndpoint(ifindex int, e Endpoint) (bool, error) {
	if err := validateEndpoint(ifindex, e); err != nil {
		return false, err
	}
	changed, err := putIfDifferent(d.objs.Endpoints, uint32(ifindex), endpointValue(e, map[Direction]bool{Ingress: true, Egress: true}))
	if err != nil {
		return false, fmt.Errorf("write endpoint %d (ifindex %d): %w", e.ID, ifindex, err)
	}
	return changed, nil
}

// DeleteEndpoint removes the endpoint of ifindex; it reports whether there was one.
func (d *Datapath) DeleteEndpoint(ifindex int) (bool, error) {
	ok, err := deleteIfPresent(d.objs.Endpoints, uint32(ifindex))
	if err != nil {
		return false, fmt.Errorf("delete endpoint of ifindex %d: %w", ifindex, err)
	}
	return ok, nil
}

// SetIdentity maps every address in prefix to id (longest prefix wins), unless it already does.
func (d *Datapath) SetIdentity(prefix netip.Prefix, id Identity) (bool, error) {
	p, err := canonicalPrefix(prefix)
	if err != nil {
		return false, err
	}
	if id == IdentityAny {
		return false, fmt.Errorf("prefix %v: identity 0 is the policy wildcard", p)
	}
	changed, err := putIfDifferent(d.objs.Ipcache, ipcacheKey(p), portcullisIpcacheValue{Identity: uint32(id)})
	if err != nil {
		return false, fmt.Errorf("write ip cache entry %v: %w", p, err)
	}
	return changed, nil
}

// DeleteIdentity removes the IP cache entry for exactly prefix; it reports whether there was one.
func (d *Datapath) DeleteIdentity(prefix netip.Prefix) (bool, error) {
	p, err := canonicalPrefix(prefix)
	if err != nil {
		return false, err
	}
	ok, err := deleteIfPresent(d.objs.Ipcache, ipcacheKey(p))
	if err != nil {
		return false, fmt.Errorf("delete ip cache entry %v: %w", p, err)
	}
	return ok, nil
}

// SetPolicy writes one raw policy map entry, unless the map already holds it. Unlike Converge it does not
// resolve deny precedence: a deny elsewhere may then be hidden by this entry if it is an allow.
// Use Converge for whole policies; SetPolicy is for tools and tests.
func (d *Datapath) SetPolicy(k PolicyKey, e PolicyEntry) (bool, error) {
	if err := validatePolicyKey(k); err != nil {
		return false, err
	}
	if err := validatePolicyEntry(k, e); err != nil {
		return false, err
	}
	changed, err := putIfDifferent(d.objs.Policy, policyKey(k), policyValue(e))
	if err != nil {
		return false, fmt.Errorf("write policy entry %v: %w", k, err)
	}
	return changed, nil
}

// DeletePolicy removes one raw policy map entry; it reports whether there was one.
func (d *Datapath) DeletePolicy(k PolicyKey) (bool, error) {
	ok, err := deleteIfPresent(d.objs.Policy, policyKey(k))
	if err != nil {
		return false, fmt.Errorf("delete policy entry %v: %w", k, err)
	}
	return ok, nil
}

// Counters returns every counter, summed over CPUs.
func (d *Datapath) Counters() (map[CounterKey]Counter, error) {
	out := map[CounterKey]Counter{}
	var k portcullisCounterKey
	var perCPU []portcullisCounterValue
	it := d.objs.Counters.Iterate()
	for it.Next(&k, &perCPU) {
		var c Counter
		for _, v := range perCPU {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		out[CounterKey{PolicyID: k.PolicyId, Reason: Reason(k.Reason), Direction: Direction(k.Direction)}] = c
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	return out, nil
}

// FlushConntrack deletes the conntrack entries of one endpoint (all endpoints for id 0), so that its
// established connections are judged again by the current policy at their next packet. It returns how
// many entries it deleted. Without a flush, a policy change applies to new connections only.
func (d *Datapath) FlushConntrack(endpointID uint32) (int, error) {
	var k portcullisCtKey
	var v portcullisCtValue
	var doomed []portcullisCtKey
	it := d.objs.Conntrack.Iterate()
	for it.Next(&k, &v) {
		if endpointID == 0 || k.EndpointId == endpointID {
			doomed = append(doomed, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("iterate conntrack: %w", err)
	}
	n := 0
	for _, k := range doomed {
		ok, err := deleteIfPresent(d.objs.Conntrack, k)
		if err != nil {
			return n, fmt.Errorf("delete conntrack entry: %w", err)
		}
		if ok {
			n++
		}
	}
	return n, nil
}

package datapath

import "fmt"

// The kernel looks a packet up at six levels, most specific first, and takes the first hit:
//
//	(identity, proto, port) → (identity, proto, *) → (identity, *, *)
//	→ (*, proto, port) → (*, proto, *) → (*, *, *)
//
// Deny must win over allow whatever their specificity, which first-hit alone does not give: an allow for
// (identity 7, TCP, *) is found before a deny for (*, TCP, 22). Resolve closes the entry set under
// intersection so that first-hit is right: whenever an entry X and a stronger entry Y can match the same
// packet, the key X∩Y (each field taken from whichever of X and Y is specific) holds an entry at least as
// strong as Y. X∩Y is as specific as X in every field, and a key that is specific in a superset of
// another key's fields is always looked up earlier; so if the first hit F for a packet were weaker than
// some matching entry E, F∩E would be a hit found before F, or F itself would have been strengthened.
// Intersections only receive the strength of an entry that matches every packet they match, so nothing
// is denied that the rules did not deny. Strength: allow < audited deny < deny.

// rank orders entries by strength for deny precedence.
func rank(e PolicyEntry) int {
	switch {
	case e.Action == Allow:
		return 0
	case e.Audit:
		return 1
	default:
		return 2
	}
}

// intersect returns the key matching exactly the packets both keys match, if there are any.
func intersect(a, b PolicyKey) (PolicyKey, bool) {
	if a.EndpointID != b.EndpointID || a.Direction != b.Direction {
		return PolicyKey{}, false
	}
	out := a
	switch {
	case a.PeerIdentity == b.PeerIdentity, b.PeerIdentity == IdentityAny:
	case a.PeerIdentity == IdentityAny:
		out.PeerIdentity = b.PeerIdentity
	default:
		return PolicyKey{}, false
	}
	switch {
	case a.Protocol == b.Protocol, b.Protocol == ProtocolAny:
	case a.Protocol == ProtocolAny:
		out.Protocol = b.Protocol
	default:
		return PolicyKey{}, false
	}
	switch {
	case a.Port == b.Port, b.Port == 0:
	case a.Port == 0:
		out.Port = b.Port
	default:
		return PolicyKey{}, false
	}
	// A port only exists for protocols with ports: (*, *, 80) is not a key, and (*, ICMP, *) ∩ (*, TCP, 80)
	// was already ruled out by the protocol check.
	if out.Port != 0 && !out.Protocol.HasPorts() {
		return PolicyKey{}, false
	}
	return out, true
}

// stronger reports whether candidate should replace current at a key: a higher rank, or the same rank
// from a lower policy id (so that attribution does not depend on map iteration order).
func stronger(candidate, current PolicyEntry) bool {
	rc, ru := rank(candidate), rank(current)
	if rc != ru {
		return rc > ru
	}
	return candidate.Action == Deny && candidate.PolicyID < current.PolicyID
}

// Resolve returns the policy map contents that make the kernel's first-hit lookup give "deny wins":
// the input entries plus deny entries at the intersections where an allow (or an audited deny) would
// otherwise hide a stronger deny. The input is not modified. Cost is linear in allows times denies per
// endpoint and direction, plus the entries added.
func Resolve(entries map[PolicyKey]PolicyEntry) (map[PolicyKey]PolicyEntry, error) {
	out := make(map[PolicyKey]PolicyEntry, len(entries))
	type group struct {
		endpoint  uint32
		direction Direction
	}
	// Only input entries stronger than allow are intersected with: an added entry matches a subset of
	// the packets of the input entry it was derived from, so it brings nothing new as the stronger side.
	strong := map[group][]PolicyKey{}
	for k, e := range entries {
		if err := validatePolicyKey(k); err != nil {
			return nil, err
		}
		if err := validatePolicyEntry(k, e); err != nil {
			return nil, err
		}
		out[k] = e
		if rank(e) > 0 {
			g := group{k.EndpointID, k.Direction}
			strong[g] = append(strong[g], k)
		}
	}
	if len(strong) == 0 {
		return out, nil
	}

	// Worklist to a fixed point: an added key is itself an entry that may hide a stronger input deny.
	// Ranks only grow and keys come from a finite lattice, so this ends.
	work := make([]PolicyKey, 0, len(out))
	for k := range out {
		work = append(work, k)
	}
	for len(work) > 0 {
		x := work[len(work)-1]
		work = work[:len(work)-1]
		for _, y := range strong[group{x.EndpointID, x.Direction}] {
			ye := out[y]
			if rank(ye) <= rank(out[x]) {
				continue
			}
			i, ok := intersect(x, y)
			if !ok {
				continue
			}
			cur, exists := out[i]
			cand := PolicyEntry{Action: Deny, Audit: ye.Audit, PolicyID: ye.PolicyID}
			if exists && !stronger(cand, cur) {
				continue
			}
			out[i] = cand
			work = append(work, i)
		}
	}
	return out, nil
}

// ExpandPorts returns the keys for the port range [first, last] of base's protocol: one key per port,
// or a single any-port key when the range covers every port. first == 0 means any port.
func ExpandPorts(base PolicyKey, first, last uint16) ([]PolicyKey, error) {
	if first == 0 || (first == 1 && last == 65535) {
		base.Port = 0
		return []PolicyKey{base}, nil
	}
	if last == 0 {
		last = first
	}
	if last < first {
		return nil, fmt.Errorf("port range %d-%d: end before start", first, last)
	}
	if !base.Protocol.HasPorts() {
		return nil, fmt.Errorf("port range %d-%d: protocol %d has no ports", first, last, base.Protocol)
	}
	keys := make([]PolicyKey, 0, int(last)-int(first)+1)
	for p := int(first); p <= int(last); p++ {
		k := base
		k.Port = uint16(p)
		keys = append(keys, k)
	}
	return keys, nil
}

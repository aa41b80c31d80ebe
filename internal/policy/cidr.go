package policy

import (
	"net/netip"
	"slices"
)

// subtractPrefix returns p without the addresses of ex, as a minimal list of prefixes.
func subtractPrefix(p, ex netip.Prefix) []netip.Prefix {
	if !p.Overlaps(ex) {
		return []netip.Prefix{p}
	}
	if ex.Bits() <= p.Bits() {
		return nil // ex covers p
	}
	// Split p in two halves and keep subtracting from the half that holds ex.
	lo, hi := halves(p)
	if lo.Overlaps(ex) {
		return append(subtractPrefix(lo, ex), hi)
	}
	return append([]netip.Prefix{lo}, subtractPrefix(hi, ex)...)
}

// halves splits p into its two sub-prefixes one bit longer.
func halves(p netip.Prefix) (lo, hi netip.Prefix) {
	bits := p.Bits() + 1
	lo = netip.PrefixFrom(p.Addr(), bits)
	b := p.Addr().AsSlice()
	i := p.Bits() / 8
	b[i] |= 0x80 >> (p.Bits() % 8)
	a, _ := netip.AddrFromSlice(b)
	hi = netip.PrefixFrom(a, bits)
	return lo, hi
}

// SubtractPrefixes returns the addresses of p that are in none of excepts, as a minimal sorted
// list of prefixes.
func SubtractPrefixes(p netip.Prefix, excepts []netip.Prefix) []netip.Prefix {
	set := []netip.Prefix{p.Masked()}
	for _, ex := range excepts {
		var next []netip.Prefix
		for _, q := range set {
			next = append(next, subtractPrefix(q, ex.Masked())...)
		}
		set = next
	}
	return AggregatePrefixes(set)
}

// comparePrefix orders prefixes by family, address, then length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// AggregatePrefixes returns the union of ps as a minimal sorted list of masked prefixes: covered
// prefixes are dropped and sibling prefixes merged.
func AggregatePrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Masked())
	}
	for {
		slices.SortFunc(out, comparePrefix)
		// Drop prefixes covered by an earlier (shorter or equal) one.
		kept := out[:0]
		for _, p := range out {
			if n := len(kept); n > 0 && kept[n-1].Bits() <= p.Bits() && kept[n-1].Contains(p.Addr()) {
				continue
			}
			kept = append(kept, p)
		}
		out = kept
		// Merge siblings.
		merged := false
		res := out[:0]
		for i := 0; i < len(out); i++ {
			if i+1 < len(out) && out[i].Bits() > 0 && out[i].Bits() == out[i+1].Bits() {
				parent := netip.PrefixFrom(out[i].Addr(), out[i].Bits()-1).Masked()
				if lo, hi := halves(parent); lo == out[i] && hi == out[i+1] {
					res = append(res, parent)
					i++
					merged = true
					continue
				}
			}
			res = append(res, out[i])
		}
		out = res
		if !merged {
			return out
		}
	}
}

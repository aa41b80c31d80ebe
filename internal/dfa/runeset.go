package dfa

import (
	"regexp/syntax"
	"slices"
	"unicode"
)

// runeRange is the closed interval [lo, hi] of runes.
type runeRange struct{ lo, hi rune }

// rangeSet is a set of runes as sorted, disjoint, non-adjacent ranges.
type rangeSet []runeRange

// contains reports whether r is in s.
func (s rangeSet) contains(r rune) bool {
	i, j := 0, len(s)
	for i < j {
		h := int(uint(i+j) >> 1)
		switch {
		case r < s[h].lo:
			j = h
		case r > s[h].hi:
			i = h + 1
		default:
			return true
		}
	}
	return false
}

// window returns the runes of s in [lo, hi], each minus base.
func (s rangeSet) window(lo, hi, base rune) rangeSet {
	// Skip the ranges that end before lo.
	i, j := 0, len(s)
	for i < j {
		h := int(uint(i+j) >> 1)
		if s[h].hi < lo {
			i = h + 1
		} else {
			j = h
		}
	}
	var out rangeSet
	for ; i < len(s) && s[i].lo <= hi; i++ {
		out = append(out, runeRange{max(s[i].lo, lo) - base, min(s[i].hi, hi) - base})
	}
	return out
}

// normalize sorts s and merges overlapping and adjacent ranges.
func (s rangeSet) normalize() rangeSet {
	slices.SortFunc(s, func(a, b runeRange) int { return int(a.lo - b.lo) })
	out := s[:0]
	for _, r := range s {
		if n := len(out); n > 0 && r.lo <= out[n-1].hi+1 {
			out[n-1].hi = max(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// instRunes returns the runes that the rune instruction inst matches, following the rules of
// (*syntax.Inst).MatchRune: a single rune with FoldCase matches its whole simple case-folding
// orbit, and otherwise Rune holds lo, hi pairs.
func instRunes(inst *syntax.Inst) rangeSet {
	var s rangeSet
	switch inst.Op {
	case syntax.InstRuneAny:
		s = rangeSet{{0, unicode.MaxRune}}
	case syntax.InstRuneAnyNotNL:
		s = rangeSet{{0, '\n' - 1}, {'\n' + 1, unicode.MaxRune}}
	case syntax.InstRune1:
		s = rangeSet{{inst.Rune[0], inst.Rune[0]}}
	case syntax.InstRune:
		if len(inst.Rune) == 1 {
			r0 := inst.Rune[0]
			s = rangeSet{{r0, r0}}
			if syntax.Flags(inst.Arg)&syntax.FoldCase != 0 {
				for r := unicode.SimpleFold(r0); r != r0; r = unicode.SimpleFold(r) {
					s = append(s, runeRange{r, r})
				}
			}
		} else {
			for i := 0; i+1 < len(inst.Rune); i += 2 {
				s = append(s, runeRange{inst.Rune[i], inst.Rune[i+1]})
			}
		}
	}
	return s.normalize()
}

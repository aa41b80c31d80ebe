package dfa

import (
	"math/rand/v2"
	"regexp/syntax"
	"strings"
	"unicode"
	"unicode/utf8"
)

// This file holds the generators that the differential tests share: strings that match a
// pattern, near misses made from them, arbitrary bytes, walks through a compiled DFA, and random
// patterns.

// interestingBytes are bytes that sit on the edges of UTF-8 decoding and of typical classes.
var interestingBytes = []byte{
	0x00, '\n', ' ', '-', '.', '/', '0', '9', 'A', 'K', 'Z', '_', 'a', 'k', 'z', 0x7f,
	0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xce, 0xdf,
	0xe0, 0xe2, 0xed, 0xef, 0xf0, 0xf3, 0xf4, 0xf5, 0xfe, 0xff,
}

// fragments are byte strings, valid UTF-8 or not, that inputs are assembled from.
var fragments = []string{
	"a", "b", "c", "k", "K", "/", ".", "-", "0", "7", "\n", " ", "GET", "api", "v1",
	"é", "€", "α", "😀", "\u212a", "ſ", "\ufffd",
	"\xff", "\x80", "\xc0\xaf", "\xe2\x82", "\xce", "\xed\xa0\x80", "\xf0\x9f", "\xf4\x90\x80\x80",
}

// sample appends to out a string that re (a parsed, simplified pattern) matches, most of the time:
// the surrogate halves a class may list cannot be encoded and come out as U+FFFD.
func sample(rng *rand.Rand, re *syntax.Regexp, out []byte) []byte {
	switch re.Op {
	case syntax.OpLiteral:
		for _, r := range re.Rune {
			if re.Flags&syntax.FoldCase != 0 {
				for n := rng.IntN(3); n > 0; n-- {
					r = unicode.SimpleFold(r)
				}
			}
			out = utf8.AppendRune(out, r)
		}
	case syntax.OpCharClass:
		if len(re.Rune) == 0 {
			break
		}
		i := 2 * rng.IntN(len(re.Rune)/2)
		out = appendRuneOrInvalid(rng, out, pickRune(rng, re.Rune[i], re.Rune[i+1]))
	case syntax.OpAnyCharNotNL, syntax.OpAnyChar:
		r := pickRune(rng, 0, unicode.MaxRune)
		if r == '\n' && re.Op == syntax.OpAnyCharNotNL {
			r = 'x'
		}
		out = appendRuneOrInvalid(rng, out, r)
	case syntax.OpStar, syntax.OpPlus, syntax.OpQuest, syntax.OpRepeat:
		lo, hi := 0, 3
		switch re.Op {
		case syntax.OpPlus:
			lo = 1
		case syntax.OpQuest:
			hi = 1
		case syntax.OpRepeat:
			lo, hi = re.Min, re.Max
			if hi < 0 {
				hi = lo + 3
			}
		}
		for n := lo + rng.IntN(hi-lo+1); n > 0; n-- {
			out = sample(rng, re.Sub[0], out)
		}
	case syntax.OpConcat:
		for _, sub := range re.Sub {
			out = sample(rng, sub, out)
		}
	case syntax.OpAlternate:
		out = sample(rng, re.Sub[rng.IntN(len(re.Sub))], out)
	case syntax.OpCapture:
		out = sample(rng, re.Sub[0], out)
	}
	return out
}

// pickRune returns a rune in [lo, hi], often one of the ends.
func pickRune(rng *rand.Rand, lo, hi rune) rune {
	switch rng.IntN(4) {
	case 0:
		return lo
	case 1:
		return hi
	case 2:
		// Stay near the start: small runes are the interesting ones.
		return lo + rune(rng.IntN(int(min(hi-lo, 300))+1))
	}
	return lo + rune(rng.Int64N(int64(hi-lo)+1))
}

// appendRuneOrInvalid appends r, or for U+FFFD sometimes an invalid byte that reads as it.
func appendRuneOrInvalid(rng *rand.Rand, out []byte, r rune) []byte {
	if r == utf8.RuneError && rng.IntN(2) == 0 {
		return append(out, []byte{0xff, 0x80, 0xc0, 0xe2}[rng.IntN(4)])
	}
	return utf8.AppendRune(out, r)
}

// mutate returns a near miss of s: one small edit, often one that breaks a UTF-8 sequence.
func mutate(rng *rand.Rand, s []byte) []byte {
	out := append([]byte(nil), s...)
	pos := func() int { return rng.IntN(len(out) + 1) }
	b := interestingBytes[rng.IntN(len(interestingBytes))]
	if rng.IntN(4) == 0 {
		b = byte(rng.IntN(256))
	}
	switch op := rng.IntN(7); {
	case op == 0 && len(out) > 0:
		out[rng.IntN(len(out))] = b
	case op == 1:
		i := pos()
		out = append(out[:i], append([]byte{b}, out[i:]...)...)
	case op == 2 && len(out) > 0:
		i := rng.IntN(len(out))
		out = append(out[:i], out[i+1:]...)
	case op == 3:
		out = out[:pos()]
	case op == 4 && len(out) > 0:
		i := rng.IntN(len(out))
		j := i + rng.IntN(len(out)-i) + 1
		out = append(out[:j], append(append([]byte(nil), out[i:j]...), out[j:]...)...)
	case op == 5 && len(out) > 0:
		i := rng.IntN(len(out))
		if c := out[i]; c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
			out[i] ^= 0x20
		} else {
			out[i] ^= byte(1 << rng.IntN(8))
		}
	default:
		f := fragments[rng.IntN(len(fragments))]
		i := pos()
		out = append(out[:i], append([]byte(f), out[i:]...)...)
	}
	return out
}

// randomBytes returns a short input: any bytes, or fragments glued together.
func randomBytes(rng *rand.Rand) []byte {
	n := rng.IntN(10)
	var out []byte
	for range n {
		switch rng.IntN(3) {
		case 0:
			out = append(out, byte(rng.IntN(256)))
		case 1:
			out = append(out, interestingBytes[rng.IntN(len(interestingBytes))])
		default:
			out = append(out, fragments[rng.IntN(len(fragments))]...)
		}
	}
	return out
}

// walk returns the input read along a random path through d, to exercise states that random
// bytes rarely reach; it prefers paths that stay off the dead state.
func walk(rng *rand.Rand, d *DFA) []byte {
	var byClass [256][]byte
	for c := range 256 {
		byClass[d.Classes[c]] = append(byClass[d.Classes[c]], byte(c))
	}
	var out []byte
	s := int(d.Start)
	for n := rng.IntN(24); n > 0 && s != DeadState; n-- {
		cl := rng.IntN(d.NumClasses)
		for try := 0; try < 4 && d.Next[s*d.NumClasses+cl] == DeadState; try++ {
			cl = rng.IntN(d.NumClasses)
		}
		bs := byClass[cl]
		out = append(out, bs[rng.IntN(len(bs))])
		s = int(d.Next[s*d.NumClasses+cl])
	}
	return out
}

// patternAtoms are the leaves of randomPattern.
var patternAtoms = []string{
	"a", "b", "k", "/", `\.`, ".", `(?s:.)`, "[a-c]", "[^a]", "[^/]", `\d`, `\w`, `\s`, `\n`,
	"é", "€", "😀", "α", "[é-ü]", "[^é]", `\x{FFFD}`, `[\x{80}-\x{10FFFF}]`, `[^\x00-\x7f]`,
	"(?i:k)", "(?i:é)", "(?i:ab)", `\p{Greek}`, "[[:alpha:]]", "[[:^digit:]]", `[\x{10000}-\x{1F000}]`,
	`[\x{7ff}-\x{801}]`, `[\x{d7ff}-\x{e000}]`, `[^\x{FFFD}]`, "()",
}

// randomPattern returns a pattern from a small grammar of the constructs policies use.
func randomPattern(rng *rand.Rand, depth int) string {
	if depth == 0 || rng.IntN(3) == 0 {
		return patternAtoms[rng.IntN(len(patternAtoms))]
	}
	sub := func() string { return randomPattern(rng, depth-1) }
	switch rng.IntN(9) {
	case 0, 1:
		return sub() + sub()
	case 2:
		return sub() + sub() + sub()
	case 3:
		return "(" + sub() + "|" + sub() + ")"
	case 4:
		return "(?:" + sub() + ")*"
	case 5:
		return "(" + sub() + ")+"
	case 6:
		return "(?:" + sub() + ")?"
	case 7:
		lo := rng.IntN(3)
		hi := lo + rng.IntN(3)
		rep := []string{"{%d}", "{%d,}", "{%d,%d}"}[rng.IntN(3)]
		rep = strings.Replace(rep, "%d", string(rune('0'+lo)), 1)
		rep = strings.Replace(rep, "%d", string(rune('0'+hi)), 1)
		return "(?:" + sub() + ")" + rep
	default:
		return "(" + sub() + ")*?"
	}
}

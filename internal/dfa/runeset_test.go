package dfa

import (
	"regexp/syntax"
	"testing"
	"unicode"
)

func TestInstructionRuneSetsAgreeWithMatchRune(t *testing.T) {
	for _, pattern := range []string{"(?i)k", "(?i)[a-z]", "(?i)é", `\pL`, ".", "(?s).", "[^a]", "a", "[ab]", `\x{FFFD}`, "(?i)straße"} {
		re, err := syntax.Parse(pattern, syntax.Perl)
		if err != nil {
			t.Fatal(err)
		}
		prog, err := syntax.Compile(re.Simplify())
		if err != nil {
			t.Fatal(err)
		}
		for pc := range prog.Inst {
			inst := &prog.Inst[pc]
			if !isRuneInst(inst.Op) {
				continue
			}
			set := instRunes(inst)
			for r := rune(0); r <= unicode.MaxRune; r++ {
				if got, want := set.contains(r), inst.MatchRune(r); got != want {
					t.Fatalf("%q instruction %d, rune %U: set says %v, MatchRune says %v", pattern, pc, r, got, want)
				}
			}
		}
	}
}

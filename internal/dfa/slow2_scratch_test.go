package dfa

import (
	"regexp/syntax"
	"testing"
)

func TestScratchCount(t *testing.T) {
	for _, p := range []string{`(a|b)*a(a|b){9}`, `(a|b)*a(a|b){3}`, `[ab]*a[ab]{3}`} {
		re, _ := syntax.Parse(p, syntax.Perl)
		prog, _ := syntax.Compile(re.Simplify())
		a, err := determinize(prog, 1<<20)
		t.Log(p, len(a.accept), err, a.nclass)
		if len(a.accept) < 40 {
			t.Log(prog)
		}
	}
}

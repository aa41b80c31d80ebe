package dfa

import (
	"errors"
	"regexp/syntax"
	"strconv"
	"strings"
	"testing"
)

func TestPatternOverTheStateBudgetIsRejected(t *testing.T) {
	const pattern = "(a|b)*a(a|b){12}" // needs 2^13 states: it must remember the last 13 letters
	_, err := Compile(pattern, Options{})
	if !errors.Is(err, ErrTooManyStates) {
		t.Fatalf("Compile(%q) = %v, want ErrTooManyStates", pattern, err)
	}
	for _, want := range []string{pattern, "1024"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestStateBudgetCountsTheMinimalDFAIncludingTheDeadState(t *testing.T) {
	const pattern = "(a|b)*a(a|b){3}" // 16 live states plus the dead state
	d, err := Compile(pattern, Options{MaxStates: 17})
	if err != nil {
		t.Fatalf("budget 17: %v", err)
	}
	if d.NumStates() != 17 {
		t.Errorf("NumStates = %d, want 17", d.NumStates())
	}
	_, err = Compile(pattern, Options{MaxStates: 16})
	if !errors.Is(err, ErrTooManyStates) {
		t.Fatalf("budget 16: err = %v, want ErrTooManyStates", err)
	}
	for _, want := range []string{pattern, "17 states", "budget is 16"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestInvalidMaxStatesIsRejected(t *testing.T) {
	for _, n := range []int{-1, MaxTableStates + 1} {
		if _, err := Compile("a", Options{MaxStates: n}); err == nil {
			t.Errorf("MaxStates %d accepted", n)
		}
	}
}

func TestUnsupportedSyntaxIsRejectedAndNamed(t *testing.T) {
	cases := []struct{ pattern, construct string }{
		{`\bfoo`, `\b`},
		{`foo\B`, `\B`},
		{"a^b", "^"},
		{"a$b", "$"},
		{"$a", "$"},
		{"x*^a", "^"},
		{"a|b^", "^"},
		{"(^a)*", "^"},
		{"(a$)+b", "$"},
		{"(?m)^a$", "(?m)"},
		{"(?m)abc", "(?m)"},
		{"a(?m:$)", "(?m)"},
	}
	for _, c := range cases {
		t.Run(c.pattern, func(t *testing.T) {
			_, err := Compile(c.pattern, Options{})
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("Compile(%q) = %v, want ErrUnsupported", c.pattern, err)
			}
			if !strings.Contains(err.Error(), c.construct) || !strings.Contains(err.Error(), strconv.Quote(c.pattern)) {
				t.Errorf("error %q should name %q and the pattern", err, c.construct)
			}
		})
	}
}

func TestSyntaxErrorIsReportedWithThePattern(t *testing.T) {
	for _, pattern := range []string{"(", "a)|(b", "[z-a]", `\C`, "a{1001}", `\`} {
		_, err := Compile(pattern, Options{})
		var serr *syntax.Error
		if !errors.As(err, &serr) {
			t.Errorf("Compile(%q) = %v, want a *syntax.Error", pattern, err)
			continue
		}
		if errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), strconv.Quote(pattern)) {
			t.Errorf("Compile(%q) error %q should quote the pattern and not claim ErrUnsupported", pattern, err)
		}
	}
}

func TestPatternTooCostlyToDeterminizeIsRejected(t *testing.T) {
	// Every state of this pattern carries about a thousand threads, each with a residual of a
	// large class: it reaches the work bound long before the state bound.
	const pattern = `(?:\pL?){500}\pL{500}`
	_, err := Compile(pattern, Options{})
	if !errors.Is(err, ErrTooManyStates) {
		t.Fatalf("Compile(%q) = %v, want ErrTooManyStates", pattern, err)
	}
	if !strings.Contains(err.Error(), "too complex") {
		t.Errorf("error %q does not say the pattern is too complex", err)
	}
}

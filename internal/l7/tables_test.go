package l7

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/portcullis-dev/portcullis/internal/dfa"
)

func TestCellRangesAreReusedOnlyAfterQuarantine(t *testing.T) {
	tb := newTables(16, 16, 100)
	now := time.Unix(0, 0)
	tb.now = func() time.Time { return now }
	a, _ := tb.allocCells(40)
	b, _ := tb.allocCells(40)
	if a != 0 || b != 40 {
		t.Fatalf("first fit: got %d, %d", a, b)
	}
	if _, ok := tb.allocCells(30); ok {
		t.Fatal("allocated past the end of the table")
	}
	tb.pending = append(tb.pending, freed{id: 1, cells: span{a, 40}, at: now})
	tb.expire()
	if _, ok := tb.allocCells(30); ok {
		t.Fatal("reused a range still in quarantine")
	}
	now = now.Add(quarantine)
	tb.expire()
	if c, ok := tb.allocCells(30); !ok || c != 0 {
		t.Fatalf("range not reused after quarantine: %d %v", c, ok)
	}
	if !slices.Contains(tb.freeIDs, 1) {
		t.Fatal("id not reusable after quarantine")
	}
}

func TestReleasedCellRangesCoalesce(t *testing.T) {
	tb := newTables(16, 16, 90)
	x, _ := tb.allocCells(30)
	y, _ := tb.allocCells(30)
	z, _ := tb.allocCells(30)
	tb.releaseCells(span{x, 30})
	tb.releaseCells(span{z, 30})
	tb.releaseCells(span{y, 30})
	if len(tb.freeCells) != 1 || tb.freeCells[0] != (span{0, 90}) {
		t.Fatalf("free list %v, want one range of 90", tb.freeCells)
	}
}

func TestCompileRulesRejectsWhatTheKernelCannotHold(t *testing.T) {
	// Rules that differ in method cannot be merged.
	many := make([]string, MaxRules+1)
	for i := range many {
		many[i] = fmt.Sprintf(`method="M%d"`, i)
	}
	for name, rules := range map[string][]string{
		"too many rules":   many,
		"too many headers": {`header="A" header="B" header="C" header="D" header="E"`},
		"long header name": {`header="X` + stringOf('n', MaxHeaderName) + `"`},
		"bad regex":        {`path="("`},
		"unsupported":      {`path="a\\bb"`},
		"malformed text":   {`path=/x`},
	} {
		if _, err := CompileRules(rules); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	got, err := CompileRules([]string{`method="GET" path="/a" header="X-Y: z" logHeader="X-Log: 1"`, "any"})
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Method == nil || got[0].Path == nil || got[0].Host != nil || len(got[0].Headers) != 1 || got[0].Headers[0] != (HeaderRequirement{"x-y", "z"}) {
		t.Fatalf("compiled %+v", got[0])
	}
	if got[1].Method != nil || got[1].Path != nil || got[1].Host != nil || got[1].Headers != nil {
		t.Fatalf(`"any" compiled to %+v`, got[1])
	}
}

func TestRulesThatDifferOnlyInPathShareOneDFA(t *testing.T) {
	var rules []string
	for i := 0; i < 100; i++ {
		rules = append(rules, fmt.Sprintf(`method="GET" path="/api/v1/resource%d/[0-9]+"`, i))
	}
	rules = append(rules, `method="POST" path="/v1/users"`, `method="POST" path="/v1/users"`)
	got, err := CompileRules(rules)
	if err != nil {
		t.Fatalf("100 path rules for one method: %v", err)
	}
	if len(got) != 2 {
		t.Fatalf("compiled to %d rules, want 2 (one per method)", len(got))
	}
	for _, c := range []struct {
		path string
		want bool
	}{{"/api/v1/resource0/1", true}, {"/api/v1/resource99/42", true}, {"/api/v1/resource100/1", false}, {"/api/v1/resource7/x", false}, {"/v1/users", false}} {
		if m := got[0].Path.Match([]byte(c.path)); m != c.want {
			t.Errorf("merged path DFA on %s = %v, want %v", c.path, m, c.want)
		}
	}
	// A rule with any path absorbs the other paths of its method.
	got, err = CompileRules([]string{`method="GET" path="/a"`, `method="GET"`})
	if err != nil || len(got) != 1 || got[0].Path != nil {
		t.Fatalf("GET /a or GET anything: %+v, %v", got, err)
	}
}

func stringOf(c byte, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = c
	}
	return string(b)
}

// acceptSink finds an accepting state that every byte a judged value can hold leads back to, and
// only that: a wrong sink would make the kernel stop a walk early and accept what follows.
func TestAcceptSink(t *testing.T) {
	for _, c := range []struct {
		pattern string
		sink    bool
	}{
		{"/public/.*", true},
		{"/up(/.*)?", true},
		{".*", true},
		{"(?i)/API/.*", true},
		{"api\\.example\\.com(:[0-9]+)?", false},
		{"/v1/invoices/[0-9]+", false},
		{"/a", false},
		{".*x", false},
		{"/a/[^?]*", false},
		{"GET|HEAD", false},
	} {
		d, err := dfa.Compile(c.pattern, dfa.Options{})
		if err != nil {
			t.Fatal(err)
		}
		s := acceptSink(d)
		if (s != 0) != c.sink {
			t.Fatalf("%q: sink %d, want one: %v", c.pattern, s, c.sink)
		}
		if s == 0 {
			continue
		}
		if !d.Accept[s] {
			t.Fatalf("%q: sink %d does not accept", c.pattern, s)
		}
		for b := range 256 {
			if next := d.Next[int(s)*d.NumClasses+int(d.Classes[b])]; walkByte(byte(b)) && next != s {
				t.Fatalf("%q: byte %#x leads from sink %d to %d", c.pattern, b, s, next)
			}
		}
	}
}

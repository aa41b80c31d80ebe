package dfa

import (
	"fmt"
	"testing"
)

func TestEqualLanguagesCompileToIdenticalTables(t *testing.T) {
	groups := [][]string{
		{"a", "a|a", "(a)", "a{1}", "(?:a)", "[a]", "^a$", "a|a|a", "(a|a)"},
		{"[0-9]+", `\d+`, "[0-9][0-9]*", "(?:[0-9])+", "[0-9]{1,}", "[0-9]+?"},
		{"(?i)get", "[gG][eE][tT]", "GET|GET|(?i:get)"},
		{"(?i)k", "[kK\u212a]"},
		{"/a/(b|c)*/d", "/a/[bc]*/d", "/a/(b*c*)*/d"},
		{"a*", "a*a*", "(a*)*", "(a+)?"},
		{"", "^$", "(?:)", "()", "a{0}"},
		{".", `[^\n]`},
		{`[^\x00-\x{10FFFF}]`, `a[^\x00-\x{10FFFF}]`},
		{"GET|HEAD", "HEAD|GET", "(GET)|(HEAD)"},
	}
	for _, g := range groups {
		t.Run(g[0], func(t *testing.T) {
			want := mustMarshal(t, g[0])
			for _, p := range g[1:] {
				if got := mustMarshal(t, p); string(got) != string(want) {
					t.Errorf("%q and %q compile to different tables", g[0], p)
				}
			}
		})
	}
	if string(mustMarshal(t, "a")) == string(mustMarshal(t, "b")) {
		t.Error(`"a" and "b" compile to the same table`)
	}
}

func TestPatternThatMatchesNothingIsTheDeadStateAlone(t *testing.T) {
	d, err := Compile(`[^\x00-\x{10FFFF}]`, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d.NumStates() != 1 || d.Start != DeadState || d.NumClasses != 1 {
		t.Errorf("got %d states, %d classes, start %d; want 1, 1, dead", d.NumStates(), d.NumClasses, d.Start)
	}
}

func TestCompiledTablesAreMinimalAndCanonical(t *testing.T) {
	for _, pattern := range realisticPatterns {
		t.Run(pattern, func(t *testing.T) {
			d, err := Compile(pattern, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := d.validate(); err != nil {
				t.Fatalf("invalid table: %v", err)
			}
			if n := countEquivalenceClasses(d); n != d.NumStates() {
				t.Errorf("%d states but only %d distinguishable: not minimal", d.NumStates(), n)
			}
			// Every state but the dead one is reachable, numbered in breadth-first order.
			seen := map[int]bool{DeadState: true}
			order := []int{}
			if d.Start != DeadState {
				order = append(order, int(d.Start))
				seen[int(d.Start)] = true
			}
			for i := 0; i < len(order); i++ {
				if order[i] != i+1 {
					t.Fatalf("state %d is visited %dth in breadth-first order", order[i], i+1)
				}
				for c := range d.NumClasses {
					if s := int(d.Next[order[i]*d.NumClasses+c]); !seen[s] {
						seen[s] = true
						order = append(order, s)
					}
				}
			}
			if len(order)+1 != d.NumStates() {
				t.Errorf("%d states reachable, table has %d", len(order)+1, d.NumStates())
			}
			// No two classes have the same column.
			cols := map[string]int{}
			for c := range d.NumClasses {
				var col []byte
				for s := range d.NumStates() {
					col = fmt.Appendf(col, "%d,", d.Next[s*d.NumClasses+c])
				}
				if other, ok := cols[string(col)]; ok {
					t.Errorf("classes %d and %d are indistinguishable", other, c)
				}
				cols[string(col)] = c
			}
		})
	}
}

// countEquivalenceClasses counts the distinguishable states of d by naive Moore refinement,
// independently of the Hopcroft implementation.
func countEquivalenceClasses(d *DFA) int {
	n := d.NumStates()
	class := make([]int, n)
	for s := range n {
		if d.Accept[s] {
			class[s] = 1
		}
	}
	count := 0
	for {
		index := map[string]int{}
		next := make([]int, n)
		for s := range n {
			key := fmt.Sprint(class[s])
			for c := range d.NumClasses {
				key += fmt.Sprintf(",%d", class[d.Next[s*d.NumClasses+c]])
			}
			id, ok := index[key]
			if !ok {
				id = len(index)
				index[key] = id
			}
			next[s] = id
		}
		class = next
		if len(index) == count {
			return count
		}
		count = len(index)
	}
}

func TestCompileIsDeterministic(t *testing.T) {
	for _, pattern := range realisticPatterns {
		a, b := mustMarshal(t, pattern), mustMarshal(t, pattern)
		if string(a) != string(b) {
			t.Errorf("%q compiled twice gives different tables", pattern)
		}
	}
}

package policy

import (
	"slices"
	"sync"

	"github.com/portcullis-dev/portcullis/internal/dfa"
)

// maxDFAChecks bounds the memo of DFA checks; when it is full it starts over.
const maxDFAChecks = 4096

// dfaChecks memoizes whether an expression compiles to a DFA within MaxDFAStates, and whether it
// can match a request path. Validation runs on every change of a policy, and policies repeat the
// same few expressions, while building the automaton is the most expensive part of validating one.
// The result depends on the expression alone, so a memoized answer is the answer.
var dfaChecks = &dfaCheckMemo{results: map[string]dfaCheck{}}

type dfaCheckMemo struct {
	mu      sync.Mutex
	results map[string]dfaCheck
}

type dfaCheck struct {
	err error // nil: the expression fits
	// matchesPath: it matches some request path a rule with a path can allow (matchesSomePath).
	matchesPath bool
	// matchesMethod: it matches one of the methods the kernel judges (KernelMethods).
	matchesMethod bool
}

// KernelMethods are the methods the kernel judges (known_method in bpf/http_match.h; the Go
// reference framing in internal/l7's tests uses this list); a request with any other method is
// denied before the rules are read (bpf/README.md, "Scan limits").
var KernelMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}

// check returns the error of compiling expr to a DFA, or nil.
func (m *dfaCheckMemo) check(expr string) error {
	return m.get(expr).err
}

func (m *dfaCheckMemo) get(expr string) dfaCheck {
	m.mu.Lock()
	res, ok := m.results[expr]
	m.mu.Unlock()
	if ok {
		return res
	}
	d, err := dfa.Compile(expr, dfa.Options{MaxStates: MaxDFAStates})
	res = dfaCheck{err: err}
	if err == nil {
		res.matchesPath = matchesSomePath(d)
		res.matchesMethod = slices.ContainsFunc(KernelMethods, func(m string) bool { return d.Match([]byte(m)) })
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.results) >= maxDFAChecks {
		clear(m.results)
	}
	m.results[expr] = res
	return res
}

// matchesSomePath reports whether d matches some path that a rule with a path can allow: a '/', then
// visible ASCII other than '?' (the kernel matches the path up to the query) and '\', without "%2f"
// or "%5c" in any case (a path with an escaped slash matches no such rule). A breadth-first walk over
// pairs of a DFA state and how much of a "%2f" or "%5c" was just read.
func matchesSomePath(d *dfa.DFA) bool {
	const (
		plain   = iota
		percent // after a '%'
		pct2    // after "%2"
		pct5    // after "%5"
	)
	type node struct{ s, phase int }
	next := func(s int, c byte) int { return int(d.Next[s*d.NumClasses+int(d.Classes[c])]) }
	start := node{next(int(d.Start), '/'), plain}
	seen := make([]bool, d.NumStates()*4) // by s*4 + phase
	seen[start.s*4] = true
	for queue := []node{start}; len(queue) > 0; queue = queue[1:] {
		n := queue[0]
		if d.Accept[n.s] {
			return true
		}
		if n.s == dfa.DeadState {
			continue
		}
		for c := byte(0x21); c <= 0x7e; c++ {
			if c == '?' || c == '\\' || n.phase == pct2 && (c == 'f' || c == 'F') || n.phase == pct5 && (c == 'c' || c == 'C') {
				continue
			}
			phase := plain
			switch {
			case c == '%':
				phase = percent
			case n.phase == percent && c == '2':
				phase = pct2
			case n.phase == percent && c == '5':
				phase = pct5
			}
			if m := (node{next(n.s, c), phase}); !seen[m.s*4+m.phase] {
				seen[m.s*4+m.phase] = true
				queue = append(queue, m)
			}
		}
	}
	return false
}

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
	// matchesPath: it matches some request path (a '/' and then visible ASCII other than '?', the
	// bytes the kernel matches a path against).
	matchesPath bool
	// matchesMethod: it matches one of the methods the kernel judges (KernelMethods).
	matchesMethod bool
}

// KernelMethods are the methods the kernel judges; a request with any other method is denied
// before the rules are read (bpf/README.md, "Scan limits").
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
		res.matchesPath = d.MatchesSome([]byte("/"), func(c byte) bool { return c >= 0x21 && c <= 0x7e && c != '?' })
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

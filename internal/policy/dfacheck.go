package policy

import (
	"sync"

	"github.com/portcullis-dev/portcullis/internal/dfa"
)

// maxDFAChecks bounds the memo of DFA checks; when it is full it starts over.
const maxDFAChecks = 4096

// dfaChecks memoizes whether an expression compiles to a DFA within MaxDFAStates. Validation runs
// on every change of a policy, and policies repeat the same few expressions, while building the
// automaton is the most expensive part of validating one. The result depends on the expression
// alone, so a memoized answer is the answer.
var dfaChecks = &dfaCheckMemo{results: map[string]error{}}

type dfaCheckMemo struct {
	mu      sync.Mutex
	results map[string]error // nil error: the expression fits
}

// check returns the error of compiling expr to a DFA, or nil.
func (m *dfaCheckMemo) check(expr string) error {
	m.mu.Lock()
	err, ok := m.results[expr]
	m.mu.Unlock()
	if ok {
		return err
	}
	_, err = dfa.Compile(expr, dfa.Options{MaxStates: MaxDFAStates})
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.results) >= maxDFAChecks {
		clear(m.results)
	}
	m.results[expr] = err
	return err
}

// Package dfa compiles the RE2 regular expressions that policies use for HTTP method, path and host
// into minimal byte-level deterministic automata small enough to be walked by an eBPF program: a
// transition table in a BPF array map, walked one byte at a time with bpf_loop.
//
// A pattern matches the whole value, as in Cilium: the DFA for pattern p accepts a byte string b
// exactly when Go's regexp.MustCompile("^(?:" + p + ")$").Match(b) is true. The automaton works on
// the raw bytes and reproduces Go's treatment of UTF-8: a rune class becomes the UTF-8 byte
// sequences of its runes, and an invalid UTF-8 byte is read as U+FFFD (utf8.RuneError) that
// consumes one byte, so `.`, `[^/]` and any class holding U+FFFD match it, exactly as Go's regexp
// does.
//
// The output is canonical: equal languages compile to identical tables (and identical
// MarshalBinary bytes), because the automaton is minimized, its byte classes are derived from the
// minimal automaton, and states are numbered in breadth-first order from the start state with the
// dead state always first.
package dfa

import (
	"errors"
	"fmt"
	"regexp/syntax"
)

// DefaultMaxStates is the state budget used when Options.MaxStates is zero.
const DefaultMaxStates = 1024

// MaxTableStates is the largest budget Options.MaxStates accepts: state numbers are uint16.
const MaxTableStates = 1 << 16

// DeadState is the number of the dead state in every DFA: it never accepts and every byte leads
// from it back to itself. It is state 0 so that a zeroed kernel map entry fails closed, and a
// walker may stop as soon as it reaches it.
const DeadState = 0

// ErrTooManyStates is wrapped by the error Compile returns when the minimal DFA of a pattern needs
// more states than Options.MaxStates allows, or when building it would take more than a fixed
// multiple of that budget in intermediate states or work (so that a hostile pattern costs the
// operator a bounded, small amount of memory and time).
var ErrTooManyStates = errors.New("too many DFA states")

// ErrUnsupported is wrapped by the error Compile returns when a pattern uses syntax that the DFA
// cannot or does not express: word boundaries (\b, \B), ^ or $ anywhere but at the ends of the
// pattern, and multi-line mode (?m).
var ErrUnsupported = errors.New("unsupported regex syntax")

// Options tune Compile. The zero value is ready to use.
type Options struct {
	// MaxStates is the largest number of states, dead state included, that the minimal DFA may
	// have. Zero means DefaultMaxStates; the largest accepted value is MaxTableStates.
	MaxStates int
}

// DFA is a minimal deterministic automaton over bytes, laid out as a kernel table. Treat its
// fields as read-only: they are exported so that the node agent can lower them into BPF maps.
//
// Walking it: s := Start; for each input byte c: s = Next[s*NumClasses + Classes[c]]; the input
// matches when Accept[s]. Match is the reference implementation of that walk.
type DFA struct {
	// Classes maps every byte to its equivalence class: bytes in one class have the same
	// transition from every state. Classes are numbered in order of their smallest byte.
	Classes [256]uint8
	// NumClasses is the number of byte classes, between 1 and 256.
	NumClasses int
	// Next is the transition table, indexed state*NumClasses + class.
	Next []uint16
	// Accept reports, per state, whether a walk that ends there matches.
	Accept []bool
	// Start is the state a walk begins in. It is DeadState when the pattern matches nothing.
	Start uint16
}

// NumStates returns the number of states, dead state included.
func (d *DFA) NumStates() int { return len(d.Accept) }

// Match reports whether the whole of b is in the language of the pattern d was compiled from.
// It is the reference walk that the kernel program performs.
func (d *DFA) Match(b []byte) bool {
	s := int(d.Start)
	for _, c := range b {
		s = int(d.Next[s*d.NumClasses+int(d.Classes[c])])
		if s == DeadState {
			return false
		}
	}
	return d.Accept[s]
}

// Compile parses pattern as an RE2 regular expression with Perl flags, as Go's regexp.Compile does,
// and returns the minimal DFA that accepts exactly the byte strings the pattern matches as a
// whole (anchored at both ends). A leading ^ or \A and a trailing $ or \z are allowed and change
// nothing. The empty pattern matches only the empty string.
//
// The error wraps ErrUnsupported for syntax the DFA does not express and ErrTooManyStates when the
// DFA would exceed opts.MaxStates; a syntax error wraps the *syntax.Error from regexp/syntax.
func Compile(pattern string, opts Options) (*DFA, error) {
	maxStates := opts.MaxStates
	switch {
	case maxStates == 0:
		maxStates = DefaultMaxStates
	case maxStates < 0 || maxStates > MaxTableStates:
		return nil, fmt.Errorf("invalid MaxStates %d: must be between 1 and %d", opts.MaxStates, MaxTableStates)
	}
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", pattern, err)
	}
	if err := checkSupported(re); err != nil {
		return nil, fmt.Errorf("regex %q: %w", pattern, err)
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", pattern, err)
	}
	a, err := determinize(prog, intermediateLimit(maxStates))
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w (budget is %d states)", pattern, err, maxStates)
	}
	d := a.minimize()
	if d.NumStates() > maxStates {
		return nil, fmt.Errorf("regex %q: %w: the minimal DFA has %d states, budget is %d",
			pattern, ErrTooManyStates, d.NumStates(), maxStates)
	}
	return d, nil
}

// intermediateLimit bounds the automaton built before minimization. Determinization can produce
// more states than the minimal DFA (equivalent states, and states inside a UTF-8 sequence), so
// the limit is a multiple of the budget; it keeps a hostile pattern from costing unbounded memory
// and time in the operator.
func intermediateLimit(maxStates int) int {
	return max(8*maxStates, 256)
}

package dfa

import (
	"fmt"
	"regexp/syntax"
)

// checkSupported rejects the constructs that the DFA does not express. Word boundaries need a
// look at the previous and next rune, which a byte DFA does not carry. Multi-line mode makes ^ and $
// match around newlines inside the value, which is never meant for a path, method or host. ^ and $
// are accepted only at the ends of the pattern, where anchoring makes them no-ops; anywhere else
// they almost always hide a mistake (a^b matches nothing).
func checkSupported(re *syntax.Regexp) error {
	return checkNode(re, true, true)
}

// checkNode checks re, which sits at the start of the pattern when atStart (nothing can have been
// consumed before it) and at the end when atEnd (nothing can be consumed after it).
func checkNode(re *syntax.Regexp, atStart, atEnd bool) error {
	if re.Flags != 0 && re.Flags&syntax.OneLine == 0 {
		return fmt.Errorf("%w: multi-line mode (?m)", ErrUnsupported)
	}
	switch re.Op {
	case syntax.OpWordBoundary:
		return fmt.Errorf(`%w: word boundary \b`, ErrUnsupported)
	case syntax.OpNoWordBoundary:
		return fmt.Errorf(`%w: non-word boundary \B`, ErrUnsupported)
	case syntax.OpBeginLine, syntax.OpEndLine:
		return fmt.Errorf("%w: multi-line anchor ^ or $ under (?m)", ErrUnsupported)
	case syntax.OpBeginText:
		if !atStart {
			return fmt.Errorf(`%w: ^ or \A not at the start of the pattern`, ErrUnsupported)
		}
	case syntax.OpEndText:
		if !atEnd {
			return fmt.Errorf(`%w: $ or \z not at the end of the pattern`, ErrUnsupported)
		}
	case syntax.OpConcat:
		for i, sub := range re.Sub {
			if err := checkNode(sub, atStart && allEmptyOnly(re.Sub[:i]), atEnd && allEmptyOnly(re.Sub[i+1:])); err != nil {
				return err
			}
		}
	case syntax.OpAlternate, syntax.OpCapture, syntax.OpQuest:
		for _, sub := range re.Sub {
			if err := checkNode(sub, atStart, atEnd); err != nil {
				return err
			}
		}
	case syntax.OpStar, syntax.OpPlus, syntax.OpRepeat:
		// A repeated subexpression may follow and precede its own other iterations.
		again := re.Op != syntax.OpRepeat || re.Max != 1
		for _, sub := range re.Sub {
			if err := checkNode(sub, atStart && !again, atEnd && !again); err != nil {
				return err
			}
		}
	}
	return nil
}

// allEmptyOnly reports whether every expression in res matches only the empty string.
func allEmptyOnly(res []*syntax.Regexp) bool {
	for _, re := range res {
		if !emptyOnly(re) {
			return false
		}
	}
	return true
}

// emptyOnly reports whether re can match nothing but the empty string.
func emptyOnly(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpEmptyMatch, syntax.OpNoMatch, syntax.OpBeginText, syntax.OpEndText,
		syntax.OpBeginLine, syntax.OpEndLine, syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return true
	case syntax.OpConcat, syntax.OpAlternate, syntax.OpCapture, syntax.OpStar, syntax.OpPlus,
		syntax.OpQuest, syntax.OpRepeat:
		return allEmptyOnly(re.Sub)
	}
	return false
}

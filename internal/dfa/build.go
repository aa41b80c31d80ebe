package dfa

import (
	"encoding/binary"
	"fmt"
	"regexp/syntax"
	"slices"
	"unicode/utf8"
)

// The automaton is built by subset construction over Go's compiled program (regexp/syntax.Prog),
// whose instructions consume runes, run in product with a UTF-8 decoder that reads bytes exactly
// as utf8.DecodeRune does (and therefore as Go's regexp does):
//
//   - an ASCII byte is a rune;
//   - a byte that cannot start a sequence (0x80-0xC1, 0xF5-0xFF) is U+FFFD;
//   - a lead byte starts a pending sequence; when a later byte does not continue it (or the input
//     ends), the decoder has only consumed the lead byte as U+FFFD, and each continuation byte
//     after it is U+FFFD too, so a failed sequence of n bytes is n runes U+FFFD followed by the
//     offending byte read afresh.
//
// A state of the construction is therefore the set of program threads at the last rune boundary
// plus, inside a sequence, the decoder's progress and, per thread, the runes of its class that
// the bytes so far still allow (its residual). Keeping the residual rather than the bytes keeps the
// number of states inside sequences small: all prefixes that leave every class the same choice
// are one state.

// pending is the decoder's progress through a multi-byte sequence; n == 0 at a rune boundary.
type pending struct {
	n      uint8 // bytes of the sequence read so far
	rem    uint8 // continuation bytes still needed
	lo, hi byte  // range the next continuation byte must be in
}

// residual is what remains of the class of a rune instruction inside a pending sequence: the
// offsets, relative to the first rune the sequence can still encode, of the runes in the class.
type residual struct {
	pc  uint32
	set rangeSet
}

// bstate is a state of the construction.
type bstate struct {
	atStart bool       // nothing consumed yet: only the start state
	threads []uint32   // sorted closure at the last rune boundary: rune, match and blocked $ instructions
	pend    pending    // decoder progress
	res     []residual // per rune instruction of threads, inside a sequence
}

// automaton is the complete DFA that determinize builds, over construction byte classes that are
// finer than the final ones. State 0 is dead.
type automaton struct {
	classOf [256]uint8
	nclass  int
	trans   []int32 // state*nclass + class
	accept  []bool
	start   int32
}

// builder holds the state of one determinization.
type builder struct {
	prog  *syntax.Prog
	sets  []rangeSet // per pc: the runes a rune instruction matches
	mark  []uint32   // closure visit marks, by generation
	gen   uint32
	stack []uint32

	states []bstate
	index  map[string]int32
	key    []byte
	limit  int // states
	work   int // instructions visited and residual ranges built so far
}

// workPerState bounds the work of determinization, as a multiple of its state limit. Realistic
// patterns use less than a hundredth of it; patterns whose states each carry thousands of threads
// ((?:\pL?){500}\pL{500}) would otherwise take seconds before they reach the state limit.
const workPerState = 2048

// determinize builds the complete DFA of prog, failing once it needs more than limit states or
// more than workPerState*limit work.
func determinize(prog *syntax.Prog, limit int) (*automaton, error) {
	b := &builder{
		prog:  prog,
		sets:  make([]rangeSet, len(prog.Inst)),
		mark:  make([]uint32, len(prog.Inst)),
		index: map[string]int32{},
		limit: limit,
	}
	for pc := range prog.Inst {
		if isRuneInst(prog.Inst[pc].Op) {
			b.sets[pc] = instRunes(&prog.Inst[pc])
		}
	}
	a := &automaton{}
	repr := b.byteClasses(&a.classOf)
	a.nclass = len(repr)

	b.states = append(b.states, bstate{}) // dead
	start, err := b.intern(bstate{atStart: true, threads: b.closure([]uint32{uint32(prog.Start)}, true, false)})
	if err != nil {
		return nil, err
	}
	a.start = start
	for i := 0; i < len(b.states); i++ {
		s := b.states[i]
		for _, c := range repr {
			id, err := b.intern(b.next(&s, c))
			if err != nil {
				return nil, err
			}
			a.trans = append(a.trans, id)
		}
	}
	a.accept = make([]bool, len(b.states))
	for i := range b.states {
		a.accept[i] = b.accepts(&b.states[i])
	}
	return a, nil
}

// isRuneInst reports whether op consumes a rune.
func isRuneInst(op syntax.InstOp) bool {
	switch op {
	case syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
		return true
	}
	return false
}

// intern returns the number of state s, adding it when new.
func (b *builder) intern(s bstate) (int32, error) {
	if len(s.threads) == 0 {
		return 0, nil // no thread left: nothing can match any more
	}
	b.key = appendKey(b.key[:0], &s)
	if id, ok := b.index[string(b.key)]; ok {
		return id, nil
	}
	if len(b.states) >= b.limit {
		return 0, fmt.Errorf("%w: more than %d states before minimization", ErrTooManyStates, b.limit)
	}
	if b.work > workPerState*b.limit {
		return 0, fmt.Errorf("%w: pattern too complex, determinization gave up after %d states", ErrTooManyStates, len(b.states))
	}
	id := int32(len(b.states))
	b.states = append(b.states, s)
	b.index[string(b.key)] = id
	return id, nil
}

// appendKey appends an encoding of s that is equal for equal states.
func appendKey(k []byte, s *bstate) []byte {
	var flags byte
	if s.atStart {
		flags = 1
	}
	k = append(k, flags, s.pend.n, s.pend.rem, s.pend.lo, s.pend.hi)
	k = binary.AppendUvarint(k, uint64(len(s.threads)))
	for _, pc := range s.threads {
		k = binary.AppendUvarint(k, uint64(pc))
	}
	k = binary.AppendUvarint(k, uint64(len(s.res)))
	for _, r := range s.res {
		k = binary.AppendUvarint(k, uint64(r.pc))
		k = binary.AppendUvarint(k, uint64(len(r.set)))
		for _, rr := range r.set {
			k = binary.AppendUvarint(k, uint64(rr.lo))
			k = binary.AppendUvarint(k, uint64(rr.hi))
		}
	}
	return k
}

// next returns the state that byte c leads to from s.
func (b *builder) next(s *bstate, c byte) bstate {
	if s.pend.n == 0 {
		return b.boundary(s.threads, c)
	}
	p := s.pend
	if c < p.lo || c > p.hi {
		// The sequence is broken: its n bytes were n runes U+FFFD, and c starts afresh.
		t := s.threads
		for range p.n {
			t = b.stepRune(t, utf8.RuneError)
		}
		return b.boundary(t, c)
	}
	rem := p.rem - 1
	shift := 6 * uint(rem)
	chunk := rune(c&0x3f) << shift
	if rem == 0 {
		var targets []uint32
		for _, r := range s.res {
			if r.set.contains(chunk) {
				targets = append(targets, b.prog.Inst[r.pc].Out)
			}
		}
		return bstate{threads: b.closure(targets, false, false)}
	}
	var res []residual
	for _, r := range s.res {
		w := r.set.window(chunk, chunk+1<<shift-1, chunk)
		b.work += 1 + len(w)
		if len(w) > 0 {
			res = append(res, residual{r.pc, w})
		}
	}
	return bstate{threads: s.threads, pend: pending{n: p.n + 1, rem: rem, lo: 0x80, hi: 0xbf}, res: res}
}

// boundary returns the state that byte c leads to from threads at a rune boundary.
func (b *builder) boundary(threads []uint32, c byte) bstate {
	switch {
	case c < utf8.RuneSelf:
		return bstate{threads: b.stepRune(threads, rune(c))}
	case c < 0xc2 || c > 0xf4:
		return bstate{threads: b.stepRune(threads, utf8.RuneError)}
	}
	p := pending{n: 1, lo: 0x80, hi: 0xbf}
	var base, lo, hi rune // the runes the sequence can encode: [lo, hi], offsets from base
	switch {
	case c < 0xe0:
		p.rem = 1
		base = rune(c&0x1f) << 6
		lo, hi = base, base+0x3f
	case c < 0xf0:
		p.rem = 2
		base = rune(c&0x0f) << 12
		lo, hi = max(base, 0x800), base+0xfff
		switch c {
		case 0xe0:
			p.lo = 0xa0 // no overlong encodings
		case 0xed:
			p.hi, hi = 0x9f, 0xd7ff // no surrogates
		}
	default:
		p.rem = 3
		base = rune(c&0x07) << 18
		lo, hi = max(base, 0x10000), min(base+0x3ffff, utf8.MaxRune)
		switch c {
		case 0xf0:
			p.lo = 0x90 // no overlong encodings
		case 0xf4:
			p.hi = 0x8f // nothing above U+10FFFF
		}
	}
	var res []residual
	for _, pc := range threads {
		if s := b.sets[pc]; s != nil {
			w := s.window(lo, hi, base)
			b.work += 1 + len(w)
			if len(w) > 0 {
				res = append(res, residual{pc, w})
			}
		}
	}
	if len(res) == 0 && len(b.stepRune(threads, utf8.RuneError)) == 0 {
		// Neither a complete rune nor a broken sequence can get anywhere: dead, which keeps
		// ASCII-only patterns free of states inside sequences.
		return bstate{}
	}
	return bstate{threads: threads, pend: p, res: res}
}

// stepRune returns the closure of the threads that rune r moves threads to.
func (b *builder) stepRune(threads []uint32, r rune) []uint32 {
	var targets []uint32
	b.work += len(threads)
	for _, pc := range threads {
		if s := b.sets[pc]; s != nil && s.contains(r) {
			targets = append(targets, b.prog.Inst[pc].Out)
		}
	}
	return b.closure(targets, false, false)
}

// accepts reports whether input that ends in s matches.
func (b *builder) accepts(s *bstate) bool {
	threads, atStart := s.threads, s.atStart
	if s.pend.n > 0 {
		// The input ends inside a sequence: its bytes were runes U+FFFD.
		for range s.pend.n {
			threads = b.stepRune(threads, utf8.RuneError)
		}
		atStart = false
	}
	for _, pc := range b.closure(threads, atStart, true) {
		if b.prog.Inst[pc].Op == syntax.InstMatch {
			return true
		}
	}
	return false
}

// closure follows the instructions that consume nothing from roots and returns, sorted, the
// instructions it stops at: rune and match instructions, and end-of-text assertions that hold
// only later (kept so that accepts can follow them). atStart and atEnd say which assertions hold.
func (b *builder) closure(roots []uint32, atStart, atEnd bool) []uint32 {
	if len(roots) == 0 {
		return nil
	}
	b.gen++
	if b.gen == 0 {
		clear(b.mark)
		b.gen = 1
	}
	var now syntax.EmptyOp
	if atStart {
		now |= syntax.EmptyBeginText
	}
	if atEnd {
		now |= syntax.EmptyEndText
	}
	var out []uint32
	b.stack = append(b.stack[:0], roots...)
	for len(b.stack) > 0 {
		pc := b.stack[len(b.stack)-1]
		b.stack = b.stack[:len(b.stack)-1]
		if b.mark[pc] == b.gen {
			continue
		}
		b.mark[pc] = b.gen
		b.work++
		inst := &b.prog.Inst[pc]
		switch inst.Op {
		case syntax.InstAlt, syntax.InstAltMatch:
			b.stack = append(b.stack, inst.Out, inst.Arg)
		case syntax.InstCapture, syntax.InstNop:
			b.stack = append(b.stack, inst.Out)
		case syntax.InstEmptyWidth:
			switch unmet := syntax.EmptyOp(inst.Arg) &^ now; {
			case unmet == 0:
				b.stack = append(b.stack, inst.Out)
			case unmet == syntax.EmptyEndText:
				out = append(out, pc)
			}
			// Anything else never holds here: a ^ after the start, or assertions that
			// checkSupported rejects.
		case syntax.InstMatch, syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
			out = append(out, pc)
		}
	}
	slices.Sort(out)
	return out
}

// byteClasses fills classOf with a partition of the bytes such that bytes in one class lead to
// the same state from every state of the construction, and returns the smallest byte of each
// class. It is finer than the final classes, which minimize derives from the minimal DFA; its only
// job is to spare determinization from computing 256 transitions per state.
func (b *builder) byteClasses(classOf *[256]uint8) []byte {
	// Distinct rune sets, and every rune where membership in one of them may change. The limits
	// of valid UTF-8 count too, because they clip what a sequence can encode.
	var sets []rangeSet
	seen := map[string]bool{}
	bounds := []rune{0x80, 0x800, 0xd800, 0xe000, 0x10000, utf8.MaxRune + 1}
	for _, s := range b.sets {
		if s == nil {
			continue
		}
		k := string(appendKey(nil, &bstate{res: []residual{{set: s}}}))
		if seen[k] {
			continue
		}
		seen[k] = true
		sets = append(sets, s)
		for _, r := range s {
			bounds = append(bounds, r.lo, r.hi+1)
		}
	}
	slices.Sort(bounds)
	bounds = slices.Compact(bounds)

	members := func(sig []byte, r rune) []byte {
		for _, s := range sets {
			if s.contains(r) {
				sig = append(sig, '1')
			} else {
				sig = append(sig, '0')
			}
		}
		return sig
	}

	// A continuation byte selects a 64th of what remains of a sequence, at depth k = 0, 1 or 2
	// from its end. Two continuation bytes are alike when no bound falls between or inside
	// their slices at any depth, and the decoder's ranges (0x80-0x8F, 0x90-0x9F, 0xA0-0xBF)
	// agree.
	var split [65]bool
	split[0x10], split[0x20] = true, true
	for _, x := range bounds {
		for k := range 3 {
			j := (x >> (6 * k)) & 0x3f
			split[j] = true
			if x&(1<<(6*k)-1) != 0 {
				split[j+1] = true // x falls inside slice j
			}
		}
	}
	var contClass [64]int
	for j, n := 0, 0; j < 64; j++ {
		if split[j] && j > 0 {
			n++
		}
		contClass[j] = n
	}

	index := map[string]uint8{}
	var repr []byte
	for c := 0; c < 256; c++ {
		var sig []byte
		switch {
		case c < 0x80:
			sig = members(append(sig, 'a'), rune(c))
		case c < 0xc0:
			sig = fmt.Appendf(sig, "c%d", contClass[c&0x3f])
		case c < 0xc2 || c > 0xf4:
			sig = append(sig, 'x')
		default:
			// A lead byte selects a block of runes; alike leads have the same sequence length
			// and blocks with no bound inside, wholly in or out of each set.
			rem := 1
			base := rune(c&0x1f) << 6
			if c >= 0xf0 {
				rem, base = 3, rune(c&0x07)<<18
			} else if c >= 0xe0 {
				rem, base = 2, rune(c&0x0f)<<12
			}
			end := base + 1<<(6*rem)
			i, _ := slices.BinarySearch(bounds, base+1)
			if i < len(bounds) && bounds[i] < end {
				sig = fmt.Appendf(sig, "l%d", c) // unlike any other
			} else {
				sig = members(fmt.Appendf(sig, "L%d", rem), base)
			}
		}
		id, ok := index[string(sig)]
		if !ok {
			id = uint8(len(repr))
			index[string(sig)] = id
			repr = append(repr, byte(c))
		}
		classOf[c] = id
	}
	return repr
}

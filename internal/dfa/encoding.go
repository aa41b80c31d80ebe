package dfa

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The binary encoding, version 1. Integers are little-endian; every field has one valid
// encoding, so equal DFAs encode to equal bytes.
//
//	magic       "PDFA"
//	version     1 byte (1)
//	numStates   uvarint, 1..65536
//	numClasses  uvarint, 1..256
//	start       uvarint, < numStates
//	classes     256 bytes: the class of each byte
//	accept      ceil(numStates/8) bytes: bit s%8 of byte s/8 is Accept[s]; unused bits zero
//	next        numStates*numClasses uint16: the transition table, row by row
const (
	encodingMagic   = "PDFA"
	encodingVersion = 1
)

// MarshalBinary encodes d in the versioned binary form that UnmarshalBinary reads. The encoding
// is deterministic: equal DFAs give equal bytes.
func (d *DFA) MarshalBinary() ([]byte, error) {
	if err := d.validate(); err != nil {
		return nil, fmt.Errorf("encode dfa: %w", err)
	}
	n := d.NumStates()
	out := make([]byte, 0, len(encodingMagic)+1+3*binary.MaxVarintLen32+256+(n+7)/8+2*len(d.Next))
	out = append(out, encodingMagic...)
	out = append(out, encodingVersion)
	out = binary.AppendUvarint(out, uint64(n))
	out = binary.AppendUvarint(out, uint64(d.NumClasses))
	out = binary.AppendUvarint(out, uint64(d.Start))
	out = append(out, d.Classes[:]...)
	bits := make([]byte, (n+7)/8)
	for s, ok := range d.Accept {
		if ok {
			bits[s/8] |= 1 << (s % 8)
		}
	}
	out = append(out, bits...)
	for _, t := range d.Next {
		out = binary.LittleEndian.AppendUint16(out, t)
	}
	return out, nil
}

// UnmarshalBinary decodes data written by MarshalBinary into d. It checks everything a kernel
// walker relies on (every index in range, the dead state absorbing and rejecting), so a decoded
// table is safe to load into a map.
func (d *DFA) UnmarshalBinary(data []byte) error {
	var out DFA
	if err := out.decode(data); err != nil {
		return fmt.Errorf("decode dfa: %w", err)
	}
	*d = out
	return nil
}

var errTruncated = errors.New("truncated data")

func (d *DFA) decode(data []byte) error {
	if len(data) < len(encodingMagic)+1 || string(data[:len(encodingMagic)]) != encodingMagic {
		return errors.New("not a DFA encoding (bad magic)")
	}
	if v := data[len(encodingMagic)]; v != encodingVersion {
		return fmt.Errorf("unsupported encoding version %d (want %d)", v, encodingVersion)
	}
	rest := data[len(encodingMagic)+1:]
	uvarint := func(what string, lo, hi uint64) (int, error) {
		v, n := binary.Uvarint(rest)
		if n <= 0 {
			return 0, fmt.Errorf("%s: %w", what, errTruncated)
		}
		if v < lo || v > hi {
			return 0, fmt.Errorf("%s %d out of range [%d, %d]", what, v, lo, hi)
		}
		// The shortest form only, so that the encoding stays unique.
		if n != len(binary.AppendUvarint(nil, v)) {
			return 0, fmt.Errorf("%s: non-minimal varint", what)
		}
		rest = rest[n:]
		return int(v), nil
	}
	numStates, err := uvarint("state count", 1, MaxTableStates)
	if err != nil {
		return err
	}
	numClasses, err := uvarint("class count", 1, 256)
	if err != nil {
		return err
	}
	start, err := uvarint("start state", 0, uint64(numStates-1))
	if err != nil {
		return err
	}
	bitsLen := (numStates + 7) / 8
	if want := 256 + bitsLen + 2*numStates*numClasses; len(rest) != want {
		return fmt.Errorf("table is %d bytes, want %d", len(rest), want)
	}
	d.NumClasses = numClasses
	d.Start = uint16(start)
	copy(d.Classes[:], rest[:256])
	rest = rest[256:]
	d.Accept = make([]bool, numStates)
	for s := range d.Accept {
		d.Accept[s] = rest[s/8]&(1<<(s%8)) != 0
	}
	if numStates%8 != 0 && rest[bitsLen-1]>>(numStates%8) != 0 {
		return errors.New("accept bitset has bits set past the last state")
	}
	rest = rest[bitsLen:]
	d.Next = make([]uint16, numStates*numClasses)
	for i := range d.Next {
		d.Next[i] = binary.LittleEndian.Uint16(rest[2*i:])
	}
	return d.validate()
}

// validate checks the invariants that Match and a kernel walker rely on.
func (d *DFA) validate() error {
	n := d.NumStates()
	switch {
	case n < 1 || n > MaxTableStates:
		return fmt.Errorf("state count %d out of range [1, %d]", n, MaxTableStates)
	case d.NumClasses < 1 || d.NumClasses > 256:
		return fmt.Errorf("class count %d out of range [1, 256]", d.NumClasses)
	case len(d.Next) != n*d.NumClasses:
		return fmt.Errorf("transition table has %d entries, want %d", len(d.Next), n*d.NumClasses)
	case int(d.Start) >= n:
		return fmt.Errorf("start state %d out of range", d.Start)
	case d.Accept[DeadState]:
		return errors.New("dead state accepts")
	}
	// Classes are numbered in order of their smallest byte, and all are used.
	next := 0
	for c, cl := range d.Classes {
		switch {
		case int(cl) == next:
			next++
		case int(cl) > next:
			return fmt.Errorf("byte 0x%02x has class %d before class %d is used", c, cl, next)
		}
	}
	if next != d.NumClasses {
		return fmt.Errorf("%d classes used, class count is %d", next, d.NumClasses)
	}
	for i, t := range d.Next {
		if int(t) >= n {
			return fmt.Errorf("transition %d leads to state %d, out of range", i, t)
		}
		if i < d.NumClasses && t != DeadState {
			return errors.New("dead state has a way out")
		}
	}
	return nil
}

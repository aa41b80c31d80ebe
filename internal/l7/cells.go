package l7

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// The DFA cells (bpf/l7.h, l7_dfa_blocks): u16, 32 to a 64-byte array element. The agent writes and
// compares them in the map's memory, where cell i is at byte 2*i (the elements are exactly 64
// bytes: no padding between them).
const (
	cellsPerBlock = 32
	cellBytes     = 2
)

// cellCapacity is how many cells the tables hold.
func cellCapacity(blocks *ebpf.Map) uint32 { return blocks.MaxEntries() * cellsPerBlock }

// writeCells writes cells from cell base on. A block shared with another table is written only in
// this table's bytes.
func (l *L7) writeCells(base uint32, cells []uint16) error {
	mm, err := l.objs.L7DfaBlocks.Memory()
	if err != nil {
		return fmt.Errorf("map dfa cells: %w", err)
	}
	buf := make([]byte, cellBytes*len(cells))
	for i, c := range cells {
		binary.NativeEndian.PutUint16(buf[cellBytes*i:], c)
	}
	if _, err := mm.WriteAt(buf, int64(base)*cellBytes); err != nil {
		return fmt.Errorf("write dfa cells %d+%d: %w", base, len(cells), err)
	}
	return nil
}

// cellsEqual reports whether the kernel's cells from base on are want.
func (l *L7) cellsEqual(base uint32, want []uint16) (bool, error) {
	mm, err := l.objs.L7DfaBlocks.Memory()
	if err != nil {
		return false, fmt.Errorf("map dfa cells: %w", err)
	}
	buf := make([]byte, cellBytes*len(want))
	if _, err := mm.ReadAt(buf, int64(base)*cellBytes); err != nil {
		return false, fmt.Errorf("read dfa cells: %w", err)
	}
	for i, w := range want {
		if binary.NativeEndian.Uint16(buf[cellBytes*i:]) != w {
			return false, nil
		}
	}
	return true, nil
}

// oldCellsPin is the pin of the cells map of builds before 2026-11-27: one u32 cell an array
// element, 8 bytes apart.
const oldCellsPin = "l7_dfa_cells"

// migrateCells copies the tables of an earlier build's pinned cells map, if pinDir has one, into
// blocks (same cell numbers), and removes its pin. The pinned rule sets and DFA descriptors that
// this agent adopts refer to those cell numbers; without the copy their path, method and host
// rules would match nothing (fail closed) until the agent writes its own tables. Called before any
// program that reads blocks is attached.
func migrateCells(pinDir string, blocks *ebpf.Map) error {
	return migratePin(pinDir, oldCellsPin, "dfa cells", func(old *ebpf.Map, path string) error {
		return copyCells(old, path, blocks)
	})
}

// copyCells writes the cells of old, an earlier build's cells map pinned at path, into blocks.
func copyCells(old *ebpf.Map, path string, blocks *ebpf.Map) error {
	if old.ValueSize() != 4 || old.Type() != ebpf.Array {
		return fmt.Errorf("%s: not an earlier build's dfa cells (%v, value size %d)", path, old.Type(), old.ValueSize())
	}
	src, err := old.Memory()
	if err != nil {
		return fmt.Errorf("map the earlier build's dfa cells: %w", err)
	}
	n := min(old.MaxEntries(), cellCapacity(blocks))
	in := make([]byte, 8*int(n))
	if _, err := src.ReadAt(in, 0); err != nil {
		return fmt.Errorf("read the earlier build's dfa cells: %w", err)
	}
	out := make([]byte, cellBytes*int(n))
	for i := range int(n) {
		v := binary.NativeEndian.Uint32(in[8*i:])
		if v > 0xffff {
			v = 0 // no state has that number: dead, as the earlier build read it
		}
		binary.NativeEndian.PutUint16(out[cellBytes*i:], uint16(v))
	}
	dst, err := blocks.Memory()
	if err != nil {
		return fmt.Errorf("map dfa cells: %w", err)
	}
	if _, err := dst.WriteAt(out, 0); err != nil {
		return fmt.Errorf("copy the earlier build's dfa cells: %w", err)
	}
	return nil
}

// migratePin hands an earlier build's map pinned in pinDir under name, if there is one, to move
// (which copies what this build still needs of it into this build's maps), then removes the pin.
// what names the map in errors.
func migratePin(pinDir, name, what string, move func(old *ebpf.Map, path string) error) error {
	path := filepath.Join(pinDir, name)
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open the earlier build's %s: %w", what, err)
	}
	defer old.Close()
	if err := move(old, path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove the earlier build's %s pin: %w", what, err)
	}
	return nil
}

package l7

import (
	"bytes"
	"encoding/binary"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// mountBPFFS mounts a private bpffs for the test and unmounts it at the end.
func mountBPFFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpffs", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
	})
	return dir
}

// Rule sets survive a restart through pinned maps, rewriting the same rules writes nothing, and a
// new loader never hands out a table a live rule set still uses.
func TestPrivilegedPinnedRulesSurviveRestartAndWritesAreIdempotent(t *testing.T) {
	requireRoot(t)
	dir := mountBPFFS(t)
	key := RuleKey{EndpointID: 7, Port: 80}
	get := []byte("GET /v1/x HTTP/1.1\r\nX-A: b\r\n\r\n")
	post := []byte("POST /v2 HTTP/1.1\r\n\r\n")
	rules := []string{`method="GET" path="/v1/.*" header="X-A: b"`}

	l1, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := l1.SetRules(key, rules); err != nil {
		t.Fatal(err)
	}
	next, refs := l1.tab.nextDFA, maps.Clone(l1.tab.dfaRefs)
	if err := l1.SetRules(key, rules); err != nil {
		t.Fatal(err)
	}
	if l1.tab.nextDFA != next || !maps.Equal(refs, l1.tab.dfaRefs) {
		t.Fatalf("rewriting the same rules allocated tables: next %d→%d, refs %v→%v", next, l1.tab.nextDFA, refs, l1.tab.dfaRefs)
	}
	if r, err := l1.Judge(key, get); err != nil || r.Decision != Allow {
		t.Fatalf("before restart: %+v %v", r, err)
	}
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}

	l2, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l2.Unpin()
		l2.Close()
	})
	if r, err := l2.Judge(key, get); err != nil || r.Decision != Allow {
		t.Fatalf("after restart: %+v %v", r, err)
	}
	adopted := maps.Clone(l2.tab.dfaSpan)
	if len(adopted) != 1 {
		t.Fatalf("adopted dfas %v, want the path's (the method is a set of methods, no DFA)", adopted)
	}
	if err := l2.SetRules(RuleKey{EndpointID: 8, Port: 80}, []string{`method="POST" path="/v2"`}); err != nil {
		t.Fatal(err)
	}
	for id, sp := range l2.tab.dfaSpan {
		if _, old := adopted[id]; old {
			continue
		}
		for oid, osp := range adopted {
			if id == oid || sp.base < osp.base+osp.size && osp.base < sp.base+sp.size {
				t.Fatalf("new dfa %d %v collides with adopted dfa %d %v", id, sp, oid, osp)
			}
		}
	}
	if r, err := l2.Judge(key, get); err != nil || r.Decision != Allow {
		t.Fatalf("adopted rules broken by a new rule set: %+v %v", r, err)
	}
	if r, err := l2.Judge(RuleKey{EndpointID: 8, Port: 80}, post); err != nil || r.Decision != Allow {
		t.Fatalf("new rule set: %+v %v", r, err)
	}
	if err := l2.DeleteRules(key); err != nil {
		t.Fatal(err)
	}
	if r, err := l2.Judge(key, get); err != nil || r.Decision != Deny || r.Reason != ReasonNoRuleSet {
		t.Fatalf("deleted rule set still judges: %+v %v", r, err)
	}
	if _, err := os.Stat(dir + "/l7_socks"); err != nil {
		t.Fatalf("sockhash not pinned: %v", err)
	}
}

// The programs' working maps are not pinned: a pin an earlier build left under one of their names,
// with another layout, does not stop the agent from loading (it is removed).
func TestPrivilegedWorkingMapPinsOfAnEarlierBuildAreDropped(t *testing.T) {
	requireRoot(t)
	dir := mountBPFFS(t)
	for name := range workingMaps {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Pin(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	l, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatalf("load over an earlier build's working-map pins: %v", err)
	}
	defer l.Close()
	for name := range workingMaps {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s is pinned (%v)", name, err)
		}
	}
}

// An agent upgraded from a build whose DFA cells were one u32 to an 8-byte array element
// (l7_dfa_cells) adopts that build's pinned rule sets with their tables: it copies the cells into
// its packed map before any program reads them and drops the old pin. Without the copy, the adopted
// rule's path would match nothing until the agent rewrote its rules.
func TestPrivilegedEarlierBuildDFACellsAreCopied(t *testing.T) {
	requireRoot(t)
	dir := mountBPFFS(t)
	key := RuleKey{EndpointID: 7, Port: 80}
	get := []byte("GET /v1/x HTTP/1.1\r\n\r\n")
	other := []byte("GET /v2/x HTTP/1.1\r\n\r\n")

	l1, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := l1.SetRules(key, []string{`method="GET" path="/v1/.*"`}); err != nil {
		t.Fatal(err)
	}
	if len(l1.tab.dfaWant) != 1 {
		t.Fatalf("tables %v, want the path's", l1.tab.dfaWant)
	}
	// The earlier build's map, holding the same tables at the same cell numbers.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: oldCellsPin, Type: ebpf.Array, KeySize: 4, ValueSize: 4,
		MaxEntries: cellCapacity(l1.objs.L7DfaBlocks), Flags: unix.BPF_F_MMAPABLE})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	for _, tab := range l1.tab.dfaWant {
		for i, c := range tab.cells {
			if err := old.Update(tab.desc.Base+uint32(i), uint32(c), ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := old.Pin(filepath.Join(dir, oldCellsPin)); err != nil {
		t.Fatal(err)
	}
	if err := l1.objs.L7DfaBlocks.Unpin(); err != nil {
		t.Fatal(err)
	}
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}

	l2, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l2.Unpin()
		l2.Close()
	})
	if r, err := l2.Judge(key, get); err != nil || r.Decision != Allow {
		t.Fatalf("the adopted rule with the copied table: %+v %v; want allowed", r, err)
	}
	if r, err := l2.Judge(key, other); err != nil || r.Decision != Deny {
		t.Fatalf("a path the rule does not allow: %+v %v; want denied", r, err)
	}
	if _, err := os.Stat(filepath.Join(dir, oldCellsPin)); !os.IsNotExist(err) {
		t.Fatalf("the earlier build's pin is still there: %v", err)
	}
}

// An agent of a build whose scan limit was 8 KiB left its held header blocks pinned as l7_pending
// (a buffer half as long): the new agent copies them into l7_held, byte for byte, and removes the
// old pin; without the copy the segment that completes a held block would be judged without it.
func TestPrivilegedEarlierBuildHeldBlocksAreCopied(t *testing.T) {
	requireRoot(t)
	dir := mountBPFFS(t)
	const oldValueSize = 8 + 8192 + 128
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: oldHeldPin, Type: ebpf.Hash, KeySize: 8, ValueSize: oldValueSize,
		MaxEntries: 8192, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	block := "GET /allowed/held HTTP/1.1\r\nHost: ser"
	want := map[uint64][]byte{}
	for cookie, since := range map[uint64]uint32{41: 1000, 42: 2000} {
		v := make([]byte, oldValueSize)
		binary.NativeEndian.PutUint32(v[0:], uint32(len(block)))
		binary.NativeEndian.PutUint32(v[4:], since)
		copy(v[8:], block)
		v[8+len(block)] = 0xee // a byte past the block, copied too (the buffer as it was)
		if err := old.Update(cookie, v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		want[cookie] = v
	}
	if err := old.Pin(filepath.Join(dir, oldHeldPin)); err != nil {
		t.Fatal(err)
	}

	l, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Unpin()
		l.Close()
	})
	got := make([]byte, l.objs.L7Held.ValueSize())
	for cookie, v := range want {
		if err := l.objs.L7Held.Lookup(cookie, got); err != nil {
			t.Fatalf("socket %d's held block was not copied: %v", cookie, err)
		}
		if !bytes.Equal(got[:len(v)], v) || !bytes.Equal(got[len(v):], make([]byte, len(got)-len(v))) {
			t.Fatalf("socket %d's held block: len %d since %d %q, want len %d since %d %q", cookie,
				binary.NativeEndian.Uint32(got), binary.NativeEndian.Uint32(got[4:]), got[8:8+len(block)+1],
				binary.NativeEndian.Uint32(v), binary.NativeEndian.Uint32(v[4:]), v[8:8+len(block)+1])
		}
	}
	if !l.Holding() {
		t.Fatal("Holding() is false with copied holds")
	}
	if _, err := os.Stat(filepath.Join(dir, oldHeldPin)); !os.IsNotExist(err) {
		t.Fatalf("the earlier build's pin is still there: %v", err)
	}
}

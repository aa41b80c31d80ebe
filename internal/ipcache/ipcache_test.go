package ipcache

import (
	"net/netip"
	"testing"
)

func addr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

func TestShardsStayBoundedAndAChangeDirtiesOneShard(t *testing.T) {
	s := New(100)
	for i := range 1000 {
		s.Set(Entry{IP: addr(i), Identity: 300})
	}
	if s.NumShards() != 10 {
		t.Fatalf("1000 entries in shards of 100: %d shards, want 10", s.NumShards())
	}
	for i := range s.NumShards() {
		if n := len(s.Entries(i)); n > 100 {
			t.Errorf("shard %d holds %d entries, bound is 100", i, n)
		}
	}
	if got := len(s.TakeDirty()); got != 10 {
		t.Errorf("dirty after the first fill = %d, want 10", got)
	}
	s.Set(Entry{IP: addr(555), Identity: 301})
	s.Set(Entry{IP: addr(556), Identity: 300}) // no change: not dirty
	if d := s.TakeDirty(); len(d) != 1 || d[0] != 5 {
		t.Errorf("one changed entry dirtied %v, want [5]", d)
	}
	s.Delete(addr(10))
	s.Set(Entry{IP: addr(5000), Identity: 302}) // takes the hole in shard 0, not a new shard
	if d := s.TakeDirty(); len(d) != 1 || d[0] != 0 {
		t.Errorf("delete + add dirtied %v, want [0]", d)
	}
	if s.NumShards() != 10 {
		t.Errorf("a new address made a new shard while shard 0 had room")
	}
}

func TestAdoptKeepsTheExistingLayout(t *testing.T) {
	s := New(2)
	s.Adopt(3, []Entry{{IP: addr(1), Identity: 5}, {IP: addr(2), Identity: 6}})
	s.Adopt(0, []Entry{{IP: addr(1), Identity: 5}}) // duplicate of shard 3's entry
	if d := s.TakeDirty(); len(d) != 1 || d[0] != 0 {
		t.Errorf("adopting a consistent shard made it dirty: %v", d)
	}
	if e, ok := s.Get(addr(2)); !ok || e.Identity != 6 {
		t.Errorf("adopted entry missing: %+v", e)
	}
	s.Set(Entry{IP: addr(3), Identity: 7})
	if d := s.TakeDirty(); len(d) != 1 || d[0] != 0 {
		t.Errorf("new entry went to %v, want the first shard with room (0)", d)
	}
}

func TestShardNames(t *testing.T) {
	for _, i := range []int{0, 7, 1234} {
		got, err := ShardIndex(ShardName(i))
		if err != nil || got != i {
			t.Errorf("ShardIndex(ShardName(%d)) = %d, %v", i, got, err)
		}
	}
	for _, bad := range []string{"ipcache-", "other-1", "ipcache--1", "ipcache-x"} {
		if _, err := ShardIndex(bad); err == nil {
			t.Errorf("ShardIndex(%q) accepted", bad)
		}
	}
}

// Package ipcache keeps the cluster's IP address → security identity map in bounded shards, the way
// the EndpointSlice controller keeps endpoints: an address stays in the shard it was put in, a new
// address goes to the first shard with room, and only the shards that changed are written.
package ipcache

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Entry maps one address to a security identity.
type Entry struct {
	IP       netip.Addr
	Identity uint32
	Node     string
	// Pod is "namespace/name", empty for a node address.
	Pod string
}

// ShardPrefix starts the name of every shard object.
const ShardPrefix = "ipcache-"

// Shards is the sharded map. It is not safe for concurrent use.
type Shards struct {
	max    int
	shards []map[netip.Addr]Entry
	where  map[netip.Addr]int
	dirty  map[int]bool
}

// New returns an empty map whose shards hold at most max entries each.
func New(max int) *Shards {
	return &Shards{max: max, where: map[netip.Addr]int{}, dirty: map[int]bool{}}
}

// ShardName is the object name of shard i.
func ShardName(i int) string { return ShardPrefix + strconv.Itoa(i) }

// ShardIndex parses an object name made by ShardName.
func ShardIndex(name string) (int, error) {
	i, err := strconv.Atoi(strings.TrimPrefix(name, ShardPrefix))
	if err != nil || !strings.HasPrefix(name, ShardPrefix) || i < 0 || i > 1<<20 {
		return 0, fmt.Errorf("%q is not an IP cache shard name", name)
	}
	return i, nil
}

func (s *Shards) grow(i int) {
	for len(s.shards) <= i {
		s.shards = append(s.shards, map[netip.Addr]Entry{})
	}
}

// Adopt loads a shard as it exists in the API server, so that a restarted operator takes over the
// existing layout instead of rewriting it. Entries beyond the bound, or already in another shard,
// are dropped and the shard is marked dirty.
func (s *Shards) Adopt(i int, entries []Entry) {
	s.grow(i)
	for _, e := range entries {
		if _, dup := s.where[e.IP]; dup || len(s.shards[i]) >= s.max || !e.IP.IsValid() {
			s.dirty[i] = true
			continue
		}
		s.shards[i][e.IP] = e
		s.where[e.IP] = i
	}
}

// Set adds or changes the entry of an address.
func (s *Shards) Set(e Entry) {
	if i, ok := s.where[e.IP]; ok {
		if s.shards[i][e.IP] != e {
			s.shards[i][e.IP] = e
			s.dirty[i] = true
		}
		return
	}
	i := 0
	for i < len(s.shards) && len(s.shards[i]) >= s.max {
		i++
	}
	s.grow(i)
	s.shards[i][e.IP] = e
	s.where[e.IP] = i
	s.dirty[i] = true
}

// Delete removes the entry of an address, if any.
func (s *Shards) Delete(ip netip.Addr) {
	i, ok := s.where[ip]
	if !ok {
		return
	}
	delete(s.shards[i], ip)
	delete(s.where, ip)
	s.dirty[i] = true
}

// Get returns the entry of an address.
func (s *Shards) Get(ip netip.Addr) (Entry, bool) {
	i, ok := s.where[ip]
	if !ok {
		return Entry{}, false
	}
	return s.shards[i][ip], true
}

// Len is the number of entries.
func (s *Shards) Len() int { return len(s.where) }

// NumShards is the number of shards, empty ones included.
func (s *Shards) NumShards() int { return len(s.shards) }

// TakeDirty returns the shards changed since the last call, in order, and forgets them.
func (s *Shards) TakeDirty() []int {
	out := make([]int, 0, len(s.dirty))
	for i := range s.dirty {
		out = append(out, i)
	}
	slices.Sort(out)
	clear(s.dirty)
	return out
}

// MarkDirty makes shard i be returned by the next TakeDirty, for example after its object was changed
// or deleted behind the operator's back.
func (s *Shards) MarkDirty(i int) {
	s.grow(i)
	s.dirty[i] = true
}

// Entries returns the entries of shard i sorted by address.
func (s *Shards) Entries(i int) []Entry {
	if i >= len(s.shards) {
		return nil
	}
	out := make([]Entry, 0, len(s.shards[i]))
	for _, e := range s.shards[i] {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int { return a.IP.Compare(b.IP) })
	return out
}

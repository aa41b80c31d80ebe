// Package bpfevents reads the events BPF programs write to ring buffers: the raw records, and the
// wall-clock time of their bpf_ktime_get_ns timestamps. The L3/L4 flows (internal/datapath) and the
// HTTP request events (internal/l7) both use it.
package bpfevents

import (
	"time"

	"golang.org/x/sys/unix"
)

// Clock converts monotonic nanoseconds to wall-clock time with one offset sampled when it was made:
// make one per reader, when reading starts.
type Clock struct {
	wall time.Time
	mono int64
}

// Now samples both clocks.
func Now() Clock {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for CLOCK_MONOTONIC
	return Clock{wall: time.Now(), mono: ts.Nano()}
}

// Time returns the wall-clock time of a bpf_ktime_get_ns value.
func (c Clock) Time(ns uint64) time.Time {
	return c.wall.Add(time.Duration(int64(ns) - c.mono))
}

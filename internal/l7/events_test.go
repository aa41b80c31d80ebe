package l7

import (
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// Allowed requests' events do not wake the reader, except the one that takes the unread events past
// a quarter of the ring (and each further quarter): a reader that polls rarely still gets them before
// the ring fills, and a slow or absent reader does not cost an interrupt per request. The reader here
// never polls, so it gets only what a wake-up hands it.
func TestPrivilegedAllowedEventsWakeTheReaderAtAQuarterOfTheRing(t *testing.T) {
	requireRoot(t)
	t.Setenv("L7_TEST_SERVER_QUIET", "1")
	e := newTestEnv(t)
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
	e.startServer(t, port, false)
	var got atomic.Int64
	// The reader is set up before any request: epoll finds a ring buffer that already holds
	// records readable when it is added, without a wake-up (a reader started in its goroutine
	// after the first requests got their events that way, one run in five).
	rd, err := ringbuf.NewReader(e.l.objs.L7Events)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var rec ringbuf.Record
		for {
			if err := rd.ReadInto(&rec); err != nil {
				if !errors.Is(err, os.ErrClosed) && !errors.Is(err, ringbuf.ErrClosed) {
					t.Errorf("read events: %v", err)
				}
				return
			}
			got.Add(1)
		}
	}()
	defer func() { rd.Close(); <-done }()

	pipelined := func(n int) {
		c := e.dial(t, port, false)
		defer c.Close()
		c.Write([]byte(strings.Repeat(req("GET", "/allowed/quiet"), n)))
		buf := make([]byte, 64<<10)
		seen := 0
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for seen < n {
			k, err := c.Read(buf)
			if err != nil {
				t.Fatalf("%d of %d answers: %v", seen, n, err)
			}
			seen += strings.Count(string(buf[:k]), "\r\n\r\nok")
		}
	}
	pipelined(20)
	time.Sleep(300 * time.Millisecond)
	if n := got.Load(); n != 0 {
		t.Fatalf("the reader got %d allowed events without a wake-up due", n)
	}
	record := (eventSize + 8 + 7) / 8 * 8
	quarter := (256 << 10) / record
	pipelined(quarter + 100)
	deadline := time.Now().Add(3 * time.Second)
	for got.Load() < int64(quarter) {
		if time.Now().After(deadline) {
			t.Fatalf("the reader got %d events after %d allowed requests, want at least %d: no wake-up at a quarter of the ring", got.Load(), quarter+120, quarter)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

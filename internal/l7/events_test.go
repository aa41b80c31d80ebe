package l7

import (
	"errors"
	"io"
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
	var got, long atomic.Int64
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
			if len(rec.RawSample) != shortEventSize {
				long.Add(1)
			}
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
	// A short path and Host: short records (bpf/l7.h, L7_EV_SHORT), each with its 8-byte header.
	record := (shortEventSize + 8 + 7) / 8 * 8
	quarter := (256 << 10) / record
	pipelined(quarter + 100)
	deadline := time.Now().Add(3 * time.Second)
	for got.Load() < int64(quarter) {
		if time.Now().After(deadline) {
			t.Fatalf("the reader got %d events after %d allowed requests, want at least %d: no wake-up at a quarter of the ring", got.Load(), quarter+120, quarter)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := long.Load(); n != 0 {
		t.Fatalf("%d of %d events of short requests came in records of another size than %d bytes", n, got.Load(), shortEventSize)
	}
}

// Each request's event carries its method, path and Host as sent, in either record size: short
// (path and Host of at most 32 bytes each), or whole with a path or Host longer than that; a value
// longer than the event holds is cut to what fits and marked so.
func TestPrivilegedEventsCarryPathAndHost(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
	events := collectEvents(t, e.l)
	e.startServer(t, port, false)
	c := e.dial(t, port, false)
	long := func(prefix string, n int) string { return prefix + strings.Repeat("x", n-len(prefix)) }
	for _, tc := range []struct {
		name, path, host string
	}{
		{"both short", "/allowed/s1", "server"},
		{"both at the short record's limit", long("/allowed/s2", 32), long("h2.", 32)},
		{"a path past it", long("/allowed/s3", 33), "server"},
		{"a Host past it", "/allowed/s4", long("h4.", 33)},
		{"a path longer than the event holds", long("/allowed/s5", 200), "h5"},
		{"a Host longer than the event holds", "/allowed/s6", long("h6.", 100)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			io.WriteString(c, "GET "+tc.path+" HTTP/1.1\r\nHost: "+tc.host+"\r\n\r\n")
			if n, err := readResponses(c, 1, 5*time.Second); n != 1 {
				t.Fatalf("no answer: %v", err)
			}
			wantPath, wantHost := tc.path, tc.host
			if len(wantPath) > 128 { // L7_EV_PATH_MAX
				wantPath = wantPath[:128]
			}
			if len(wantHost) > 64 { // L7_EV_HOST_MAX
				wantHost = wantHost[:64]
			}
			deadline := time.Now().Add(2 * time.Second)
			for {
				ev, ok := events.findFunc(func(ev Event) bool { return strings.HasPrefix(ev.Path, tc.path[:11]) })
				if ok {
					if ev.Method != "GET" || ev.Path != wantPath || ev.Host != wantHost ||
						ev.PathCut != (len(tc.path) > 128) || ev.HostCut != (len(tc.host) > 64) || ev.Verdict != VerdictAllowed {
						t.Fatalf("event: method %q path %q (cut %v) host %q (cut %v) verdict %v; want path %q host %q",
							ev.Method, ev.Path, ev.PathCut, ev.Host, ev.HostCut, ev.Verdict, wantPath, wantHost)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("no event for %s", tc.path[:11])
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

package l7

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// A server that reads its socket with splice(2) (a TCP proxy; Go's io.Copy from one TCP connection
// to another) reads the socket's receive queue directly (tcp_splice_read). What that means when the
// server's socket judges its requests (docs/limitations.md; this test fails when a kernel changes
// either, and the page must then change):
//   - data that arrives after accept never reaches it: the verdict program takes every segment off
//     the receive queue and what it passes waits in the psock's queue, which only recvmsg reads;
//   - data that arrives before accept is read unjudged: the kernel's data-ready hook skips a socket
//     that has no file yet, and only recvmsg runs it before reading (accept_test.go), so a splice
//     read takes the queued bytes as they are. A request the rules deny reaches such a server.
//
// Judged at the client's socket (a client on its node), it serves, and the rules hold.
func TestPrivilegedSplicingServers(t *testing.T) {
	requireRoot(t)
	t.Setenv("L7_TEST_SERVER_SPLICE", "1")
	t.Setenv("L7_TEST_SERVER_GATED", "1")
	e := newTestEnv(t)
	if err := e.l.setConfig(configAtSource); err != nil {
		t.Fatal(err)
	}
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
	e.startServer(t, port, false)

	t.Run("judged at the server's socket, a request sent after accept never reaches it", func(t *testing.T) {
		c := e.dial(t, port, false)
		e.acceptOne(t)
		time.Sleep(200 * time.Millisecond) // accepted, and splicing
		writeParts(t, c, req("GET", "/allowed/splice-after-accept"))
		codes, _, _, err := responses(c, 1, time.Second)
		if len(codes) != 0 || e.sawTarget("/allowed/splice-after-accept") {
			t.Fatalf("statuses %v (%v), server saw %q: splice(2) now reads what the verdict program passed; update docs/limitations.md", codes, err, e.seen)
		}
		if n := e.counter(t, ReasonMessagePassed); n == 0 {
			t.Fatal("the verdict program passed nothing: the request was not judged at the server's socket")
		}
	})
	t.Run("judged at the server's socket, a request sent before accept is read unjudged", func(t *testing.T) {
		c := e.dial(t, port, false)
		request := req("GET", "/secret-splice-before-accept")
		if _, err := io.WriteString(c, request); err != nil {
			t.Fatal(err)
		}
		e.waitServerRecvQ(t, c, len(request)) // queued, not judged, not accepted
		e.acceptOne(t)
		e.waitSeen(t, "/secret-splice-before-accept") // fails when a kernel judges it first; update docs/limitations.md
	})
	t.Run("judged at the client's socket, it serves, and the rules hold", func(t *testing.T) {
		e.trustClient(t)
		for _, target := range []string{"/allowed/splice-at-source", "/secret-splice-at-source"} {
			e.acceptOne(t) // the gate takes one line per connection it accepts, whenever it comes
			got := e.runClientEnv(t, port, false, 0, []string{"L7_TEST_CLIENT_STATUS=1"}, req("GET", target))
			t.Logf("client: %q", got)
		}
		e.waitSeen(t, "/allowed/splice-at-source")
		time.Sleep(200 * time.Millisecond)
		if e.sawTarget("/secret-splice-at-source") {
			t.Fatal("the server saw /secret-splice-at-source")
		}
	})
	t.Run("judged before TCP, requests that come whole reach it", func(t *testing.T) {
		// The socket's verdict program never runs for such a connection: TCP's receive queue,
		// which splice reads, gets the segments l7_fast passed.
		if err := e.l.setConfig(configBeforeTCP); err != nil {
			t.Fatal(err)
		}
		if err := e.l.AttachNetns("/run/netns/" + e.srvNS); err != nil {
			t.Fatal(err)
		}
		c := e.dial(t, port, false)
		e.acceptOne(t)
		time.Sleep(200 * time.Millisecond) // accepted, and splicing
		for _, target := range []string{"/allowed/splice-before-tcp-1", "/allowed/splice-before-tcp-2"} {
			writeParts(t, c, req("GET", target))
			expectStatuses(t, c, http.StatusOK)
		}
		if n := e.counter(t, ReasonFastHanded); n != 0 {
			t.Fatalf("%d connections handed to their socket", n)
		}
	})
}

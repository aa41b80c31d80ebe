package l7

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// waitUntil polls done every 10 ms for up to 5 s, and then fails with what failure says.
func waitUntil(t *testing.T, done func() bool, failure func() string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !done(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(failure())
		}
	}
}

// waitServerRecvQ waits until TCP counts want bytes as received and not yet read on the server's
// side of c.
func (e *testEnv) waitServerRecvQ(t *testing.T, c net.Conn, want int) {
	t.Helper()
	var q int
	waitUntil(t, func() bool { q = e.serverRecvQOf(t, c); return q == want }, func() string {
		return fmt.Sprintf("server Recv-Q %d, want %d\nserver sockets:\n%s", q, want, e.serverSockets())
	})
}

// acceptOne lets the gated server accept one more connection.
func (e *testEnv) acceptOne(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(e.gate, "accept\n"); err != nil {
		t.Fatal(err)
	}
}

// Data that arrives before the application accepts its connection is queued without a verdict: the
// kernel's data-ready hook skips a socket that has no file yet. The verdict runs when the
// application first reads (tcp_bpf_recvmsg_parser runs the data-ready hook itself), and nothing may
// reach the application unjudged. The server here accepts only when the test opens its gate, after
// TCP has queued the request (its Recv-Q shows the bytes).
func TestPrivilegedRequestsSentBeforeAcceptAreJudged(t *testing.T) {
	requireRoot(t)
	t.Setenv("L7_TEST_SERVER_GATED", "1")
	e := newTestEnv(t)
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/allowed(/.*)?"`}})
	e.startServer(t, port, false)

	early := func(request string) net.Conn {
		t.Helper()
		c := e.dial(t, port, false)
		if _, err := io.WriteString(c, request); err != nil {
			t.Fatal(err)
		}
		e.waitServerRecvQ(t, c, len(request)) // queued, not judged, not accepted
		e.acceptOne(t)
		return c
	}

	t.Run("an allowed request is served", func(t *testing.T) {
		c := early(req("GET", "/allowed/early"))
		expectStatuses(t, c, http.StatusOK)
		e.waitSeen(t, "/allowed/early")
		if q := e.serverRecvQOf(t, c); q != 0 {
			t.Fatalf("server Recv-Q %d after the request was served, want 0\nserver sockets:\n%s", q, e.serverSockets())
		}
	})
	t.Run("the start of a request is held until the rest arrives", func(t *testing.T) {
		body := strings.Repeat("e", 40)
		c := early("POST /allowed/early-split HTTP/1.1\r\nHost: server\r\nContent-Len")
		time.Sleep(100 * time.Millisecond) // the server reads: the verdict holds the piece
		if e.sawTarget("/allowed/early-split") {
			t.Fatal("the server saw an incomplete request")
		}
		io.WriteString(c, fmt.Sprintf("gth: %d\r\n\r\n%s", len(body), body))
		expectStatuses(t, c, http.StatusOK)
		e.waitSeen(t, "/allowed/early-split") // the server's report can come after its answer
		if got, ok := e.sawBody("/allowed/early-split"); !ok || got != bodyOf(body) {
			t.Fatalf("server saw body %q (%v), want %q", got, ok, bodyOf(body))
		}
		if q := e.serverRecvQOf(t, c); q != 0 {
			t.Fatalf("server Recv-Q %d after the request was served, want 0\nserver sockets:\n%s", q, e.serverSockets())
		}
	})
	t.Run("a denied request is answered and never seen", func(t *testing.T) {
		request := req("POST", "/secret/early", "Content-Length: 100") + strings.Repeat("b", 100)
		c := early(request)
		e.expectForbidden(t, c, "/secret/early")
		// The kernel counts the answered segment as read when the verdict runs (tcp_eat_skb), but
		// on this path tcp_bpf_recvmsg_parser then writes back the read cursor it saved before
		// running the verdict, so the segment stays counted as unread (bpf/README.md, "Not done
		// yet"). Either count is accepted; anything else would be this project's error.
		if q := e.serverRecvQOf(t, c); q != 0 && q != len(request) {
			t.Fatalf("server Recv-Q %d on the answered connection, want 0 or %d\nserver sockets:\n%s", q, len(request), e.serverSockets())
		} else {
			t.Logf("server Recv-Q on the answered connection: %d of %d bytes", q, len(request))
		}
	})
	t.Run("a denied request too short to answer is reset and never seen", func(t *testing.T) {
		c := early("GET /secret/x HTTP/1.1\r\n\r\n")
		e.expectDenied(t, c, "/secret/x")
	})
}

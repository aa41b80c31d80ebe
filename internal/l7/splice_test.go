package l7

import (
	"testing"
	"time"
)

// A server that reads its socket with splice(2) (a TCP proxy; Go's io.Copy from one TCP connection
// to another) reads the socket's receive queue directly (tcp_splice_read), where the kernel's
// receive path for a socket in a SOCKHASH leaves nothing: every segment went to the verdict program
// and what it passed waits in the psock's queue, which only recvmsg reads. Judged at its own socket,
// such a server gets nothing (this test fails when a kernel changes that; docs/limitations.md says
// so); judged at the client's socket (a client on its node), it serves.
func TestPrivilegedSplicingServers(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	if err := e.l.objs.L7Config.Update(uint32(0), uint32(configAtSource), 0); err != nil {
		t.Fatal(err)
	}
	t.Setenv("L7_TEST_SERVER_SPLICE", "1")
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
	e.startServer(t, port, false)

	t.Run("judged at the server's socket, it gets nothing", func(t *testing.T) {
		c := e.dial(t, port, false)
		writeParts(t, c, req("GET", "/allowed/splice-at-server"))
		codes, _, _, err := responses(c, 1, time.Second)
		if len(codes) != 0 || e.sawTarget("/allowed/splice-at-server") {
			t.Fatalf("statuses %v (%v), server saw %q: splice(2) now reads what the verdict program passed; update docs/limitations.md", codes, err, e.seen)
		}
	})
	t.Run("judged at the client's socket, it serves", func(t *testing.T) {
		e.trustClient(t)
		got := e.runClientEnv(t, port, false, 0, []string{"L7_TEST_CLIENT_STATUS=1"}, req("GET", "/allowed/splice-at-source"))
		if len(got) < 2 || got[1] != `status 200 "ok"` {
			t.Fatalf("client said %q; want a 200", got)
		}
		e.waitSeen(t, "/allowed/splice-at-source")
	})
}

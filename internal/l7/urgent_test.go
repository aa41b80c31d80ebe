package l7

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// urgentSmuggle is a body of n bytes, each to be written as urgent data (MSG_OOB), and the bytes
// after it: a server reading with SO_OOBINLINE off (the default) never gets the urgent bytes in
// its stream, so it takes the first n bytes after them as the body. The rules, which see every byte
// written, judge those as the start of an allowed request whose header block goes on with a
// request hidden in it.
func urgentSmuggle(allowed, hidden string) (header string, n int, after string) {
	hide := "GET " + allowed + " HTTP/1.1\r\nX: "
	return req("POST", "/upload", "Content-Length: "+strconv.Itoa(len(hide))), len(hide), hide + req("GET", hidden)
}

// At the server's socket urgent bytes never hide a request. With direct delivery they reach the
// application in the stream, as the program judged them (the psock queue knows nothing of urgent
// data): both requests are answered. With the stream parser deliveries (redirect, pass;
// PORTCULLIS_L7_TEST_DELIVERY) the parser stops at the urgent byte (tcp_read_sock) and the
// connection stalls: nothing after it is delivered.
func TestPrivilegedUrgentDataAtTheServer(t *testing.T) {
	requireRoot(t)
	d := testDelivery(t)
	e := newTestEnvDelivery(t, d)
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload(/.*)?"`}})
	e.startServer(t, port, false)
	c := e.dial(t, port, false)
	header, n, after := urgentSmuggle("/allowed/s-urgent", "/secret-s-urgent")
	writeParts(t, c, header)
	for range n {
		if err := sendOOB(c, "u"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	writeParts(t, c, after)
	codes, _, _, err := responses(c, 2, 2*time.Second)
	t.Logf("statuses %v (%v), server saw %q", codes, err, e.seen)
	if e.sawTarget("/secret-s-urgent") {
		t.Fatal("the server saw /secret-s-urgent: a request the rules deny, hidden by urgent bytes")
	}
	if codes := fmt.Sprint(codes); d == DeliverDirect && codes != fmt.Sprint([]int{http.StatusOK, http.StatusOK}) {
		t.Fatalf("statuses %s, want the upload and the allowed request answered", codes)
	}
}

// expectUrgentRefused has the client helper (its socket judged by its own sk_msg program: egress
// rules, or a server's rules judged at source) write the urgentSmuggle bytes, the body one urgent
// byte per write, and checks that the egress guard dropped the urgent data and denied the
// connection, and that the server never saw the hidden request.
func (e *testEnv) expectUrgentRefused(t *testing.T, port uint16, env []string, allowed, hidden string) {
	t.Helper()
	before := e.counter(t, ReasonUrgent)
	denied, err := e.l.DeniedConnections()
	if err != nil {
		t.Fatal(err)
	}
	header, n, after := urgentSmuggle(allowed, hidden)
	writes := []string{header}
	for range n {
		writes = append(writes, "u")
	}
	writes = append(writes, after)
	got := e.runClientEnv(t, port, false, 20*time.Millisecond, append(env, "L7_TEST_CLIENT_OOB=1-"+strconv.Itoa(n)), writes...)
	t.Logf("client: %q", got)
	// The first urgent write is accepted (the guard sees its segment leave); once its segment has
	// left, the connection is denied and writes fail, the last one (the hidden request) included.
	if len(got) != n+3 || got[0] != "write ok" || got[1] != "write ok" || !strings.HasSuffix(got[n+1], "permission denied") {
		t.Fatalf("client said %q; want the header block and the first urgent byte accepted, and EACCES for the last write (server saw %q)", got, e.seen)
	}
	if e.counter(t, ReasonUrgent) == before {
		t.Fatal("the urgent counter did not move")
	}
	// The agent's reset sweep follows this count: no request event reports this deny.
	if n, err := e.l.DeniedConnections(); err != nil || n != denied+1 {
		t.Fatalf("denied connections %d (%v), want %d", n, err, denied+1)
	}
	time.Sleep(300 * time.Millisecond)
	if e.sawTarget(hidden) {
		t.Fatalf("the server saw %s: a request the rules deny, hidden by urgent bytes", hidden)
	}
}

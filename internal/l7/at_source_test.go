package l7

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/portcullis-dev/portcullis/internal/netns"
)

// With JudgeAtSource, a local client's socket judges the ingress rules of the local server it
// connects to (its sk_msg program), and the server's socket stays out of the stream parser. The
// client helper runs in the test cgroup, so its sockets are seen by sock_ops.
func TestPrivilegedIngressRulesJudgedAtSource(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	if err := e.l.setConfig(configAtSource); err != nil {
		t.Fatal(err)
	}
	t.Setenv("L7_TEST_SERVER_QUIET", "1") // GET /allowed/quiet is not reported by the server
	events := collectEvents(t, e.l)
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload"`}})
	e.startServer(t, port, false)
	status := []string{"L7_TEST_CLIENT_STATUS=1"}

	t.Run("a client whose network namespace is not trusted is judged at the server's socket", func(t *testing.T) {
		got := e.runClientEnv(t, port, false, 0, status, req("GET", "/allowed/s0"))
		if len(got) < 2 || got[1] != `status 200 "ok"` {
			t.Fatalf("client said %q", got)
		}
		if ev := events.wait(t, "/allowed/s0"); ev.AtSource {
			t.Fatalf("event %+v: judged at source although the client's namespace is not trusted", ev)
		}
	})
	e.trustClient(t)

	t.Run("an allowed request reaches the server, judged at the client's socket", func(t *testing.T) {
		got := e.runClientEnv(t, port, false, 0, status, req("GET", "/allowed/s1"))
		if len(got) < 2 || got[0] != "write ok" || got[1] != `status 200 "ok"` {
			t.Fatalf("client said %q; want the write accepted and a 200", got)
		}
		e.waitSeen(t, "/allowed/s1")
		ev := events.wait(t, "/allowed/s1")
		if !ev.AtSource || ev.Egress || ev.Verdict != VerdictAllowed || ev.EndpointID != 1 || ev.PeerIdentity != peer ||
			ev.Local.Addr() != e.srvAddr || ev.Local.Port() != port || ev.Remote.Addr() != e.cliAddr {
			t.Fatalf("event %+v: want allowed, judged at source, for endpoint 1 (local %s:%d) and peer %d (%s)", ev, e.srvAddr, port, peer, e.cliAddr)
		}
	})
	t.Run("a denied request gets 403 from the client's own socket; the server never sees it; sticky", func(t *testing.T) {
		got := e.runClientEnv(t, port, false, 0, status, longReq("GET", "/secret-s2"), req("GET", "/allowed/s2-after"))
		// The write after the answer is accepted and discarded, as the server's socket drops
		// what follows a request it answered: the client is not told EACCES before it reads.
		if len(got) < 3 || got[0] != "write ok" || got[1] != "write ok" || got[2] != `status 403 "Access denied"` {
			t.Fatalf("client said %q; want both writes accepted (the second discarded) and a 403", got)
		}
		ev := events.wait(t, "/secret-s2")
		if !ev.AtSource || ev.Verdict != VerdictDenied || ev.Response != ResponseForbidden || ev.Reason != ReasonNoRuleMatch {
			t.Fatalf("event %+v: want denied at source, answered 403, no rule matched", ev)
		}
		time.Sleep(200 * time.Millisecond)
		for _, target := range []string{"/secret-s2", "/allowed/s2-after"} {
			if e.sawTarget(target) {
				t.Fatalf("the server saw %s", target)
			}
		}
	})
	t.Run("a header block completed by the write that carries its short body", func(t *testing.T) {
		// The first write is corked (an incomplete header block); the bytes after the header block
		// in the second are fewer than that first cork asked for.
		got := e.runClientEnv(t, port, false, 0, status,
			"POST /upload HTTP/1.1\r\nHost: server\r\nX-Padding: "+strings.Repeat("p", 40)+"\r\nContent-Length: 5\r\n", "\r\nhello")
		if len(got) < 3 || got[2] != `status 200 "ok"` {
			t.Fatalf("client said %q; want both writes accepted and a 200", got)
		}
		e.waitSeen(t, "/upload")
		if body, _ := e.sawBody("/upload"); body != bodyOf("hello") {
			t.Fatalf("the server saw body %q, want %q", body, bodyOf("hello"))
		}
	})
	t.Run("a request written before the connection was established is judged at the server's socket", func(t *testing.T) {
		// TCP Fast Open: the request is written before the client's socket can judge it (see
		// the egress test); such a connection is left to the server's socket.
		setSysctlIn(t, e.srvNS, "/proc/sys/net/ipv4/tcp_fastopen", "1538")
		setSysctlIn(t, e.cliNS, "/proc/sys/net/ipv4/tcp_fastopen", "5")
		defer setSysctlIn(t, e.cliNS, "/proc/sys/net/ipv4/tcp_fastopen", "1")
		fastOpen := append([]string{"L7_TEST_CLIENT_TFO=1"}, status...)
		before := e.counter(t, ReasonFastOpen)
		got := e.runClientEnv(t, port, false, 0, fastOpen, req("GET", "/allowed/s-tfo"))
		if len(got) < 2 || got[1] != `status 200 "ok"` {
			t.Fatalf("client said %q; want a 200", got)
		}
		if ev := events.wait(t, "/allowed/s-tfo"); ev.AtSource {
			t.Fatalf("event %+v: judged at source, from bytes its socket never saw", ev)
		}
		got = e.runClientEnv(t, port, false, 0, fastOpen, longReq("GET", "/secret-s-tfo"))
		t.Logf("client: %q", got)
		if ev := events.wait(t, "/secret-s-tfo"); ev.AtSource || ev.Verdict != VerdictDenied {
			t.Fatalf("event %+v: want denied at the server's socket", ev)
		}
		if e.sawTarget("/secret-s-tfo") {
			t.Fatal("the server saw /secret-s-tfo")
		}
		if n := e.counter(t, ReasonFastOpen) - before; n != 2 {
			t.Fatalf("fast-open counted %d connections, want 2", n)
		}
	})
	t.Run("a write waiting for the connection is judged at the server's socket", func(t *testing.T) {
		// sendto(MSG_FASTOPEN) without a Fast Open cookie, and a blocking write during a connect
		// (to a server whose full accept queue makes the handshake take a second): both write
		// from the plain TCP send, past the client's sk_msg program (see the egress test).
		const slowPort = 8082
		e.judge(t, slowPort, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
		release := e.startFullServer(t, slowPort)
		for _, c := range []struct {
			mode, target string
			allowed      bool
		}{{"sendto", "/allowed/s-sendto", true}, {"sendto", "/secret-s-sendto", false}, {"early", "/allowed/s-early", true}} {
			p := uint16(port)
			if c.mode == "early" {
				p = slowPort
				go func() {
					time.Sleep(600 * time.Millisecond) // the client has started and sent its SYN
					release()
				}()
			}
			before := e.counter(t, ReasonFastOpen)
			got := e.runClientEnv(t, p, false, 0, append([]string{"L7_TEST_CLIENT_TFO=" + c.mode}, status...), longReq("GET", c.target))
			t.Logf("%s: client: %q", c.mode, got)
			if n := e.counter(t, ReasonFastOpen) - before; n != 1 {
				t.Fatalf("%s: fast-open counted %d connections, want 1", c.mode, n)
			}
			ev := events.wait(t, c.target)
			if ev.AtSource {
				t.Fatalf("%s: event %+v: judged at source, from bytes its socket never saw", c.mode, ev)
			}
			if c.allowed {
				if len(got) < 2 || got[1] != `status 200 "ok"` {
					t.Fatalf("%s: client said %q; want a 200", c.mode, got)
				}
				continue
			}
			if ev.Verdict != VerdictDenied {
				t.Fatalf("%s: event %+v: want denied at the server's socket", c.mode, ev)
			}
			if e.sawTarget(c.target) {
				t.Fatalf("%s: the server saw %s", c.mode, c.target)
			}
		}
	})
	t.Run("urgent data cannot hide a request from the rules judged at source", func(t *testing.T) {
		e.expectUrgentRefused(t, port, nil, "/allowed/s-urgent", "/secret-s-urgent")
	})
	t.Run("a path with a dot segment gets 403 from the client's own socket", func(t *testing.T) {
		const target = "/allowed/%2e%2e/secret-s2-dots"
		before := e.counter(t, ReasonDotSegment)
		got := e.runClientEnv(t, port, false, 0, status, longReq("GET", target))
		if len(got) < 2 || got[0] != "write ok" || got[1] != `status 403 "Access denied"` {
			t.Fatalf("client said %q; want the write accepted and a 403", got)
		}
		if ev := events.wait(t, target); !ev.AtSource || ev.Verdict != VerdictDenied || ev.Response != ResponseForbidden || ev.Reason != ReasonDotSegment {
			t.Fatalf("event %+v: want denied at source for the dot segment, answered 403", ev)
		}
		e.expectUnseen(t, target, ReasonDotSegment, before)
	})
	// Go's, Python's and Node's clients write a small body in the same write as its header
	// block; 100 KB and 4 MiB ones span several runs of the program.
	for _, size := range []int{3, 100_000, 4 << 20} {
		t.Run(fmt.Sprintf("a denied request written whole with a %d-byte body gets 403 and its write succeeds", size), func(t *testing.T) {
			target := fmt.Sprintf("/secret-body-%d", size)
			w := req("POST", target, "User-Agent: portcullis-test/1.0 (l7)", "Content-Length: "+strconv.Itoa(size))
			got := e.runClientEnv(t, port, false, 0, append(status, "L7_TEST_CLIENT_APPEND="+strconv.Itoa(size)), w)
			if len(got) < 2 || got[0] != "write ok" || got[1] != `status 403 "Access denied"` {
				t.Fatalf("client said %q; want the whole write accepted and a 403", got)
			}
			if ev := events.wait(t, target); ev.Response != ResponseForbidden || !ev.AtSource {
				t.Fatalf("event %+v: want denied at source, answered 403", ev)
			}
			time.Sleep(200 * time.Millisecond)
			if e.sawTarget(target) {
				t.Fatal("the server saw the denied request")
			}
		})
	}
	t.Run("a request too short to rewrite in place still gets a 403 (the message is grown)", func(t *testing.T) {
		short := "GET /s3 HTTP/1.1\r\n\r\n"
		got := e.runClientEnv(t, port, false, 0, status, short)
		if len(got) < 2 || got[0] != "write ok" || got[1] != `status 403 "Access denied"` {
			t.Fatalf("client said %q; want a 403", got)
		}
	})
	t.Run("a denied request pipelined behind an unanswered one is not answered ahead of it", func(t *testing.T) {
		got := e.runClientEnv(t, port, false, 0, status, req("GET", "/allowed/s4")+longReq("GET", "/secret-s4"))
		t.Logf("client: %q", got)
		var codes []string
		for _, l := range got {
			if strings.HasPrefix(l, "status ") {
				codes = append(codes, l)
			}
		}
		if len(codes) != 1 || codes[0] != `status 200 "ok"` {
			t.Fatalf("client read %q; want only the 200 of the allowed request (the denied one is refused, not answered early)", codes)
		}
		e.waitSeen(t, "/allowed/s4")
		if ev := events.wait(t, "/secret-s4"); ev.Response != ResponseReset || !ev.AtSource {
			t.Fatalf("event %+v: want denied at source, to be reset", ev)
		}
		if e.sawTarget("/secret-s4") {
			t.Fatal("the server saw the denied request")
		}
	})
	t.Run("a denied request after an answered keep-alive request gets 403", func(t *testing.T) {
		got := e.runClientEnv(t, port, false, 0, append(status, "L7_TEST_CLIENT_READ_BETWEEN=1"),
			req("GET", "/allowed/s6"), longReq("GET", "/secret-s6"))
		want := []string{"write ok", `status 200 "ok"`, "write ok", `status 403 "Access denied"`}
		if len(got) < 4 || strings.Join(got[:4], "\n") != strings.Join(want, "\n") {
			t.Fatalf("client said %q, want %q", got, want)
		}
	})
	t.Run("20,000 keep-alive requests, each answered", func(t *testing.T) {
		got := e.runClientEnv(t, port, false, 0, []string{"L7_TEST_CLIENT_LOOP=20000"})
		if len(got) != 1 || got[0] != "loop ok 20000" {
			t.Fatalf("client said %q", got)
		}
	})
	t.Run("requests after a 4 MiB upload are judged", func(t *testing.T) {
		e.expectRequestsAfterUploadsJudged(t, port, events, true)
	})
	t.Run("writes racing the connection's establishment are never sent unjudged", func(t *testing.T) {
		e.expectRacingWritesRefused(t, port, "/secret-s-race")
	})
	t.Run("a client with egress rules of its own for the port is judged at the server's socket for ingress", func(t *testing.T) {
		const both = 8081
		e.judge(t, both, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
		e.judgeEgress(t, e.cliAddr, both, `method="GET"`)
		e.startServer(t, both, false)
		got := e.runClientEnv(t, both, false, 0, status, req("GET", "/allowed/s7"))
		if len(got) < 2 || got[1] != `status 200 "ok"` {
			t.Fatalf("client said %q", got)
		}
		var egress, ingress bool
		deadline := time.Now().Add(2 * time.Second)
		for !(egress && ingress) && time.Now().Before(deadline) {
			events.mu.Lock()
			for _, ev := range events.events {
				if ev.Path == "/allowed/s7" {
					egress = egress || (ev.Egress && ev.EndpointID == 2)
					ingress = ingress || (!ev.Egress && !ev.AtSource && ev.EndpointID == 1)
				}
			}
			events.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
		if !egress || !ingress {
			t.Fatalf("events for /allowed/s7: egress at the client %v, ingress at the server %v; want both", egress, ingress)
		}
	})
	t.Run("ResetAtSource resets the connections judged at source in a namespace", func(t *testing.T) {
		done := make(chan []string)
		go func() {
			done <- e.runClientEnv(t, port, false, 1500*time.Millisecond, status, req("GET", "/allowed/s8a"), req("GET", "/allowed/s8b"))
		}()
		e.waitSeen(t, "/allowed/s8a")
		if err := e.l.ResetAtSource("/run/netns/" + e.cliNS); err != nil {
			t.Fatal(err)
		}
		got := <-done
		t.Logf("client: %q", got)
		if len(got) < 2 || !strings.HasSuffix(got[1], "software caused connection abort") {
			t.Fatalf("client said %q; want its second write to fail on the aborted connection", got)
		}
		time.Sleep(200 * time.Millisecond)
		if e.sawTarget("/allowed/s8b") {
			t.Fatal("the server saw a request written after the reset")
		}
	})
	// (Before the guard case: its connection cannot close while the guard drops its data.)
	t.Run("closed connections leave no state behind", func(t *testing.T) {
		deadline := time.Now().Add(3 * time.Second)
		for {
			n := 0
			var k httpL7Tuple
			var v uint64
			it := e.l.objs.L7AtSource.Iterate()
			for it.Next(&k, &v) {
				n++
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d entries left in l7_at_source", n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("the server's guard drops the data if the client's socket leaves the judged set", func(t *testing.T) {
		drops := e.counter(t, ReasonGuardDrop)
		done := make(chan []string)
		go func() {
			done <- e.runClientEnv(t, port, false, 1500*time.Millisecond, status, req("GET", "/allowed/s5a"), req("GET", "/allowed/s5b"))
		}()
		e.waitSeen(t, "/allowed/s5a")
		// Take the client's socket out of l7_egress_socks (its cookie is in l7_at_source).
		var k httpL7Tuple
		var cookie uint64
		removed := 0
		it := e.l.objs.L7AtSource.Iterate()
		for it.Next(&k, &cookie) {
			if err := e.l.objs.L7EgressSocks.Delete(cookie); err == nil {
				removed++
			}
		}
		if removed != 1 {
			t.Fatalf("removed %d client sockets from l7_egress_socks, want 1", removed)
		}
		t.Logf("client: %q", <-done)
		e.expectUnseen(t, "/allowed/s5b", ReasonGuardDrop, drops)
	})
}

// trustClient says that the client's network namespace may be judged at source, as the agent's
// TrustScanner does for namespaces where no process can hold CAP_NET_RAW or CAP_NET_ADMIN.
func (e *testEnv) trustClient(t *testing.T) {
	t.Helper()
	cookie, err := netns.Cookie("/run/netns/" + e.cliNS)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.l.SetTrustedNetns(map[uint64]bool{cookie: true}); err != nil {
		t.Fatal(err)
	}
}

// expectUnseen checks, after a moment, that the server never saw target and that the kernel
// counted reason since it stood at before (what stopped it).
func (e *testEnv) expectUnseen(t *testing.T, target string, reason Reason, before uint64) {
	t.Helper()
	time.Sleep(200 * time.Millisecond)
	if e.sawTarget(target) {
		t.Fatalf("the server saw %s", target)
	}
	if e.counter(t, reason) == before {
		t.Fatalf("the kernel counted no %s: what stopped %s?", reason, target)
	}
}

// setConfig makes l7_config cfg, with the judged-port bits it has (what Load writes for the options
// cfg stands for), and keeps the L7 in step, so that SetPort and Converge keep cfg.
func (l *L7) setConfig(cfg uint32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.config = cfg | l.config&(configIngressPorts|configEgressPorts)
	return l.objs.L7Config.Update(uint32(0), l.config, ebpf.UpdateAny)
}

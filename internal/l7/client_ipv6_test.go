package l7

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// The client side over IPv6: egress rules judged at the client's socket (a deny fails the write
// with EACCES), and a local server's ingress rules judged at its client's socket (a deny answered
// with 403, a body written with the header block included).
func TestPrivilegedClientSideOverIPv6(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	if err := e.l.setConfig(configAtSource); err != nil {
		t.Fatal(err)
	}
	t.Setenv("L7_TEST_SERVER_QUIET", "1")
	events := collectEvents(t, e.l)
	const egressPort, ingressPort, peer = 8092, 8093, 5000
	e.judgeEgress(t, e.cliAddr6, egressPort, `method="GET" path="/allowed(/.*)?"`)
	if err := e.l.SetPort(e.srvAddr6, ingressPort, 1); err != nil {
		t.Fatal(err)
	}
	if err := e.l.SetRules(RuleKey{EndpointID: 1, PeerIdentity: peer, Port: ingressPort}, []string{`method="GET" path="/allowed(/.*)?"`}); err != nil {
		t.Fatal(err)
	}
	if err := e.l.SetIdentity(netip.PrefixFrom(e.cliAddr6, 128), peer); err != nil {
		t.Fatal(err)
	}
	e.trustClient(t)
	for _, port := range []uint16{egressPort, ingressPort} {
		e.startServerAt(t, "tcp6", netip.AddrPortFrom(e.srvAddr6, port).String(), false)
	}
	to := func(port uint16) []string {
		return []string{"L7_TEST_CLIENT_STATUS=1", "L7_TEST_CLIENT=" + netip.AddrPortFrom(e.srvAddr6, port).String()}
	}

	t.Run("egress rules: an allowed request is sent, a denied one fails the write", func(t *testing.T) {
		got := e.runClientEnv(t, egressPort, false, 0, to(egressPort), req("GET", "/allowed/v6-e1"))
		if len(got) < 2 || got[0] != "write ok" || got[1] != `status 200 "ok"` {
			t.Fatalf("client said %q; want the request sent and answered", got)
		}
		if ev := events.wait(t, "/allowed/v6-e1"); !ev.Egress || ev.Verdict != VerdictAllowed || ev.Local.Addr() != e.cliAddr6 || ev.Remote.Addr() != e.srvAddr6 {
			t.Fatalf("event %+v: want an allowed egress request from %s to %s", ev, e.cliAddr6, e.srvAddr6)
		}
		got = e.runClientEnv(t, egressPort, false, 0, to(egressPort), req("GET", "/secret-v6-e2"))
		if len(got) < 1 || !strings.HasSuffix(got[0], "permission denied") {
			t.Fatalf("client said %q; want EACCES", got)
		}
		time.Sleep(200 * time.Millisecond)
		if e.sawTarget("/secret-v6-e2") {
			t.Fatal("the server saw the denied request")
		}
	})
	t.Run("ingress rules at source: allowed, and a denied request with its body gets 403", func(t *testing.T) {
		got := e.runClientEnv(t, ingressPort, false, 0, to(ingressPort), req("GET", "/allowed/v6-s1"))
		if len(got) < 2 || got[1] != `status 200 "ok"` {
			t.Fatalf("client said %q", got)
		}
		if ev := events.wait(t, "/allowed/v6-s1"); !ev.AtSource || ev.Local.Addr() != e.srvAddr6 || ev.Remote.Addr() != e.cliAddr6 {
			t.Fatalf("event %+v: want judged at source, the server %s as the endpoint", ev, e.srvAddr6)
		}
		got = e.runClientEnv(t, ingressPort, false, 0, to(ingressPort), req("POST", "/secret-v6-s2", "Content-Length: 5")+"hello")
		if len(got) < 2 || got[0] != "write ok" || got[1] != `status 403 "Access denied"` {
			t.Fatalf("client said %q; want the write accepted and a 403", got)
		}
		if ev := events.wait(t, "/secret-v6-s2"); !ev.AtSource || ev.Response != ResponseForbidden {
			t.Fatalf("event %+v: want denied at source, answered 403", ev)
		}
		time.Sleep(200 * time.Millisecond)
		if e.sawTarget("/secret-v6-s2") {
			t.Fatal("the server saw the denied request")
		}
	})
}

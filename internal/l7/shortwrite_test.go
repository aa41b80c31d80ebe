package l7

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// smuggleAfterShortWrite is the client helper's L7_TEST_CLIENT_SHORT_WRITE mode: on a non-blocking
// socket with a small send buffer it writes an allowed upload (header block and a 300,000-byte
// body) in one write, which the kernel takes only in part; then, as the next write, the rest of
// the body followed by smuggle. It reports how many bytes the first write took.
func smuggleAfterShortWrite(addr, smuggle string) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err.Error()
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return err.Error()
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 8192); err != nil {
		return err.Error()
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil && err != unix.EINPROGRESS {
		return err.Error()
	}
	writable := func() {
		unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, 2000)
	}
	writable()
	const bodyLen = 300000
	first := "POST /upload HTTP/1.1\r\nHost: server\r\nContent-Length: " + strconv.Itoa(bodyLen) + "\r\n\r\n" + strings.Repeat("u", bodyLen)
	n, err := unix.Write(fd, []byte(first))
	if err != nil || n >= len(first) {
		return fmt.Sprintf("not short: %d of %d, %v", n, len(first), err)
	}
	rest := []byte(first[n:] + smuggle)
	for len(rest) > 0 {
		writable()
		k, err := unix.Write(fd, rest)
		if err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return fmt.Sprintf("short %d, then %v", n, err)
		}
		rest = rest[k:]
	}
	time.Sleep(300 * time.Millisecond) // the server reads before the connection closes
	return fmt.Sprintf("short %d", n)
}

// The kernel's sk_msg send path reuses a verdict after a short write: when pushing the bytes a
// verdict passed stops part way (the send buffer of a non-blocking socket is full, or a signal),
// tcp_bpf_send_verdict frees the rest of the message and returns the short count, but leaves the
// verdict and its apply size in place. The application's next write is then sent under that old
// verdict, up to the old apply size, without the program seeing it. Here the first write is an
// allowed upload whose body the verdict passes (apply: the body's length); the next write holds
// the rest of the body and then a denied request, which leaves under the body's verdict.
// So a client judged at its own socket (egress rules, or the server's rules judged at source) can
// send a request no program judged. The server's socket judges what TCP received, whatever the
// writes: the same client is denied there. The first two subtests characterize the kernel (they
// fail when it stops reusing the verdict, and the docs must then change); the third is the
// enforcement that holds.
func TestPrivilegedShortWritesReuseTheClientSocketsVerdict(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	events := collectEvents(t, e.l)
	rules := []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload"`}
	const egressPort, ingressPort, peer = 8090, 8080, 5000
	if err := e.l.SetEgressPort(e.cliAddr, egressPort, 2); err != nil {
		t.Fatal(err)
	}
	if err := e.l.SetRules(RuleKey{EndpointID: 2, Port: egressPort, Egress: true}, rules); err != nil {
		t.Fatal(err)
	}
	e.judge(t, ingressPort, peer, RuleSet{Rules: rules})
	e.startServer(t, egressPort, false)
	e.startServer(t, ingressPort, false)
	smuggle := func(t *testing.T, port uint16, target string) {
		t.Helper()
		got := e.runClientEnv(t, port, false, 0, []string{"L7_TEST_CLIENT_SHORT_WRITE=1"}, req("GET", target))
		t.Logf("client: %q", got)
		if len(got) != 1 || !strings.HasPrefix(got[0], "short-write short ") {
			t.Fatalf("client said %q; want a short first write", got)
		}
		e.waitSeen(t, "/upload")
	}

	t.Run("egress rules: the request after the body leaves under the body's verdict", func(t *testing.T) {
		smuggle(t, egressPort, "/secret-sw-egress")
		e.waitSeen(t, "/secret-sw-egress")
		time.Sleep(500 * time.Millisecond) // events are read every EventPollInterval
		if ev, ok := events.find("/secret-sw-egress"); ok {
			t.Fatalf("the smuggled request was judged: %+v", ev)
		}
	})
	t.Run("the server's socket judges the same writes: the request after the body is denied", func(t *testing.T) {
		smuggle(t, ingressPort, "/secret-sw-server")
		if ev := events.wait(t, "/secret-sw-server"); ev.Verdict != VerdictDenied || ev.AtSource {
			t.Fatalf("event %+v: want denied at the server's socket", ev)
		}
		time.Sleep(200 * time.Millisecond)
		if e.sawTarget("/secret-sw-server") {
			t.Fatal("the server saw /secret-sw-server")
		}
	})
	t.Run("judged at source: the request after the body leaves under the body's verdict", func(t *testing.T) {
		if err := e.l.objs.L7Config.Update(uint32(0), uint32(configAtSource), 0); err != nil {
			t.Fatal(err)
		}
		defer e.l.objs.L7Config.Update(uint32(0), uint32(0), 0)
		e.trustClient(t)
		smuggle(t, ingressPort, "/secret-sw-source")
		e.waitSeen(t, "/secret-sw-source")
		time.Sleep(500 * time.Millisecond)
		if _, ok := events.findFunc(func(ev Event) bool { return ev.Path == "/upload" && ev.AtSource }); !ok {
			t.Fatal("no event for the upload judged at source")
		}
		if ev, ok := events.find("/secret-sw-source"); ok {
			t.Fatalf("the smuggled request was judged: %+v", ev)
		}
	})
}

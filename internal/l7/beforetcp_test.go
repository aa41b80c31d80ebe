package l7

import (
	"encoding/binary"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portcullis-dev/portcullis/internal/netns"
)

// newBeforeTCPEnv is newTestEnv with the judging before TCP on (Options.JudgeBeforeTCP) and l7_fast
// attached to the server namespace's interfaces.
func newBeforeTCPEnv(t testing.TB) *testEnv {
	t.Helper()
	return newTestEnvOptions(t, Options{Delivery: DeliverDirect, JudgeBeforeTCP: true})
}

// startBeforeTCPServer is newBeforeTCPEnv with the helper server on port 8080 in the mode its
// environment variable mode (set to 1) asks for, GET /allowed/... allowed from the client.
func startBeforeTCPServer(t *testing.T, mode string) *testEnv {
	t.Helper()
	requireRoot(t)
	t.Setenv(mode, "1")
	e := newBeforeTCPEnv(t)
	e.judge(t, 8080, 5000, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
	e.startServer(t, 8080, false)
	return e
}

// fastCounts are the counters that tell where a connection judged before TCP was judged.
type fastCounts struct{ passed, handed, wait, guard uint64 }

func (e *testEnv) fastCounts(t testing.TB) fastCounts {
	t.Helper()
	return fastCounts{e.counter(t, ReasonFastPassed), e.counter(t, ReasonFastHanded), e.counter(t, ReasonFastWait),
		e.counter(t, ReasonGuardDrop)}
}

// sub is what the counters moved by since before.
func (c fastCounts) sub(before fastCounts) fastCounts {
	return fastCounts{c.passed - before.passed, c.handed - before.handed, c.wait - before.wait, c.guard - before.guard}
}

// A server's connection judged before TCP: requests that come whole, one per segment (with their
// bodies in any number of segments), are judged and passed at the pod's interface, and the socket
// never enters the SOCKHASH with programs; everything else hands the connection to the socket's
// verdict program, which judges it as it judges any connection (403, holds, framing of pipelined
// requests and chunked bodies). Either way each request is judged once, by its own bytes.
func TestPrivilegedJudgedBeforeTCP(t *testing.T) {
	requireRoot(t)
	e := newBeforeTCPEnv(t)
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload(/.*)?"`}})
	e.startServer(t, port, false)
	events := collectEvents(t, e.l)

	t.Run("whole requests stay before TCP", func(t *testing.T) {
		before := e.fastCounts(t)
		c := e.dial(t, port, false)
		for _, target := range []string{"/allowed/1", "/allowed/2"} {
			writeParts(t, c, req("GET", target))
			expectStatuses(t, c, http.StatusOK)
			e.waitSeen(t, target)
		}
		// A body in three segments, the header block whole in the first.
		body := strings.Repeat("b", 3000)
		writeParts(t, c, req("POST", "/upload/parts", "Content-Length: 3000")+body[:1000], body[1000:2000], body[2000:])
		expectStatuses(t, c, http.StatusOK)
		e.waitSeen(t, "/upload/parts")
		if got, _ := e.sawBody("/upload/parts"); got != bodyOf(body) {
			t.Fatalf("the server saw body %q, want %q", got, bodyOf(body))
		}
		writeParts(t, c, req("GET", "/allowed/3"))
		expectStatuses(t, c, http.StatusOK)
		d := e.fastCounts(t).sub(before)
		if d.passed < 6 || d.handed != 0 || d.wait != 0 {
			t.Fatalf("counters moved by %+v: want at least 6 segments passed before TCP, no hand-over, no wait", d)
		}
		if n := mapLen(t, e.l.objs.L7Socks); n != 0 {
			t.Fatalf("%d sockets in l7_socks, want none", n)
		}
		// The requests are reported as any judged request is.
		if ev := events.wait(t, "/allowed/3"); ev.Verdict != VerdictAllowed || ev.Method != "GET" || ev.Port != port ||
			ev.Local.Addr() != e.srvAddr || ev.Remote.Addr() != e.cliAddr || ev.Rule != 0 {
			t.Fatalf("event %+v", ev)
		}
	})

	t.Run("IPv6", func(t *testing.T) {
		const port6 = 8086
		e.startServerAt(t, "tcp6", netip.AddrPortFrom(e.srvAddr6, port6).String(), false)
		if err := e.l.SetPort(e.srvAddr6, port6, 1); err != nil {
			t.Fatal(err)
		}
		if err := e.l.SetRuleSet(RuleKey{EndpointID: 1, PeerIdentity: peer, Port: port6}, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}}); err != nil {
			t.Fatal(err)
		}
		if err := e.l.SetIdentity(netip.PrefixFrom(e.cliAddr6, 128), peer); err != nil {
			t.Fatal(err)
		}
		before := e.fastCounts(t)
		c := e.dialAddr(t, netip.AddrPortFrom(e.srvAddr6, port6), false)
		writeParts(t, c, req("GET", "/allowed/v6"))
		expectStatuses(t, c, http.StatusOK)
		writeParts(t, c, req("GET", "/secret/v6"))
		e.expectForbidden(t, c, "/secret/v6")
		if d := e.fastCounts(t).sub(before); d.passed != 1 || d.handed != 1 {
			t.Fatalf("counters moved by %+v: want one segment passed before TCP, then one hand-over", d)
		}
		if ev := events.wait(t, "/allowed/v6"); ev.Local.Addr() != e.srvAddr6 || ev.Remote.Addr() != e.cliAddr6 {
			t.Fatalf("event %+v", ev)
		}
	})

	t.Run("a denied request is answered by the socket", func(t *testing.T) {
		before := e.fastCounts(t)
		c := e.dial(t, port, false)
		writeParts(t, c, req("GET", "/allowed/before-deny"))
		expectStatuses(t, c, http.StatusOK)
		writeParts(t, c, req("GET", "/secret"))
		e.expectForbidden(t, c, "/secret")
		if d := e.fastCounts(t).sub(before); d.handed != 1 {
			t.Fatalf("counters moved by %+v: want one hand-over", d)
		}
	})

	t.Run("a header block in pieces is judged once whole", func(t *testing.T) {
		before := e.fastCounts(t)
		c := e.dial(t, port, false)
		writeParts(t, c, req("GET", "/allowed/first"))
		expectStatuses(t, c, http.StatusOK)
		r := req("GET", "/allowed/in-pieces")
		writeParts(t, c, r[:7], r[7:20], r[20:])
		expectStatuses(t, c, http.StatusOK)
		e.waitSeen(t, "/allowed/in-pieces")
		// The same, denied: the pieces never reach the server.
		r = req("GET", "/secret/in-pieces")
		writeParts(t, c, r[:7], r[7:])
		e.expectForbidden(t, c, "/secret/in-pieces")
		if d := e.fastCounts(t).sub(before); d.handed != 1 {
			t.Fatalf("counters moved by %+v: want one hand-over", d)
		}
	})

	t.Run("a header block of exactly the scan limit is judged once whole", func(t *testing.T) {
		c := e.dial(t, port, false)
		writeParts(t, c, sizedReq("/allowed/at-limit", ScanLimit))
		expectStatuses(t, c, http.StatusOK)
		e.waitSeen(t, "/allowed/at-limit")
		c2 := e.dial(t, port, false)
		writeParts(t, c2, sizedReq("/allowed/over-limit", ScanLimit+1))
		e.expectDenied(t, c2, "/allowed/over-limit")
	})

	t.Run("pipelined requests and chunked bodies are framed by the socket", func(t *testing.T) {
		c := e.dial(t, port, false)
		writeParts(t, c, req("GET", "/allowed/p1")+req("GET", "/allowed/p2"))
		expectStatuses(t, c, http.StatusOK, http.StatusOK)
		c2 := e.dial(t, port, false)
		writeParts(t, c2, req("POST", "/upload/chunked", "Transfer-Encoding: chunked")+"5\r\nhello\r\n0\r\n\r\n")
		expectStatuses(t, c2, http.StatusOK)
		// A request hidden after an allowed one in the same segment is judged by its own bytes.
		c3 := e.dial(t, port, false)
		writeParts(t, c3, req("GET", "/allowed/p3")+req("GET", "/secret/pipelined"))
		expectStatuses(t, c3, http.StatusOK)
		if n, _ := readResponses(c3, 1, time.Second); n != 0 {
			t.Fatal("the pipelined denied request got a 200")
		}
		for _, target := range []string{"/allowed/p1", "/allowed/p2", "/upload/chunked", "/allowed/p3"} {
			e.waitSeen(t, target)
		}
		if e.sawTarget("/secret/pipelined") {
			t.Fatal("the server saw /secret/pipelined")
		}
	})

	t.Run("keep-alive across a policy change", func(t *testing.T) {
		c := e.dial(t, port, false)
		writeParts(t, c, req("GET", "/allowed/before-change"))
		expectStatuses(t, c, http.StatusOK)
		e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/other"`}})
		defer e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload(/.*)?"`}})
		writeParts(t, c, req("GET", "/allowed/after-change"))
		e.expectForbidden(t, c, "/allowed/after-change")
	})
}

// A thread-per-connection server waits for each request in a blocking read(2). A connection judged
// before TCP is in a SOCKHASH without programs from its start, so that such a reader waits in the
// SOCKHASH's receive path: when the connection is handed to its socket's verdict program (here by a
// header block in pieces), the reader is woken by what that program passes. A socket put in a
// SOCKHASH with programs only then would leave the reader asleep in TCP's own receive path, which
// never looks at what the verdict program queued.
func TestPrivilegedJudgedBeforeTCPWakesBlockingReaders(t *testing.T) {
	e := startBeforeTCPServer(t, "L7_TEST_SERVER_BLOCKING")
	const port = 8080
	before := e.fastCounts(t)
	c := e.dial(t, port, false)
	writeParts(t, c, req("GET", "/allowed/first"))
	expectStatuses(t, c, http.StatusOK)
	time.Sleep(200 * time.Millisecond) // the reader is back asleep in read(2)
	r := req("GET", "/allowed/in-pieces")
	writeParts(t, c, r[:9], r[9:])
	expectStatuses(t, c, http.StatusOK)
	e.waitSeen(t, "/allowed/in-pieces")
	if d := e.fastCounts(t).sub(before); d.passed < 1 || d.handed != 1 {
		t.Fatalf("counters moved by %+v: want the first request passed before TCP, then one hand-over", d)
	}
}

// The first request of a connection can complete the handshake (TCP_DEFER_ACCEPT drops the bare
// ACK, so the data segment's ACK does it; TCP Fast Open is tfo_test.go). That segment met l7_fast
// before the connection had state: such a connection is judged at its socket from its first byte.
func TestPrivilegedJudgedBeforeTCPLeavesHandshakeDataToTheSocket(t *testing.T) {
	e := startBeforeTCPServer(t, "L7_TEST_SERVER_DEFER")
	const port = 8080
	before := e.fastCounts(t)
	c := e.dial(t, port, false)
	writeParts(t, c, req("GET", "/secret/first"))
	e.expectForbidden(t, c, "/secret/first")
	c2 := e.dial(t, port, false)
	writeParts(t, c2, req("GET", "/allowed/first"))
	expectStatuses(t, c2, http.StatusOK)
	if d := e.fastCounts(t).sub(before); d.passed != 0 || d.handed != 0 {
		t.Fatalf("counters moved by %+v: the connections were judged before TCP", d)
	}
	if n := mapLen(t, e.l.objs.L7Socks); n != 2 {
		t.Fatalf("%d sockets in l7_socks, want the two connections", n)
	}
}

// sendTimestamped sends data as the segment at seq with a TCP timestamp option (TSval tsval).
func (in *injector) sendTimestamped(t *testing.T, seq uint32, data string, tsval uint32) {
	t.Helper()
	opt := make([]byte, 12)
	opt[0], opt[1], opt[2], opt[3] = 1, 1, 8, 10 // NOP, NOP, timestamps
	binary.BigEndian.PutUint32(opt[4:], tsval)
	in.sendRaw(t, seq, opt, data, tcpACK|tcpPSH, 0)
}

// sendFragmented sends data as the segment at seq in two IPv4 fragments, the first holding the TCP
// header and the first 12 bytes of data.
func (in *injector) sendFragmented(t *testing.T, seq uint32, data string) {
	t.Helper()
	in.sendRaw(t, seq, nil, data, tcpACK|tcpPSH, 12)
}

// sendRaw sends a segment with TCP options opt (a multiple of 4 bytes); with split > 0, as two IPv4
// fragments, the first carrying the TCP header and split bytes of data (split + header a multiple
// of 8).
func (in *injector) sendRaw(t *testing.T, seq uint32, opt []byte, data string, flags byte, split int) {
	t.Helper()
	src, dst := in.src.IP.To4(), in.dst.IP.To4()
	tcp := make([]byte, 20+len(opt)+len(data))
	binary.BigEndian.PutUint16(tcp[0:], uint16(in.src.Port))
	binary.BigEndian.PutUint16(tcp[2:], uint16(in.dst.Port))
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], in.ack)
	tcp[12], tcp[13] = byte((20+len(opt))/4)<<4, flags
	binary.BigEndian.PutUint16(tcp[14:], 0xffff)
	copy(tcp[20:], opt)
	copy(tcp[20+len(opt):], data)
	pseudo := make([]byte, 12)
	copy(pseudo, src)
	copy(pseudo[4:], dst)
	pseudo[9] = unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], ^uint16(checksum(checksum(0, pseudo), tcp)))
	frag := func(payload []byte, offset int, more bool) {
		pkt := make([]byte, 20+len(payload))
		ip := pkt[:20]
		ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_TCP
		binary.BigEndian.PutUint16(ip[2:], uint16(len(pkt)))
		binary.BigEndian.PutUint16(ip[4:], 0x5c5c) // identification
		fo := uint16(offset / 8)
		if more {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(ip[6:], fo)
		copy(ip[12:], src)
		copy(ip[16:], dst)
		binary.BigEndian.PutUint16(ip[10:], ^uint16(checksum(0, ip)))
		copy(pkt[20:], payload)
		to := &unix.SockaddrInet4{}
		copy(to.Addr[:], dst)
		if err := unix.Sendto(in.fd, pkt, 0, to); err != nil {
			t.Fatalf("inject %d bytes at %d: %v", len(data), seq, err)
		}
	}
	if split == 0 {
		frag(tcp, 0, false)
		return
	}
	cut := 20 + len(opt) + split
	frag(tcp[:cut], 0, true)
	frag(tcp[cut:], cut, false)
}

// tcpTimestamp is the TCP timestamp c's socket would send now (TCP_TIMESTAMP: the clock plus the
// connection's offset).
func tcpTimestamp(t *testing.T, c net.Conn) uint32 {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_TIMESTAMP) }); err != nil || serr != nil {
		t.Fatalf("TCP_TIMESTAMP: %v %v", err, serr)
	}
	return uint32(v)
}

// Segments judged before TCP reach TCP through the IP layer, and TCP may still drop one. Neither may
// give TCP bytes that were not judged where they sit in its stream: a segment l7_fast passed and TCP
// dropped (here by PAWS, an old timestamp) is never followed by other bytes at its place, and
// fragments, which l7_fast cannot judge (TCP gets them reassembled), carry no stamp and are dropped
// by the guard.
func TestPrivilegedJudgedBeforeTCPGivesTCPOnlyWhatItJudged(t *testing.T) {
	requireRoot(t)
	e := newBeforeTCPEnv(t)
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload(/.*)?"`}})
	e.startServer(t, port, false)
	connect := func(t *testing.T, first string) (net.Conn, *injector, uint32) {
		c := e.dial(t, port, false)
		writeParts(t, c, first)
		expectStatuses(t, c, http.StatusOK)
		in := e.injectorFor(t, c)
		snd, rcv := tcpSeqs(t, c)
		in.ack = rcv
		return c, in, snd
	}

	t.Run("bytes TCP dropped after they were judged", func(t *testing.T) {
		c, in, x := connect(t, req("GET", "/allowed/paws"))
		before := e.fastCounts(t)
		// Judged and passed (an allowed request whose body is to come), then dropped by TCP:
		// its timestamp is a quarter of the clock's range old.
		in.sendTimestamped(t, x, req("POST", "/upload/dropped-by-tcp", "Content-Length: 100"), tcpTimestamp(t, c)-1<<30)
		// A request in its place, which the framing of the dropped bytes would take for body.
		in.sendTimestamped(t, x, req("GET", "/secret/in-its-place"), tcpTimestamp(t, c))
		time.Sleep(300 * time.Millisecond)
		if e.sawTarget("/secret/in-its-place") || e.sawTarget("/upload/dropped-by-tcp") {
			t.Fatalf("the server saw %v", e.seen)
		}
		if d := e.fastCounts(t).sub(before); d.passed != 1 || d.wait < 1 || d.handed != 0 {
			t.Fatalf("counters moved by %+v: want the first passed, the second dropped", d)
		}
		// The client's own next request comes where TCP stands, behind what was passed: it is
		// dropped each time TCP sends it, and after 2 s the connection is denied and reset.
		lost := e.counter(t, ReasonFastLost)
		writeParts(t, c, req("GET", "/allowed/after-the-loss"))
		waitUntil(t, func() bool { return e.counter(t, ReasonFastLost) > lost }, func() string {
			return "the connection whose TCP lost judged bytes was never denied"
		})
		if err := e.l.ResetDenied("/run/netns/" + e.srvNS); err != nil {
			t.Fatal(err)
		}
		if n, err := readResponses(c, 1, 3*time.Second); n != 0 || err == nil {
			t.Fatalf("%d responses (%v), want the connection reset", n, err)
		}
		if e.sawTarget("/allowed/after-the-loss") {
			t.Fatal("the server saw a request TCP took behind bytes it lost")
		}
	})

	t.Run("segments that come past l7_fast", func(t *testing.T) {
		// l7_fast gone from the server's interfaces under a live connection (as with NAT in the
		// pod's namespace, which l7_fast never matches): the guard drops what it did not stamp, and
		// the next sweep hands the connection to its socket, which judges TCP's retransmission.
		c, _, _ := connect(t, req("GET", "/allowed/before-detach"))
		before := e.fastCounts(t)
		unstamped := e.counter(t, ReasonFastUnstamped)
		srvNS := "/run/netns/" + e.srvNS
		if err := e.l.DetachNetns(srvNS); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := e.l.AttachNetns(srvNS); err != nil {
				t.Fatal(err)
			}
		}()
		writeParts(t, c, req("GET", "/allowed/past-l7-fast"))
		waitUntil(t, func() bool { return e.counter(t, ReasonFastUnstamped) > unstamped }, func() string {
			return "the guard never saw the unstamped segment"
		})
		if e.sawTarget("/allowed/past-l7-fast") {
			t.Fatal("the server saw a request l7_fast never judged")
		}
		if err := e.l.ResetDenied(srvNS); err != nil { // the agent's sweep
			t.Fatal(err)
		}
		expectStatuses(t, c, http.StatusOK)
		writeParts(t, c, req("GET", "/secret/past-l7-fast"))
		e.expectForbidden(t, c, "/secret/past-l7-fast")
		if d := e.fastCounts(t).sub(before); d.handed != 1 {
			t.Fatalf("counters moved by %+v: want one hand-over", d)
		}
	})

	t.Run("fragments", func(t *testing.T) {
		c, in, x := connect(t, req("GET", "/allowed/frag"))
		before := e.fastCounts(t)
		in.sendFragmented(t, x, req("GET", "/secret/fragmented"))
		waitUntil(t, func() bool { return e.fastCounts(t).sub(before).guard > 0 || e.sawTarget("/secret/fragmented") }, func() string {
			return "the guard never dropped the reassembled segment"
		})
		if e.sawTarget("/secret/fragmented") {
			t.Fatal("the server saw /secret/fragmented")
		}
		// The connection goes on: the client's own next request is judged at its place.
		writeParts(t, c, req("GET", "/allowed/after-fragments"))
		expectStatuses(t, c, http.StatusOK)
	})
}

// mapLen counts a SOCKHASH's entries.
func mapLen(t testing.TB, m *ebpf.Map) int {
	t.Helper()
	var k, v uint64
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// SyncNetns attaches l7_fast only in a namespace that holds an address with a judged port, and
// takes it away once the namespace holds none: the client's namespace (no judged port) is never
// attached; the server's is attached once its port is judged, and its connections are then judged
// before TCP; with the port no longer judged it is detached and its segments meet no l7_fast.
func TestPrivilegedJudgingBeforeTCPOnlyWhereJudged(t *testing.T) {
	requireRoot(t)
	e := newBeforeTCPEnv(t)
	const port, peer = 8080, 5000
	srvNS, cliNS := "/run/netns/"+e.srvNS, "/run/netns/"+e.cliNS
	if err := e.l.DetachNetns(srvNS); err != nil {
		t.Fatal(err)
	}
	e.startServer(t, port, false)
	sync := func(path string, want bool) {
		t.Helper()
		judged, err := e.l.JudgedAddrs()
		if err != nil {
			t.Fatal(err)
		}
		cookie, err := netns.Cookie(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.l.SyncNetns(path, cookie, judged)
		if err != nil {
			t.Fatal(err)
		}
		var v uint32
		listed := e.l.objs.L7FastNetns.Lookup(cookie, &v) == nil
		if got != want || listed != want || (e.l.fast[cookie] != nil) != want {
			t.Fatalf("SyncNetns(%s) = %v, listed %v, links %v; want %v (judged addresses %v)", path, got, listed, e.l.fast[cookie] != nil, want, judged)
		}
	}
	// Nothing judged yet: neither namespace.
	sync(srvNS, false)
	sync(cliNS, false)

	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
	sync(srvNS, true)
	sync(cliNS, false)
	before := e.fastCounts(t)
	c := e.dial(t, port, false)
	writeParts(t, c, req("GET", "/allowed/attached"))
	expectStatuses(t, c, http.StatusOK)
	if got := e.fastCounts(t).sub(before); got.passed == 0 || got.handed != 0 {
		t.Fatalf("a request to a judged port in an attached namespace: counters moved by %+v, want it passed before TCP", got)
	}
	c.Close()

	// The port is no longer judged: the namespace holds no judged address and is detached, and a
	// new connection's requests go to the server without meeting l7_fast.
	if err := e.l.DeletePort(e.srvAddr, port); err != nil {
		t.Fatal(err)
	}
	sync(srvNS, false)
	before = e.fastCounts(t)
	c = e.dial(t, port, false)
	writeParts(t, c, req("GET", "/anything/unjudged"))
	expectStatuses(t, c, http.StatusOK)
	if got := e.fastCounts(t).sub(before); got != (fastCounts{}) {
		t.Fatalf("a request to a port no longer judged: counters moved by %+v, want none", got)
	}
}

package l7

import (
	"encoding/binary"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TCP_REPAIR_QUEUE values (linux/tcp.h), not in x/sys/unix.
const (
	tcpRecvQueue        = 1
	tcpSendQueue        = 2
	tcpRepairOffNoProbe = -1 // TCP_REPAIR_OFF_NO_WP: leave repair mode without a window probe
)

// tcpSeqs reads a connected socket's next sequence number to send and to receive, through TCP
// repair mode (entered and left again; the connection goes on).
func tcpSeqs(t *testing.T, c net.Conn) (snd, rcv uint32) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		s := int(fd)
		if serr = unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR, 1); serr != nil {
			return
		}
		defer func() {
			if err := unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR, tcpRepairOffNoProbe); err != nil && serr == nil {
				serr = err
			}
		}()
		for _, q := range []struct {
			queue int
			seq   *uint32
		}{{tcpSendQueue, &snd}, {tcpRecvQueue, &rcv}} {
			if serr = unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, q.queue); serr != nil {
				return
			}
			var v int
			if v, serr = unix.GetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ); serr != nil {
				return
			}
			*q.seq = uint32(v)
		}
	})
	if err != nil || serr != nil {
		t.Fatalf("read the connection's sequence numbers: %v %v", err, serr)
	}
	return snd, rcv
}

// checksum is the Internet checksum (RFC 1071) of b, folded, not complemented.
func checksum(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum
}

// injector sends TCP segments of the client's connection c from a raw socket in the client's
// namespace, as if its TCP had sent them: the retransmissions and reorderings a lossy network makes,
// at chosen sequence numbers.
type injector struct {
	fd       int
	src, dst net.TCPAddr
	ack      uint32
}

func (e *testEnv) injectorFor(t *testing.T, c net.Conn) *injector {
	t.Helper()
	in := &injector{src: *c.LocalAddr().(*net.TCPAddr), dst: *c.RemoteAddr().(*net.TCPAddr)}
	var err error
	inNS(t, e.cliNS, func() { in.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW) })
	if err != nil {
		t.Fatalf("raw socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(in.fd) })
	return in
}

// TCP flags of an injected segment.
const (
	tcpFIN = 0x01
	tcpPSH = 0x08
	tcpACK = 0x10
)

// send sends data as the segment starting at seq (ACK and PSH set, acknowledging in.ack).
func (in *injector) send(t *testing.T, seq uint32, data string) {
	t.Helper()
	in.sendFlags(t, seq, data, tcpACK|tcpPSH)
}

// sendFlags sends data as the segment starting at seq with the given TCP flags.
func (in *injector) sendFlags(t *testing.T, seq uint32, data string, flags byte) {
	t.Helper()
	in.sendRaw(t, seq, nil, data, flags, 0)
}

// TCP may queue a segment that starts before what it has already received (a retransmission that
// overlaps, or a segment from the out-of-order queue that overlaps the one before it) without
// trimming it; it keeps the bytes it received first. The server's socket must judge, and its
// application must get, exactly the byte stream TCP keeps: a segment's repeated front is neither
// framed twice nor delivered twice.
func TestPrivilegedOverlappingSegmentsAreJudgedOnce(t *testing.T) {
	requireRoot(t)
	e := newTestEnvDelivery(t, DeliverDirect)
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload(/.*)?"`}})
	e.startServer(t, port, false)
	// Segments without timestamps: the client's connections do not negotiate them. A link MTU
	// that lets one injected segment repeat more bytes than one bpf_skb_adjust_room call removes
	// (the client's own TCP keeps to its MSS, negotiated below the link's MTU).
	setSysctlIn(t, e.cliNS, "/proc/sys/net/ipv4/tcp_timestamps", "0")
	id := strconv.Itoa(os.Getpid())
	cmdRun(t, "ip", "-n", e.cliNS, "link", "set", "l7c"+id, "mtu", "16000")
	cmdRun(t, "ip", "-n", e.srvNS, "link", "set", "l7s"+id, "mtu", "16000")
	// connect opens a connection, has one request answered on it, and returns it with an
	// injector and the next sequence number the client will send.
	connect := func(t *testing.T, first string) (net.Conn, *injector, uint32) {
		c := e.dial(t, port, false)
		if _, err := c.Write([]byte(first)); err != nil {
			t.Fatal(err)
		}
		expectStatuses(t, c, http.StatusOK)
		in := e.injectorFor(t, c)
		snd, rcv := tcpSeqs(t, c)
		in.ack = rcv
		return c, in, snd
	}
	bad := func(t *testing.T) uint64 { return e.counter(t, ReasonBadMethod) + e.counter(t, ReasonMessageDropped) }
	// framedOnce checks that since the counts were before and trimmed nothing was judged bad or
	// dropped, and that at least want segments had their repeated front cut off.
	framedOnce := func(t *testing.T, before, trimmed, want uint64) {
		t.Helper()
		if d := bad(t) - before; d != 0 {
			t.Fatalf("%d requests judged bad or dropped: the repeated bytes were framed", d)
		}
		if n := e.counter(t, ReasonOverlap) - trimmed; n < want {
			t.Fatalf("%d overlapping fronts trimmed, want %d", n, want)
		}
	}

	t.Run("a retransmission overlapping received bytes with other bytes there", func(t *testing.T) {
		before, trimmed := bad(t), e.counter(t, ReasonOverlap)
		c, in, x := connect(t, req("GET", "/allowed/overlap-1"))
		// 20 bytes the server already has, sent again with other content, then the first 16 bytes
		// of the next request, spelled differently from what the client's TCP will send for them.
		in.send(t, x-20, strings.Repeat("Z", 20)+"GET /allowed/inj")
		// The client's TCP sends the whole request from x: its first 16 bytes are received again.
		next := req("GET", "/allowed/two")
		if _, err := c.Write([]byte(next)); err != nil {
			t.Fatal(err)
		}
		expectStatuses(t, c, http.StatusOK)
		// TCP kept the bytes it got first: the server got "GET /allowed/inj".
		e.waitSeen(t, "/allowed/inj")
		if e.sawTarget("/allowed/two") {
			t.Fatal("the server saw /allowed/two: bytes TCP had received twice were delivered from the second copy")
		}
		framedOnce(t, before, trimmed, 2)
	})
	t.Run("a segment from the out-of-order queue overlapping the one before it", func(t *testing.T) {
		before, trimmed := bad(t), e.counter(t, ReasonOverlap)
		first := req("GET", "/allowed/overlap-2")
		c, in, x := connect(t, first)
		next := req("GET", "/allowed/three")
		tail := first[len(first)-4:]
		in.send(t, x+8, next[8:16])                      // ahead of a gap: the out-of-order queue
		in.send(t, x-4, tail+next[:12])                  // fills the gap; the queued one now overlaps it by 4
		if _, err := c.Write([]byte(next)); err != nil { // overlaps both by 16
			t.Fatal(err)
		}
		expectStatuses(t, c, http.StatusOK)
		e.waitSeen(t, "/allowed/three")
		framedOnce(t, before, trimmed, 3)
	})
	t.Run("a retransmission that repeats only received bytes but brings the FIN", func(t *testing.T) {
		// TCP queues it for its FIN: the segment is emptied and dropped, the connection not denied.
		_, in, x := connect(t, req("GET", "/allowed/overlap-fin"))
		trimmed := e.counter(t, ReasonOverlap)
		denied, err := e.l.DeniedConnections()
		if err != nil {
			t.Fatal(err)
		}
		in.sendFlags(t, x-20, strings.Repeat("Z", 20), tcpACK|tcpFIN)
		deniedNow := func() uint64 {
			n, err := e.l.DeniedConnections()
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		waitUntil(t, func() bool { return e.counter(t, ReasonOverlap) > trimmed || deniedNow() > denied }, func() string {
			return "the program never took the repeated segment"
		})
		if n := deniedNow(); n != denied {
			t.Fatalf("denied connections %d, want %d: a FIN with repeated bytes denied its connection", n, denied)
		}
	})
	t.Run("an overlap longer than one cut", func(t *testing.T) {
		before, trimmed := bad(t), e.counter(t, ReasonOverlap)
		body := strings.Repeat("b", 12000)
		c, in, x := connect(t, req("POST", "/upload/long-overlap", "Content-Length: 12000")+body)
		e.waitSeen(t, "/upload/long-overlap")
		// 10,000 bytes of the body again, with other content, and the next request's start.
		next := req("GET", "/allowed/after-long-overlap")
		in.send(t, x-10000, strings.Repeat("Z", 10000)+next[:16])
		if _, err := c.Write([]byte(next)); err != nil {
			t.Fatal(err)
		}
		expectStatuses(t, c, http.StatusOK)
		e.waitSeen(t, "/allowed/after-long-overlap")
		if got, _ := e.sawBody("/upload/long-overlap"); got != bodyOf(body) {
			t.Fatalf("the server saw body %q, want %q", got, bodyOf(body))
		}
		framedOnce(t, before, trimmed, 2)
	})
}

package l7

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dialNonBlocking connects a non-blocking TCP socket to addr (IPv4) with SO_SNDBUF sndbuf (0: the
// default) and waits until it is writable; writable waits for that again. The caller closes fd.
func dialNonBlocking(addr string, sndbuf int) (fd int, writable func(), err error) {
	fd, sa, err := socket4(addr, unix.SOCK_NONBLOCK)
	if err != nil {
		return -1, nil, err
	}
	if sndbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf); err != nil {
			unix.Close(fd)
			return -1, nil, err
		}
	}
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, nil, err
	}
	writable = func() {
		unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, 2000)
	}
	writable()
	return fd, writable, nil
}

// smuggleAfterShortWrite is the client helper's L7_TEST_CLIENT_SHORT_WRITE mode: on a non-blocking
// socket with a small send buffer it writes an allowed upload (header block and a 300,000-byte
// body) in one write, which the kernel takes only in part; then, as the next write, the rest of
// the body followed by smuggle. With pieces, it writes the rest of the body 1,000 bytes at a time
// instead, and then smuggle on its own. It reports how many bytes the first write took.
func smuggleAfterShortWrite(addr, smuggle string, pieces bool) string {
	fd, writable, err := dialNonBlocking(addr, 8192)
	if err != nil {
		return err.Error()
	}
	defer unix.Close(fd)
	const bodyLen = 300000
	first := "POST /upload HTTP/1.1\r\nHost: server\r\nContent-Length: " + strconv.Itoa(bodyLen) + "\r\n\r\n" + strings.Repeat("u", bodyLen)
	n, err := unix.Write(fd, []byte(first))
	if err != nil || n >= len(first) {
		return fmt.Sprintf("not short: %d of %d, %v", n, len(first), err)
	}
	rest := []byte(first[n:] + smuggle)
	if pieces {
		rest = []byte(first[n:])
	}
	for len(rest) > 0 {
		if pieces && len(rest) > 1000 {
			writable()
			k, err := unix.Write(fd, rest[:1000])
			if err != nil && err != unix.EAGAIN {
				return fmt.Sprintf("short %d, then %v", n, err)
			}
			if k > 0 {
				rest = rest[k:]
			}
			continue
		}
		writable()
		k, err := unix.Write(fd, rest)
		if err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return fmt.Sprintf("short %d, then %v", n, err)
		}
		rest = rest[k:]
		if pieces && len(rest) == 0 && smuggle != "" {
			rest, smuggle = []byte(smuggle), ""
		}
	}
	time.Sleep(300 * time.Millisecond) // the server reads before the connection closes
	return fmt.Sprintf("short %d", n)
}

// replaceHeaderTail is the client helper's L7_TEST_CLIENT_SHORT_WRITE=header mode: on a
// non-blocking socket with SO_SNDBUF L7_TEST_CLIENT_SNDBUF it writes header, an allowed header
// block, in one write, which TCP may take only in part; then, as the next write, as many bytes as were left, which end the header block
// early and carry a second, complete request with target smuggle. Sent under the first verdict,
// they would reach the server as "the allowed request, then the smuggled one".
func replaceHeaderTail(addr, header, smuggle string) string {
	if dir := os.Getenv("L7_TEST_CLIENT_MEMCG"); dir != "" {
		// Join the memory cgroup before the socket exists: the socket charges the cgroup it
		// was created in.
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return err.Error()
		}
	}
	sndbuf, err := strconv.Atoi(os.Getenv("L7_TEST_CLIENT_SNDBUF"))
	if err != nil {
		return err.Error()
	}
	fd, writable, err := dialNonBlocking(addr, sndbuf)
	if err != nil {
		return err.Error()
	}
	defer unix.Close(fd)
	n, err := unix.Write(fd, []byte(header))
	if err != nil {
		return "refused: " + err.Error()
	}
	if n >= len(header) {
		return fmt.Sprintf("not short: %d of %d, %v", n, len(header), err)
	}
	rest := "\r\n\r\nGET " + smuggle + " HTTP/1.1\r\nHost: server\r\nX-Q: "
	pad := len(header) - n - len(rest) - len("\r\n\r\n")
	if pad < 1 {
		return fmt.Sprintf("took %d of %d: too little left to replace", n, len(header))
	}
	rest += strings.Repeat("q", pad) + "\r\n\r\n"
	for b := []byte(rest); len(b) > 0; {
		writable()
		k, err := unix.Write(fd, b)
		if err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return fmt.Sprintf("short %d, then %v", n, err)
		}
		b = b[k:]
	}
	time.Sleep(300 * time.Millisecond) // the server reads before the connection closes
	return fmt.Sprintf("short %d", n)
}

// The kernel's sk_msg send path reuses a verdict after a short write: when pushing the bytes a
// verdict passed stops part way (the send buffer of a non-blocking socket is full, or a signal),
// tcp_bpf_send_verdict frees the rest of the message and returns the short count, but leaves the
// verdict and its apply size in place. The application's next write is then sent under that old
// verdict, up to the old apply size (or whole without one), without the program seeing it. Here
// the first write is an allowed upload whose body the verdict passes; the next write holds the
// rest of the body and then a denied request. The request must never reach the server: the
// client's program finds TCP's stream past what it judged (or the guard finds the segment past
// it), denies the connection and the guard drops the bytes. The server's socket judges what TCP
// received, whatever the writes: there the request is denied as any other.
func TestPrivilegedShortWritesCannotSmuggleARequest(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	events := collectEvents(t, e.l)
	rules := []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload"`}
	const egressPort, ingressPort, peer = 8090, 8080, 5000
	e.judgeEgress(t, e.cliAddr, egressPort, rules...)
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
	}
	refused := func(t *testing.T, port uint16, target string) {
		t.Helper()
		before := e.counter(t, ReasonUnjudgedWrite)
		smuggle(t, port, target)
		time.Sleep(500 * time.Millisecond)
		if e.sawTarget(target) {
			t.Fatalf("the server saw %s, sent under the upload's verdict", target)
		}
		if e.counter(t, ReasonUnjudgedWrite) == before {
			t.Fatal("unjudged-write did not move: the short write was not caught")
		}
	}

	t.Run("egress rules", func(t *testing.T) {
		refused(t, egressPort, "/secret-sw-egress")
	})
	t.Run("a header block the send buffer cannot take whole is refused", func(t *testing.T) {
		// With the smallest send buffer (4,608 bytes) a 7 KiB header block could be taken in part,
		// and then the next write sent in the rest of its place, unseen. The same block with the
		// default buffer is sent.
		padded := "GET /allowed/room HTTP/1.1\r\nHost: server\r\nX-Pad: " + strings.Repeat("p", 7000) + "\r\n\r\n"
		got := e.runClientEnv(t, egressPort, false, 0, nil, padded)
		if len(got) < 2 || got[0] != "write ok" || got[1] != "responses 1" {
			t.Fatalf("client said %q; want the request sent and answered", got)
		}
		before := e.counter(t, ReasonNoRoom)
		got = e.runClientEnv(t, egressPort, false, 0, []string{"L7_TEST_CLIENT_SNDBUF=1"}, strings.Replace(padded, "/room", "/room-small", 1))
		t.Logf("client: %q", got)
		if len(got) < 1 || !strings.HasSuffix(got[0], "permission denied") {
			t.Fatalf("client said %q; want EACCES", got)
		}
		if e.counter(t, ReasonNoRoom) != before+1 {
			t.Fatal("no-room did not move by one")
		}
		if ev, ok := events.find("/allowed/room-small"); !ok || ev.Verdict != VerdictDenied || ev.Reason != ReasonNoRoom {
			t.Fatalf("event %+v (%v): want denied, no-room", ev, ok)
		}
		time.Sleep(200 * time.Millisecond)
		if e.sawTarget("/allowed/room-small") {
			t.Fatal("the server saw /allowed/room-small")
		}
	})
	t.Run("a body whose rest comes in small writes after a short write goes through", func(t *testing.T) {
		// The verdict that passed the whole body was pushed in part; the client then writes the
		// rest 1,000 bytes at a time, each less than what was freed: the body goes on, and the
		// request after it is judged.
		before := e.counter(t, ReasonUnjudgedWrite)
		got := e.runClientEnv(t, egressPort, false, 0, []string{"L7_TEST_CLIENT_SHORT_WRITE=pieces"}, req("GET", "/allowed/after-pieces"))
		t.Logf("client: %q", got)
		if len(got) != 1 || !strings.HasPrefix(got[0], "short-write short ") {
			t.Fatalf("client said %q; want a short first write, then the rest written", got)
		}
		e.waitSeen(t, "/allowed/after-pieces")
		if n := e.counter(t, ReasonUnjudgedWrite) - before; n != 0 {
			t.Fatalf("unjudged-write moved by %d", n)
		}
		if _, ok := events.find("/allowed/after-pieces"); !ok {
			time.Sleep(500 * time.Millisecond)
			if _, ok := events.find("/allowed/after-pieces"); !ok {
				t.Fatal("no event for the request after the body")
			}
		}
	})
	t.Run("at the server's socket", func(t *testing.T) {
		smuggle(t, ingressPort, "/secret-sw-server")
		if ev := events.wait(t, "/secret-sw-server"); ev.Verdict != VerdictDenied || ev.AtSource {
			t.Fatalf("event %+v: want denied at the server's socket", ev)
		}
		time.Sleep(200 * time.Millisecond)
		if e.sawTarget("/secret-sw-server") {
			t.Fatal("the server saw /secret-sw-server")
		}
	})
	t.Run("judged at source", func(t *testing.T) {
		if err := e.l.setConfig(configAtSource); err != nil {
			t.Fatal(err)
		}
		defer e.l.setConfig(0)
		e.trustClient(t)
		refused(t, ingressPort, "/secret-sw-source")
		if _, ok := events.findFunc(func(ev Event) bool { return ev.Path == "/upload" && ev.AtSource }); !ok {
			t.Fatal("no event for the upload judged at source")
		}
	})
}

// expectRequestsAfterUploadsJudged: a client judged at its own socket (egress rules, or atSource)
// uploads 4 MiB in one write, which the kernel takes in several short pushes (the client is Go: a
// non-blocking socket), and then writes a request. Written once the upload is answered, the
// request is judged: denied ones never reach the server (on the build before, each of ten did, sent
// under the upload's verdict), allowed ones are answered. Written in the same write as the upload
// (pipelined), it is judged, or, when the kernel sent its first bytes under the body's verdict, the
// connection is denied (unjudged-write) and it never reaches the server.
func (e *testEnv) expectRequestsAfterUploadsJudged(t *testing.T, port uint16, events *eventLog, atSource bool) {
	t.Helper()
	status := []string{"L7_TEST_CLIENT_STATUS=1", "L7_TEST_CLIENT_READ_BETWEEN=1"}
	for i := range 4 {
		target := fmt.Sprintf("/secret-after-upload-%d", i)
		if i == 3 {
			target = "/allowed/after-upload-3"
		}
		got := e.runClientEnv(t, port, false, 0, append(status, "L7_TEST_CLIENT_UPLOAD_THEN="+target))
		t.Logf("%s: client: %q", target, got)
		if len(got) < 2 || got[0] != "write ok" || got[1] != `status 200 "ok"` {
			t.Fatalf("client said %q; want the upload answered", got)
		}
		ev := events.wait(t, target)
		if ev.AtSource != atSource {
			t.Fatalf("event %+v: judged at source %v, want %v", ev, ev.AtSource, atSource)
		}
		if strings.HasPrefix(target, "/allowed/") {
			if len(got) < 4 || got[3] != `status 200 "ok"` {
				t.Fatalf("client said %q; want the request after the upload answered", got)
			}
			e.waitSeen(t, target)
			continue
		}
		if ev.Verdict != VerdictDenied {
			t.Fatalf("event %+v: want denied", ev)
		}
		time.Sleep(200 * time.Millisecond)
		if e.sawTarget(target) {
			t.Fatalf("the server saw %s", target)
		}
	}
	before := e.counter(t, ReasonUnjudgedWrite)
	got := e.runClientEnv(t, port, false, 0, []string{"L7_TEST_CLIENT_STATUS=1", "L7_TEST_CLIENT_UPLOAD=4194304"})
	t.Logf("pipelined: client: %q", got)
	time.Sleep(500 * time.Millisecond)
	if _, judged := events.find("/allowed/after-upload"); !judged {
		if e.sawTarget("/allowed/after-upload") {
			t.Fatal("the request pipelined after the upload reached the server unjudged")
		}
		if e.counter(t, ReasonUnjudgedWrite) == before {
			t.Fatal("the request pipelined after the upload was neither judged nor refused")
		}
	}
}

// writesRacingEstablishment is the client helper's L7_TEST_CLIENT_RACE mode: n connections to an
// IPv4 address:port, on each a non-blocking connect and then non-blocking writes of w in a loop
// until one does not answer EAGAIN. It returns how many connections had w accepted.
func writesRacingEstablishment(addr string, w []byte, n int) int {
	sa, err := sockaddr4(addr)
	if err != nil {
		return -1
	}
	accepted := 0
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return -1
		}
		if err := unix.Connect(fd, sa); err == nil || err == unix.EINPROGRESS {
			for {
				_, err := unix.Write(fd, w)
				if err == unix.EAGAIN {
					continue
				}
				if err == nil {
					accepted++
				}
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		unix.Close(fd)
	}
	return accepted
}

// expectRacingWritesRefused has the client helper open 500 connections to port and write a denied
// request with non-blocking writes in a loop from the start of each connect. A write that enters
// the kernel's plain tcp_sendmsg just before the handshake ends, and waits for the socket's lock
// while the handshake's last segment is processed (which puts the socket in l7_egress_socks),
// writes past the socket's sk_msg program. With the receive path on the other core (RPS, as with a
// real network; on this veth pair the handshake otherwise ends inside connect) about a third of the
// connections do (389 of 1,000 reached the server on the build before). None may reach the server,
// and the checks must have caught some.
func (e *testEnv) expectRacingWritesRefused(t *testing.T, port uint16, target string) {
	t.Helper()
	e.asyncReceive(t)
	before := e.counter(t, ReasonUnjudgedWrite)
	got := e.runClientEnv(t, port, false, 0, []string{"L7_TEST_CLIENT_RACE=500"}, req("GET", target))
	t.Logf("client: %q, unjudged-write %d", got, e.counter(t, ReasonUnjudgedWrite)-before)
	time.Sleep(300 * time.Millisecond)
	if e.sawTarget(target) {
		t.Fatalf("the server saw %s, written past the client's sk_msg program", target)
	}
	if e.counter(t, ReasonUnjudgedWrite) == before {
		t.Fatal("no write raced the establishment: the test did not test anything")
	}
}

// asyncReceive has both namespaces' devices steer received packets to either core (RPS), so that
// they are processed in the background, as a network card's are: on the veth pair a sender's
// softirq otherwise processes the receiver's side too, before its own call returns (a handshake
// ends inside connect, data is acknowledged inside write).
func (e *testEnv) asyncReceive(t *testing.T) {
	t.Helper()
	for _, ns := range []string{e.cliNS, e.srvNS} {
		// ip netns exec mounts the namespace's own /sys; the devices go with the namespace.
		if out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c",
			"for f in /sys/class/net/*/queues/rx-0/rps_cpus; do echo 3 > $f || exit 1; done").CombinedOutput(); err != nil {
			t.Fatalf("RPS in %s: %v: %s", ns, err, out)
		}
	}
}

// tcpMemcg makes a memory cgroup (cgroup v1, where this machine mounts the memory controller) whose
// sockets may use at most limit bytes (memory.kmem.tcp.limit_in_bytes: TCP's own accounting, which
// fails a charge over it instead of reclaiming), removed when the test ends. Setting a TCP limit
// turns on the kernel's socket accounting for memory cgroups until reboot (a static key); cgroups
// without a limit are not charged.
func tcpMemcg(t *testing.T, limit int) string {
	t.Helper()
	const root = "/sys/fs/cgroup/memory"
	if _, err := os.Stat(filepath.Join(root, "memory.kmem.tcp.limit_in_bytes")); err != nil {
		t.Fatalf("no cgroup v1 memory controller with TCP accounting at %s: %v", root, err)
	}
	dir := filepath.Join(root, fmt.Sprintf("portcullis-l7test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "memory.kmem.tcp.limit_in_bytes"), []byte(strconv.Itoa(limit)), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Header blocks TCP could take only in part are refused: had TCP taken one in part, the kernel
// would keep the verdict and send the client's next write in the rest of its place (here bytes
// that end the block early and carry a denied request). TCP waits before each new buffer of its
// write queue, for room in the send buffer and for its memory to be charged.
//
// On a route without segmentation offload (an IPsec tunnel; here a gso_max_size of 2,048 bytes on
// the client's link) TCP puts a write in buffers of one segment, each costing its truesize beyond
// its bytes: with 9 KiB of send buffer a 7 KiB block fits by its bytes, but TCP stopped after four
// buffers and the build before (whose check counted one buffer's cost) served the denied request.
// And each buffer is charged to the socket's memory: in a memory cgroup with 12 KiB of TCP memory
// the build before let TCP take the block in part with a 128 KiB send buffer, and served the denied
// request too. Both are refused now (EACCES; no-room, no-memory), and the same block is sent with
// the default send buffer, or outside the cgroup.
func TestPrivilegedHeaderBlocksTCPCouldTakeInPartAreRefused(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	events := collectEvents(t, e.l)
	const port = 8090
	e.judgeEgress(t, e.cliAddr, port, `method="GET" path="/allowed(/.*)?"`)
	e.startServer(t, port, false)
	block := func(target string) string {
		return "GET " + target + " HTTP/1.1\r\nHost: server\r\nX-Pad: " + strings.Repeat("p", 7000) + "\r\n\r\n"
	}
	refused := func(t *testing.T, target string, reason Reason, env ...string) {
		t.Helper()
		before := e.counter(t, reason)
		got := e.runClientEnv(t, port, false, 0, append(env, "L7_TEST_CLIENT_SHORT_WRITE=header"), block(target), target+"-secret")
		t.Logf("client: %q", got)
		if len(got) != 1 || got[0] != "short-write refused: permission denied" {
			t.Fatalf("client said %q; want the header block refused (EACCES)", got)
		}
		if e.counter(t, reason) != before+1 {
			t.Fatalf("%s did not move by one", reason)
		}
		if ev := events.wait(t, target); ev.Verdict != VerdictDenied || ev.Reason != reason {
			t.Fatalf("event %+v: want denied, %s", ev, reason)
		}
		time.Sleep(300 * time.Millisecond)
		if e.sawTarget(target) || e.sawTarget(target+"-secret") {
			t.Fatal("the server saw the refused block or the request written in its place")
		}
	}
	sent := func(t *testing.T, target string, env ...string) {
		t.Helper()
		got := e.runClientEnv(t, port, false, 0, append(env, "L7_TEST_CLIENT_SHORT_WRITE=header"), block(target), target+"-secret")
		if len(got) != 1 || !strings.HasPrefix(got[0], "short-write not short") {
			t.Fatalf("client said %q; want the block taken whole", got)
		}
		e.waitSeen(t, target)
	}

	t.Run("with segmentation offload an 8,000-byte block is sent as a first write", func(t *testing.T) {
		big := "GET /allowed/big HTTP/1.1\r\nHost: server\r\nX-Pad: " + strings.Repeat("p", 7950) + "\r\n\r\n"
		if got := e.runClientEnv(t, port, false, 0, nil, big); len(got) < 2 || got[0] != "write ok" || got[1] != "responses 1" {
			t.Fatalf("client said %q; want the 8,000-byte block sent and answered", got)
		}
	})
	links, err := exec.Command("ip", "-n", e.cliNS, "-o", "link", "show", "type", "veth").Output()
	if err != nil || len(strings.Fields(string(links))) < 2 {
		t.Fatalf("the client's link: %v %q", err, links)
	}
	dev, _, _ := strings.Cut(strings.TrimSuffix(strings.Fields(string(links))[1], ":"), "@")
	cmdRun(t, "ip", "-n", e.cliNS, "link", "set", "dev", dev, "gso_max_size", "2048")
	t.Run("a block over several buffers needs room for all of them", func(t *testing.T) {
		refused(t, "/allowed/hb", ReasonNoRoom, "L7_TEST_CLIENT_SNDBUF=4560")
		sent(t, "/allowed/hb-default", "L7_TEST_CLIENT_SNDBUF=0")
	})
	t.Run("near the node's TCP memory pressure threshold an ordinary client's block is sent", func(t *testing.T) {
		// tcp_mem's low and pressure thresholds at one page (for a second; the hard limit
		// stays): the node's TCP memory is at the pressure threshold, where the kernel fails
		// only the charges of sockets holding more than an even share of the hard limit. The
		// check follows that rule rather than refusing every block. (The kernel's count moves
		// in steps of a CPU's reserve, 1 MiB, so it may not have raised its pressure flag; the
		// program takes the even-share rule once the count and the block reach the threshold.)
		const tcpMem = "/proc/sys/net/ipv4/tcp_mem"
		orig, err := os.ReadFile(tcpMem)
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(orig))
		if len(f) != 3 {
			t.Fatalf("%s: %q", tcpMem, orig)
		}
		t.Cleanup(func() {
			if err := os.WriteFile(tcpMem, orig, 0o644); err != nil {
				t.Errorf("restore %s: %v", tcpMem, err)
			}
		})
		if err := os.WriteFile(tcpMem, []byte("1 1 "+f[2]), 0o644); err != nil {
			t.Fatal(err)
		}
		before := e.counter(t, ReasonNoMemory)
		sent(t, "/allowed/pressure", "L7_TEST_CLIENT_SNDBUF=0")
		if n := e.counter(t, ReasonNoMemory) - before; n != 0 {
			t.Fatalf("no-memory moved by %d", n)
		}
	})
	t.Run("a block near a memory limit is refused", func(t *testing.T) {
		memcg := tcpMemcg(t, 12288)
		refused(t, "/allowed/mem", ReasonNoMemory, "L7_TEST_CLIENT_SNDBUF=131072", "L7_TEST_CLIENT_MEMCG="+memcg)
		sent(t, "/allowed/mem-free", "L7_TEST_CLIENT_SNDBUF=131072")
	})
}

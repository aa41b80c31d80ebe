package l7

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-dev/portcullis/internal/netns"
)

// The server half of TestPrivilegedHTTPAtTheSocket runs in a child process (the test binary run
// again with L7_TEST_SERVER set), so that it lives in a cgroup of its own: sock_ops applies to sockets
// created by processes of the cgroup it is attached to. It prints "ready" and then one "seen METHOD
// TARGET BODYLEN" line per request it receives.
func TestHelperServerProcess(t *testing.T) {
	addr := os.Getenv("L7_TEST_SERVER")
	if addr == "" {
		t.Skip("helper process for TestPrivilegedHTTPAtTheSocket")
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(os.Getenv("L7_TEST_SERVER_MPTCP") == "1")
	var opts [][2]int
	if os.Getenv("L7_TEST_SERVER_TFO") == "1" { // TCP Fast Open: data in the SYN (tfo_test.go)
		opts = append(opts, [2]int{unix.TCP_FASTOPEN, 16})
	}
	if os.Getenv("L7_TEST_SERVER_DEFER") == "1" { // accept only with data: the first request completes the handshake
		opts = append(opts, [2]int{unix.TCP_DEFER_ACCEPT, 5})
	}
	lc.Control = func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range opts {
				serr = errors.Join(serr, unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, o[0], o[1]))
			}
		})
		return errors.Join(err, serr)
	}
	network := os.Getenv("L7_TEST_SERVER_NET")
	if network == "" {
		network = "tcp4"
	}
	ln, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	if os.Getenv("L7_TEST_SERVER_GATED") == "1" { // accept only when told (accept_test.go)
		ln = &gatedListener{Listener: ln, gate: bufio.NewScanner(os.Stdin)}
	}
	if os.Getenv("L7_TEST_SERVER_SPLICE") == "1" { // reads with splice(2) (splice_test.go)
		fmt.Println("ready")
		spliceServer(ln)
		os.Exit(0)
	}
	if os.Getenv("L7_TEST_SERVER_BLOCKING") == "1" { // blocking read(2) (beforetcp_test.go)
		fmt.Println("ready")
		blockingServer(ln)
		os.Exit(0)
	}
	var mu sync.Mutex
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/ws") && r.Header.Get("Upgrade") != "" {
			upgrade(w, r, &mu) // websocket_test.go
			return
		}
		h := fnv.New64a()
		n, _ := io.Copy(h, r.Body)
		if os.Getenv("L7_TEST_SERVER_QUIET") == "1" && r.RequestURI == "/allowed/quiet" {
			w.Header().Set("Content-Length", "2")
			w.Write([]byte("ok"))
			return
		}
		mu.Lock()
		fmt.Printf("seen %s %s %d %x\n", r.Method, r.RequestURI, n, h.Sum64())
		mu.Unlock()
		w.Header().Set("Content-Length", "2")
		w.Write([]byte("ok"))
	})}
	fmt.Println("ready")
	srv.Serve(ln)
	os.Exit(0)
}

// spliceServer serves connections that it reads with splice(2) into a pipe, as a TCP proxy or Go's
// io.Copy between two TCP connections reads, instead of read(2): one "seen METHOD TARGET 0 -" line
// and a 200 for each request line in what it reads (requests without bodies, each read whole).
func spliceServer(ln net.Listener) {
	serveEach(ln, func(c net.Conn) {
		rc, err := c.(syscall.Conn).SyscallConn()
		var p [2]int
		if err != nil || unix.Pipe2(p[:], unix.O_CLOEXEC) != nil {
			return
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		buf := make([]byte, 4096)
		for {
			var n int64
			var serr error
			if err := rc.Read(func(fd uintptr) bool {
				n, serr = unix.Splice(int(fd), nil, p[1], nil, len(buf), unix.SPLICE_F_NONBLOCK)
				return serr != unix.EAGAIN
			}); err != nil || serr != nil || n <= 0 {
				return
			}
			k, err := unix.Read(p[0], buf[:n])
			if err != nil {
				return
			}
			answerRequestLines(c, buf[:k])
		}
	})
}

// answerRequestLines prints a "seen METHOD TARGET 0 -" line and writes a 200 for each request line
// in b (requests without bodies, each read whole).
func answerRequestLines(c net.Conn, b []byte) {
	for _, line := range strings.Split(string(b), "\r\n") {
		if f := strings.Fields(line); len(f) == 3 && strings.HasPrefix(f[2], "HTTP/") {
			fmt.Printf("seen %s %s 0 -\n", f[0], f[1])
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
		}
	}
}

// blockingServer serves connections that it reads with blocking read(2) calls, as a
// thread-per-connection server does (Go's own reads never block in the kernel: they wait in
// epoll): the reader is asleep in the socket's receive path when a request arrives.
func blockingServer(ln net.Listener) {
	serveEach(ln, func(c net.Conn) {
		f, err := c.(*net.TCPConn).File() // a blocking duplicate of the socket
		if err != nil {
			return
		}
		defer f.Close()
		fd := int(f.Fd())
		if err := unix.SetNonblock(fd, false); err != nil {
			return
		}
		buf := make([]byte, 4096)
		for {
			n, err := unix.Read(fd, buf)
			if err == unix.EAGAIN {
				// The SOCKHASH receive path answers a blocking read EAGAIN when it
				// woke for bytes the verdict program then held (bpf/README.md,
				// "Blocking readers"): read again.
				continue
			}
			if err != nil || n <= 0 {
				return
			}
			answerRequestLines(c, buf[:n])
		}
	})
}

// serveEach accepts connections and serves each with serve in a goroutine of its own, closing it
// after.
func serveEach(ln net.Listener, serve func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			serve(c)
		}()
	}
}

// gatedListener accepts a connection only after reading a line from its gate, so that a test can
// have data arrive on a connection the application has not accepted yet.
type gatedListener struct {
	net.Listener
	gate *bufio.Scanner
}

func (l *gatedListener) Accept() (net.Conn, error) {
	if !l.gate.Scan() {
		return nil, io.EOF
	}
	return l.Listener.Accept()
}

type testEnv struct {
	l        *L7
	srvNS    string
	cliNS    string
	cgroup   string
	srvAddr  netip.Addr
	cliAddr  netip.Addr
	srvAddr6 netip.Addr
	cliAddr6 netip.Addr
	gate     io.Writer // the server's accept gate (L7_TEST_SERVER_GATED)
	mu       sync.Mutex
	seen     []string
	seenCond chan struct{}
}

func cmdRun(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// inNS runs fn on a locked OS thread inside the named network namespace; sockets and child
// processes fn creates belong to it.
func inNS(t testing.TB, name string, fn func()) {
	t.Helper()
	if err := netns.Do("/run/netns/"+name, func() error { fn(); return nil }); err != nil {
		t.Fatal(err)
	}
}

// newTestEnv builds two network namespaces joined by a veth pair, a cgroup with the programs
// attached, and loads the programs; everything is removed when the test ends.
func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	return newTestEnvDelivery(t, testDelivery(t))
}

// testDelivery is PORTCULLIS_L7_TEST_DELIVERY (direct when unset, redirect or pass): the package's
// socket tests run with direct delivery (its framing is this package's own code) and can run with
// each.
func testDelivery(t testing.TB) Delivery {
	t.Helper()
	v := os.Getenv("PORTCULLIS_L7_TEST_DELIVERY")
	if v == "" {
		return DeliverDirect
	}
	d, err := ParseDelivery(v)
	if err != nil {
		t.Fatalf("PORTCULLIS_L7_TEST_DELIVERY: %v", err)
	}
	return d
}

// newTestEnvDelivery is newTestEnv with the given delivery.
func newTestEnvDelivery(t testing.TB, d Delivery) *testEnv {
	t.Helper()
	return newTestEnvOptions(t, Options{Delivery: d})
}

// newTestEnvOptions is newTestEnv with the given load options (unpinned).
func newTestEnvOptions(t testing.TB, opts Options) *testEnv {
	t.Helper()
	const cgroupRoot = "/sys/fs/cgroup/unified"
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Fatalf("%s is not a cgroup v2 mount (%v)", cgroupRoot, err)
	}
	id := strconv.Itoa(os.Getpid())
	e := &testEnv{srvNS: "pcl-l7-s" + id, cliNS: "pcl-l7-c" + id, cgroup: filepath.Join(cgroupRoot, "pcl-l7-"+id),
		srvAddr: netip.MustParseAddr("10.199.0.1"), cliAddr: netip.MustParseAddr("10.199.0.2"),
		srvAddr6: netip.MustParseAddr("fd00:199::1"), cliAddr6: netip.MustParseAddr("fd00:199::2"), seenCond: make(chan struct{}, 1024)}
	for _, ns := range []string{e.srvNS, e.cliNS} {
		cmdRun(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("delete netns %s: %v: %s", ns, err, out)
			}
		})
	}
	cmdRun(t, "ip", "link", "add", "l7s"+id, "netns", e.srvNS, "type", "veth", "peer", "name", "l7c"+id, "netns", e.cliNS)
	for _, c := range [][]string{
		{"-n", e.srvNS, "addr", "add", e.srvAddr.String() + "/24", "dev", "l7s" + id},
		{"-n", e.cliNS, "addr", "add", e.cliAddr.String() + "/24", "dev", "l7c" + id},
		{"-n", e.srvNS, "addr", "add", e.srvAddr6.String() + "/64", "dev", "l7s" + id, "nodad"},
		{"-n", e.cliNS, "addr", "add", e.cliAddr6.String() + "/64", "dev", "l7c" + id, "nodad"},
		{"-n", e.srvNS, "link", "set", "l7s" + id, "up"}, {"-n", e.cliNS, "link", "set", "l7c" + id, "up"},
		{"-n", e.srvNS, "link", "set", "lo", "up"}, {"-n", e.cliNS, "link", "set", "lo", "up"},
	} {
		cmdRun(t, "ip", c...)
	}
	if err := os.Mkdir(e.cgroup, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The cgroup can only go once its processes are gone; the server is killed by an earlier
		// cleanup (cleanups run last-in first-out).
		for i := 0; ; i++ {
			err := os.Remove(e.cgroup)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if i == 50 {
				t.Errorf("remove cgroup %s: %v", e.cgroup, err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	l, err := Load(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	e.l = l
	if err := l.AttachCgroup(e.cgroup); err != nil {
		t.Fatal(err)
	}
	// PORTCULLIS_L7_TEST_BEFORE_TCP=1 runs the package's socket tests with the server's connections
	// judged before TCP where they can be (they are handed to the socket for everything else).
	if os.Getenv("PORTCULLIS_L7_TEST_BEFORE_TCP") == "1" && !opts.JudgeBeforeTCP && opts.Delivery == DeliverDirect {
		if err := l.setConfig(l.config | configBeforeTCP); err != nil { // Converge keeps it
			t.Fatal(err)
		}
		opts.JudgeBeforeTCP = true
	}
	if opts.JudgeBeforeTCP {
		if err := l.AttachNetns("/run/netns/" + e.srvNS); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// judge makes the server address's port judged, for endpoint 1, by rs for requests from the client
// address, which gets identity peer.
func (e *testEnv) judge(t testing.TB, port uint16, peer uint32, rs RuleSet) {
	t.Helper()
	if err := e.l.SetPort(e.srvAddr, port, 1); err != nil {
		t.Fatal(err)
	}
	if err := e.l.SetRuleSet(RuleKey{EndpointID: 1, PeerIdentity: peer, Port: port}, rs); err != nil {
		t.Fatal(err)
	}
	if err := e.l.SetIdentity(netip.PrefixFrom(e.cliAddr, 32), peer); err != nil {
		t.Fatal(err)
	}
}

// judgeEgress gives the client endpoint (2, at addr: the client's IPv4 or IPv6 address) egress HTTP
// rules on port: its connections to that port are judged at the client's socket.
func (e *testEnv) judgeEgress(t testing.TB, addr netip.Addr, port uint16, rules ...string) {
	t.Helper()
	if err := e.l.SetEgressPort(addr, port, 2); err != nil {
		t.Fatal(err)
	}
	if err := e.l.SetRules(RuleKey{EndpointID: 2, Port: port, Egress: true}, rules); err != nil {
		t.Fatal(err)
	}
}

// startServer starts the server process on (server IPv4 address, port) in the server namespace and
// the test cgroup.
func (e *testEnv) startServer(t testing.TB, port uint16, mptcp bool) {
	t.Helper()
	e.startServerAt(t, "tcp4", netip.AddrPortFrom(e.srvAddr, port).String(), mptcp)
}

// startServerAt starts the server process listening on (network, addr).
func (e *testEnv) startServerAt(t testing.TB, network, addr string, mptcp bool) {
	t.Helper()
	cg, err := os.Open(e.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperServerProcess$", "-test.v=false")
	cmd.Env = append(os.Environ(), "L7_TEST_SERVER="+addr, "L7_TEST_SERVER_NET="+network)
	if mptcp {
		cmd.Env = append(cmd.Env, "L7_TEST_SERVER_MPTCP=1")
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if os.Getenv("L7_TEST_SERVER_GATED") == "1" {
		if e.gate, err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	inNS(t, e.srvNS, func() { err = cmd.Start() })
	if err != nil {
		t.Fatalf("start server: %v", err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = unix.Kill(pid, unix.SIGKILL) // only the process this test started, by its PID
		_ = cmd.Wait()
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				close(ready)
				continue
			}
			if strings.HasPrefix(line, "seen ") {
				e.mu.Lock()
				e.seen = append(e.seen, strings.TrimPrefix(line, "seen "))
				e.mu.Unlock()
				select { // a wake-up for waitSeen; never block the server's output
				case e.seenCond <- struct{}{}:
				default:
				}
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not start")
	}
}

func (e *testEnv) sawTarget(target string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.seen {
		if f := strings.Fields(s); len(f) >= 2 && f[1] == target {
			return true
		}
	}
	return false
}

func (e *testEnv) waitSeen(t *testing.T, target string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for !e.sawTarget(target) {
		select {
		case <-e.seenCond:
		case <-deadline:
			t.Fatalf("server never saw %s; it saw %v", target, e.seen)
		}
	}
}

func (e *testEnv) dial(t testing.TB, port uint16, mptcp bool) net.Conn {
	t.Helper()
	return e.dialAddr(t, netip.AddrPortFrom(e.srvAddr, port), mptcp)
}

func (e *testEnv) dialAddr(t testing.TB, ap netip.AddrPort, mptcp bool) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	inNS(t, e.cliNS, func() {
		var d net.Dialer
		d.Timeout = 5 * time.Second
		d.SetMultipathTCP(mptcp)
		c, err = d.Dial("tcp", ap.String())
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readResponses reads up to n responses ("HTTP/1.1 200" status lines) until the deadline.
func readResponses(c net.Conn, n int, wait time.Duration) (int, error) {
	c.SetReadDeadline(time.Now().Add(wait))
	br := bufio.NewReader(c)
	got := 0
	for got < n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return got, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			got++
		}
	}
	return got, nil
}

// sizedReq is a GET of target whose request line and header block are n bytes in all (n ≥ 64), most
// of them in one header value.
func sizedReq(target string, n int) string {
	r := req("GET", target, "X-Pad: ")
	return strings.Replace(r, "X-Pad: ", "X-Pad: "+strings.Repeat("p", n-len(r)), 1)
}

func req(method, target string, extra ...string) string {
	s := method + " " + target + " HTTP/1.1\r\nHost: server\r\n"
	for _, h := range extra {
		s += h + "\r\n"
	}
	return s + "\r\n"
}

// expectDenied checks that the client gets no response (a timeout or a reset) and that the
// server never saw target.
func (e *testEnv) expectDenied(t *testing.T, c net.Conn, target string) {
	t.Helper()
	n, err := readResponses(c, 1, 1500*time.Millisecond)
	if n != 0 {
		t.Fatalf("denied request %s got a 200 response", target)
	}
	if err == nil {
		t.Fatalf("denied request %s: no error reading the response", target)
	}
	if e.sawTarget(target) {
		t.Fatalf("the server saw denied request %s", target)
	}
}

// counter reads one kernel counter.
func (e *testEnv) counter(t testing.TB, r Reason) uint64 {
	t.Helper()
	n, err := e.l.counter(r)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPrivilegedHTTPAtTheSocket(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	const port, mptcpPort, peer = 8080, 8081, 5000
	for _, p := range []uint16{port, mptcpPort} {
		e.judge(t, p, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload"`}})
	}
	e.startServer(t, port, false)

	t.Run("allowed request reaches the server", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, req("GET", "/allowed/a"))
		if n, err := readResponses(c, 1, 5*time.Second); n != 1 {
			t.Fatalf("no response: %v", err)
		}
		e.waitSeen(t, "/allowed/a")
	})
	t.Run("denied request never reaches the server and the deny is sticky", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, req("GET", "/secret"))
		e.expectDenied(t, c, "/secret")
		io.WriteString(c, req("GET", "/allowed/after-deny"))
		e.expectDenied(t, c, "/allowed/after-deny")
	})
	t.Run("a denied client is reset by ResetDenied", func(t *testing.T) {
		c := e.dial(t, port, false)
		// Malformed (a lower-case method): reset, never answered with 403, whatever the delivery.
		io.WriteString(c, req("get", "/secret-reset"))
		time.Sleep(200 * time.Millisecond) // let the kernel judge it
		if err := e.l.ResetDenied("/run/netns/" + e.srvNS); err != nil {
			t.Fatal(err)
		}
		n, err := readResponses(c, 1, 2*time.Second)
		if n != 0 || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("got %d responses and %v, want a connection reset", n, err)
		}
		if e.sawTarget("/secret-reset") {
			t.Fatal("the server saw the denied request")
		}
		// An allowed connection in the same namespace is left alone.
		c2 := e.dial(t, port, false)
		io.WriteString(c2, req("GET", "/allowed/survivor"))
		if n, err := readResponses(c2, 1, 5*time.Second); n != 1 {
			t.Fatalf("no response: %v", err)
		}
		if err := e.l.ResetDenied("/run/netns/" + e.srvNS); err != nil {
			t.Fatal(err)
		}
		io.WriteString(c2, req("GET", "/allowed/survivor2"))
		if n, err := readResponses(c2, 1, 5*time.Second); n != 1 {
			t.Fatalf("allowed connection broken by ResetDenied: %v", err)
		}
	})
	t.Run("pipelined requests are judged each", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, req("GET", "/allowed/p1")+req("POST", "/upload", "Content-Length: 5")+"hello"+req("GET", "/allowed/p2")+req("GET", "/secret-p3")+req("GET", "/allowed/p4"))
		n, _ := readResponses(c, 4, 3*time.Second)
		if n != 3 {
			t.Fatalf("got %d responses, want 3 (p1, upload, p2)", n)
		}
		e.waitSeen(t, "/allowed/p2")
		e.waitSeen(t, "/upload")
		time.Sleep(500 * time.Millisecond)
		if e.sawTarget("/secret-p3") || e.sawTarget("/allowed/p4") {
			t.Fatalf("the server saw a request at or after the denied one: %v", e.seen)
		}
	})
	t.Run("a request split over several writes is judged once complete", func(t *testing.T) {
		c := e.dial(t, port, false)
		for _, part := range []string{"GET /allo", "wed/split HTTP/1.1\r\nHo", "st: server\r\n", "\r\n"} {
			io.WriteString(c, part)
			time.Sleep(150 * time.Millisecond)
		}
		if n, err := readResponses(c, 1, 5*time.Second); n != 1 {
			t.Fatalf("no response: %v", err)
		}
		e.waitSeen(t, "/allowed/split")

		c2 := e.dial(t, port, false)
		for _, part := range []string{"GET /allowed", "-not HTTP/1.1\r\n", "\r\n"} {
			io.WriteString(c2, part)
			time.Sleep(150 * time.Millisecond)
		}
		e.expectDenied(t, c2, "/allowed-not")
	})
	t.Run("a request with a body larger than the receive buffer streams through", func(t *testing.T) {
		c := e.dial(t, port, false)
		body := strings.Repeat("x", 4<<20)
		go io.WriteString(c, req("POST", "/upload", "Content-Length: "+strconv.Itoa(len(body)))+body+req("GET", "/allowed/after-body"))
		if n, err := readResponses(c, 2, 20*time.Second); n != 2 {
			t.Fatalf("got %d responses: %v", n, err)
		}
		e.waitSeen(t, "/allowed/after-body")
	})
	t.Run("chunked bodies are framed and the requests after them judged", func(t *testing.T) {
		c := e.dial(t, port, false)
		head := "POST /upload HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\n"
		for _, part := range []string{head + "5\r", "\nhel", "lo\r\na\r\n0123456789\r\n0\r", "\n\r\n" +
			req("GET", "/allowed/after-chunked") + req("GET", "/secret-after-chunked")} {
			io.WriteString(c, part)
			time.Sleep(100 * time.Millisecond)
		}
		if n, err := readResponses(c, 2, 5*time.Second); n != 2 {
			t.Fatalf("got %d responses: %v", n, err)
		}
		e.waitSeen(t, "/allowed/after-chunked")
		e.mu.Lock()
		sawBody := false
		for _, l := range e.seen {
			sawBody = sawBody || strings.HasPrefix(l, "POST /upload 15 ")
		}
		e.mu.Unlock()
		if !sawBody {
			t.Fatalf("the server did not get the 15-byte chunked body: %v", e.seen)
		}
		e.expectDenied(t, c, "/secret-after-chunked")
	})
	t.Run("a request hidden where a chunk belongs is denied", func(t *testing.T) {
		for name, body := range map[string]string{
			"request as chunk size":      "5\r\nhello\r\n" + req("GET", "/secret-smuggled-1"),
			"chunk longer than its size": "5\r\nhello" + req("GET", "/secret-smuggled-2") + "\r\n0\r\n\r\n",
			"chunk extension":            "5;x=1\r\nhello\r\n0\r\n\r\n" + req("GET", "/secret-smuggled-3"),
			"trailer":                    "0\r\nX-T: 1\r\n\r\n" + req("GET", "/secret-smuggled-4"),
		} {
			c := e.dial(t, port, false)
			io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\n"+body)
			time.Sleep(300 * time.Millisecond)
			for i := 1; i <= 4; i++ {
				if e.sawTarget("/secret-smuggled-" + strconv.Itoa(i)) {
					t.Fatalf("%s: the server saw the smuggled request", name)
				}
			}
		}
	})
	t.Run("an over-long header block is denied", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, req("GET", "/allowed/long", "X-Pad: "+strings.Repeat("a", ScanLimit)))
		e.expectDenied(t, c, "/allowed/long")
	})
	t.Run("a header block of exactly the scan limit is allowed, whole or in parts; one byte more is not", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, sizedReq("/allowed/at-limit", ScanLimit))
		expectStatuses(t, c, http.StatusOK)
		e.waitSeen(t, "/allowed/at-limit")
		r := sizedReq("/allowed/at-limit-parts", ScanLimit)
		writeParts(t, c, r[:ScanLimit/3], r[ScanLimit/3:2*ScanLimit/3], r[2*ScanLimit/3:])
		expectStatuses(t, c, http.StatusOK)
		e.waitSeen(t, "/allowed/at-limit-parts")
		c2 := e.dial(t, port, false)
		io.WriteString(c2, sizedReq("/allowed/over-limit", ScanLimit+1))
		e.expectDenied(t, c2, "/allowed/over-limit")
	})
	t.Run("malformed requests are denied", func(t *testing.T) {
		for _, raw := range []string{
			"GET /allowed/te HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
			"GET /allowed/te10 HTTP/1.0\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			"GET /allowed/clte HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			"GET /allowed/cl HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
			"GET /allowed/fold HTTP/1.1\r\nHost: s\r\nX: a\r\n b\r\n\r\n",
			"get /allowed/lower HTTP/1.1\r\nHost: s\r\n\r\n",
		} {
			c := e.dial(t, port, false)
			io.WriteString(c, raw)
			target := strings.Fields(raw)[1]
			e.expectDenied(t, c, target)
		}
	})
	t.Run("an MPTCP client falls back to TCP and is judged", func(t *testing.T) {
		c := e.dial(t, port, true)
		io.WriteString(c, req("GET", "/allowed/mptcp"))
		if n, err := readResponses(c, 1, 5*time.Second); n != 1 {
			t.Fatalf("no response: %v", err)
		}
		c2 := e.dial(t, port, true)
		io.WriteString(c2, req("GET", "/secret-mptcp"))
		e.expectDenied(t, c2, "/secret-mptcp")
	})
	t.Run("a socket removed from the SOCKHASH is not left unenforced", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, req("GET", "/allowed/before-removal"))
		if n, err := readResponses(c, 1, 5*time.Second); n != 1 {
			t.Fatalf("no response: %v", err)
		}
		drops := e.counter(t, ReasonGuardDrop)
		socks, err := e.l.Sockets(false)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range socks {
			if err := e.l.RemoveSocket(s, false); err != nil {
				t.Fatal(err)
			}
		}
		io.WriteString(c, req("GET", "/allowed/after-removal"))
		e.expectDenied(t, c, "/allowed/after-removal")
		if e.counter(t, ReasonGuardDrop) == drops {
			t.Fatal("the guard did not count the drop")
		}
	})
	t.Run("an MPTCP listener cannot be used to bypass", func(t *testing.T) {
		e.startServer(t, mptcpPort, true)
		failed := e.counter(t, ReasonInsertFailed)
		c := e.dial(t, mptcpPort, true)
		io.WriteString(c, req("GET", "/secret-mptcp-listener"))
		e.expectDenied(t, c, "/secret-mptcp-listener")
		// The kernel refuses MPTCP subflows in a SOCKHASH; the guard then drops their data, so even
		// allowed requests fail on an MPTCP listener: endpoints must listen without MPTCP.
		if e.counter(t, ReasonInsertFailed) == failed {
			t.Fatal("the MPTCP subflow was not refused by the SOCKHASH; what judged it?")
		}
		c2 := e.dial(t, mptcpPort, true)
		io.WriteString(c2, req("GET", "/allowed/mptcp-listener"))
		e.expectDenied(t, c2, "/allowed/mptcp-listener")
	})
	counters, err := e.l.Counters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel counters: %v", counters)
}

// IPv6, and the usual Go server (":port" is one dual-stack IPv6 socket that also accepts IPv4, with
// IPv4-mapped addresses), are judged like IPv4.
func TestPrivilegedHTTPAtTheSocketIPv6AndDualStack(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	const v6Port, dualPort, peer = 8082, 8083, 5000
	for _, p := range []struct {
		addr netip.Addr
		port uint16
	}{{e.srvAddr6, v6Port}, {e.srvAddr, dualPort}, {e.srvAddr6, dualPort}} {
		if err := e.l.SetPort(p.addr, p.port, 1); err != nil {
			t.Fatal(err)
		}
		if err := e.l.SetRules(RuleKey{EndpointID: 1, PeerIdentity: peer, Port: p.port}, []string{`method="GET" path="/allowed(/.*)?"`}); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []netip.Addr{e.cliAddr, e.cliAddr6} {
		if err := e.l.SetIdentity(netip.PrefixFrom(a, a.BitLen()), peer); err != nil {
			t.Fatal(err)
		}
	}
	e.startServerAt(t, "tcp6", netip.AddrPortFrom(e.srvAddr6, v6Port).String(), false)
	e.startServerAt(t, "tcp", fmt.Sprintf(":%d", dualPort), false)
	for _, tc := range []struct {
		name string
		ap   netip.AddrPort
	}{
		{"IPv6", netip.AddrPortFrom(e.srvAddr6, v6Port)},
		{"IPv4 to a dual-stack socket", netip.AddrPortFrom(e.srvAddr, dualPort)},
		{"IPv6 to a dual-stack socket", netip.AddrPortFrom(e.srvAddr6, dualPort)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tag := strings.ReplaceAll(tc.name, " ", "-")
			c := e.dialAddr(t, tc.ap, false)
			io.WriteString(c, req("GET", "/allowed/"+tag))
			if n, err := readResponses(c, 1, 5*time.Second); n != 1 {
				t.Fatalf("no response: %v", err)
			}
			e.waitSeen(t, "/allowed/"+tag)
			c2 := e.dialAddr(t, tc.ap, false)
			io.WriteString(c2, req("GET", "/secret-"+tag))
			e.expectDenied(t, c2, "/secret-"+tag)
		})
	}
}

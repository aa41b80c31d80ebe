package l7

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The client half of TestPrivilegedEgressHTTPAtTheSocket: a child process in the test cgroup (so
// that sock_ops sees its connections) that connects to L7_TEST_CLIENT, performs the writes listed
// (base64 JSON) in L7_TEST_CLIENT_WRITES with a pause between them, and prints "write ok" or
// "write err ERROR" for each, then "responses N" for the HTTP responses read within a second.
func TestHelperClientProcess(t *testing.T) {
	addr := os.Getenv("L7_TEST_CLIENT")
	if addr == "" {
		t.Skip("helper process for TestPrivilegedEgressHTTPAtTheSocket")
	}
	raw, _ := base64.StdEncoding.DecodeString(os.Getenv("L7_TEST_CLIENT_WRITES"))
	var exact [][]byte // bytes, not strings: JSON would replace bytes that are not UTF-8
	json.Unmarshal(raw, &exact)
	var writes []string
	for _, w := range exact {
		writes = append(writes, string(w))
	}
	var d net.Dialer
	d.SetMultipathTCP(os.Getenv("L7_TEST_CLIENT_MPTCP") == "1")
	var c net.Conn
	var err error
	if n, err := strconv.Atoi(os.Getenv("L7_TEST_CLIENT_RACE")); err == nil { // shortwrite_test.go
		fmt.Println("race accepted", writesRacingEstablishment(addr, []byte(writes[0]), n))
		os.Exit(0)
	}
	if mode := os.Getenv("L7_TEST_CLIENT_SHORT_WRITE"); mode == "header" { // shortwrite_test.go
		fmt.Println("short-write", replaceHeaderTail(addr, writes[0], writes[1]))
		os.Exit(0)
	}
	if mode := os.Getenv("L7_TEST_CLIENT_SHORT_WRITE"); mode != "" { // shortwrite_test.go
		fmt.Println("short-write", smuggleAfterShortWrite(addr, writes[0], mode == "pieces"))
		os.Exit(0)
	}
	switch os.Getenv("L7_TEST_CLIENT_TFO") {
	case "1":
		c, err = dialFastOpenConnect(addr, nil) // the first write rides on the SYN
	case "sendto", "early":
		// The first write is made before the connection is established, by a call that waits
		// for it: sendto(MSG_FASTOPEN), or a blocking write during a connect.
		c, err = dialWritingEarly(addr, []byte(writes[0]), os.Getenv("L7_TEST_CLIENT_TFO") == "sendto")
		if err == nil {
			fmt.Println("write ok")
			writes = writes[1:]
		}
	default:
		c, err = d.Dial("tcp", addr) // an IPv4 or IPv6 literal
	}
	if err != nil {
		fmt.Println("dial err", err)
		os.Exit(1)
	}
	if n, err := strconv.Atoi(os.Getenv("L7_TEST_CLIENT_SNDBUF")); err == nil { // SO_SNDBUF
		c.(*net.TCPConn).SetWriteBuffer(n)
	}
	if n, err := strconv.Atoi(os.Getenv("L7_TEST_CLIENT_BULK")); err == nil { // BenchmarkClientSideUpload
		// One upload of n MiB in 256 KiB writes; the time from the first write to the answer.
		start := time.Now()
		if _, err := io.WriteString(c, req("POST", "/upload", "Content-Length: "+strconv.Itoa(n<<20))); err != nil {
			fmt.Println("bulk err", err)
			os.Exit(0)
		}
		chunk := bytes.Repeat([]byte("u"), 256<<10)
		for range n * 4 {
			if _, err := c.Write(chunk); err != nil {
				fmt.Println("bulk err", err)
				os.Exit(0)
			}
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != http.StatusOK {
			fmt.Println("bulk err", resp, err)
			os.Exit(0)
		}
		fmt.Println("bulk ns", time.Since(start).Nanoseconds())
		os.Exit(0)
	}
	if n, err := strconv.Atoi(os.Getenv("L7_TEST_CLIENT_LOOP")); err == nil {
		// n requests one after the other, each answered before the next is written.
		rq := []byte(req("GET", "/allowed/quiet"))
		buf := make([]byte, 4096)
		for i := range n {
			if _, err := c.Write(rq); err != nil {
				fmt.Println("loop write err", i, err)
				os.Exit(0)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			got := 0
			for !bytes.HasSuffix(buf[:got], []byte("\r\n\r\nok")) {
				k, err := c.Read(buf[got:])
				if err != nil {
					fmt.Println("loop lost", i, err)
					os.Exit(0)
				}
				got += k
			}
		}
		fmt.Println("loop ok", n)
		os.Exit(0)
	}
	if n, err := strconv.Atoi(os.Getenv("L7_TEST_CLIENT_UPLOAD")); err == nil {
		// An upload of n bytes and a request after it, in one write.
		writes = []string{req("POST", "/upload", "Content-Length: "+strconv.Itoa(n)) + strings.Repeat("u", n) + req("GET", "/allowed/after-upload")}
	}
	if target := os.Getenv("L7_TEST_CLIENT_UPLOAD_THEN"); target != "" {
		// A 4 MiB upload, then (the next write) a GET of target.
		writes = []string{req("POST", "/upload", "Content-Length: 4194304") + strings.Repeat("u", 4<<20), req("GET", target)}
	}
	if n, err := strconv.Atoi(os.Getenv("L7_TEST_CLIENT_APPEND")); err == nil && len(writes) > 0 {
		// n more bytes at the end of the first write (a body too large for the environment).
		writes[0] += strings.Repeat("b", n)
	}
	if os.Getenv("L7_TEST_CLIENT_WEBSOCKET") == "1" { // websocket_test.go
		websocketClient(c, writes)
		os.Exit(0)
	}
	between := os.Getenv("L7_TEST_CLIENT_READ_BETWEEN") == "1"
	// The writes from..to (L7_TEST_CLIENT_OOB="from-to") are sent as urgent data (MSG_OOB): TCP
	// marks the last byte of each urgent.
	oobFrom, oobTo := -1, -1
	if r := strings.Split(os.Getenv("L7_TEST_CLIENT_OOB"), "-"); len(r) == 2 {
		oobFrom, _ = strconv.Atoi(r[0])
		oobTo, _ = strconv.Atoi(r[1])
	}
	br := bufio.NewReader(c)
	for i, w := range writes {
		if os.Getenv("L7_TEST_CLIENT_SENDFILE") == "1" {
			if err := sendFile(c, w); err != nil {
				fmt.Println("write err", err)
			} else {
				fmt.Println("write ok")
			}
		} else if i >= oobFrom && i <= oobTo {
			if err := sendOOB(c, w); err != nil {
				fmt.Println("write err", err)
			} else {
				fmt.Println("write ok")
			}
		} else if _, err := c.Write([]byte(w)); err != nil {
			fmt.Println("write err", err)
		} else {
			fmt.Println("write ok")
		}
		if between {
			// One response before the next write, as a browser on a keep-alive connection.
			c.SetReadDeadline(time.Now().Add(time.Second))
			if resp, err := http.ReadResponse(br, nil); err != nil {
				fmt.Println("read end", err)
			} else {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				fmt.Printf("status %d %q\n", resp.StatusCode, body)
			}
			continue
		}
		pause := 150 * time.Millisecond
		if ms, err := strconv.Atoi(os.Getenv("L7_TEST_CLIENT_PAUSE_MS")); err == nil {
			pause = time.Duration(ms) * time.Millisecond
		}
		time.Sleep(pause)
	}
	if os.Getenv("L7_TEST_CLIENT_STATUS") == "1" {
		// Every response's status and body, then how reading ended.
		c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				fmt.Println("read end", err)
				break
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			fmt.Printf("status %d %q\n", resp.StatusCode, body)
		}
		os.Exit(0)
	}
	n, _ := readResponses(c, 10, time.Second)
	fmt.Println("responses", n)
	os.Exit(0)
}

// sockaddr4 is an IPv4 address:port as a socket address, for the helpers that connect with raw
// socket calls.
func sockaddr4(addr string) (*unix.SockaddrInet4, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, nil
}

// socket4 opens a TCP socket (with the extra type flags, e.g. SOCK_NONBLOCK) for the IPv4
// address:port addr, and returns it with addr as a sockaddr.
func socket4(addr string, flags int) (int, *unix.SockaddrInet4, error) {
	sa, err := sockaddr4(addr)
	if err != nil {
		return -1, nil, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|flags, 0)
	if err != nil {
		return -1, nil, err
	}
	return fd, sa, nil
}

// dialFastOpenConnect connects to an IPv4 address:port with TCP_FASTOPEN_CONNECT: connect returns at
// once and the first write rides on the SYN. That write is first, if given, else the caller's.
func dialFastOpenConnect(addr string, first []byte) (net.Conn, error) {
	fd, sa, err := socket4(addr, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "tfo")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1); err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, sa); err != nil {
		return nil, err
	}
	if first != nil {
		if _, err := unix.Write(fd, first); err != nil {
			return nil, fmt.Errorf("write in the SYN: %w", err)
		}
	}
	return net.FileConn(f)
}

// dialWritingEarly connects to an IPv4 address:port and writes first before the connection is
// established, by a call that waits for it and then writes: with fastOpen, sendto(MSG_FASTOPEN) on
// a blocking socket (without a Fast Open cookie for the server the SYN carries no data); without, a
// non-blocking connect followed by a blocking write.
func dialWritingEarly(addr string, first []byte, fastOpen bool) (net.Conn, error) {
	fd, sa, err := socket4(addr, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "early")
	defer f.Close()
	if fastOpen {
		if err := unix.Sendto(fd, first, unix.MSG_FASTOPEN, sa); err != nil {
			return nil, fmt.Errorf("sendto(MSG_FASTOPEN): %w", err)
		}
		return net.FileConn(f)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, sa); err != unix.EINPROGRESS {
		return nil, fmt.Errorf("non-blocking connect: %v, want EINPROGRESS", err)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return nil, err
	}
	if _, err := unix.Write(fd, first); err != nil {
		return nil, fmt.Errorf("write during the connect: %w", err)
	}
	return net.FileConn(f)
}

// sendFile writes w with sendfile(2), from a temporary file (Go's TCPConn.ReadFrom of an *os.File).
func sendFile(c net.Conn, w string) error {
	f, err := os.CreateTemp("", "l7-sendfile")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.WriteString(w); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	n, err := c.(*net.TCPConn).ReadFrom(f)
	if err == nil && n != int64(len(w)) {
		err = fmt.Errorf("sent %d of %d bytes", n, len(w))
	}
	return err
}

// sendOOB writes w with MSG_OOB: TCP marks its last byte urgent.
func sendOOB(c net.Conn, w string) error {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), []byte(w), unix.MSG_OOB, nil)
		return serr != unix.EAGAIN
	})
	return errors.Join(err, serr)
}

// runClient runs the client helper in the client namespace and the test cgroup and returns its
// output lines.
func (e *testEnv) runClient(t *testing.T, port uint16, writes ...string) []string {
	t.Helper()
	return e.runClientOpts(t, port, false, 0, writes...)
}

// runClientOpts is runClient over MPTCP, or with a pause other than 150 ms between writes.
func (e *testEnv) runClientOpts(t *testing.T, port uint16, mptcp bool, pause time.Duration, writes ...string) []string {
	t.Helper()
	return e.runClientEnv(t, port, mptcp, pause, nil, writes...)
}

// runClientEnv is runClientOpts with more environment for the helper.
func (e *testEnv) runClientEnv(t testing.TB, port uint16, mptcp bool, pause time.Duration, env []string, writes ...string) []string {
	t.Helper()
	cg, err := os.Open(e.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	exact := make([][]byte, len(writes))
	for i, w := range writes {
		exact[i] = []byte(w)
	}
	js, _ := json.Marshal(exact)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperClientProcess$", "-test.v=false")
	cmd.Env = append(os.Environ(), "L7_TEST_CLIENT="+netip.AddrPortFrom(e.srvAddr, port).String(),
		"L7_TEST_CLIENT_WRITES="+base64.StdEncoding.EncodeToString(js))
	if mptcp {
		cmd.Env = append(cmd.Env, "L7_TEST_CLIENT_MPTCP=1")
	}
	if pause > 0 {
		cmd.Env = append(cmd.Env, "L7_TEST_CLIENT_PAUSE_MS="+strconv.Itoa(int(pause.Milliseconds())))
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	inNS(t, e.cliNS, func() { err = cmd.Start() })
	if err != nil {
		t.Fatalf("start client: %v", err)
	}
	pid := cmd.Process.Pid
	done := make(chan []string)
	go func() {
		var lines []string
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "write ") || strings.HasPrefix(l, "responses ") || strings.HasPrefix(l, "dial ") ||
				strings.HasPrefix(l, "status ") || strings.HasPrefix(l, "read end ") || strings.HasPrefix(l, "loop ") || strings.HasPrefix(l, "echo ") || strings.HasPrefix(l, "short-write ") || strings.HasPrefix(l, "race ") || strings.HasPrefix(l, "bulk ") {
				lines = append(lines, l)
			}
		}
		done <- lines
	}()
	select {
	case lines := <-done:
		cmd.Wait()
		return lines
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(pid, syscall.SIGKILL) // only the process this test started, by its PID
		cmd.Wait()
		t.Fatal("client helper hung")
		return nil
	}
}

// startFullServer starts a second server, on port, whose accept queue is full: it listens with a
// backlog of one (net.core.somaxconn, for that listen only) and accepts nothing until release is
// called, and two connections fill its queue. A connection to it waits for its SYN to be sent
// again (a second, the first retransmission) after release.
func (e *testEnv) startFullServer(t *testing.T, port uint16) (release func()) {
	t.Helper()
	setSysctlIn(t, e.srvNS, "/proc/sys/net/core/somaxconn", "1")
	t.Setenv("L7_TEST_SERVER_GATED", "1")
	gate := e.gate
	e.startServer(t, port, false)
	setSysctlIn(t, e.srvNS, "/proc/sys/net/core/somaxconn", "4096")
	gate, e.gate = e.gate, gate
	for range 2 {
		c := e.dial(t, port, false) // the test process is in no judged cgroup
		t.Cleanup(func() { c.Close() })
	}
	overflows := netstatIn(t, e.srvNS, "ListenOverflows")
	var once sync.Once
	return func() {
		once.Do(func() {
			if netstatIn(t, e.srvNS, "ListenOverflows") == overflows {
				t.Error("the full server's queue dropped no SYN")
			}
			io.WriteString(gate, strings.Repeat("accept\n", 8))
		})
	}
}

func TestPrivilegedEgressHTTPAtTheSocket(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	events := collectEvents(t, e.l)
	const port = 8090
	e.judgeEgress(t, e.cliAddr, port, `method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload(-c)?"`)
	e.startServer(t, port, false) // not an ingress L7 port: only the client side judges
	const mptcpPort = 8091
	e.judgeEgress(t, e.cliAddr, mptcpPort, `method="GET" path="/allowed(/.*)?"`)
	e.startServer(t, mptcpPort, true)
	t.Run("a client connection denied by egress rules is reset by ResetDenied", func(t *testing.T) {
		done := make(chan []string)
		go func() {
			done <- e.runClientOpts(t, port, false, 1500*time.Millisecond, req("GET", "/secret-e-reset"), req("GET", "/allowed/e-after-reset"))
		}()
		// Once the kernel has denied the first write, reset from inside the client's namespace.
		deadline := time.Now().Add(5 * time.Second)
		for {
			var k httpL7Tuple
			var v httpL7SockState
			denied := false
			it := e.l.objs.L7EgressState.Iterate()
			for it.Next(&k, &v) {
				denied = denied || v.Denied != 0
			}
			if denied {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no denied client connection in l7_egress_state")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := e.l.ResetDenied("/run/netns/" + e.cliNS); err != nil {
			t.Fatal(err)
		}
		got := <-done
		t.Logf("client: %q", got)
		if len(got) < 2 || !strings.HasSuffix(got[0], "permission denied") ||
			!strings.HasSuffix(got[1], "software caused connection abort") {
			// bpf_sock_destroy aborts the client's own socket (ECONNABORTED) and sends the server a RST.
			t.Fatalf("client said %q; want EACCES, then an aborted connection", got)
		}
	})
	t.Run("the egress guard drops the data if the client's socket leaves the judged set", func(t *testing.T) {
		drops := e.counter(t, ReasonGuardDrop)
		done := make(chan []string)
		go func() {
			done <- e.runClientOpts(t, port, false, 1500*time.Millisecond, req("GET", "/allowed/e-guard-a"), req("GET", "/allowed/e-guard-b"))
		}()
		e.waitSeen(t, "/allowed/e-guard-a")
		// Take the client's socket out of l7_egress_socks (the only connection open).
		var cookies []uint64
		var k uint64
		for it := e.l.objs.L7EgressSocks.Iterate(); it.Next(&k, new(uint64)); {
			cookies = append(cookies, k)
		}
		for _, c := range cookies {
			if err := e.l.objs.L7EgressSocks.Delete(c); err != nil {
				t.Fatal(err)
			}
		}
		if len(cookies) != 1 {
			t.Fatalf("removed %d client sockets from l7_egress_socks, want 1", len(cookies))
		}
		t.Logf("client: %q", <-done)
		e.expectUnseen(t, "/allowed/e-guard-b", ReasonGuardDrop, drops)
	})
	t.Run("urgent data cannot hide a request from the rules", func(t *testing.T) {
		e.expectUrgentRefused(t, port, nil, "/allowed/e-urgent", "/secret-e-urgent")
	})
	t.Run("a request written with sendfile is judged", func(t *testing.T) {
		got := e.runClientEnv(t, port, false, 0, []string{"L7_TEST_CLIENT_SENDFILE=1"}, req("GET", "/allowed/e-sendfile"), req("GET", "/secret-e-sendfile"))
		t.Logf("client: %q", got)
		e.waitSeen(t, "/allowed/e-sendfile")
		if len(got) < 2 || got[0] != "write ok" || !strings.HasSuffix(got[1], "permission denied") {
			t.Fatalf("client said %q; want the allowed request sent and EACCES for the denied one", got)
		}
		time.Sleep(200 * time.Millisecond)
		if e.sawTarget("/secret-e-sendfile") {
			t.Fatal("the server saw /secret-e-sendfile, written with sendfile")
		}
	})
	t.Run("a request in the SYN (TCP Fast Open) is judged", func(t *testing.T) {
		// Server: Fast Open on for every listener, no cookie needed (0x2 | 0x200 | 0x400); client:
		// data in the SYN without a cookie (0x1 | 0x4).
		setSysctlIn(t, e.srvNS, "/proc/sys/net/ipv4/tcp_fastopen", "1538")
		setSysctlIn(t, e.cliNS, "/proc/sys/net/ipv4/tcp_fastopen", "5")
		defer setSysctlIn(t, e.cliNS, "/proc/sys/net/ipv4/tcp_fastopen", "1")
		// The SYN that carries the bytes is dropped by the egress guard (the socket is in no
		// SOCKHASH yet), TCP sends them again once the connection is established, and they never
		// passed the sk_msg program: the connection is denied, whatever they are.
		for _, target := range []string{"/secret-e-tfo", "/allowed/e-tfo"} {
			before := e.counter(t, ReasonFastOpen)
			got := e.runClientEnv(t, port, false, 0, []string{"L7_TEST_CLIENT_TFO=1"}, req("GET", target))
			t.Logf("client: %q", got)
			if e.counter(t, ReasonFastOpen) != before+1 {
				t.Fatalf("%s: the fast-open counter did not move by one", target)
			}
			time.Sleep(300 * time.Millisecond)
			if e.sawTarget(target) {
				t.Fatalf("the server saw %s, written before the connection was established", target)
			}
		}
	})
	t.Run("a write waiting for the connection cannot pass unjudged", func(t *testing.T) {
		// Two calls that wait for the connection and then write, from the kernel's plain TCP
		// send, which they entered before the socket could be in l7_egress_socks: sendto with
		// MSG_FASTOPEN when the client's TCP has no Fast Open cookie for the server (the SYN
		// asks for one and carries nothing), and a blocking write during a connect. The
		// connection is denied: neither request reaches the server.
		// The blocking write only waits if the handshake takes time: its server's accept queue
		// is full, so the first SYN is dropped and the connection completes with the SYN sent
		// again a second later, once the queue has room.
		const slowPort = 8092
		e.judgeEgress(t, e.cliAddr, slowPort, `method="GET" path="/allowed(/.*)?"`)
		release := e.startFullServer(t, slowPort)
		for _, mode := range []string{"sendto", "early"} {
			p := uint16(port)
			if mode == "early" {
				p = slowPort
				go func() {
					time.Sleep(600 * time.Millisecond) // the client has started and sent its SYN
					release()
				}()
			}
			before := e.counter(t, ReasonFastOpen)
			denied, after := "/secret-e-"+mode, "/allowed/e-"+mode+"-after"
			got := e.runClientEnv(t, p, false, 0, []string{"L7_TEST_CLIENT_TFO=" + mode}, req("GET", denied), req("GET", after))
			t.Logf("%s: client: %q", mode, got)
			if len(got) == 0 || got[0] != "write ok" {
				t.Fatalf("%s: client said %q; want the first write to complete once connected", mode, got)
			}
			if n := e.counter(t, ReasonFastOpen) - before; n != 1 {
				t.Fatalf("%s: fast-open counted %d connections, want 1", mode, n)
			}
			time.Sleep(300 * time.Millisecond)
			for _, target := range []string{denied, after} {
				if e.sawTarget(target) {
					t.Fatalf("%s: the server saw %s", mode, target)
				}
			}
		}
	})
	t.Run("requests after a 4 MiB upload are judged", func(t *testing.T) {
		e.expectRequestsAfterUploadsJudged(t, port, events, false)
	})
	t.Run("writes racing the connection's establishment are never sent unjudged", func(t *testing.T) {
		e.expectRacingWritesRefused(t, port, "/secret-e-race")
	})
	t.Run("an MPTCP connection cannot bypass egress rules", func(t *testing.T) {
		failed := e.counter(t, ReasonInsertFailed)
		got := e.runClientOpts(t, mptcpPort, true, 0, req("GET", "/secret-e-mptcp"))
		t.Logf("client: %q", got)
		// The MPTCP subflow must have been refused by the SOCKHASH.
		e.expectUnseen(t, "/secret-e-mptcp", ReasonInsertFailed, failed)
	})

	for _, tc := range []struct {
		name   string
		writes []string
		want   []string // expected output lines
		seen   []string
		unseen []string
	}{
		{"allowed request is sent", []string{req("GET", "/allowed/e1")},
			[]string{"write ok", "responses 1"}, []string{"/allowed/e1"}, nil},
		{"denied request fails the write with EACCES", []string{req("GET", "/secret-e2"), req("GET", "/allowed/e2-after")},
			[]string{"write err write tcp %s: write: permission denied", "write err write tcp %s: write: permission denied", "responses 0"}, nil, []string{"/secret-e2", "/allowed/e2-after"}},
		{"a request split over writes is judged once complete", []string{"GET /allo", "wed/e3 HTTP/1.1\r\nHost: s\r\n", "\r\n"},
			[]string{"write ok", "write ok", "write ok", "responses 1"}, []string{"/allowed/e3"}, nil},
		{"pipelined requests and a body in one write are judged each",
			[]string{req("GET", "/allowed/e4") + req("POST", "/upload", "Content-Length: 5") + "hello" + req("GET", "/allowed/e4b")},
			[]string{"write ok", "responses 3"}, []string{"/allowed/e4", "/allowed/e4b"}, nil},
		{"chunked uploads are framed, split over writes", []string{req("POST", "/upload-c", "Transfer-Encoding: chunked") + "5\r", "\nhel",
			"lo\r\n0\r\n", "\r\n" + req("GET", "/allowed/after-chunked-e")},
			[]string{"write ok", "write ok", "write ok", "write ok", "responses 2"}, []string{"/upload-c", "/allowed/after-chunked-e"}, nil},
		{"a request hidden where a chunk size belongs is refused", []string{req("POST", "/upload", "Transfer-Encoding: chunked") + "5\r\nhello\r\n" + req("GET", "/secret-e-smuggled")},
			nil, nil, []string{"/secret-e-smuggled"}},
		{"a header block completed by the write that carries its short body", []string{
			"POST /upload HTTP/1.1\r\nHost: server\r\nX-Padding: " + strings.Repeat("p", 40) + "\r\nContent-Length: 5\r\n", "\r\nhello"},
			[]string{"write ok", "write ok", "responses 1"}, []string{"/upload"}, nil},
		{"a header block completed by the write that carries the next request", []string{
			"GET /allowed/e6 HTTP/1.1\r\nHost: server\r\nX-Padding: " + strings.Repeat("p", 40) + "\r\n", "\r\n" + req("GET", "/allowed/e6b")},
			[]string{"write ok", "write ok", "responses 2"}, []string{"/allowed/e6", "/allowed/e6b"}, nil},
		{"a header block of exactly the scan limit is sent", []string{sizedReq("/allowed/e-at-limit", ScanLimit)},
			[]string{"write ok", "responses 1"}, []string{"/allowed/e-at-limit"}, nil},
		{"a header block of exactly the scan limit over two writes is sent", []string{
			sizedReq("/allowed/e-at-limit-2", ScanLimit)[:ScanLimit/2], sizedReq("/allowed/e-at-limit-2", ScanLimit)[ScanLimit/2:]},
			[]string{"write ok", "write ok", "responses 1"}, []string{"/allowed/e-at-limit-2"}, nil},
		{"a header block one byte over the scan limit is not sent", []string{sizedReq("/allowed/e-over-limit", ScanLimit+1)},
			[]string{"write err write tcp %s: write: permission denied", "responses 0"}, nil, []string{"/allowed/e-over-limit"}},
		{"a denied request pipelined after an allowed one is not sent", []string{req("GET", "/allowed/e5") + req("GET", "/secret-e5")},
			nil, []string{"/allowed/e5"}, []string{"/secret-e5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := e.runClient(t, port, tc.writes...)
			t.Logf("client: %q", got)
			if tc.want != nil {
				if len(got) != len(tc.want) {
					t.Fatalf("client said %q, want %q", got, tc.want)
				}
				for i, w := range tc.want {
					if strings.Contains(w, "%s") {
						w = strings.Split(w, "%s")[0]
					}
					if !strings.HasPrefix(got[i], w) || (strings.Contains(tc.want[i], "permission denied") && !strings.HasSuffix(got[i], "permission denied")) {
						t.Fatalf("client said %q, want %q", got, tc.want)
					}
				}
			}
			for _, s := range tc.seen {
				e.waitSeen(t, s)
			}
			time.Sleep(200 * time.Millisecond)
			for _, s := range tc.unseen {
				if e.sawTarget(s) {
					t.Fatalf("the server saw %s", s)
				}
			}
		})
	}
}

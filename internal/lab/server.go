package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Request is one request a pod's or external host's server received, as Lab.Requests returns it.
type Request struct {
	// Time is when the server received the request.
	Time time.Time `json:"time"`
	// Endpoint is the receiving pod ("namespace/name") or external host.
	Endpoint string `json:"endpoint"`
	// Protocol is "HTTP/1.1" (or the request's protocol) or "UDP".
	Protocol string `json:"protocol"`
	// Port is the local port the request arrived on.
	Port int `json:"port"`
	// Local is the local address and port.
	Local string `json:"local"`
	// Remote is the peer's address and port.
	Remote string `json:"remote"`
	// Method, Path (the request target as sent), Host and Header describe an HTTP request.
	Method string      `json:"method,omitempty"`
	Path   string      `json:"path,omitempty"`
	Host   string      `json:"host,omitempty"`
	Header http.Header `json:"header,omitempty"`
	// BodyBytes is the size of the HTTP body or of the UDP datagram.
	BodyBytes int64 `json:"bodyBytes"`
}

// Main runs a lab helper subcommand: "serve" (ServeMain) or "probe" (ProbeMain). A program that is the
// lab's Options.Binary calls it with the arguments after Options.BinaryArgs.
func Main(args []string) error {
	if len(args) == 0 {
		return errors.New("lab helper: want serve or probe")
	}
	switch args[0] {
	case "serve":
		return ServeMain(args[1:])
	case "probe":
		return ProbeMain(args[1:])
	default:
		return fmt.Errorf("lab helper: unknown subcommand %q", args[0])
	}
}

type portList []int

func (p *portList) String() string { return fmt.Sprint(*p) }
func (p *portList) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("bad port %q", f)
		}
		*p = append(*p, n)
	}
	return nil
}

// ServeMain is the server that runs in every pod and external host (`portcullis lab serve`): an HTTP/1.1
// server on each --tcp port, answering 200 with a body naming the endpoint, the method and the path, and a
// UDP echo on each --udp port, both on IPv4 and IPv6 sockets of their own (no MPTCP). Every request is
// appended as a JSON line to the --requests file. When every port listens it writes "ready" to --ready-fd.
// It runs until SIGTERM or SIGINT.
func ServeMain(args []string) error {
	fs := flag.NewFlagSet("lab serve", flag.ContinueOnError)
	name := fs.String("name", "", "the endpoint's name, as it appears in responses and the request log")
	reqPath := fs.String("requests", "", "file the requests are appended to as JSON lines")
	readyFD := fs.Int("ready-fd", -1, "file descriptor to write \"ready\" to once serving")
	var tcp, udp portList
	fs.Var(&tcp, "tcp", "TCP port to serve HTTP/1.1 on (repeatable, or comma-separated)")
	fs.Var(&udp, "udp", "UDP port to echo on (repeatable, or comma-separated)")
	parent := fs.Int("parent-pid", 0, "exit when this process exits")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if *parent > 0 {
		if err := exitWithParent(*parent); err != nil {
			return err
		}
	}

	rec := &recorder{endpoint: *name}
	if *reqPath != "" {
		f, err := os.OpenFile(*reqPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("open request log: %w", err)
		}
		defer f.Close()
		rec.w = f
	}

	var lc net.ListenConfig
	// MPTCP sockets cannot be put in a SOCKHASH; Go may listen with MPTCP by default.
	lc.SetMultipathTCP(false)
	var servers []*http.Server
	var conns []net.PacketConn
	errc := make(chan error, 4*(len(tcp)+len(udp)))
	for _, port := range tcp {
		for _, network := range []string{"tcp4", "tcp6"} {
			ln, err := lc.Listen(ctx, network, net.JoinHostPort("", strconv.Itoa(port)))
			if err != nil {
				return fmt.Errorf("listen %s port %d: %w", network, port, err)
			}
			srv := &http.Server{
				Handler:           rec.handler(port),
				ReadHeaderTimeout: 30 * time.Second,
				IdleTimeout:       2 * time.Minute,
			}
			servers = append(servers, srv)
			go func() {
				if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					errc <- fmt.Errorf("serve %s port %d: %w", network, port, err)
				}
			}()
		}
	}
	for _, port := range udp {
		for _, network := range []string{"udp4", "udp6"} {
			pc, err := lc.ListenPacket(ctx, network, net.JoinHostPort("", strconv.Itoa(port)))
			if err != nil {
				return fmt.Errorf("listen %s port %d: %w", network, port, err)
			}
			conns = append(conns, pc)
			go func() {
				if err := rec.echo(pc, port); err != nil && !errors.Is(err, net.ErrClosed) {
					errc <- fmt.Errorf("echo %s port %d: %w", network, port, err)
				}
			}()
		}
	}
	if *readyFD >= 0 {
		ready := os.NewFile(uintptr(*readyFD), "ready")
		_, err := ready.WriteString("ready\n")
		ready.Close()
		if err != nil {
			return fmt.Errorf("report readiness: %w", err)
		}
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutdown, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, srv := range servers {
		_ = srv.Shutdown(shutdown)
	}
	for _, pc := range conns {
		_ = pc.Close()
	}
	return err
}

// recorder appends requests to the request log, one JSON object per line, one write per line.
type recorder struct {
	endpoint string
	mu       sync.Mutex
	w        io.Writer
}

func (r *recorder) record(req Request) {
	if r.w == nil {
		return
	}
	req.Time = time.Now().UTC()
	req.Endpoint = r.endpoint
	line, err := json.Marshal(req)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.w.Write(append(line, '\n'))
}

func (r *recorder) handler(port int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n, _ := io.Copy(io.Discard, req.Body)
		local := ""
		if a, ok := req.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			local = a.String()
		}
		r.record(Request{
			Protocol: req.Proto, Port: port, Local: local, Remote: req.RemoteAddr,
			Method: req.Method, Path: req.RequestURI, Host: req.Host, Header: req.Header, BodyBytes: n,
		})
		if strings.HasPrefix(req.URL.Path, "/ws") && strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
			upgradeAndEcho(w)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Lab-Endpoint", r.endpoint)
		fmt.Fprintf(w, "endpoint=%s method=%s path=%s port=%d\n", r.endpoint, req.Method, req.RequestURI, port)
	})
}

// upgradeAndEcho answers a WebSocket upgrade with 101 and then echoes every byte back, as a WebSocket
// echo server answers its frames (the lab does not parse them).
func upgradeAndEcho(w http.ResponseWriter) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		return
	}
	_, _ = io.Copy(conn, brw.Reader)
}

func (r *recorder) echo(pc net.PacketConn, port int) error {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		r.record(Request{Protocol: "UDP", Port: port, Local: pc.LocalAddr().String(), Remote: from.String(), BodyBytes: int64(n)})
		if _, err := pc.WriteTo(buf[:n], from); err != nil {
			continue
		}
	}
}

// Requests returns every request the server of a pod ("namespace/name") or external host has received so
// far, oldest first.
func (l *Lab) Requests(ref string) ([]Request, error) {
	ep, err := l.endpoint(ref)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(l.requestLog(ep))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read requests of %s: %w", ref, err)
	}
	defer f.Close()
	var out []Request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var r Request
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue // a line being written
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read requests of %s: %w", ref, err)
	}
	return out, nil
}

// exitWithParent ends this process when the process pid exits, so that servers do not outlive a lab
// whose owner crashed. Unlike Pdeathsig it follows the whole parent process, not the thread that forked.
func exitWithParent(pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("watch parent %d: %w", pid, err)
	}
	if os.Getppid() != pid {
		os.Exit(1) // the parent died before it could be watched
	}
	go func() {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		os.Exit(1)
	}()
	return nil
}

package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Errors a probe (HTTP, UDPEcho) can end with, to be matched with errors.Is.
var (
	// ErrRefused: the peer refused the connection (a TCP RST to the SYN, or ICMP port unreachable for UDP).
	ErrRefused = errors.New("connection refused")
	// ErrTimeout: no answer in time, as when a packet is dropped.
	ErrTimeout = errors.New("timeout")
	// ErrReset: the connection was reset after it was established.
	ErrReset = errors.New("connection reset")
	// ErrClosed: the peer closed the connection without an answer.
	ErrClosed = errors.New("connection closed without a response")
	// ErrDenied: the local kernel refused the operation (EACCES or EPERM), as a BPF program that drops a
	// send does.
	ErrDenied = errors.New("permission denied")
	// ErrUnreachable: no route to the host or network.
	ErrUnreachable = errors.New("unreachable")
)

var kindErrors = map[string]error{
	"refused": ErrRefused, "timeout": ErrTimeout, "reset": ErrReset, "closed": ErrClosed,
	"denied": ErrDenied, "unreachable": ErrUnreachable,
}

// DefaultProbeTimeout bounds a probe whose context has no deadline.
const DefaultProbeTimeout = 5 * time.Second

// HTTPResponse is the answer to Lab.HTTP.
type HTTPResponse struct {
	// Status is the HTTP status code.
	Status int `json:"status"`
	// Header holds the response headers.
	Header http.Header `json:"header,omitempty"`
	// Body is the response body.
	Body string `json:"body"`
}

// probeResult is what ProbeMain prints, as one JSON object.
type probeResult struct {
	HTTP    *HTTPResponse `json:"http,omitempty"`
	Payload []byte        `json:"payload,omitempty"`
	Kind    string        `json:"kind,omitempty"` // see kindErrors; "other" otherwise
	Error   string        `json:"error,omitempty"`
}

type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(s string) error { *h = append(*h, s); return nil }

// ProbeMain is the client behind Lab.HTTP and Lab.UDPEcho (`portcullis lab probe http|udp`), run inside a
// pod's network namespace and cgroup so that its sockets belong to the pod. It prints one JSON object:
// the response or the error, classified.
func ProbeMain(args []string) error {
	if len(args) == 0 || (args[0] != "http" && args[0] != "udp") {
		return errors.New("lab probe: want http or udp")
	}
	fs := flag.NewFlagSet("lab probe "+args[0], flag.ContinueOnError)
	addr := fs.String("addr", "", "destination address")
	port := fs.Int("port", 0, "destination port")
	timeout := fs.Duration("timeout", DefaultProbeTimeout, "give up after this long")
	method := fs.String("method", http.MethodGet, "HTTP method")
	path := fs.String("path", "/", "HTTP request target")
	body := fs.String("body", "", "HTTP body")
	payload := fs.String("payload", "ping", "UDP payload")
	var headers headerList
	fs.Var(&headers, "header", "HTTP header \"Name: value\" (repeatable)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	target := net.JoinHostPort(*addr, strconv.Itoa(*port))
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var res probeResult
	var err error
	if args[0] == "http" {
		res.HTTP, err = probeHTTP(ctx, target, *method, *path, *body, headers)
	} else {
		res.Payload, err = probeUDP(ctx, target, []byte(*payload))
	}
	if err != nil {
		res.Kind, res.Error = classify(ctx, err), err.Error()
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func newDialer() *net.Dialer {
	d := &net.Dialer{}
	d.SetMultipathTCP(false)
	return d
}

func probeHTTP(ctx context.Context, target, method, path, body string, headers []string) (*HTTPResponse, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+target+"/", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return nil, fmt.Errorf("header %q: want \"Name: value\"", h)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if strings.EqualFold(k, "Host") {
			req.Host = v
			continue
		}
		req.Header.Add(k, v)
	}
	// Send the request target exactly as given, not re-encoded.
	req.URL.Opaque, req.URL.RawQuery = path, ""
	tr := &http.Transport{DialContext: newDialer().DialContext, DisableKeepAlives: true, DisableCompression: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &HTTPResponse{Status: resp.StatusCode, Header: resp.Header, Body: string(data)}, nil
}

func probeUDP(ctx context.Context, target string, payload []byte) ([]byte, error) {
	c, err := newDialer().DialContext(ctx, "udp", target)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write(payload); err != nil {
		return nil, err
	}
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// classify names the kind of a network error, as kindErrors knows them.
func classify(ctx context.Context, err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return "denied"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout(), ctx.Err() != nil:
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	}
	return "other"
}

// target resolves a destination: a pod reference, an external host name or an IP literal. A name gives
// its IPv4 address.
func (l *Lab) target(to string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(to); err == nil {
		return a, nil
	}
	ep, err := l.endpoint(to)
	if err != nil {
		return netip.Addr{}, err
	}
	return ep.ipv4, nil
}

// probeTimeout leaves the probe a little less than the context so that it reports a timeout itself.
func probeTimeout(ctx context.Context) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok {
		return DefaultProbeTimeout
	}
	left := time.Until(dl) - 100*time.Millisecond
	if left < 100*time.Millisecond {
		left = 100 * time.Millisecond
	}
	return left
}

func (l *Lab) probe(ctx context.Context, from string, args []string) (probeResult, error) {
	argv := append([]string{l.opts.Binary}, l.opts.BinaryArgs...)
	argv = append(argv, "probe")
	argv = append(argv, args...)
	out, err := l.exec(ctx, from, argv, false)
	var res probeResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		return res, errors.Join(fmt.Errorf("probe from %s: %s", from, strings.TrimSpace(string(out))), err)
	}
	return res, nil
}

func probeError(what string, res probeResult) error {
	if res.Kind == "" {
		return nil
	}
	if sentinel, ok := kindErrors[res.Kind]; ok {
		return fmt.Errorf("%s: %w: %s", what, sentinel, res.Error)
	}
	return fmt.Errorf("%s: %s", what, res.Error)
}

// HTTP sends one HTTP/1.1 request on a new connection from a pod or external host (from) to a pod or
// external host's IPv4 address, or to any IP address (to), and returns the response. The client runs in
// from's network namespace and cgroup. The error matches ErrRefused, ErrTimeout, ErrReset, ErrClosed,
// ErrDenied or ErrUnreachable with errors.Is when the request failed in one of those ways. A nil headers
// is fine; a "Host" header sets the request's host.
func (l *Lab) HTTP(ctx context.Context, from, to string, port int, method, path string, headers http.Header) (*HTTPResponse, error) {
	return l.HTTPBody(ctx, from, to, port, method, path, headers, "")
}

// HTTPBody is HTTP with a request body (sent with its Content-Length; Go's client writes a small body
// in the same write as the header block, as most clients do).
func (l *Lab) HTTPBody(ctx context.Context, from, to string, port int, method, path string, headers http.Header, body string) (*HTTPResponse, error) {
	addr, err := l.target(to)
	if err != nil {
		return nil, err
	}
	if method == "" {
		method = http.MethodGet
	}
	if path == "" {
		path = "/"
	}
	args := []string{"http", "--addr", addr.String(), "--port", strconv.Itoa(port), "--method", method,
		"--path", path, "--timeout", probeTimeout(ctx).String()}
	if body != "" {
		args = append(args, "--body", body)
	}
	for k, vs := range headers {
		for _, v := range vs {
			args = append(args, "--header", k+": "+v)
		}
	}
	res, err := l.probe(ctx, from, args)
	if err != nil {
		return nil, err
	}
	if err := probeError(fmt.Sprintf("%s %s from %s to %s", method, net.JoinHostPort(addr.String(), strconv.Itoa(port))+path, from, to), res); err != nil {
		return nil, err
	}
	return res.HTTP, nil
}

// UDPEcho sends payload in one datagram from a pod or external host to a UDP echo port of a pod, external
// host (IPv4) or IP address, and returns the echoed datagram. Errors are classified as for HTTP.
func (l *Lab) UDPEcho(ctx context.Context, from, to string, port int, payload []byte) ([]byte, error) {
	addr, err := l.target(to)
	if err != nil {
		return nil, err
	}
	res, err := l.probe(ctx, from, []string{"udp", "--addr", addr.String(), "--port", strconv.Itoa(port),
		"--payload", string(payload), "--timeout", probeTimeout(ctx).String()})
	if err != nil {
		return nil, err
	}
	if err := probeError(fmt.Sprintf("udp from %s to %s", from, net.JoinHostPort(addr.String(), strconv.Itoa(port))), res); err != nil {
		return nil, err
	}
	return res.Payload, nil
}

// Exec runs a command inside a pod's or external host's network namespace and cgroup and returns its
// combined output. The error includes the output when the command fails.
func (l *Lab) Exec(ctx context.Context, ref string, argv ...string) ([]byte, error) {
	return l.exec(ctx, ref, argv, true)
}

func (l *Lab) exec(ctx context.Context, ref string, argv []string, combined bool) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("exec: no command")
	}
	ep, err := l.endpoint(ref)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), l.opts.Env...)
	var out, errOut bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errOut
	if combined {
		cmd.Stderr = &out
	}
	// Pdeathsig follows the forking thread, not the process: good enough for a command that lives no
	// longer than this call. Servers watch their parent process instead.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := l.startIn(ep, cmd); err != nil {
		return nil, fmt.Errorf("exec %s in %s: %w", filepath.Base(argv[0]), ref, err)
	}
	if err := cmd.Wait(); err != nil {
		return out.Bytes(), fmt.Errorf("exec %s in %s: %w: %s", filepath.Base(argv[0]), ref, err,
			strings.TrimSpace(out.String()+errOut.String()))
	}
	return out.Bytes(), nil
}

// InPod runs fn with the calling goroutine's OS thread in a pod's or external host's network namespace
// and returns the thread to its own namespace afterwards. Sockets fn opens stay in the pod's namespace,
// but belong to the caller's cgroup, not the pod's: use Exec, HTTP or UDPEcho where cgroup-attached
// programs must see the traffic. fn must not start goroutines that expect the namespace.
func (l *Lab) InPod(ref string, fn func() error) error {
	ep, err := l.endpoint(ref)
	if err != nil {
		return err
	}
	return inNetns(filepath.Join(netnsDir, l.netnsOf(ep)), fn)
}

// InNode is InPod for a node's network namespace.
func (l *Lab) InNode(node string, fn func() error) error {
	path, err := l.NodeNetns(node)
	if err != nil {
		return err
	}
	return inNetns(path, fn)
}

package l7

import (
	"bufio"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-dev/portcullis/internal/netns"
)

// setSysctlIn writes a sysctl of the named network namespace (the /proc/sys/net files a thread opens
// are its network namespace's).
func setSysctlIn(t *testing.T, ns, path, value string) {
	t.Helper()
	cmdRun(t, "nsenter", "--net=/run/netns/"+ns, "sh", "-c", "echo "+value+" > "+path)
	out, err := exec.Command("nsenter", "--net=/run/netns/"+ns, "cat", path).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != value {
		t.Fatalf("%s in %s: %q, %v; want %s", path, ns, out, err, value)
	}
}

// netstatIn reads one TcpExt counter of the named network namespace.
func netstatIn(t *testing.T, ns, name string) int {
	t.Helper()
	var b []byte
	err := netns.Do("/run/netns/"+ns, func() error {
		var err error
		b, err = os.ReadFile("/proc/thread-self/net/netstat") // this thread's namespace; /proc/self is the main thread's
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" {
			continue
		}
		for k, n := range names {
			if n == name && k < len(values) {
				v, _ := strconv.Atoi(values[k])
				return v
			}
		}
	}
	t.Fatalf("no TcpExt %s in %s", name, ns)
	return 0
}

// dialFastOpen connects with TCP Fast Open, the request in the SYN (TCP_FASTOPEN_CONNECT: connect
// returns at once and the first write rides on the SYN).
func (e *testEnv) dialFastOpen(t *testing.T, port uint16, request string) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	inNS(t, e.cliNS, func() { c, err = dialFastOpenConnect(netip.AddrPortFrom(e.srvAddr, port).String(), []byte(request)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A request carried in the SYN (TCP Fast Open) is judged like any other: the accepted socket's data
// reaches the application only through the verdict program. The server accepts data in the SYN
// without a cookie, so that the first connection already uses it (counted by the server's TCP).
func TestPrivilegedFastOpenRequestsAreJudged(t *testing.T) {
	requireRoot(t)
	t.Setenv("L7_TEST_SERVER_TFO", "1")
	e := newTestEnv(t)
	// Server: Fast Open on, no cookie needed (0x2 | 0x200); client: send data in the SYN without
	// a cookie (0x1 | 0x4).
	setSysctlIn(t, e.srvNS, "/proc/sys/net/ipv4/tcp_fastopen", "514")
	setSysctlIn(t, e.cliNS, "/proc/sys/net/ipv4/tcp_fastopen", "5")
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}})
	e.startServer(t, port, false)

	for _, c := range []struct {
		target  string
		allowed bool
	}{{"/allowed/fast-open", true}, {"/secret/fast-open", false}} {
		before := netstatIn(t, e.srvNS, "TCPFastOpenPassive")
		conn := e.dialFastOpen(t, port, req("GET", c.target))
		if c.allowed {
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("allowed request %s in the SYN: %v, %v", c.target, resp, err)
			}
			e.waitSeen(t, c.target)
		} else {
			e.expectDenied(t, conn, c.target)
		}
		if got := netstatIn(t, e.srvNS, "TCPFastOpenPassive"); got != before+1 {
			t.Fatalf("%s: TCPFastOpenPassive %d, was %d: the request did not ride on the SYN", c.target, got, before)
		}
	}
}

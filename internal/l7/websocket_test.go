package l7

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// upgrade is the helper server's answer to a request for /ws… with an Upgrade header: 400 for
// /ws-refused (the connection stays HTTP), nothing for /ws-silent; otherwise 101 for whatever protocol was asked, and then
// every byte echoed back, as a WebSocket server would answer its frames.
func upgrade(w http.ResponseWriter, r *http.Request, mu *sync.Mutex) {
	mu.Lock()
	fmt.Printf("seen %s %s 0 0\n", r.Method, r.RequestURI)
	mu.Unlock()
	if r.URL.Path == "/ws-refused" {
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte("no"))
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if r.URL.Path == "/ws-silent" { // never answers; closes when the client does
		io.Copy(io.Discard, brw.Reader)
		return
	}
	fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", r.Header.Get("Upgrade"))
	io.Copy(conn, brw.Reader)
}

// upgradeReq asks for an upgrade to proto, as a WebSocket client does.
func upgradeReq(path, proto string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: server\r\nUpgrade: " + proto + "\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
}

// wsFrame is a binary WebSocket frame whose payload would be a denied request if it were judged as
// HTTP.
const wsFrame = "\x82\x1aGET /secret HTTP/1.1\r\n\r\n\r\n"

// websocketClient is the client helper's WebSocket mode: writes[0] is the upgrade request, the rest
// frames; it prints the answer's status, then "echo ok" for each frame echoed back whole, or how
// writing or reading failed.
func websocketClient(c net.Conn, writes []string) {
	br := bufio.NewReader(c)
	c.Write([]byte(writes[0]))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		fmt.Println("read end", err)
		return
	}
	fmt.Println("status", resp.StatusCode)
	for _, w := range writes[1:] {
		if _, err := c.Write([]byte(w)); err != nil {
			fmt.Println("write err", err)
			return
		}
		got := make([]byte, len(w))
		c.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
		if _, err := io.ReadFull(br, got); err != nil || !bytes.Equal(got, []byte(w)) {
			fmt.Printf("echo err %q %v\n", got, err)
			return
		}
		fmt.Println("echo ok")
	}
}

// wsUpgrade writes the upgrade request on c and reads the answer's status.
func wsUpgrade(t *testing.T, c net.Conn, br *bufio.Reader, path, proto string) int {
	t.Helper()
	io.WriteString(c, upgradeReq(path, proto))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade to %s at %s: %v", proto, path, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp.StatusCode
}

// wsEcho writes a frame and wants it back whole.
func wsEcho(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	io.WriteString(c, wsFrame)
	got := make([]byte, len(wsFrame))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != wsFrame {
		t.Fatalf("frame echoed as %q (%v), want it back whole", got, err)
	}
}

// wsNoEcho writes a frame and wants nothing back: the kernel judged it as a request and denied it.
func wsNoEcho(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	io.WriteString(c, wsFrame)
	c.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	if b, err := br.ReadByte(); err == nil {
		t.Fatalf("the frame got an answer (%q): it reached the server", b)
	}
}

// After the server's 101 to an allowed WebSocket upgrade, the connection carries frames, not
// requests: the kernel lets them through (a frame here would be a denied request if judged). Only a
// WebSocket upgrade, only as the connection's first request, and only when the server's first
// bytes are the 101: a refused upgrade, an h2c upgrade (HTTP/2 requests must stay judged), or an
// upgrade after other requests leave the connection judged.
func TestPrivilegedWebSocketUpgradesAtTheServer(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	const port, peer = 8080, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/ws(-.*)?"`, `method="GET" path="/allowed(/.*)?"`}})
	e.startServer(t, port, false)
	conn := func() (net.Conn, *bufio.Reader) {
		c := e.dial(t, port, false)
		return c, bufio.NewReader(c)
	}

	t.Run("an allowed WebSocket upgrade carries frames after the 101", func(t *testing.T) {
		before := e.counter(t, ReasonUpgraded)
		c, br := conn()
		if s := wsUpgrade(t, c, br, "/ws", "websocket"); s != http.StatusSwitchingProtocols {
			t.Fatalf("status %d, want 101", s)
		}
		wsEcho(t, c, br)
		wsEcho(t, c, br)
		if n := e.counter(t, ReasonUpgraded); n != before+1 {
			t.Fatalf("upgraded counter %d, want %d", n, before+1)
		}
		if e.sawTarget("/secret") {
			t.Fatal("a frame was read as a request")
		}
	})
	t.Run("a refused upgrade leaves the connection judged", func(t *testing.T) {
		c, br := conn()
		if s := wsUpgrade(t, c, br, "/ws-refused", "websocket"); s != http.StatusBadRequest {
			t.Fatalf("status %d, want 400", s)
		}
		wsNoEcho(t, c, br)
	})
	t.Run("an h2c upgrade leaves the connection judged", func(t *testing.T) {
		c, br := conn()
		if s := wsUpgrade(t, c, br, "/ws", "h2c"); s != http.StatusSwitchingProtocols {
			t.Fatalf("status %d, want 101", s)
		}
		wsNoEcho(t, c, br)
	})
	t.Run("an upgrade after other requests leaves the connection judged", func(t *testing.T) {
		c, br := conn()
		io.WriteString(c, req("GET", "/allowed/before-ws"))
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("first request: %v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		if s := wsUpgrade(t, c, br, "/ws", "websocket"); s != http.StatusSwitchingProtocols {
			t.Fatalf("status %d, want 101", s)
		}
		wsNoEcho(t, c, br)
	})
	t.Run("a denied upgrade request is answered 403", func(t *testing.T) {
		c, _ := conn()
		io.WriteString(c, strings.Replace(upgradeReq("/wsx", "websocket"), "/wsx", "/secret-ws", 1))
		e.expectForbidden(t, c, "/secret-ws")
	})
	t.Run("a connection still waiting for its answer is forgotten when it closes", func(t *testing.T) {
		c, _ := conn()
		io.WriteString(c, upgradeReq("/ws-silent", "websocket"))
		e.waitUpgradesPending(t, 1)
		c.Close()
		e.waitUpgradesPending(t, 0)
	})
	// Every other upgrade got its answer: the guards look at segments only while one waits.
	e.waitUpgradesPending(t, 0)
	if n := e.counter(t, ReasonGuardDrop); n != 0 {
		t.Fatalf("guard drops %d", n)
	}
}

// waitUpgradesPending waits until want connections wait for the answer to their upgrade.
func (e *testEnv) waitUpgradesPending(t *testing.T, want uint64) {
	t.Helper()
	var n uint64
	waitUntil(t, func() bool {
		if err := e.l.objs.L7Upgrades.Lookup(uint32(0), &n); err != nil {
			t.Fatal(err)
		}
		return n == want
	}, func() string { return fmt.Sprintf("%d connections wait for an upgrade's answer, want %d", n, want) })
}

// The same at a client's socket: a client judged at its own socket (ingress rules at source) and a
// client under egress rules both see the server's 101 arrive before their TCP takes it.
func TestPrivilegedWebSocketUpgradesAtTheClient(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	ws := []string{"L7_TEST_CLIENT_WEBSOCKET=1"}
	rules := []string{`method="GET" path="/ws(-.*)?"`}

	t.Run("ingress rules judged at the client's socket", func(t *testing.T) {
		const port, peer = 8080, 5000
		if err := e.l.setConfig(configAtSource); err != nil {
			t.Fatal(err)
		}
		e.trustClient(t)
		e.judge(t, port, peer, RuleSet{Rules: rules})
		e.startServer(t, port, false)
		before := e.counter(t, ReasonUpgraded)
		got := e.runClientEnv(t, port, false, 0, ws, upgradeReq("/ws", "websocket"), wsFrame, wsFrame)
		if strings.Join(got, "|") != "status 101|echo ok|echo ok" {
			t.Fatalf("client said %q", got)
		}
		if n := e.counter(t, ReasonUpgraded); n != before+1 {
			t.Fatalf("upgraded counter %d, want %d", n, before+1)
		}
		got = e.runClientEnv(t, port, false, 0, ws, upgradeReq("/ws", "h2c"), wsFrame)
		if len(got) != 2 || got[0] != "status 101" || !strings.Contains(got[1], "permission denied") {
			t.Fatalf("h2c: client said %q; want the frame's write refused", got)
		}
	})
	t.Run("egress rules", func(t *testing.T) {
		const port = 8090
		e.judgeEgress(t, e.cliAddr, port, rules...)
		e.startServer(t, port, false)
		got := e.runClientEnv(t, port, false, 0, ws, upgradeReq("/ws", "websocket"), wsFrame, wsFrame)
		if strings.Join(got, "|") != "status 101|echo ok|echo ok" {
			t.Fatalf("client said %q", got)
		}
		got = e.runClientEnv(t, port, false, 0, ws, upgradeReq("/ws-refused", "websocket"), wsFrame)
		if len(got) != 2 || got[0] != "status 400" || !strings.Contains(got[1], "permission denied") {
			t.Fatalf("refused: client said %q; want the frame's write refused", got)
		}
	})
	e.waitUpgradesPending(t, 0)
}

// The kernel recognizes a WebSocket upgrade by an Upgrade header whose whole value is "websocket"
// in any case; anything else (other protocols, more words, other headers) is an ordinary request.
func TestPrivilegedJudgeRecognizesWebSocketUpgrades(t *testing.T) {
	requireRoot(t)
	l := loadWithPool(t)
	key := RuleKey{EndpointID: 300, Port: 80}
	if err := l.SetRules(key, []string{`method="GET" path="/ws"`}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		header string
		want   bool
	}{
		{"Upgrade: websocket", true}, {"Upgrade: WebSocket", true}, {"upgrade: WEBSOCKET", true},
		{"Upgrade:  websocket  ", true}, {"Upgrade: websocketx", false}, {"Upgrade: websocke", false},
		{"Upgrade: h2c", false}, {"Upgrade: websocket, h2c", false}, {"X-Upgrade: websocket", false},
		{"Upgrades: websocket", false}, {"Connection: websocket", false},
	} {
		r, err := l.Judge(key, []byte(req("GET", "/ws", c.header)))
		if err != nil {
			t.Fatal(err)
		}
		if r.Decision != Allow || r.WebSocket != c.want {
			t.Errorf("%q: %v (%v), websocket %v; want allowed, websocket %v", c.header, r.Decision, r.Reason, r.WebSocket, c.want)
		}
	}
}

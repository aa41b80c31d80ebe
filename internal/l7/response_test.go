package l7

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// eventLog collects the kernel's request events while a test runs.
type eventLog struct {
	mu     sync.Mutex
	events []Event
	errs   []error
}

func collectEvents(t *testing.T, l *L7) *eventLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := &eventLog{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev, err := range l.ReadEvents(ctx) {
			log.mu.Lock()
			if err != nil {
				log.errs = append(log.errs, err)
			} else {
				log.events = append(log.events, ev)
			}
			log.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if len(log.errs) > 0 {
			t.Errorf("reading events: %v", log.errs)
		}
	})
	return log
}

// wait returns the first event for path, waiting up to two seconds for it.
func (el *eventLog) wait(t *testing.T, path string) Event {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		if ev, ok := el.find(path); ok {
			return ev
		}
		if time.Now().After(deadline) {
			t.Fatalf("no event for %s", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// find returns the first event for path that has arrived.
func (el *eventLog) find(path string) (Event, bool) {
	return el.findFunc(func(ev Event) bool { return ev.Path == path })
}

// findFunc returns the first event that has arrived for which match is true.
func (el *eventLog) findFunc(match func(Event) bool) (Event, bool) {
	el.mu.Lock()
	defer el.mu.Unlock()
	for _, ev := range el.events {
		if match(ev) {
			return ev, true
		}
	}
	return Event{}, false
}

// responses reads responses until n arrived or reading fails, and returns their status codes and
// bodies.
func responses(c net.Conn, n int, wait time.Duration) (codes []int, bodies []string, closes []bool, err error) {
	c.SetReadDeadline(time.Now().Add(wait))
	br := bufio.NewReader(c)
	for len(codes) < n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return codes, bodies, closes, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// ReadResponse turns "Connection: close" into resp.Close.
		codes, bodies, closes = append(codes, resp.StatusCode), append(bodies, string(b)), append(closes, resp.Close)
	}
	return codes, bodies, closes, nil
}

// expectForbidden checks that the client got the kernel's 403, that the server never saw target,
// and that the connection stays denied.
func (e *testEnv) expectForbidden(t *testing.T, c net.Conn, target string) {
	t.Helper()
	codes, bodies, closes, err := responses(c, 1, 3*time.Second)
	if err != nil || len(codes) != 1 || codes[0] != http.StatusForbidden || bodies[0] != "Access denied" || !closes[0] {
		t.Fatalf("denied %s: got statuses %v, bodies %q, close %v, error %v; want 403 \"Access denied\" with Connection: close",
			target, codes, bodies, closes, err)
	}
	if e.sawTarget(target) {
		t.Fatalf("the server saw denied request %s", target)
	}
}

// A browser-like request: long enough for the in-place 403 (78 bytes or more).
func longReq(method, target string) string {
	return req(method, target, "User-Agent: portcullis-test/1.0 (l7)", "Accept: */*")
}

func TestPrivilegedDeniedRequestsAreAnsweredAndReported(t *testing.T) {
	requireRoot(t)
	e := newTestEnv(t)
	const port, auditPort, peer = 8080, 8082, 5000
	e.judge(t, port, peer, RuleSet{Rules: []string{
		`method="GET" path="/allowed(/.*)?" logHeader="X-Trace: on"`, `method="POST" path="/upload"`}})
	e.judge(t, auditPort, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`}, Audit: true})
	events := collectEvents(t, e.l)
	e.startServer(t, port, false)
	e.startServer(t, auditPort, false)

	t.Run("the first request of a connection, denied, gets 403 and the deny sticks", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, longReq("GET", "/secret-403"))
		e.expectForbidden(t, c, "/secret-403")
		io.WriteString(c, longReq("GET", "/allowed/after-403"))
		e.expectDenied(t, c, "/allowed/after-403")
		ev := events.wait(t, "/secret-403")
		if ev.Verdict != VerdictDenied || ev.Response != ResponseForbidden || ev.Reason != ReasonNoRuleMatch ||
			ev.Method != "GET" || ev.Host != "server" || ev.Rule != -1 || ev.Egress || ev.PeerIdentity != peer ||
			ev.Local != netip.AddrPortFrom(e.srvAddr, port) || ev.Remote.Addr() != e.cliAddr {
			t.Fatalf("event %+v", ev)
		}
	})
	t.Run("a path that climbs out of the allowed one with dot segments or escaped slashes gets 403", func(t *testing.T) {
		// "/allowed(/.*)?" matches each of these as sent; a server that normalizes the path would
		// serve what lies outside /allowed (or, for an escaped slash, deeper than the rule says).
		for target, reason := range map[string]Reason{
			"/allowed/../secret-dots": ReasonDotSegment, "/allowed/%2e%2e/secret-dots-escaped": ReasonDotSegment,
			"/allowed/..%2Fsecret-dots-slash": ReasonDotSegment, "/allowed/..;/secret-dots-param": ReasonDotSegment,
			"/allowed/x%2Fsecret-escaped-slash": ReasonEscapedSlash, "/allowed/x\\secret-backslash": ReasonEscapedSlash,
		} {
			c := e.dial(t, port, false)
			io.WriteString(c, longReq("GET", target))
			e.expectForbidden(t, c, target)
			c.Close()
			ev := events.wait(t, target)
			if ev.Verdict != VerdictDenied || ev.Response != ResponseForbidden || ev.Reason != reason || ev.Rule != -1 {
				t.Fatalf("%s: event %+v, want reason %v", target, ev, reason)
			}
		}
	})
	t.Run("a 403 takes the length of the request it replaces", func(t *testing.T) {
		for target, raw := range map[string]string{
			// 2 KiB of header block: padded over many stores
			"/secret-big": req("GET", "/secret-big", "X-Filler: "+strings.Repeat("f", 2000)),
			// a short header block followed by its body: the 403 takes 78 bytes
			"/s2": req("POST", "/s2", "Content-Length: 60") + strings.Repeat("b", 60),
		} {
			c := e.dial(t, port, false)
			io.WriteString(c, raw)
			e.expectForbidden(t, c, target)
		}
	})
	t.Run("a denied request after an answered one on a keep-alive connection gets 403", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, longReq("GET", "/allowed/first"))
		if codes, _, _, err := responses(c, 1, 5*time.Second); len(codes) != 1 || codes[0] != 200 {
			t.Fatalf("allowed request: %v %v", codes, err)
		}
		io.WriteString(c, longReq("DELETE", "/allowed/second"))
		e.expectForbidden(t, c, "/allowed/second")
	})
	t.Run("a pipelined denied request is reset, never answered ahead of earlier responses", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, longReq("GET", "/allowed/pipe1")+longReq("GET", "/allowed/pipe2")+longReq("GET", "/secret-pipe3"))
		codes, _, _, err := responses(c, 3, 1500*time.Millisecond)
		if len(codes) != 2 || codes[0] != 200 || codes[1] != 200 || err == nil {
			t.Fatalf("got statuses %v (%v), want 200 200 and then nothing", codes, err)
		}
		if e.sawTarget("/secret-pipe3") {
			t.Fatal("the server saw the denied request")
		}
		if ev := events.wait(t, "/secret-pipe3"); ev.Response != ResponseReset {
			t.Fatalf("event %+v, want a reset", ev)
		}
		if err := e.l.ResetDenied("/run/netns/" + e.srvNS); err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := responses(c, 1, 2*time.Second); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("after ResetDenied: %v, want a connection reset", err)
		}
	})
	t.Run("a request shorter than the 403 is answered (direct) or reset (stream parser)", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, req("GET", "/s")) // 36 bytes
		ev := events.wait(t, "/s")
		if testDelivery(t) != DeliverDirect {
			// The stream parser's verdict can only rewrite a message in place.
			e.expectDenied(t, c, "/s")
			if ev.Response != ResponseReset {
				t.Fatalf("event %+v, want a reset", ev)
			}
			return
		}
		// l7_stream grows the segment into the 403.
		e.expectForbidden(t, c, "/s")
		if ev.Response != ResponseForbidden {
			t.Fatalf("event %+v, want a 403", ev)
		}
	})
	t.Run("allowed requests are reported with the rule, and a logged header mismatch", func(t *testing.T) {
		c := e.dial(t, port, false)
		io.WriteString(c, req("GET", "/allowed/traced", "X-Trace: on")+req("GET", "/allowed/untraced"))
		if codes, _, _, err := responses(c, 2, 5*time.Second); len(codes) != 2 {
			t.Fatalf("got %v: %v", codes, err)
		}
		traced, untraced := events.wait(t, "/allowed/traced"), events.wait(t, "/allowed/untraced")
		for _, ev := range []Event{traced, untraced} {
			if ev.Verdict != VerdictAllowed || ev.Rule != 0 || ev.Reason != ReasonAllowed || ev.Latency <= 0 ||
				time.Since(ev.Time).Abs() > time.Minute {
				t.Fatalf("event %+v", ev)
			}
		}
		if traced.LogMissing != 0 || untraced.LogMissing != 1 {
			t.Fatalf("log mismatch bits: traced %b, untraced %b; want 0 and 1", traced.LogMissing, untraced.LogMissing)
		}
		if src, _ := e.l.RuleSources(traced.Key(), traced.Rule); len(src) != 1 || !strings.Contains(src[0], "/allowed") {
			t.Fatalf("rule sources %q", src)
		}
	})
	t.Run("audit mode forwards what it would deny and reports it", func(t *testing.T) {
		c := e.dial(t, auditPort, false)
		io.WriteString(c, longReq("POST", "/audited")+longReq("GET", "/allowed/after-audit"))
		if codes, _, _, err := responses(c, 2, 5*time.Second); len(codes) != 2 || codes[0] != 200 || codes[1] != 200 {
			t.Fatalf("got %v: %v", codes, err)
		}
		e.waitSeen(t, "/audited")
		if ev := events.wait(t, "/audited"); ev.Verdict != VerdictAudited || ev.Reason != ReasonNoRuleMatch || ev.Response != ResponseNone {
			t.Fatalf("event %+v", ev)
		}
		if ev := events.wait(t, "/allowed/after-audit"); ev.Verdict != VerdictAllowed {
			t.Fatalf("event %+v", ev)
		}
	})
	counters, err := e.l.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if counters[ReasonForbidden.String()] < 2 {
		t.Errorf("forbidden counter %d, want at least 2", counters[ReasonForbidden.String()])
	}
	t.Logf("kernel counters: %v", counters)
}

// The stream parser's deliveries, redirect and pass (opt-in; the default is direct): judging,
// framing and the 403 are the same.
func TestPrivilegedStreamParserDeliveries(t *testing.T) {
	requireRoot(t)
	for _, d := range []Delivery{DeliverRedirect, DeliverPass} {
		t.Run(d.String(), func(t *testing.T) {
			e := newTestEnvDelivery(t, d)
			const port, peer = 8080, 5000
			e.judge(t, port, peer, RuleSet{Rules: []string{`method="GET" path="/allowed(/.*)?"`, `method="POST" path="/upload"`}})
			e.startServer(t, port, false)
			c := e.dial(t, port, false)
			// A small body: large uploads are what can hang with pass (bpf/README.md), and this
			// test is about the path working, not about that bug.
			body := strings.Repeat("x", 5)
			go io.WriteString(c, req("GET", "/allowed/r1")+req("POST", "/upload", "Content-Length: "+strconv.Itoa(len(body)))+body+req("GET", "/allowed/r2"))
			if codes, _, _, err := responses(c, 3, 10*time.Second); len(codes) != 3 || codes[0] != 200 || codes[1] != 200 || codes[2] != 200 {
				t.Fatalf("got %v: %v", codes, err)
			}
			e.waitSeen(t, "/allowed/r2")
			c2 := e.dial(t, port, false)
			io.WriteString(c2, longReq("GET", "/secret-"+d.String()))
			e.expectForbidden(t, c2, "/secret-"+d.String())
		})
	}
}

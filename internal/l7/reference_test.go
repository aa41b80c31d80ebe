package l7

import (
	"bytes"
	"fmt"
	"net/http"
	"net/netip"
	"net/textproto"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/evaluator"
	"github.com/portcullis-dev/portcullis/internal/policy"
)

// requireRoot skips a privileged test when not root, and fails it under CI=true.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("privileged test cannot run: not root (CI=true)")
		}
		t.Skip("needs root")
	}
}

// refFraming is the Go reference of the kernel's framing rules for one header block.
type refFraming struct {
	complete  bool // the header block ends within ScanLimit
	malformed bool // syntax the kernel must deny
	req       evaluator.HTTPRequest
	hdrLen    int
	bodyLen   uint64
	chunked   bool
	websocket bool // an Upgrade: websocket header (any case)
}

func isTchar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func allBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func visible(c byte) bool { return c >= 0x21 && c <= 0x7e }

// refRequestLine checks a request line.
func refRequestLine(line string) (method, target string, ok bool) {
	parts := strings.Split(line, " ")
	if len(parts) != 3 || !slices.Contains(policy.KernelMethods, parts[0]) {
		return "", "", false
	}
	method, target = parts[0], parts[1]
	if !strings.HasPrefix(target, "/") || !allBytes(target, visible) {
		return "", "", false
	}
	if parts[2] != "HTTP/1.1" && parts[2] != "HTTP/1.0" {
		return "", "", false
	}
	return method, target, true
}

// refFrame frames the start of a connection's byte stream the way the kernel must: it looks only at
// the first ScanLimit bytes, and a header block that is complete there is parsed strictly.
func refFrame(raw []byte) refFraming {
	data := raw[:min(len(raw), ScanLimit)]
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		return refFraming{}
	}
	// The request line may itself end the block: "GET / HTTP/1.1\r\n\r\n".
	out := refFraming{complete: true, hdrLen: end + 4}
	lines := strings.Split(string(data[:end]), "\r\n")
	bad := func() refFraming { out.malformed = true; return out }
	for _, l := range lines {
		if strings.ContainsAny(l, "\r\n") {
			return bad()
		}
	}
	method, target, ok := refRequestLine(lines[0])
	if !ok {
		return bad()
	}
	http11 := strings.HasSuffix(lines[0], " HTTP/1.1")
	out.req = evaluator.HTTPRequest{Method: method, Path: target, Headers: http.Header{}}
	var nCL, nTE, nHost int
	for _, l := range lines[1:] {
		name, value, ok := strings.Cut(l, ":")
		if !ok || name == "" || !allBytes(name, isTchar) {
			return bad()
		}
		if !allBytes(value, func(c byte) bool { return c == ' ' || c == '\t' || visible(c) }) {
			return bad()
		}
		value = strings.Trim(value, " \t")
		switch strings.ToLower(name) {
		case "content-length":
			nCL++
			n, err := strconv.ParseUint(value, 10, 64)
			if nCL > 1 || value == "" || !allBytes(value, func(c byte) bool { return c >= '0' && c <= '9' }) || err != nil || n >= 1e15 {
				return bad()
			}
			out.bodyLen = n
		case "transfer-encoding":
			// One "chunked", HTTP/1.1 only: Go's server ignores Transfer-Encoding on HTTP/1.0.
			if nTE++; nTE > 1 || !http11 || !strings.EqualFold(value, "chunked") {
				return bad()
			}
			out.chunked = true
		case "upgrade":
			if strings.EqualFold(value, "websocket") {
				out.websocket = true
			}
		case "host":
			if nHost++; nHost > 1 {
				return bad()
			}
			out.req.Host = value
		}
		out.req.Headers.Add(textproto.CanonicalMIMEHeaderKey(name), value)
	}
	if nCL > 0 && nTE > 0 {
		return bad()
	}
	return out
}

// refDecide is the reference decision for raw under rules: the evaluator (the project's reference of
// the policy semantics) judges the request that refFrame parsed.
func refDecide(t testing.TB, rules []string, raw []byte) (Decision, refFraming) {
	t.Helper()
	fr := refFrame(raw)
	switch {
	case !fr.complete && len(raw) >= ScanLimit:
		return Deny, fr
	case !fr.complete:
		return NeedMore, fr
	case fr.malformed:
		return Deny, fr
	}
	spec := &v1alpha1.NodePolicySpec{
		NodeName:  "n",
		Endpoints: []v1alpha1.NodeEndpoint{{Namespace: "ns", Pod: "server", IPs: []string{"10.0.0.1"}, Identity: 1000, IngressRuleSet: "in", EgressRuleSet: "out"}},
		RuleSets: []v1alpha1.RuleSet{
			{Name: "in", DirectionPolicy: v1alpha1.DirectionPolicy{Enforced: true, Entries: []v1alpha1.PolicyEntry{
				{Peer: "any", Protocol: "TCP", Ports: "80", Action: "Allow", HTTP: rules},
			}}},
			{Name: "out"},
		},
	}
	ev, err := evaluator.New(spec, evaluator.MapIPCache{})
	if err != nil {
		t.Fatalf("reference evaluator: %v", err)
	}
	res, err := ev.Evaluate(evaluator.Flow{Direction: evaluator.Ingress, Source: netip.MustParseAddr("10.0.0.2"),
		Destination: netip.MustParseAddr("10.0.0.1"), Protocol: "TCP", Port: 80, HTTP: &fr.req})
	if err != nil {
		t.Fatalf("reference evaluator: %v", err)
	}
	if res.Verdict == evaluator.Allow {
		return Allow, fr
	}
	return Deny, fr
}

// ruleSetPool are the rule sets the differential test and the fuzz target draw from.
var ruleSetPool = [][]string{
	{`method="GET" path="/v1/invoices/[0-9]+" header="X-Internal-Scraper: true"`},
	{`method="GET|HEAD" path="/public/.*"`, `method="POST" path="/api/v[12]/items" host="api\\.example\\.com(:[0-9]+)?"`},
	{"any"},
	{`path="/a"`, `path="/b" header="X-Token"`, `host="h[0-9]"`},
	{`method="DELETE"`, `header="Authorization: Bearer abc" header="X-Mode: admin"`},
	{`path="/x%20y"`, `method="PUT" path="/up(/.*)?"`, `method="P.*" path="/p[^/]*"`},
	{`path="/caf\u00e9"`, `path="(?i)/CASE"`},
	func() []string {
		var r []string
		for i := range MaxRules {
			r = append(r, fmt.Sprintf(`path="/r%d" header="X-R%d"`, i, i))
		}
		return r
	}(),
	// Values long enough to end on one of the scan's 8-byte steps.
	{`host="long-host-name\\.example\\.com"`, `header="X-Long: abcdefghabcdefgh"`, `header="Authorization: Bearer abcdefgh ABCDEFGH 12345678"`},
}

// checkAgainstReference compares the kernel with the reference on one input.
func checkAgainstReference(t testing.TB, l *L7, set int, raw []byte) {
	t.Helper()
	rules := ruleSetPool[set]
	key := RuleKey{EndpointID: uint32(100 + set), Port: 80}
	got, err := l.Judge(key, raw)
	if err != nil {
		t.Fatal(err)
	}
	want, fr := refDecide(t, rules, raw)
	if !fr.complete && len(raw) < ScanLimit {
		// Incomplete: the kernel may wait or deny early on a byte that can never become valid, but
		// never allow, and never wait past a complete line the reference rejects.
		if got.Decision == Allow {
			t.Fatalf("rule set %d: kernel allows an incomplete request %q", set, raw)
		}
		if got.Decision == NeedMore && incompleteHasBadLine(raw) {
			t.Fatalf("rule set %d: kernel waits on %q, whose complete lines the reference rejects", set, raw)
		}
		return
	}
	if got.Decision != want {
		t.Fatalf("rule set %d %q: kernel %v (%v), reference %v", set, raw, got.Decision, got.Reason, want)
	}
	if want == Allow && (got.HeaderLen != fr.hdrLen || got.BodyLen != fr.bodyLen || got.Chunked != fr.chunked || got.WebSocket != fr.websocket) {
		t.Fatalf("rule set %d %q: kernel frames %d+%d (chunked %v, websocket %v), reference %d+%d (chunked %v, websocket %v)", set, raw,
			got.HeaderLen, got.BodyLen, got.Chunked, got.WebSocket, fr.hdrLen, fr.bodyLen, fr.chunked, fr.websocket)
	}
}

// incompleteHasBadLine reports whether a complete CRLF-terminated line of an incomplete header block
// is one the reference rejects (a request line or header line judged on its own).
func incompleteHasBadLine(raw []byte) bool {
	lines := strings.Split(string(raw), "\r\n")
	lines = lines[:len(lines)-1] // the last one is not terminated
	for i, l := range lines {
		if strings.ContainsAny(l, "\r\n") {
			return true
		}
		if i == 0 {
			if _, _, ok := refRequestLine(l); !ok {
				return true
			}
			continue
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok || name == "" || !allBytes(name, isTchar) ||
			!allBytes(value, func(c byte) bool { return c == ' ' || c == '\t' || visible(c) }) {
			return true
		}
	}
	return false
}

// loadWithPool loads the programs and installs every rule set of the pool.
func loadWithPool(t testing.TB) *L7 {
	t.Helper()
	l, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	for i, rules := range ruleSetPool {
		if err := l.SetRules(RuleKey{EndpointID: uint32(100 + i), Port: 80}, rules); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

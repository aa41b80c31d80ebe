package l7

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/portcullis-dev/portcullis/internal/dfa"
)

var (
	genMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "get", "FOO", "PROPFIND", "GETX", ""}
	genTargets = []string{"/", "/v1/invoices/12", "/v1/invoices/x", "/v1/invoices/", "/public/a/b", "/api/v1/items", "/api/v3/items", "/a", "/b", "/a?b=1", "/r3", "/r15", "/up", "/up/x?q=1", "/x%20y", "/p", "/pq", "/case", "/CASE", "/caf\xc3\xa9", "*", "http://h1/a", "h1:80", "/a b", "/a\x00", "",
		"/public/../a", "/public/./x", "/public/%2e%2E/a", "/public/..%2fa", "/public/..;/a", "/public/x/..", "/public/..?q=/..", "/public/...", "/public/a..b", "/public/.%2", "/up/..\\x", "/r3/%2e"}
	// Versions and line ends the request line's 8-byte step (word_step) must leave to the byte scan:
	// another minor version, a longer one, a bare CR or LF after it, a byte between it and CRLF.
	genVersions = []string{"HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.1 ", "HTTP/1", "HTTP/1.2", "HTTP/1.01",
		"HTTP/1.1\r", "HTTP/1.1\rX-Cr: 1", "HTTP/1.1\n", "HTTP/1.1x\n", "HTTP/1.0\r"}
	genHeaders = []string{
		"Host: h1", "Host: api.example.com", "host:api.example.com:8080", "Host: h22", "Host:", "HOST: h3 ",
		"X-Internal-Scraper: true", "x-internal-scraper:true", "X-Internal-Scraper: true ", "X-Internal-Scraper: True", "X-Internal-Scraper: tr ue",
		"X-Token: t", "x-token:", "Authorization: Bearer abc", "authorization: bearer abc", "X-Mode: admin", "X-Mode:\tadmin\t",
		"X-R3: 1", "x-r15: 2", "Content-Length: 5", "Content-Length: 0", "content-length: 007", "Content-Length: 1 2", "Content-Length: -1",
		"Content-Length: 99999999999999999999", "Content-Length: 999999999999999", "Content-Length: 1000000000000000", "Content-Length:",
		"Transfer-Encoding: chunked", "transfer-encoding: CHUNKED", "Transfer-Encoding: gzip", "Transfer-Encoding: chunked ,", "Accept: */*", "User-Agent: t/1", "X-Empty:", "X_Under: 1", "X-A: a\xc2\xa0", "X-B: a\x7f",
	}
)

// genRequest builds a request from the pools, then sometimes breaks it.
func genRequest(r *rand.Rand) []byte {
	pick := func(s []string) string { return s[r.IntN(len(s))] }
	// pickGood mostly picks among the first n (well-formed) entries, so that enough requests reach
	// the rules.
	pickGood := func(s []string, n int) string {
		if r.IntN(10) < 9 {
			return s[r.IntN(n)]
		}
		return pick(s)
	}
	var b strings.Builder
	b.WriteString(pickGood(genMethods, 7) + " " + pickGood(genTargets, 20) + " " + pickGood(genVersions, 2) + "\r\n")
	for range r.IntN(6) {
		b.WriteString(pick(genHeaders) + "\r\n")
	}
	b.WriteString("\r\n")
	s := b.String()
	switch r.IntN(24) {
	case 0: // bare LF
		s = strings.Replace(s, "\r\n", "\n", 1+r.IntN(3))
	case 1: // obs-fold
		s = strings.Replace(s, "\r\n", "\r\n folded\r\n", 1)
	case 2: // space before the colon
		s = strings.Replace(s, ":", " :", 1)
	case 3: // NUL or a control byte somewhere
		i := r.IntN(len(s))
		s = s[:i] + string([]byte{byte(r.IntN(0x20))}) + s[i:]
	case 4: // truncated: incomplete
		s = s[:r.IntN(len(s))]
	case 5: // header block beyond the scan limit
		s = strings.Replace(s, "\r\n", "\r\nX-Pad: "+strings.Repeat("a", ScanLimit)+"\r\n", 1)
	case 6: // a body follows, maybe a second request
		s += "hello" + "GET /a HTTP/1.1\r\n\r\n"
	case 7: // bare CR
		i := r.IntN(len(s))
		s = s[:i] + "\r" + s[i:]
	case 8: // block ending right at or around the scan limit
		pad := ScanLimit - len(s) - 11 + r.IntN(4) - 2
		if pad > 0 {
			s = strings.Replace(s, "\r\n", "\r\nX-Pad: "+strings.Repeat("b", pad)+"\r\n", 1)
		}
	}
	return []byte(s)
}

// genWordRequest builds a request whose target and header values are long enough for the scan's
// 8-byte steps (word_step), from pieces that put what ends such a step (space, tab, digits, upper
// case, control and 8-bit bytes, '?', '%', '.', '\\') at every offset, under header names the rules
// and the framing read, and names long or odd enough for the name's own 8-byte steps.
func genWordRequest(r *rand.Rand) []byte {
	pick := func(s []string) string { return s[r.IntN(len(s))] }
	some := func(s []string, n int) string {
		var b strings.Builder
		for range 1 + r.IntN(n) {
			b.WriteString(pick(s))
		}
		return b.String()
	}
	paths := []string{"/", "/", "abcdefgh", "v1", "invoices", "12345678", "9", "public", "items", "api", "up",
		"?", "?q=1", "%2e", "%20", ".", "..", "\\", "x", "A", "-", "_"}
	values := []string{"abcdefgh", "ABCDEFGH", "12345678", "1", "a", "Z", " ", " ", "\t", "-", ".", ":8080",
		"true", "api.example.com", "chunked", "CHUNKED", "Bearer", "abc", "admin", "websocket", "\x7f", "\x80"}
	exact := []string{"long-host-name.example.com", "abcdefghabcdefgh", "Bearer abcdefgh ABCDEFGH 12345678",
		"WebSocket", "websocket", "WEBSOCKET", "websockets", "web socket", "api.example.com:8080"}
	names := []string{"Host", "X-Internal-Scraper", "Authorization", "X-Mode", "X-Token", "X-R3", "User-Agent",
		"Transfer-Encoding", "Upgrade", "Content-Length", "X-Long", "X-{Bad}", "x.dot!_~", "X@Y", "TRANSFER-ENCODING",
		"ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789-abcdefgh",
		// Bytes next to the ranges of the name's 8-byte step (letters, digits, '-'), in its first
		// and its second word; 8-bit bytes; no name at all.
		"X{Y", "X[Y", "X`Y", "X@Y", "X/Y", "X;Y", "X,Y", "X.Y", "Abcdefgh{Y", "Abcdefgh@Y", "Abcdefgh[", "Abcdefgh", "Abcdefgh-Z0123", "X\x80Y", "X\xc1Y", "\xadA", "Abcdefgh\xad", ""}
	ws := []string{"", "", " ", "\t", "  \t ", "    ", "        "}
	var b strings.Builder
	b.WriteString(pick([]string{"GET", "POST", "PUT", "HEAD", "DELETE"}) + " /" + some(paths, 8) + " HTTP/1.1\r\n")
	for range r.IntN(5) {
		name := pick(names)
		v := some(values, 6)
		if r.IntN(3) == 0 {
			v = pick(exact)
		}
		if name == "Content-Length" {
			v = strings.Repeat("0", r.IntN(20)) + some([]string{"1", "5", "12345678", " ", "a"}, 3)
		}
		b.WriteString(name + ":" + pick(ws) + v + pick(ws) + "\r\n")
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// The kernel matcher, run through BPF_PROG_TEST_RUN, decides every generated request as the Go
// reference (strict framing + the evaluator's rule semantics) does.
func TestPrivilegedKernelMatcherAgreesWithReference(t *testing.T) {
	requireRoot(t)
	l := loadWithPool(t)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		raw := genRequest(r)
		checkAgainstReference(t, l, i%len(ruleSetPool), raw)
	}
	// Paths made of the pieces that make or break a dot segment, under "/public/.*" (set 1).
	pieces := []string{"/", "/", ".", ".", "%2e", "%2E", "%2f", "%5C", "\\", ";", "#", "a", "%", "%2", "e", "?"}
	for range 3000 {
		var path strings.Builder
		for range 1 + r.IntN(8) {
			path.WriteString(pieces[r.IntN(len(pieces))])
		}
		checkAgainstReference(t, l, 1, []byte("GET /public/"+path.String()+" HTTP/1.1\r\n\r\n"))
	}
	for i := range 3000 {
		checkAgainstReference(t, l, i%len(ruleSetPool), genWordRequest(r))
	}
}

// Fixed cases, named for what they show; they also seed the fuzz target.
var matcherCases = []struct {
	name string
	set  int
	raw  string
	want Decision
}{
	{"allowed with the required header", 0, "GET /v1/invoices/12 HTTP/1.1\r\nHost: a\r\nX-Internal-Scraper: true\r\n\r\n", Allow},
	{"header names are case-insensitive", 0, "GET /v1/invoices/12 HTTP/1.1\r\nx-INTERNAL-scraper:  true \r\n\r\n", Allow},
	{"missing required header", 0, "GET /v1/invoices/12 HTTP/1.1\r\nHost: a\r\n\r\n", Deny},
	{"header value is exact", 0, "GET /v1/invoices/12 HTTP/1.1\r\nX-Internal-Scraper: truex\r\n\r\n", Deny},
	{"path is a full match", 0, "GET /v1/invoices/12/x HTTP/1.1\r\nX-Internal-Scraper: true\r\n\r\n", Deny},
	{"query string is not part of the path", 0, "GET /v1/invoices/12?a=/x HTTP/1.1\r\nX-Internal-Scraper: true\r\n\r\n", Allow},
	{"incomplete waits", 0, "GET /v1/invoices/12 HTTP/1.1\r\nX-Internal-Scraper: true\r\n", NeedMore},
	{"lower-case method", 2, "get / HTTP/1.1\r\n\r\n", Deny},
	{"unknown method", 2, "PROPFIND / HTTP/1.1\r\n\r\n", Deny},
	{"absolute-form target", 2, "GET http://h/ HTTP/1.1\r\n\r\n", Deny},
	{"space in the target", 2, "GET /a b HTTP/1.1\r\n\r\n", Deny},
	{"NUL in the target", 2, "GET /a\x00 HTTP/1.1\r\n\r\n", Deny},
	{"two Content-Length", 2, "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab", Deny},
	{"Content-Length and Transfer-Encoding", 2, "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", Deny},
	{"chunked on HTTP/1.1", 2, "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n", Allow},
	{"chunked on HTTP/1.0 (Go ignores it there)", 2, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Deny},
	{"two Transfer-Encoding", 2, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Deny},
	{"Transfer-Encoding other than chunked", 2, "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Deny},
	{"Transfer-Encoding with a space inside", 2, "POST / HTTP/1.1\r\nTransfer-Encoding: chun ked\r\n\r\n", Deny},
	{"Content-Length after Transfer-Encoding", 2, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Deny},
	{"obs-fold", 2, "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", Deny},
	{"bare LF", 2, "GET / HTTP/1.1\nHost: a\r\n\r\n", Deny},
	{"space before colon", 2, "GET / HTTP/1.1\r\nHost : a\r\n\r\n", Deny},
	{"two Host headers", 2, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Deny},
	{"HTTP/2 preface", 2, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Deny},
	{"any allows a well-formed request", 2, "DELETE /x HTTP/1.0\r\n\r\n", Allow},
	{"host regex with port", 1, "POST /api/v2/items HTTP/1.1\r\nHost: api.example.com:8080\r\nContent-Length: 3\r\n\r\nabc", Allow},
	{"host regex rejects other host", 1, "POST /api/v2/items HTTP/1.1\r\nHost: api.example.org\r\n\r\n", Deny},
	{"two required headers", 4, "GET / HTTP/1.1\r\nX-Mode: admin\r\nAuthorization: Bearer abc\r\n\r\n", Allow},
	{"one of two required headers", 4, "GET / HTTP/1.1\r\nX-Mode: admin\r\n\r\n", Deny},
	{"sixteenth rule", 7, "GET /r15 HTTP/1.1\r\nX-R15: y\r\n\r\n", Allow},
	{"a WebSocket upgrade is noted", 1, "GET /public/chat HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n", Allow},
	{"a dot segment matches no rule with a path", 1, "GET /public/../admin HTTP/1.1\r\n\r\n", Deny},
	{"... spelled with escaped dots", 1, "GET /public/%2e%2E/admin HTTP/1.1\r\n\r\n", Deny},
	{"... behind an escaped slash", 1, "GET /public/a%2f..%2Fadmin HTTP/1.1\r\n\r\n", Deny},
	{"... behind a backslash", 1, "GET /public/..\\admin HTTP/1.1\r\n\r\n", Deny},
	{"... with a path parameter (Tomcat)", 1, "GET /public/..;x=1/admin HTTP/1.1\r\n\r\n", Deny},
	{"... at the end of the path", 1, "GET /public/a/. HTTP/1.1\r\n\r\n", Deny},
	{"... at the end of the path, before the query", 1, "GET /public/a/..?x=1 HTTP/1.1\r\n\r\n", Deny},
	{"dots in the query are not in the path", 1, "GET /public/a?x=/../b HTTP/1.1\r\n\r\n", Allow},
	{"dots inside a segment are not a dot segment", 1, "GET /public/a..b/.c/... HTTP/1.1\r\n\r\n", Allow},
	{"an escaped slash matches no rule with a path", 1, "GET /public/a%2Fadmin HTTP/1.1\r\n\r\n", Deny},
	{"... nor an escaped backslash", 1, "GET /public/a%5cadmin HTTP/1.1\r\n\r\n", Deny},
	{"... nor a backslash", 1, "GET /public/a\\admin HTTP/1.1\r\n\r\n", Deny},
	{"an escaped slash in the query is not in the path", 1, "GET /public/a?next=%2Fhome HTTP/1.1\r\n\r\n", Allow},
	{"a rule without a path allows a dot segment", 4, "DELETE /x/../y HTTP/1.1\r\n\r\n", Allow},
	{"... and an escaped slash", 4, "DELETE /x%2Fy HTTP/1.1\r\n\r\n", Allow},
	{"header block beyond the scan limit", 2, "GET / HTTP/1.1\r\nX-Pad: " + strings.Repeat("a", ScanLimit) + "\r\n\r\n", Deny},
}

func TestPrivilegedKernelMatcherCases(t *testing.T) {
	requireRoot(t)
	l := loadWithPool(t)
	for _, tc := range matcherCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := l.Judge(RuleKey{EndpointID: uint32(100 + tc.set), Port: 80}, []byte(tc.raw))
			if err != nil {
				t.Fatal(err)
			}
			if got.Decision != tc.want {
				t.Fatalf("kernel %v (%v), want %v", got.Decision, got.Reason, tc.want)
			}
			checkAgainstReference(t, l, tc.set, []byte(tc.raw))
		})
	}
	// The reason names the dot segment or escaped slash that kept the rules with a path from matching.
	for raw, want := range map[string]Reason{
		"GET /public/a/../../admin HTTP/1.1\r\n\r\n": ReasonDotSegment,
		"GET /public/..%2Fadmin HTTP/1.1\r\n\r\n":    ReasonDotSegment, // both: the dot segment is named
		"GET /public/a%2fadmin HTTP/1.1\r\n\r\n":     ReasonEscapedSlash,
		"GET /admin HTTP/1.1\r\n\r\n":                ReasonNoRuleMatch,
		"PUT /public/../admin HTTP/1.1\r\n\r\n":      ReasonNoRuleMatch, // no rule for PUT got as far as the path
	} {
		got, err := l.Judge(RuleKey{EndpointID: 101, Port: 80}, []byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if got.Decision != Deny || got.Reason != want {
			t.Errorf("%q: %v (%v), want Deny (%v)", raw, got.Decision, got.Reason, want)
		}
	}
}

// FuzzKernelMatcher compares the kernel matcher with the reference on arbitrary bytes; the seed
// corpus (the fixed cases and generated requests) runs in every go test.
func FuzzKernelMatcher(f *testing.F) {
	for _, tc := range matcherCases {
		f.Add(uint8(tc.set), []byte(tc.raw))
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 64 {
		f.Add(uint8(i), genRequest(r))
	}
	requireRoot(f)
	l := loadWithPool(f)
	f.Fuzz(func(t *testing.T, set uint8, raw []byte) {
		checkAgainstReference(t, l, int(set)%len(ruleSetPool), raw)
	})
}

// A rule's method expression reaches the kernel as the set of the methods the scan accepts that it
// matches: alternations and classes as the reference reads them, an expression that matches none
// of them allows no request, and a rule set an earlier agent wrote (a method DFA, no set) is still
// judged by walking that DFA.
func TestPrivilegedMethodSets(t *testing.T) {
	requireRoot(t)
	l, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	for _, tc := range []struct {
		method  string
		allowed []string
	}{
		{"GET", []string{"GET"}},
		{"GET|HEAD", []string{"GET", "HEAD"}},
		{"P(OST|UT|ATCH)", []string{"POST", "PUT", "PATCH"}},
		{"[A-Z]+", Methods[:]},
		{"get", nil}, // lower case: no method the scan accepts
		{"PROPFIND", nil},
	} {
		key := RuleKey{EndpointID: 1, Port: 80}
		if err := l.SetRules(key, []string{`method="` + tc.method + `" path="/x"`}); err != nil {
			t.Fatal(err)
		}
		for _, m := range Methods {
			want := Deny
			if slices.Contains(tc.allowed, m) {
				want = Allow
			}
			got, err := l.Judge(key, []byte(m+" /x HTTP/1.1\r\nHost: h\r\n\r\n"))
			if err != nil {
				t.Fatal(err)
			}
			if got.Decision != want {
				t.Errorf("method %q, request %s: %v (%v), want %v", tc.method, m, got.Decision, got.Reason, want)
			}
		}
	}

	// An earlier agent's rule set: method_dfa set, methods 0.
	key := RuleKey{EndpointID: 2, Port: 80}
	if err := l.SetRules(key, []string{`method="POST" path="/x"`}); err != nil {
		t.Fatal(err)
	}
	d, err := dfa.Compile("POST", dfa.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id, err := l.internDFA("POST", d)
	if err != nil {
		t.Fatal(err)
	}
	k := key.kernel()
	var rs httpL7Ruleset
	if err := l.objs.L7Rulesets.Lookup(&k, &rs); err != nil {
		t.Fatal(err)
	}
	if rs.Rules[0].Methods != methodsSet|1<<2 || rs.Rules[0].MethodDfa != 0 {
		t.Fatalf("rule written as methods %#x, method DFA %d; want the set {POST} and no DFA", rs.Rules[0].Methods, rs.Rules[0].MethodDfa)
	}
	rs.Rules[0].Methods, rs.Rules[0].MethodDfa = 0, id
	if err := l.objs.L7Rulesets.Update(&k, &rs, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	for m, want := range map[string]Decision{"POST": Allow, "GET": Deny, "PUT": Deny} {
		got, err := l.Judge(key, []byte(m+" /x HTTP/1.1\r\nHost: h\r\n\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		if got.Decision != want {
			t.Errorf("earlier agent's rule (method DFA POST), request %s: %v (%v), want %v", m, got.Decision, got.Reason, want)
		}
	}
}

package evaluator

import (
	"errors"
	"net/http"
	"net/netip"
	"testing"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/identity"
)

func testSpec() *v1alpha1.NodePolicySpec {
	return &v1alpha1.NodePolicySpec{
		NodeName: "n",
		Endpoints: []v1alpha1.NodeEndpoint{
			{Namespace: "prod", Pod: "web", IPs: []string{"10.0.0.1"}, Identity: 300, IngressRuleSet: "in-web", EgressRuleSet: "eg-open"},
			{Namespace: "prod", Pod: "audited", IPs: []string{"10.0.0.2"}, Identity: 301, IngressRuleSet: "in-audit", EgressRuleSet: "eg-open"},
		},
		RuleSets: []v1alpha1.RuleSet{
			{Name: "in-web", DirectionPolicy: v1alpha1.DirectionPolicy{Enforced: true, EnforcedBy: []string{"ap/prod/web"}, Entries: []v1alpha1.PolicyEntry{
				{Peer: "group:g-clients", Protocol: "TCP", Ports: "8000-8080", Action: "Allow", Origins: []string{"ap/prod/web"},
					HTTP: []string{`method="GET" path="/v1/.*" header="X-Token" logHeader="X-Trace: 1"`}},
				{Peer: "identity:302", Protocol: "ANY", Ports: "*", Action: "Deny", Origins: []string{"cap/deny"}},
				{Peer: "cidr:203.0.113.0/24", Protocol: "UDP", Ports: "53", Action: "Allow", Origins: []string{"ap/prod/web"}},
			}}},
			{Name: "in-audit", DirectionPolicy: v1alpha1.DirectionPolicy{Enforced: true, AuditEnforcedBy: []string{"ap/prod/trial"}}},
			{Name: "eg-open"},
		},
		PeerGroups: []v1alpha1.PeerGroup{{Name: "g-clients", Identities: []uint32{303}}},
	}
}

func TestEvaluate(t *testing.T) {
	ipc := MapIPCache{
		netip.MustParseAddr("10.0.0.3"): 302,
		netip.MustParseAddr("10.0.0.4"): 303,
	}
	ev, err := New(testSpec(), ipc)
	if err != nil {
		t.Fatal(err)
	}
	web, audited := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	client, denied := netip.MustParseAddr("10.0.0.4"), netip.MustParseAddr("10.0.0.3")
	get := func(path string, hdr ...string) *HTTPRequest {
		h := http.Header{}
		for i := 0; i+1 < len(hdr); i += 2 {
			h.Add(hdr[i], hdr[i+1])
		}
		return &HTTPRequest{Method: "GET", Path: path, Headers: h}
	}
	cases := []struct {
		name string
		f    Flow
		want Verdict
	}{
		{"group member with a matching request", Flow{Direction: Ingress, Source: client, Destination: web, Protocol: "TCP", Port: 8080, HTTP: get("/v1/x", "x-token", "t")}, Allow},
		{"header required", Flow{Direction: Ingress, Source: client, Destination: web, Protocol: "TCP", Port: 8080, HTTP: get("/v1/x")}, Deny},
		{"path anchored", Flow{Direction: Ingress, Source: client, Destination: web, Protocol: "TCP", Port: 8080, HTTP: get("/x/v1/x", "X-Token", "t")}, Deny},
		{"a dot segment climbs out of the rule's path", Flow{Direction: Ingress, Source: client, Destination: web, Protocol: "TCP", Port: 8080, HTTP: get("/v1/../admin", "X-Token", "t")}, Deny},
		{"dots inside a segment are not a dot segment", Flow{Direction: Ingress, Source: client, Destination: web, Protocol: "TCP", Port: 8080, HTTP: get("/v1/a..b/.well-known/...", "X-Token", "t")}, Allow},
		{"an escaped slash reaches past the rule's path", Flow{Direction: Ingress, Source: client, Destination: web, Protocol: "TCP", Port: 8080, HTTP: get("/v1/x%2Fadmin", "X-Token", "t")}, Deny},
		{"port range", Flow{Direction: Ingress, Source: client, Destination: web, Protocol: "TCP", Port: 8081}, Deny},
		{"connection before requests", Flow{Direction: Ingress, Source: client, Destination: web, Protocol: "TCP", Port: 8000}, Allow},
		{"deny entry", Flow{Direction: Ingress, Source: denied, Destination: web, Protocol: "TCP", Port: 8080}, Deny},
		{"cidr matches world", Flow{Direction: Ingress, Source: netip.MustParseAddr("203.0.113.9"), Destination: web, Protocol: "UDP", Port: 53}, Allow},
		{"audit-only default deny", Flow{Direction: Ingress, Source: client, Destination: audited, Protocol: "TCP", Port: 1}, Audit},
		{"egress not enforced", Flow{Direction: Egress, Source: web, Destination: client, Protocol: "TCP", Port: 1}, Allow},
	}
	for _, tc := range cases {
		res, err := ev.Evaluate(tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if res.Verdict != tc.want {
			t.Errorf("%s: %s (%s), want %s", tc.name, res.Verdict, res.Reason, tc.want)
		}
	}
	res, _ := ev.Evaluate(Flow{Direction: Ingress, Source: client, Destination: web, Protocol: "TCP", Port: 8080, HTTP: get("/v1/x", "X-Token", "t", "X-Trace", "2")})
	if res.Verdict != Allow || res.Origins[0] != "AccessPolicy/prod/web" || res.PeerIdentity != identity.ID(303) {
		t.Errorf("logged header mismatch: %+v", res)
	}
	res, _ = ev.Evaluate(Flow{Direction: Ingress, Source: denied, Destination: web, Protocol: "TCP", Port: 8080})
	if res.Verdict != Deny || len(res.Origins) != 1 || res.Origins[0] != "ClusterAccessPolicy/deny" {
		t.Errorf("deny entry of a cluster policy: %+v", res)
	}
	if _, err := ev.Evaluate(Flow{Direction: Ingress, Source: client, Destination: client}); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("flow to a non-local address: %v", err)
	}
}

// DotSegment finds "." and ".." segments in every spelling a server may decode to one, and
// EscapedSlash a backslash and "%2f" or "%5c" in any case; neither finds anything else.
func TestPathChecks(t *testing.T) {
	for path, want := range map[string][2]bool{ // DotSegment, EscapedSlash
		"/":                           {false, false},
		"/a/b":                        {false, false},
		"/a/../b":                     {true, false},
		"/a/./b":                      {true, false},
		"/a/..":                       {true, false},
		"/a/.":                        {true, false},
		"/..":                         {true, false},
		"/a/b/":                       {false, false},
		"/a//b":                       {false, false},
		"/a/%2e%2e/b":                 {true, false},
		"/a/%2E./b":                   {true, false},
		"/a/.%2e":                     {true, false},
		"/a/..%2fb":                   {true, true},
		"/a%2F..%2Fb":                 {true, true},
		"/a\\..\\b":                   {true, true},
		"/a/..%5cb":                   {true, true},
		"/a/..;/b":                    {true, false},
		"/a/..;jsessionid=1/b":        {true, false},
		"/a/..#/b":                    {true, false},
		"/a/.%3b/b":                   {false, false}, // an escaped ';' is part of the segment
		"/a/.../b":                    {false, false},
		"/a/..b/c":                    {false, false},
		"/a/b..":                      {false, false},
		"/.well-known/x":              {false, false},
		"/favicon.ico":                {false, false},
		"/a/%2e%2e%2e/b":              {false, false},
		"/a/..%/b":                    {false, false}, // '%' without two hex digits: not a dot
		"/a/..%2/b":                   {false, false},
		"/a/%%2e%2e/b":                {false, false},
		"/a/%2":                       {false, false},
		"/a/%zz/../b":                 {true, false},
		"/a/%2e%2E%2f%2e%2e%2Fsecret": {true, true},
		"/a/%252e%252e/b":             {false, false}, // decoded once only
		"/a%2fb":                      {false, true},
		"/a%2Fb":                      {false, true},
		"/a%5cb":                      {false, true},
		"/a%5Cb":                      {false, true},
		"/a\\b":                       {false, true},
		"/a%252fb":                    {false, false}, // decoded once only
		"/a%2":                        {false, false},
		"/a%2e%2E":                    {false, false},
		"/%%2f":                       {false, true},
		"/a%20b":                      {false, false},
		"/files/a.b%3F":               {false, false},
	} {
		if dot, slash := DotSegment(path), EscapedSlash(path); dot != want[0] || slash != want[1] {
			t.Errorf("%q: DotSegment %v, EscapedSlash %v; want %v, %v", path, dot, slash, want[0], want[1])
		}
	}
}

func TestNewRejectsBrokenSpecs(t *testing.T) {
	for name, mutate := range map[string]func(*v1alpha1.NodePolicySpec){
		"unknown group":            func(s *v1alpha1.NodePolicySpec) { s.PeerGroups = nil },
		"unknown ingress rule set": func(s *v1alpha1.NodePolicySpec) { s.Endpoints[0].IngressRuleSet = "nope" },
		"unknown egress rule set":  func(s *v1alpha1.NodePolicySpec) { s.Endpoints[1].EgressRuleSet = "" },
		"bad http rule":            func(s *v1alpha1.NodePolicySpec) { s.RuleSets[0].Entries[0].HTTP = []string{`path="(`} },
		"bad peer":                 func(s *v1alpha1.NodePolicySpec) { s.RuleSets[0].Entries[1].Peer = "pod:x" },
		"origin with a long kind":  func(s *v1alpha1.NodePolicySpec) { s.RuleSets[0].Entries[0].Origins = []string{"AccessPolicy/prod/web"} },
		"origin without namespace": func(s *v1alpha1.NodePolicySpec) { s.RuleSets[1].AuditEnforcedBy = []string{"ap/trial"} },
	} {
		s := testSpec()
		mutate(s)
		if _, err := New(s, nil); err == nil {
			t.Errorf("%s: New accepted a broken spec", name)
		}
	}
}

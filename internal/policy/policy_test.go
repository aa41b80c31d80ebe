package policy

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/dfa"
)

func parse(t *testing.T, y string) *v1alpha1.PolicySpec {
	t.Helper()
	var s v1alpha1.PolicySpec
	if err := yaml.UnmarshalStrict([]byte(y), &s); err != nil {
		t.Fatalf("parse: %v", err)
	}
	return &s
}

func TestValidateNamesFieldAndProblem(t *testing.T) {
	cases := []struct {
		name, spec, field, msg string
	}{
		{"regex syntax", `
endpointSelector: {}
ingress:
- toPorts:
  - ports: [{port: "80", protocol: TCP}]
    rules: {http: [{path: /ok}, {path: "/v1/(users"}]}`, "spec.ingress[0].toPorts[0].rules.http[1].path", "RE2"},
		{"method regex", `
endpointSelector: {}
ingress: [{toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: "GET("}]}}]}]`, "spec.ingress[0].toPorts[0].rules.http[0].method", "RE2"},
		{"dfa budget", `
endpointSelector: {}
ingress: [{toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{path: "(a|b)*a(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)"}]}}]}]`, "spec.ingress[0].toPorts[0].rules.http[0].path", "too complex"},
		{"selector", `
endpointSelector: {matchLabels: {"bad key!": x}}
ingress: [{}]`, "spec.endpointSelector", "invalid label selector"},
		{"label source", `
endpointSelector: {}
ingress: [{fromEndpoints: [{matchLabels: {"reserved:host": ""}}]}]`, "spec.ingress[0].fromEndpoints[0]", "unsupported label source"},
		{"cidr", `
endpointSelector: {}
egress: [{toCIDR: [10.0.0.0/33]}]`, "spec.egress[0].toCIDR[0]", "CIDR"},
		{"except outside", `
endpointSelector: {}
egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]}]`, "spec.egress[0].toCIDRSet[0].except[0]", "inside cidr"},
		{"except equal", `
endpointSelector: {}
egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.0.0.0/8]}]}]`, "spec.egress[0].toCIDRSet[0].except[0]", "smaller"},
		{"fqdn", `
endpointSelector: {}
egress: [{toFQDNs: [{matchName: "bad..name"}]}]`, "spec.egress[0].toFQDNs[0].matchName", "DNS name"},
		{"fqdn both", `
endpointSelector: {}
egress: [{toFQDNs: [{matchName: a.com, matchPattern: "*.a.com"}]}]`, "spec.egress[0].toFQDNs[0]", "exactly one"},
		{"header", `
endpointSelector: {}
ingress: [{toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{headers: ["Bad Header: x"]}]}}]}]`, "spec.ingress[0].toPorts[0].rules.http[0].headers[0]", "header name"},
		{"named port range", `
endpointSelector: {}
ingress: [{toPorts: [{ports: [{port: http, endPort: 90}]}]}]`, "spec.ingress[0].toPorts[0].ports[0].endPort", "numeric port"},
		{"port name", `
endpointSelector: {}
ingress: [{toPorts: [{ports: [{port: "Http_1"}]}]}]`, "spec.ingress[0].toPorts[0].ports[0].port", "port name"},
		{"http needs tcp", `
endpointSelector: {}
ingress: [{toPorts: [{ports: [{port: "80"}], rules: {http: [{}]}}]}]`, "spec.ingress[0].toPorts[0].ports[0].protocol", "TCP"},
		{"dns on ingress", `
endpointSelector: {}
ingress: [{toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchName: a.com}]}}]}]`, "spec.ingress[0].toPorts[0].rules.dns", "egress"},
		{"empty spec", `endpointSelector: {}`, "spec", "at least one"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			errs := Validate(KindAccessPolicy, parse(t, tc.spec))
			if len(errs) == 0 {
				t.Fatalf("no error, want one on %s", tc.field)
			}
			for _, e := range errs {
				if e.Field == tc.field && strings.Contains(e.Error(), tc.msg) {
					return
				}
			}
			t.Errorf("errors %v, want one on %s mentioning %q", errs, tc.field, tc.msg)
		})
	}
}

func TestValidateAcceptsSeedPolicies(t *testing.T) {
	for _, y := range []string{
		"endpointSelector: {matchLabels: {app: user-service}}\ningress: [{fromEndpoints: [{matchLabels: {app: auth-service}}], toPorts: [{ports: [{port: \"8080\", protocol: TCP}], rules: {http: [{method: POST, path: /v1/users}]}}]}]",
		"endpointSelector: {matchLabels: {metrics.internal/scrape: \"true\"}}\ningress: [{fromEndpoints: [{matchLabels: {app: metrics-aggregator}}], toPorts: [{ports: [{port: \"9090\", protocol: TCP}], rules: {http: [{method: GET, path: /private/metrics, headers: [\"X-Internal-Scraper: true\"]}]}}]}]",
		"endpointSelector: {matchLabels: {app: payment-processor}}\negress: [{toFQDNs: [{matchName: api.stripe.com}], toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]}]",
		"endpointSelector: {matchLabels: {k8s:app: x}}\negress: [{toCIDRSet: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12]}], toEntities: [world, cluster]}]",
	} {
		if errs := Validate(KindClusterAccessPolicy, parse(t, y)); len(errs) > 0 {
			t.Errorf("valid policy rejected: %v", errs)
		}
	}
}

// A valid spec with HTTP paths or methods that can match no request gets a warning naming each of
// them, and nothing else does.
func TestWarningsNameRulesThatMatchNoRequest(t *testing.T) {
	spec := parse(t, "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: /ok}, {path: \"/search\\\\?q=.*\"}, {method: get}, {method: PROPFIND}, {method: \"GET|PROPFIND\"}]}}]}]\n"+
		"egress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"v1/users\"}, {path: \"/v1/users(\\\\?.*)?\"}]}}]}]")
	if errs := Validate(KindAccessPolicy, spec); len(errs) > 0 {
		t.Fatalf("valid spec rejected: %v", errs)
	}
	w := Warnings(spec)
	if len(w) != 3 || !strings.HasPrefix(w[0], "spec.ingress[0].toPorts[0].rules.http[1].path: ") ||
		!strings.HasPrefix(w[1], "spec.ingress[0].toPorts[0].rules.http[3].method: ") ||
		!strings.HasPrefix(w[2], "spec.egress[0].toPorts[0].rules.http[0].path: ") {
		t.Fatalf("warnings %q: want the ingress query path, the PROPFIND method, and the egress path without its '/'", w)
	}
	for _, y := range []string{
		"endpointSelector: {matchLabels: {app: user-service}}\ningress: [{toPorts: [{ports: [{port: \"8080\", protocol: TCP}], rules: {http: [{method: POST, path: /v1/users}]}}]}]",
		"endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"/v1/invoices/[^/]+\"}]}}]}]",
	} {
		if w := Warnings(parse(t, y)); len(w) > 0 {
			t.Errorf("warnings for a good spec: %q", w)
		}
	}
}

// matchesSomePath tells the path expressions that can match a path a rule may allow from those
// that cannot.
func TestMatchesSomePath(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		want    bool
	}{
		{"/v1/users", true},
		{"/", true},
		{"/.*", true},
		{"/v1/invoices/[^/]+", true},
		{"v1/users", false},                  // no leading '/'
		{`/search\?q=.*`, false},             // needs a '?'
		{`/search(\?q=.*)?`, true},           // the query is optional
		{"/a b", false},                      // a space
		{"/caf\u00e9", false},                // non-ASCII
		{"/caf(\u00e9|%C3%A9)", true},        // or percent-encoded
		{`/projects/[a-z]+%2F[a-z]+`, false}, // an escaped slash
		{`/projects/[a-z]+(%2F|%2f)[a-z]+`, false},
		{`/projects/[a-z]+%2[Ff0-9][a-z]+`, true}, // %20 will do
		{`/a\\b`, false},                          // a backslash
		{`/x%5[cC]`, false},
		{"", false},
	} {
		d, err := dfa.Compile(tc.pattern, dfa.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := matchesSomePath(d); got != tc.want {
			t.Errorf("%q: matchesSomePath = %v, want %v", tc.pattern, got, tc.want)
		}
	}
}

// permute shuffles every list whose order has no meaning, and rewrites values into equivalent
// forms, returning YAML that must normalize to the same bytes.
func TestNormalizeIsCanonicalUnderPermutation(t *testing.T) {
	variants := []string{`
endpointSelector:
  matchLabels: {app: web, k8s:tier: front}
ingress:
- fromEndpoints: [{matchLabels: {app: a}}, {matchExpressions: [{key: env, operator: In, values: [prod, dev]}]}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}, {port: "9000", endPort: 9010, protocol: TCP}]
    rules:
      http:
      - {method: get, path: /v1/items, headers: ["x-probe: true", "x-a"]}
      - {method: POST|put, path: /v1/items}
- fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
  fromCIDR: [192.168.1.7/24]
egress:
- toFQDNs: [{matchName: API.stripe.com}, {matchPattern: "*.s3.amazonaws.com."}]
  toPorts: [{ports: [{port: "443", protocol: TCP}]}]
- toEntities: [world, cluster]
  toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchName: b.com}, {matchName: A.com}]}}]
`, `
endpointSelector:
  matchExpressions: [{key: tier, operator: In, values: [front]}]
  matchLabels: {k8s:app: web}
egress:
- toEntities: [cluster, world, cluster]
  toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchName: a.com.}, {matchName: b.com}]}}]
- toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  toFQDNs: [{matchPattern: "*.S3.amazonaws.com"}, {matchName: api.stripe.com.}]
ingress:
- fromCIDR: [192.168.1.0/24]
  fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
- fromEndpoints: [{matchExpressions: [{key: k8s:env, operator: In, values: [dev, prod]}]}, {matchLabels: {any:app: a}}, {matchLabels: {app: a}}]
  toPorts:
  - ports: [{port: "9000", endPort: 9010, protocol: TCP}, {port: "8080", protocol: TCP}]
    rules:
      http:
      - {method: PUT|POST, path: /v1/items}
      - {headerMatches: [{name: X-Probe, value: "true"}], headers: ["X-A"], path: /v1/items, method: GET}
`}
	var want []byte
	for i, v := range variants {
		got, err := json.Marshal(Normalize(parse(t, v)))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			want = got
			continue
		}
		if string(got) != string(want) {
			t.Errorf("variant %d normalizes differently:\n%s\nwant\n%s", i, got, want)
		}
	}
	// And random permutations of the rule lists of the first variant.
	base := parse(t, variants[0])
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 50; i++ {
		s := base.DeepCopy()
		rng.Shuffle(len(s.Ingress), func(a, b int) { s.Ingress[a], s.Ingress[b] = s.Ingress[b], s.Ingress[a] })
		rng.Shuffle(len(s.Egress), func(a, b int) { s.Egress[a], s.Egress[b] = s.Egress[b], s.Egress[a] })
		for j := range s.Ingress {
			r := &s.Ingress[j]
			rng.Shuffle(len(r.FromEndpoints), func(a, b int) { r.FromEndpoints[a], r.FromEndpoints[b] = r.FromEndpoints[b], r.FromEndpoints[a] })
			for k := range r.ToPorts {
				pr := &r.ToPorts[k]
				rng.Shuffle(len(pr.Ports), func(a, b int) { pr.Ports[a], pr.Ports[b] = pr.Ports[b], pr.Ports[a] })
				if pr.Rules != nil {
					h := pr.Rules.HTTP
					rng.Shuffle(len(h), func(a, b int) { h[a], h[b] = h[b], h[a] })
				}
			}
		}
		got, _ := json.Marshal(Normalize(s))
		if string(got) != string(want) {
			t.Fatalf("permutation %d normalizes differently:\n%s\nwant\n%s", i, got, want)
		}
	}
}

func TestNormalizeForms(t *testing.T) {
	np := Normalize(parse(t, `
endpointSelector: {}
ingress:
- toPorts:
  - ports: [{port: "80", protocol: TCP}]
    rules: {http: [{method: "get|HEAD", path: "/a", host: "x\\.com", headers: ["x-internal-scraper:true"], headerMatches: [{name: x-trace, value: "1", mismatch: LOG}]}]}
  - ports: [{}]
- fromEndpoints: []
  toPorts: [{ports: [{port: "1"}]}]
egress:
- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.0.0.0/9, 10.128.0.0/10]}]
- toFQDNs: [{matchName: API.Stripe.Com}]
`))
	if len(np.Ingress) != 1 {
		t.Fatalf("a rule that selects no peer should be dropped, got %d rules", len(np.Ingress))
	}
	if !np.DefaultDenyIngress || !np.DefaultDenyEgress {
		t.Error("default-deny should be on in both directions")
	}
	ports := np.Ingress[0].Ports
	if len(ports) != 2 || ports[0].Protocol != "ANY" || ports[0].Low != 0 || ports[0].High != 65535 || ports[1].Low != 80 {
		t.Fatalf("ports = %+v", ports)
	}
	wantHTTP := `method="GET|HEAD" path="/a" host="x\\.com" header="X-Internal-Scraper: true" logHeader="X-Trace: 1"`
	if got := ports[1].L7.HTTP; len(got) != 1 || got[0] != wantHTTP {
		t.Errorf("http = %q, want %q", got, wantHTTP)
	}
	r, err := ParseHTTPRule(wantHTTP)
	if err != nil || r.Method != "GET|HEAD" || r.Host != `x\.com` || r.LogHeaders[0] != "X-Trace: 1" {
		t.Errorf("ParseHTTPRule = %+v, %v", r, err)
	}
	if got := np.Egress[0].Peers.CIDRs; !slices.Equal(got, []string{"10.192.0.0/10"}) {
		t.Errorf("cidr difference = %v, want [10.192.0.0/10]", got)
	}
	if got := np.Egress[1].Peers.FQDNs; !slices.Equal(got, []string{"api.stripe.com."}) {
		t.Errorf("fqdns = %v", got)
	}
}

func TestSubtractPrefixesIsMinimal(t *testing.T) {
	got := SubtractPrefixes(netip.MustParsePrefix("8.0.0.0/8"), []netip.Prefix{netip.MustParsePrefix("8.8.8.0/24")})
	if len(got) != 16 {
		t.Errorf("8/8 minus one /24 should be 16 prefixes, got %d: %v", len(got), got)
	}
	for _, p := range got {
		if p.Overlaps(netip.MustParsePrefix("8.8.8.0/24")) {
			t.Errorf("%s overlaps the exception", p)
		}
	}
	if agg := AggregatePrefixes(append(got, netip.MustParsePrefix("8.8.8.0/24"))); len(agg) != 1 || agg[0].String() != "8.0.0.0/8" {
		t.Errorf("aggregating back gives %v", agg)
	}
}

func TestFQDNPatterns(t *testing.T) {
	re, _ := FQDNRegexp(NormalizeFQDN("*.Stripe.com"))
	for name, want := range map[string]bool{"api.stripe.com.": true, "stripe.com.": false, "a.b.stripe.com.": false} {
		if re.MatchString(name) != want {
			t.Errorf("*.stripe.com vs %s: want %v", name, want)
		}
	}
}

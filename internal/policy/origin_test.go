package policy

import (
	"strings"
	"testing"
)

func TestOriginRoundTrip(t *testing.T) {
	cases := []struct{ kind, ns, name, origin string }{
		{KindAccessPolicy, "prod", "web", "ap/prod/web"},
		{KindClusterAccessPolicy, "", "dns", "cap/dns"},
		{KindNetworkPolicy, "prod", "deny-all", "netpol/prod/deny-all"},
	}
	for _, tc := range cases {
		if got := Origin(tc.kind, tc.ns, tc.name); got != tc.origin {
			t.Errorf("Origin(%s, %s, %s) = %q, want %q", tc.kind, tc.ns, tc.name, got, tc.origin)
		}
		kind, ns, name, err := ParseOrigin(tc.origin)
		if err != nil || kind != tc.kind || ns != tc.ns || name != tc.name {
			t.Errorf("ParseOrigin(%q) = %s %s %s %v, want %s %s %s", tc.origin, kind, ns, name, err, tc.kind, tc.ns, tc.name)
		}
	}
}

func TestParseOriginRejectsMalformedOrigins(t *testing.T) {
	for _, o := range []string{"", "ap", "AccessPolicy/prod/web", "ap/web", "ap//web", "ap/prod/", "cap/a/b", "netpol/x", "np/prod/web"} {
		if _, _, _, err := ParseOrigin(o); err == nil {
			t.Errorf("ParseOrigin(%q) accepted a malformed origin", o)
		}
	}
}

func TestRegexCheckIsTheSameWhenMemoized(t *testing.T) {
	spec := `
endpointSelector: {}
ingress: [{toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{path: "(a|b)*a(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)"}, {path: "/v1/[a-z]+"}]}}]}]`
	for i := range 2 {
		errs := Validate(KindAccessPolicy, parse(t, spec))
		if len(errs) != 1 || errs[0].Field != "spec.ingress[0].toPorts[0].rules.http[0].path" || !strings.Contains(errs[0].Error(), "too complex") {
			t.Errorf("validation %d: %v, want one error: path too complex", i+1, errs)
		}
	}
}

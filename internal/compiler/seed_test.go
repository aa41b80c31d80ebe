package compiler_test

import (
	"testing"
)

// The scenarios of the article the project started from (/work/shared/seed), compiled and then
// judged by the reference evaluator.
func TestSeedScenariosRoundTrip(t *testing.T) {
	const (
		user    = "10.1.0.1"
		auth    = "10.1.0.2"
		agg     = "10.1.0.3"
		scraped = "10.1.0.4"
		billing = "10.1.0.5"
		report  = "10.1.0.6"
		payment = "10.1.0.7"
		stripe  = "54.187.174.169"
	)
	cl := newCluster(t)
	cl.pod("production", "user-service-7d9f", "node-1", user, "app=user-service,metrics.internal/scrape=true", "")
	cl.pod("production", "auth-service-5c6b", "node-2", auth, "app=auth-service", "")
	cl.pod("production", "metrics-aggregator-0", "node-2", agg, "app=metrics-aggregator", "")
	cl.pod("production", "inventory-0", "node-3", scraped, "app=inventory,metrics.internal/scrape=true", "")
	cl.pod("production", "billing-service-0", "node-3", billing, "app=billing-service", "")
	cl.pod("production", "reporting-service-0", "node-1", report, "app=reporting-service", "")
	cl.pod("production", "payment-processor-0", "node-1", payment, "app=payment-processor", "")

	cl.policy("AccessPolicy/production/user-service-api-policy", `
endpointSelector: {matchLabels: {app: user-service}}
ingress:
- fromEndpoints: [{matchLabels: {app: auth-service}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
    rules:
      http: [{method: "POST", path: "/v1/users"}]
`)
	cl.policy("AccessPolicy/production/secure-private-metrics-endpoints", `
endpointSelector: {matchLabels: {metrics.internal/scrape: "true"}}
ingress:
- fromEndpoints: [{matchLabels: {app: metrics-aggregator}}]
  toPorts:
  - ports: [{port: "9090", protocol: TCP}]
    rules:
      http:
      - method: "GET"
        path: "/private/metrics"
        headers: ["X-Internal-Scraper: true"]
`)
	cl.policy("AccessPolicy/production/billing-service", `
endpointSelector: {matchLabels: {app: billing-service}}
ingress:
- fromEndpoints: [{matchLabels: {app: reporting-service}}]
  toPorts:
  - ports: [{port: "9000", protocol: TCP}]
    rules:
      http: [{method: "GET", path: "/v1/invoices/[^/]+"}]
`)
	cl.policy("AccessPolicy/production/egress-to-stripe", `
endpointSelector: {matchLabels: {app: payment-processor}}
egress:
- toFQDNs: [{matchName: "api.stripe.com"}]
  toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`)
	for _, ck := range []check{
		// Scenario 1: auth-service may only create users.
		{in, auth + " -> " + user + " TCP/8080 POST /v1/users", allow, "AccessPolicy/production/user-service-api-policy", "", ""},
		{in, auth + " -> " + user + " TCP/8080 GET /v1/users/some-id", deny, "AccessPolicy/production/user-service-api-policy", "", ""},
		{in, auth + " -> " + user + " TCP/8080 PUT /v1/users/42", deny, "", "", ""},
		{in, report + " -> " + user + " TCP/8080 POST /v1/users", deny, "", "", ""},
		{in, auth + " -> " + user + " TCP/8081", deny, "", "", ""},
		// Scenario 2: the scraper needs the header, on every pod labelled for scraping.
		{in, agg + " -> " + scraped + " TCP/9090 GET /private/metrics X-Internal-Scraper: true", allow, "AccessPolicy/production/secure-private-metrics-endpoints", "", ""},
		{in, agg + " -> " + scraped + " TCP/9090 GET /private/metrics x-internal-scraper: true", allow, "", "", ""},
		{in, agg + " -> " + scraped + " TCP/9090 GET /private/metrics", deny, "", "", ""},
		{in, agg + " -> " + scraped + " TCP/9090 GET /private/metrics X-Internal-Scraper: false", deny, "", "", ""},
		{in, agg + " -> " + user + " TCP/9090 GET /private/metrics X-Internal-Scraper: true", allow, "", "", ""},
		{in, auth + " -> " + scraped + " TCP/9090 GET /private/metrics X-Internal-Scraper: true", deny, "", "", ""},
		// Scenario 3: reporting-service may read invoices, nothing else.
		{in, report + " -> " + billing + " TCP/9000 GET /v1/invoices/inv-42", allow, "AccessPolicy/production/billing-service", "", ""},
		{in, report + " -> " + billing + " TCP/9000 POST /v1/invoices", deny, "", "", ""},
		{in, report + " -> " + billing + " TCP/9000 DELETE /v1/invoices/inv-42", deny, "", "", ""},
		{in, report + " -> " + billing + " TCP/9000 GET /internal/metrics", deny, "", "", ""},
		{in, report + " -> " + billing + " TCP/9000 GET /v1/invoices/inv-42/lines", deny, "", "", ""},
		// Scenario 4: payment-processor reaches api.stripe.com:443 only.
		{out, payment + " -> " + stripe + " TCP/443", allow, "AccessPolicy/production/egress-to-stripe", "api.stripe.com", ""},
		{out, payment + " -> " + stripe + " TCP/80", deny, "", "api.stripe.com", ""},
		{out, payment + " -> 1.2.3.4 TCP/443", deny, "", "evil.example", ""},
		{out, payment + " -> " + billing + " TCP/9000", deny, "", "", ""},
	} {
		res := cl.eval(flow{dir: ck.dir, text: ck.flow, name: ck.name})
		if res.Verdict != ck.want {
			t.Errorf("%s %q: got %s (%s), want %s", ck.dir, ck.flow, res.Verdict, res.Reason, ck.want)
		}
		if ck.origin != "" && (len(res.Origins) != 1 || res.Origins[0] != ck.origin) {
			t.Errorf("%s %q: origins %v, want [%s]", ck.dir, ck.flow, res.Origins, ck.origin)
		}
	}
	if testing.Verbose() {
		t.Logf("node-3 policy:\n%s", dump(cl.c.NodePolicy("node-3")))
	}
}

package e2e_test

import (
	"testing"
)

// check is one request and the outcome the policies in force must give it.
type check struct {
	name     string
	from, to string
	port     int
	udp      bool
	method   string
	path     string
	headers  []string
	want     outcome
}

func runChecks(t *testing.T, checks []check) {
	t.Helper()
	for _, c := range checks {
		var got outcome
		if c.udp {
			got = udp(t, c.from, c.to, c.port)
		} else {
			method, path := c.method, c.path
			if method == "" {
				method, path = "GET", "/"
			}
			got = request(t, c.from, c.to, c.port, method, path, c.headers...)
		}
		if got != c.want {
			t.Errorf("%s: %s → %s:%d was %s, want %s", c.name, c.from, c.to, c.port, got, c.want)
		}
	}
}

func TestPrivilegedSeedPoliciesAtL3L4(t *testing.T) {
	needLab(t)
	settle(t)
	const (
		user      = "production/user-service"
		auth      = "production/auth-service"
		billing   = "production/billing-service"
		reporting = "production/reporting-service"
		metrics   = "production/metrics-aggregator"
		order     = "production/order-service"
		shipping  = "production/shipping-service"
		payment   = "production/payment-processor"
	)
	runChecks(t, []check{
		{name: "scenario 1: auth-service reaches user-service:8080 (same node)", from: auth, to: user, port: 8080, method: "POST", path: "/v1/users", want: allowed},
		{name: "scenario 1: reporting-service may not (other node)", from: reporting, to: user, port: 8080, method: "POST", path: "/v1/users", want: dropped},
		{name: "scenario 1 over IPv6", from: auth, to: ip6(t, user), port: 8080, method: "POST", path: "/v1/users", want: allowed},
		{name: "scenario 1 over IPv6, wrong peer", from: shipping, to: ip6(t, user), port: 8080, method: "POST", path: "/v1/users", want: dropped},
		{name: "user-service is in default deny for other ports", from: auth, to: user, port: 5353, udp: true, want: dropped},
		{name: "scenario 2: the scraper reaches billing-service:9090", from: metrics, to: billing, port: 9090, path: "/private/metrics", method: "GET", headers: []string{"X-Internal-Scraper: true"}, want: allowed},
		{name: "scenario 2: the scraper reaches order-service:9090 on the other node", from: metrics, to: order, port: 9090, path: "/private/metrics", method: "GET", headers: []string{"X-Internal-Scraper: true"}, want: allowed},
		{name: "scenario 2: another pod may not scrape", from: auth, to: billing, port: 9090, method: "GET", path: "/private/metrics", want: dropped},
		{name: "billing: reporting-service reads invoices across nodes", from: reporting, to: billing, port: 9000, method: "GET", path: "/v1/invoices/42", want: allowed},
		{name: "billing: reporting-service has no access to the metrics port", from: reporting, to: billing, port: 9090, method: "GET", path: "/private/metrics", want: dropped},
		{name: "scenario 3: shipping-service reaches order-service:50051", from: shipping, to: order, port: 50051, method: "POST", path: "/proto.OrderService/UpdateOrderStatus", want: allowed},
		{name: "scenario 3: order-service is closed to others", from: reporting, to: order, port: 50051, method: "POST", path: "/proto.OrderService/UpdateOrderStatus", want: dropped},
		{name: "edge case 3: payment-processor is in default deny at egress (toFQDNs not resolved yet)", from: payment, to: "stripe", port: 443, want: dropped},
		{name: "replies pass under default-deny ingress: user-service calls out and gets answers", from: user, to: "stripe", port: 80, want: allowed},
		{name: "an endpoint no policy selects is open", from: reporting, to: auth, port: 5353, udp: true, want: allowed},
		{name: "UDP between unselected pods across nodes", from: shipping, to: auth, port: 5353, udp: true, want: allowed},
	})
}

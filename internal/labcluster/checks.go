package labcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/portcullis-dev/portcullis/internal/lab"
)

// Outcome is what a client saw.
type Outcome string

// Outcomes of a check.
const (
	// Allowed: a response came back.
	Allowed Outcome = "allowed"
	// Dropped: no answer in time; the kernel dropped the connection attempt.
	Dropped Outcome = "dropped"
	// Forbidden: the kernel answered the request with "403 Forbidden" and body "Access denied" (an
	// HTTP rule denied it); the server never saw it.
	Forbidden Outcome = "forbidden"
	// Failed: anything else (refused, reset, unexpected status), with the error in the report.
	Failed Outcome = "failed"
)

// Check is one request of the scripted demonstration and what the policies say about it.
type Check struct {
	// Name says what the check shows, in the seed article's words.
	Name string
	// From and To are pods (namespace/name) or external hosts; To may also be an IP address.
	From, To string
	Port     int
	UDP      bool
	Method   string
	Path     string
	Headers  []string
	// Body is the request's body, sent with its Content-Length in the same write as the header
	// block (as Go's, Python's and Node's clients send a small body).
	Body string
	// Want is the outcome the policy calls for.
	Want Outcome
	// L7 marks a check whose verdict depends on HTTP rules, not only on who talks to whom on which
	// port.
	L7 bool
}

// Run makes the request from inside the source pod's network namespace and cgroup.
func (c *Cluster) Run(ctx context.Context, ch Check) (Outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if ch.UDP {
		got, err := c.Net.UDPEcho(ctx, ch.From, ch.To, ch.Port, []byte("ping"))
		return classify(err, string(got) == "ping", "echo mismatch")
	}
	h := http.Header{}
	for _, kv := range ch.Headers {
		k, v, _ := strings.Cut(kv, ": ")
		h.Add(k, v)
	}
	method, path := ch.Method, ch.Path
	if method == "" {
		method = http.MethodGet
	}
	if path == "" {
		path = "/"
	}
	resp, err := c.Net.HTTPBody(ctx, ch.From, ch.To, ch.Port, method, path, h, ch.Body)
	if err != nil {
		return classify(err, false, "")
	}
	if resp.Status == http.StatusForbidden && resp.Body == "Access denied" {
		return Forbidden, nil
	}
	if resp.Status != http.StatusOK {
		return Failed, fmt.Errorf("status %d", resp.Status)
	}
	return Allowed, nil
}

func classify(err error, ok bool, why string) (Outcome, error) {
	switch {
	case err == nil && ok:
		return Allowed, nil
	case err == nil:
		return Failed, errors.New(why)
	case errors.Is(err, lab.ErrTimeout):
		return Dropped, nil
	}
	return Failed, err
}

// SeedChecks are the seed article's scenarios as requests between the pods of
// examples/lab/seed.yaml with the policies of examples/seed applied.
func SeedChecks() []Check {
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
	return []Check{
		{Name: "Scenario 1: auth-service creates a user", From: auth, To: user, Port: 8080, Method: "POST", Path: "/v1/users", Body: `{"name":"ada"}`, Want: Allowed},
		{Name: "Scenario 1: auth-service may not read a user", From: auth, To: user, Port: 8080, Method: "GET", Path: "/v1/users/42", Want: Forbidden, L7: true},
		{Name: "Scenario 1: auth-service may not update a user", From: auth, To: user, Port: 8080, Method: "PUT", Path: "/v1/users/42", Body: `{"name":"grace"}`, Want: Forbidden, L7: true},
		{Name: "Scenario 1: reporting-service may not create users", From: reporting, To: user, Port: 8080, Method: "POST", Path: "/v1/users", Body: `{"name":"eve"}`, Want: Dropped},
		{Name: "Scenario 2: the scraper with its header reads /private/metrics", From: metrics, To: billing, Port: 9090, Method: "GET", Path: "/private/metrics", Headers: []string{"X-Internal-Scraper: true"}, Want: Allowed},
		{Name: "Scenario 2: ... on every labelled service, across nodes", From: metrics, To: order, Port: 9090, Method: "GET", Path: "/private/metrics", Headers: []string{"X-Internal-Scraper: true"}, Want: Allowed},
		{Name: "Scenario 2: the scraper without the header is refused", From: metrics, To: billing, Port: 9090, Method: "GET", Path: "/private/metrics", Want: Forbidden, L7: true},
		{Name: "Scenario 2: another pod may not scrape", From: auth, To: billing, Port: 9090, Method: "GET", Path: "/private/metrics", Headers: []string{"X-Internal-Scraper: true"}, Want: Dropped},
		{Name: "Billing: reporting-service reads an invoice", From: reporting, To: billing, Port: 9000, Method: "GET", Path: "/v1/invoices/42", Want: Allowed},
		{Name: "Billing: reporting-service may not delete an invoice", From: reporting, To: billing, Port: 9000, Method: "DELETE", Path: "/v1/invoices/42", Want: Forbidden, L7: true},
		{Name: "Billing: /internal/metrics stays closed", From: reporting, To: billing, Port: 9000, Method: "GET", Path: "/internal/metrics", Want: Forbidden, L7: true},
		{Name: "Billing: ... also through /v1/invoices/{id} with escaped dot segments", From: reporting, To: billing, Port: 9000, Method: "GET", Path: "/v1/invoices/..%2F..%2Finternal%2Fmetrics", Want: Forbidden, L7: true},
		{Name: "Scenario 3: shipping-service calls UpdateOrderStatus (HTTP/1.1 here)", From: shipping, To: order, Port: 50051, Method: "POST", Path: "/proto.OrderService/UpdateOrderStatus", Body: `{"id":7,"status":"shipped"}`, Want: Allowed},
		{Name: "Scenario 3: shipping-service may not call CreateOrder", From: shipping, To: order, Port: 50051, Method: "POST", Path: "/proto.OrderService/CreateOrder", Body: `{"item":"book"}`, Want: Forbidden, L7: true},
		{Name: "Edge case 3: payment-processor reaches api.stripe.com:443 (toFQDNs)", From: payment, To: "stripe", Port: 443, Want: Allowed, L7: false},
		{Name: "Default deny: user-service takes nothing but port 8080", From: auth, To: user, Port: 5353, UDP: true, Want: Dropped},
		{Name: "Replies pass: user-service calls out and gets its answers", From: user, To: "stripe", Port: 80, Want: Allowed},
	}
}

// Pending says why a check cannot give the outcome the policy calls for yet, or "" when it can.
func (ch Check) Pending() string {
	switch {
	case strings.Contains(ch.Name, "toFQDNs"):
		return "toFQDNs needs DNS-based address learning, not built yet: the egress stays in default deny"
	}
	return ""
}

// Report runs the checks and writes one line each: expected, observed, and why they differ when the
// difference is a known gap. It returns how many checks disagree without a known reason.
func (c *Cluster) Report(ctx context.Context, w io.Writer, checks []Check) int {
	bad := 0
	fmt.Fprintf(w, "%-4s %-9s %-9s %s\n", "", "EXPECTED", "OBSERVED", "REQUEST")
	for _, ch := range checks {
		got, err := c.Run(ctx, ch)
		mark, note := "ok", ""
		if got != ch.Want {
			if p := ch.Pending(); p != "" {
				mark, note = "gap", "  ← "+p
			} else {
				mark = "FAIL"
				bad++
				if err != nil {
					note = "  ← " + err.Error()
				}
			}
		}
		what := fmt.Sprintf("%s → %s:%d", ch.From, ch.To, ch.Port)
		if ch.UDP {
			what += " UDP"
		} else {
			what += fmt.Sprintf(" %s %s", orDefault(ch.Method, "GET"), orDefault(ch.Path, "/"))
		}
		fmt.Fprintf(w, "%-4s %-9s %-9s %s  (%s)%s\n", mark, ch.Want, got, ch.Name, what, note)
	}
	return bad
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

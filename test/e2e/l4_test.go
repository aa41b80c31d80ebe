package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-dev/portcullis/controllers/agent"
	"github.com/portcullis-dev/portcullis/internal/lab"
	"github.com/portcullis-dev/portcullis/internal/labcluster"
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

// The scripted demonstration of the README's main command, minus the checks that wait on toFQDNs
// (Check.Pending says which), must give exactly the expected outcome — HTTP rules included, judged in
// the kernel — and the server must see exactly the requests that were allowed.
func TestPrivilegedSeedScenarios(t *testing.T) {
	needLab(t)
	settle(t)
	// The agents judge whole requests before TCP (--http-judge-before-tcp, the default): the seed's
	// allowed requests come whole, so the nodes' agents count segments judged there.
	const fastPassed = `portcullis_http_datapath_total{reason="fast-passed"}`
	fast0 := metric(t, "node-a", fastPassed) + metric(t, "node-b", fastPassed)
	ran, l7 := 0, 0
	for _, ch := range labcluster.SeedChecks() {
		if ch.Pending() != "" {
			continue
		}
		ran++
		server := strings.HasPrefix(ch.To, "production/") && !ch.UDP
		before := 0
		if server {
			before = serverSaw(t, ch.To, ch.Path)
		}
		got, err := cluster.Run(ctxT(t, 5*time.Second), ch)
		if got != ch.Want {
			t.Errorf("%s: %s → %s:%d was %s (%v), want %s", ch.Name, ch.From, ch.To, ch.Port, got, err, ch.Want)
		}
		if !server {
			continue
		}
		if ch.L7 {
			l7++
		}
		seen := serverSaw(t, ch.To, ch.Path) - before
		switch {
		case ch.Want == labcluster.Allowed && seen != 1:
			t.Errorf("%s: the server saw the allowed request %d times", ch.Name, seen)
		case ch.Want != labcluster.Allowed && seen != 0:
			t.Errorf("%s: the server saw a denied request", ch.Name)
		}
	}
	if ran < 14 || l7 < 6 {
		t.Errorf("only %d seed checks ran (%d judged by HTTP rules)", ran, l7)
	}
	if n := metric(t, "node-a", fastPassed) + metric(t, "node-b", fastPassed) - fast0; n < 1 {
		t.Errorf("%v segments judged before TCP: the agents did not judge before TCP", n)
	}
}

func TestPrivilegedEgressHTTPRulesFailTheWrite(t *testing.T) {
	needLab(t)
	apply(t, `
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: reporting-reads-invoices, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: reporting-service}}
  egress:
  - toEndpoints: [{matchLabels: {app: billing-service}}]
    toPorts:
    - ports: [{port: "9000", protocol: TCP}]
      rules: {http: [{method: GET, path: "/v1/invoices/.*"}]}
`)
	t.Cleanup(func() { deleteYAML(t, "accesspolicy", "production", "reporting-reads-invoices") })
	const billingPod = "production/billing-service"
	if got := request(t, reporting, billingPod, 9000, "GET", "/v1/invoices/5"); got != allowed {
		t.Fatalf("allowed request was %s", got)
	}
	before := serverSaw(t, billingPod, "/v1/invoices/6")
	_, err := cluster.Net.HTTP(ctxT(t, 3*time.Second), reporting, billingPod, 9000, "DELETE", "/v1/invoices/6", nil)
	if !errors.Is(err, lab.ErrDenied) {
		t.Errorf("a request the client's egress rules deny: %v, want the write to fail with EACCES", err)
	}
	if serverSaw(t, billingPod, "/v1/invoices/6") != before {
		t.Errorf("the server saw a request its client's egress rules deny")
	}
}

func TestPrivilegedIPv6AndUDPAcrossNodes(t *testing.T) {
	needLab(t)
	settle(t)
	const (
		user      = "production/user-service"
		auth      = "production/auth-service"
		shipping  = "production/shipping-service"
		reporting = "production/reporting-service"
	)
	runChecks(t, []check{
		{name: "scenario 1 over IPv6", from: auth, to: ip6(t, user), port: 8080, method: "POST", path: "/v1/users", want: allowed},
		{name: "scenario 1 over IPv6, wrong peer on the other node", from: shipping, to: ip6(t, user), port: 8080, method: "POST", path: "/v1/users", want: dropped},
		{name: "UDP between pods no policy selects, across nodes", from: shipping, to: auth, port: 5353, udp: true, want: allowed},
		{name: "UDP over IPv6 across nodes", from: reporting, to: ip6(t, auth), port: 5353, udp: true, want: allowed},
		{name: "UDP into a default-deny endpoint is dropped", from: reporting, to: user, port: 5353, udp: true, want: dropped},
	})
}

func TestPrivilegedFlowsNameBothPodsAndThePolicy(t *testing.T) {
	needLab(t)
	settle(t)
	const (
		user      = "production/user-service"
		auth      = "production/auth-service"
		reporting = "production/reporting-service"
	)
	if got := request(t, auth, user, 8080, "POST", "/v1/users"); got != allowed {
		t.Fatalf("allowed request was %s", got)
	}
	if got := request(t, reporting, user, 8080, "POST", "/v1/users"); got != dropped {
		t.Fatalf("denied request was %s", got)
	}
	waitFor(t, 5*time.Second, "both flows reported by node-a's agent", func() error {
		flows, err := agentFlows(t, "node-a", user)
		if err != nil {
			return err
		}
		var sawAllow, sawDrop bool
		for _, f := range flows {
			if f.Dest.Pod != user || f.Direction != "ingress" || f.Dest.Port != 8080 {
				continue
			}
			switch {
			case f.Source.Pod == auth && f.Verdict == "forwarded" && f.Policy == "ap/production/user-service-api-policy":
				sawAllow = true
			case f.Source.Pod == reporting && f.Verdict == "dropped":
				sawDrop = true
			}
		}
		if !sawAllow || !sawDrop {
			return fmt.Errorf("allowed flow seen %v, dropped flow seen %v, among %d flows", sawAllow, sawDrop, len(flows))
		}
		return nil
	})

	// HTTP requests judged at the socket are flows too: one per request, with what the kernel saw.
	if got := request(t, auth, user, 8080, "GET", "/v1/users/42"); got != forbidden {
		t.Fatalf("request denied by an HTTP rule was %s", got)
	}
	waitFor(t, 5*time.Second, "both HTTP requests reported by node-a's agent", func() error {
		flows, err := agentFlows(t, "node-a", user)
		if err != nil {
			return err
		}
		var allowedReq, deniedReq *agent.FlowRecord
		for i, f := range flows {
			if f.Protocol != "HTTP" || f.HTTP == nil || f.Source.Pod != auth || f.Dest.Pod != user || f.Dest.Port != 8080 {
				continue
			}
			switch {
			case f.HTTP.Method == "POST" && f.HTTP.Path == "/v1/users":
				allowedReq = &flows[i]
			case f.HTTP.Method == "GET" && f.HTTP.Path == "/v1/users/42":
				deniedReq = &flows[i]
			}
		}
		if allowedReq == nil || deniedReq == nil {
			return fmt.Errorf("allowed request reported: %v, denied: %v, among %d flows", allowedReq != nil, deniedReq != nil, len(flows))
		}
		// auth-service and user-service share node-a: judged at the server's socket, as
		// every client is by default (at the client's socket with --http-judge-at-source).
		judgedAt := "server"
		if strings.Contains(os.Getenv("PORTCULLIS_E2E_AGENT_ARGS"), "--http-judge-at-source=true") {
			judgedAt = "client"
		}
		if a := allowedReq; a.Verdict != "forwarded" || a.Policy != "ap/production/user-service-api-policy" || a.HTTP.Rule == "" ||
			a.HTTP.DecisionNanos <= 0 || a.HTTP.JudgedAt != judgedAt {
			t.Fatalf("allowed request: %+v %+v", *a, *a.HTTP)
		}
		if d := deniedReq; d.Verdict != "dropped" || d.HTTP.Response != "403" || d.Reason != "no-rule-match" || d.Policy != "" || d.HTTP.JudgedAt != judgedAt {
			t.Fatalf("denied request: %+v %+v", *d, *d.HTTP)
		}
		return nil
	})

	// A client on another node (reporting-service, node-b) is judged at the server's socket.
	const billing = "production/billing-service"
	if got := request(t, reporting, billing, 9000, "GET", "/v1/invoices/7"); got != allowed {
		t.Fatalf("cross-node allowed request was %s", got)
	}
	waitFor(t, 5*time.Second, "the cross-node HTTP request reported by node-a's agent", func() error {
		flows, err := agentFlows(t, "node-a", billing)
		if err != nil {
			return err
		}
		for _, f := range flows {
			if f.Protocol == "HTTP" && f.HTTP != nil && f.Source.Pod == reporting && f.HTTP.Path == "/v1/invoices/7" {
				if f.Verdict != "forwarded" || f.HTTP.JudgedAt != "server" {
					t.Fatalf("cross-node request: %+v %+v", f, *f.HTTP)
				}
				return nil
			}
		}
		return fmt.Errorf("not among %d flows", len(flows))
	})
}

// agentFlows returns the flows a node's agent keeps for a pod.
func agentFlows(t *testing.T, node, pod string) ([]agent.FlowRecord, error) {
	body, err := cluster.AgentGet(ctxT(t, 3*time.Second), node, "/flows?pod="+pod)
	if err != nil {
		return nil, err
	}
	var flows []agent.FlowRecord
	if err := json.Unmarshal(body, &flows); err != nil {
		return nil, err
	}
	return flows, nil
}

// Audit mode through the whole chain (operator, agent, kernel): with the only policy on
// user-service's ingress switched to enforcementMode: Audit, what it would deny — a peer it does not
// name, and a request its HTTP rules do not allow — is forwarded, and both are reported as audited.
func TestPrivilegedAuditModeForwardsAndReports(t *testing.T) {
	needLab(t)
	const (
		user      = "production/user-service"
		auth      = "production/auth-service"
		reporting = "production/reporting-service"
	)
	orig, err := os.ReadFile(filepath.Join(root, "examples", "seed", "01-user-service-api-policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	audit := strings.Replace(string(orig), "spec:\n", "spec:\n  enforcementMode: Audit\n", 1)
	apply(t, audit)
	t.Cleanup(func() { apply(t, string(orig)) })

	if got := request(t, reporting, user, 8080, "POST", "/v1/users"); got != allowed {
		t.Errorf("a peer the audited policy does not name was %s, want allowed (audited)", got)
	}
	if got := request(t, auth, user, 8080, "GET", "/v1/users/42"); got != allowed {
		t.Errorf("a request the audited HTTP rules do not allow was %s, want allowed (audited)", got)
	}
	waitFor(t, 5*time.Second, "both reported as audited by node-a's agent", func() error {
		flows, err := agentFlows(t, "node-a", user)
		if err != nil {
			return err
		}
		var l4, l7 bool
		for _, f := range flows {
			if f.Dest.Pod != user || f.Verdict != "audited" {
				continue
			}
			l4 = l4 || (f.Source.Pod == reporting && f.Protocol == "TCP")
			l7 = l7 || (f.Source.Pod == auth && f.Protocol == "HTTP" && f.HTTP != nil && f.HTTP.Path == "/v1/users/42")
		}
		if !l4 || !l7 {
			return fmt.Errorf("audited connection reported: %v, audited HTTP request reported: %v", l4, l7)
		}
		return nil
	})
}

// Browsers carry kilobytes of cookies and tokens: through the lab's agents, a request whose header
// block is over the 8 KiB of earlier builds and within the scan limit (16 KiB) is judged by its
// rules like any other; one past the limit is refused. The server sees only the allowed one.
func TestPrivilegedLargeHeaderBlocksAreJudged(t *testing.T) {
	needLab(t)
	settle(t)
	const auth, user = "production/auth-service", "production/user-service"
	cookie := "session=" + strings.Repeat("c", 12<<10)
	before := serverSaw(t, user, "/v1/users")
	if got := request(t, auth, user, 8080, "POST", "/v1/users", "Cookie: "+cookie); got != allowed {
		t.Errorf("POST /v1/users with 12 KiB of cookies was %s, want allowed", got)
	}
	if got := request(t, auth, user, 8080, "GET", "/v1/users", "Cookie: "+cookie); got != forbidden {
		t.Errorf("GET /v1/users with 12 KiB of cookies was %s, want forbidden", got)
	}
	h := http.Header{"Cookie": {"session=" + strings.Repeat("c", 17<<10)}}
	if resp, err := cluster.Net.HTTP(ctxT(t, 3*time.Second), auth, user, 8080, "POST", "/v1/users", h); err == nil {
		t.Errorf("POST /v1/users with 17 KiB of cookies got an answer (%d), want none", resp.Status)
	}
	if n := serverSaw(t, user, "/v1/users") - before; n != 1 {
		t.Errorf("the server saw POST /v1/users %d times, want once (the request within the limit)", n)
	}
}

package operator_test

import (
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/controllers/operator"
	"github.com/portcullis-dev/portcullis/internal/controlplane"
	"github.com/portcullis-dev/portcullis/internal/evaluator"
	"github.com/portcullis-dev/portcullis/internal/identity"
)

// The seed article's services, spread over two nodes.
var seedPods = []struct {
	name, node, ip string
	labels         map[string]string
}{
	{"user-service", "node-a", "10.0.1.10", map[string]string{"app": "user-service"}},
	{"billing-service", "node-a", "10.0.1.11", map[string]string{"app": "billing-service", "metrics.internal/scrape": "true"}},
	{"order-service", "node-a", "10.0.1.12", map[string]string{"app": "order-service", "metrics.internal/scrape": "true"}},
	{"payment-processor", "node-a", "10.0.1.13", map[string]string{"app": "payment-processor"}},
	{"auth-service", "node-b", "10.0.2.10", map[string]string{"app": "auth-service"}},
	{"reporting-service", "node-b", "10.0.2.11", map[string]string{"app": "reporting-service", "pod-template-hash": "5c6b8b8f8f"}},
	{"metrics-aggregator", "node-b", "10.0.2.12", map[string]string{"app": "metrics-aggregator"}},
	{"shipping-service", "node-b", "10.0.2.13", map[string]string{"app": "shipping-service"}},
}

func podIP(name string) netip.Addr {
	for _, p := range seedPods {
		if p.name == name {
			return netip.MustParseAddr(p.ip)
		}
	}
	panic("unknown pod " + name)
}

// ipcacheFromShards reads the IPCacheShard objects the operator published, as an agent would.
func ipcacheFromShards(t *testing.T) evaluator.MapIPCache {
	t.Helper()
	var shards v1alpha1.IPCacheShardList
	if err := cp.Client.List(ctxT(t), &shards); err != nil {
		t.Fatal(err)
	}
	m := evaluator.MapIPCache{}
	for _, s := range shards.Items {
		if len(s.Spec.Entries) > v1alpha1.MaxIPCacheShardEntries {
			t.Errorf("shard %s holds %d entries, beyond the bound", s.Name, len(s.Spec.Entries))
		}
		for _, e := range s.Spec.Entries {
			m[netip.MustParseAddr(e.IP)] = identity.ID(e.Identity)
		}
	}
	return m
}

// request is one flow to judge and the verdict the seed article expects.
type request struct {
	name     string
	dir      evaluator.Direction
	from, to netip.Addr
	port     uint16
	http     *evaluator.HTTPRequest
	want     evaluator.Verdict
	origin   string
}

func get(path string, headers ...string) *evaluator.HTTPRequest {
	h := http.Header{}
	for _, kv := range headers {
		k, v, _ := strings.Cut(kv, ": ")
		h.Add(k, v)
	}
	return &evaluator.HTTPRequest{Method: http.MethodGet, Path: path, Host: "svc", Headers: h}
}

func method(m, path string) *evaluator.HTTPRequest {
	return &evaluator.HTTPRequest{Method: m, Path: path, Host: "svc", Headers: http.Header{}}
}

// judge evaluates requests against the published NodePolicy of a node and the published IP cache.
// setUserServicePath sets the path of user-service-api-policy's HTTP rule and returns the policy once
// node-a's NodePolicy carries the new generation, the agent acknowledged it, and it is Ready.
func setUserServicePath(t *testing.T, path string) *v1alpha1.AccessPolicy {
	t.Helper()
	p := getPolicy(t, "production", "user-service-api-policy")
	p.Spec.Ingress[0].ToPorts[0].Rules.HTTP[0].Path = path
	if err := cp.Client.Update(ctxT(t), p); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "NodePolicy with the new generation", func() error {
		np, err := getNodePolicy(t, "node-a")
		if err != nil {
			return err
		}
		for _, ref := range np.Spec.Policies {
			if ref.Name == "user-service-api-policy" && ref.Generation == p.Generation {
				return nil
			}
		}
		return fmt.Errorf("policies %+v", np.Spec.Policies)
	})
	ackAsAgent(t, "node-a")
	return waitReady(t, "production", "user-service-api-policy")
}

func judge(t *testing.T, node string, reqs []request) {
	t.Helper()
	np, err := getNodePolicy(t, node)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := evaluator.New(&np.Spec, ipcacheFromShards(t))
	if err != nil {
		t.Fatalf("evaluator rejects the published NodePolicy %s: %v", node, err)
	}
	for _, r := range reqs {
		res, err := ev.Evaluate(evaluator.Flow{Direction: r.dir, Source: r.from, Destination: r.to, Protocol: "TCP", Port: r.port, HTTP: r.http})
		if err != nil {
			t.Errorf("%s: %v", r.name, err)
			continue
		}
		if res.Verdict != r.want {
			t.Errorf("%s: verdict %s, want %s (%s)", r.name, res.Verdict, r.want, res.Reason)
		}
		if r.origin != "" && !slices.ContainsFunc(res.Origins, func(o string) bool { return strings.HasSuffix(o, "/"+r.origin) }) {
			t.Errorf("%s: decided by %v, want %s", r.name, res.Origins, r.origin)
		}
	}
}

// writeCounters reads the operator's counters of objects written and bytes of spec written.
func writeCounters(t *testing.T) (writes, bytes float64) {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch f.GetName() {
			case "portcullis_operator_api_writes_total":
				writes += m.GetCounter().GetValue()
			case "portcullis_operator_api_bytes_written_total":
				bytes += m.GetCounter().GetValue()
			}
		}
	}
	return writes, bytes
}

func waitReady(t *testing.T, ns, name string) *v1alpha1.AccessPolicy {
	t.Helper()
	var p *v1alpha1.AccessPolicy
	eventually(t, 10*time.Second, "policy "+name+" Ready", func() error {
		p = getPolicy(t, ns, name)
		c := condition(&p.Status, v1alpha1.ConditionReady)
		if c == nil || c.Status != metav1.ConditionTrue || p.Status.ObservedGeneration != p.Generation {
			return fmt.Errorf("status %+v", p.Status.Conditions)
		}
		return nil
	})
	return p
}

func TestOperatorCompilesTheSeedScenarios(t *testing.T) {
	outer := t
	if testing.Short() {
		t.Skip("needs the control plane; not run with -short")
	}
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	opts := operator.Options{IdentityGCDelay: time.Hour}
	stop := startOperator(t, opts)

	createNode(t, "node-a", "172.18.0.2")
	createNode(t, "node-b", "172.18.0.3")
	createNamespace(t, "production", map[string]string{"team": "payments"})
	for _, p := range seedPods {
		createPod(t, "production", p.name, p.node, p.ip, p.labels)
	}
	policies := []string{"01-user-service-api-policy", "02-secure-private-metrics-endpoints",
		"03-grpc-order-service-policy", "04-egress-to-stripe", "05-billing-service-policy"}

	// The operator is up and has published both nodes: from here on, reconcile latency is what counts.
	eventually(t, 20*time.Second, "operator warm", func() error {
		for _, n := range []string{"node-a", "node-b"} {
			if _, err := getNodePolicy(t, n); err != nil {
				return err
			}
		}
		return nil
	})
	t.Run("first status within a second", func(t *testing.T) {
		applyFile(t, filepath.Join(root, "examples", "seed", policies[0]+".yaml"))
		start := time.Now() // the policy exists from here on
		eventually(t, time.Second, "first status", func() error {
			p := getPolicy(t, "production", "user-service-api-policy")
			if p.Status.ObservedGeneration != p.Generation || condition(&p.Status, v1alpha1.ConditionReady) == nil {
				return errNotYet
			}
			return nil
		})
		t.Logf("first status after %s", time.Since(start).Round(time.Millisecond))
		p := getPolicy(t, "production", "user-service-api-policy")
		if !meta.IsStatusConditionTrue(p.Status.Conditions, v1alpha1.ConditionReconciling) {
			t.Errorf("before any agent reports, the policy should be Reconciling: %+v", p.Status.Conditions)
		}
	})
	for _, f := range policies[1:] {
		applyFile(t, filepath.Join(root, "examples", "seed", f+".yaml"))
	}

	t.Run("node policies carry the seed rules and policies become Ready once agents report", func(t *testing.T) {
		eventually(t, 10*time.Second, "NodePolicies with every endpoint", func() error {
			for node, n := range map[string]int{"node-a": 4, "node-b": 4} {
				np, err := getNodePolicy(t, node)
				if err != nil {
					return err
				}
				if len(np.Spec.Endpoints) != n {
					return fmt.Errorf("%s: %d endpoints, %d policies", node, len(np.Spec.Endpoints), len(np.Spec.Policies))
				}
			}
			np, _ := getNodePolicy(t, "node-a")
			if len(np.Spec.Policies) != 5 {
				return fmt.Errorf("node-a compiles %d policies, want 5", len(np.Spec.Policies))
			}
			if np, _ := getNodePolicy(t, "node-b"); len(np.Spec.Policies) != 0 {
				return fmt.Errorf("node-b compiles %v, but no policy selects its pods", np.Spec.Policies)
			}
			return nil
		})
		for _, p := range []string{"user-service-api-policy", "billing-service-policy"} {
			pol := getPolicy(t, "production", p)
			if pol.Status.NodesDesired != 1 || pol.Status.NodesEnforcing != 0 {
				t.Errorf("%s before agents report: %d of %d nodes", p, pol.Status.NodesEnforcing, pol.Status.NodesDesired)
			}
		}
		ackAsAgent(t, "node-a")
		ackAsAgent(t, "node-b")
		p := waitReady(t, "production", "user-service-api-policy")
		if p.Status.SelectedEndpoints != 1 || p.Status.NodesEnforcing != 1 || p.Status.NodesDesired != 1 {
			t.Errorf("user-service-api-policy status: %+v", p.Status)
		}
		p = waitReady(t, "production", "secure-private-metrics-endpoints")
		if p.Status.SelectedEndpoints != 2 {
			t.Errorf("the metrics policy selects %d endpoints, want 2 (billing and order)", p.Status.SelectedEndpoints)
		}

		npA, _ := getNodePolicy(t, "node-a")
		in, eg, ep, err := ruleSetOf(npA, "production", "user-service")
		if err != nil {
			t.Fatal(err)
		}
		if !in.Enforced || eg.Enforced {
			t.Errorf("user-service: ingress enforced %v (want true), egress enforced %v (want false)", in.Enforced, eg.Enforced)
		}
		if len(ep.IPs) != 1 || ep.IPs[0] != "10.0.1.10" {
			t.Errorf("user-service endpoint IPs %v", ep.IPs)
		}
		found := false
		for _, e := range in.Entries {
			if e.Ports == "8080" && e.Protocol == "TCP" && e.Action == "Allow" && contains(e.HTTP, `"POST"`) && contains(e.HTTP, `"/v1/users"`) {
				found = true
			}
		}
		if !found {
			t.Errorf("user-service ingress lacks the TCP/8080 POST /v1/users entry: %+v", in.Entries)
		}
		npB, _ := getNodePolicy(t, "node-b")
		if in, eg, _, err := ruleSetOf(npB, "production", "auth-service"); err != nil || in.Enforced || eg.Enforced {
			t.Errorf("auth-service is selected by no policy, so nothing should be enforced: %+v %+v %v", in, eg, err)
		}
	})

	t.Run("compiled node-a policy decides the seed requests", func(t *testing.T) {
		in := evaluator.Ingress
		judge(t, "node-a", []request{
			{"auth-service may POST /v1/users", in, podIP("auth-service"), podIP("user-service"), 8080, method("POST", "/v1/users"), evaluator.Allow, "user-service-api-policy"},
			{"auth-service may not GET /v1/users/42", in, podIP("auth-service"), podIP("user-service"), 8080, get("/v1/users/42"), evaluator.Deny, ""},
			{"auth-service may not PUT /v1/users/42", in, podIP("auth-service"), podIP("user-service"), 8080, method("PUT", "/v1/users/42"), evaluator.Deny, ""},
			{"reporting-service may not POST /v1/users", in, podIP("reporting-service"), podIP("user-service"), 8080, method("POST", "/v1/users"), evaluator.Deny, ""},
			{"auth-service may not reach another port", in, podIP("auth-service"), podIP("user-service"), 9999, nil, evaluator.Deny, ""},
			{"scraper with the header gets metrics", in, podIP("metrics-aggregator"), podIP("billing-service"), 9090, get("/private/metrics", "X-Internal-Scraper: true"), evaluator.Allow, "secure-private-metrics-endpoints"},
			{"scraper without the header is denied", in, podIP("metrics-aggregator"), podIP("billing-service"), 9090, get("/private/metrics"), evaluator.Deny, ""},
			{"scraper with another header value is denied", in, podIP("metrics-aggregator"), podIP("order-service"), 9090, get("/private/metrics", "X-Internal-Scraper: false"), evaluator.Deny, ""},
			{"reporting-service reads an invoice", in, podIP("reporting-service"), podIP("billing-service"), 9000, get("/v1/invoices/42"), evaluator.Allow, "billing-service-policy"},
			{"reporting-service cannot delete an invoice", in, podIP("reporting-service"), podIP("billing-service"), 9000, method("DELETE", "/v1/invoices/42"), evaluator.Deny, ""},
			{"reporting-service cannot create an invoice", in, podIP("reporting-service"), podIP("billing-service"), 9000, method("POST", "/v1/invoices"), evaluator.Deny, ""},
			{"/internal/metrics stays closed", in, podIP("reporting-service"), podIP("billing-service"), 9000, get("/internal/metrics"), evaluator.Deny, ""},
			{"shipping-service may call UpdateOrderStatus", in, podIP("shipping-service"), podIP("order-service"), 50051, method("POST", "/proto.OrderService/UpdateOrderStatus"), evaluator.Allow, "grpc-order-service-policy"},
			{"shipping-service may not call CreateOrder", in, podIP("shipping-service"), podIP("order-service"), 50051, method("POST", "/proto.OrderService/CreateOrder"), evaluator.Deny, ""},
			{"payment-processor may not reach a pod on 443", evaluator.Egress, podIP("payment-processor"), podIP("auth-service"), 443, nil, evaluator.Deny, ""},
			{"user-service egress is not restricted", evaluator.Egress, podIP("user-service"), podIP("auth-service"), 443, nil, evaluator.Allow, ""},
		})
	})

	t.Run("identities leave out per-rollout labels and keep labels out of metadata", func(t *testing.T) {
		var sids v1alpha1.SecurityIdentityList
		if err := cp.Client.List(ctxT(t), &sids); err != nil {
			t.Fatal(err)
		}
		if len(sids.Items) != len(seedPods) {
			t.Errorf("%d identities for %d pods with distinct labels", len(sids.Items), len(seedPods))
		}
		for _, s := range sids.Items {
			if len(s.Labels) != 0 {
				t.Errorf("identity %s copies labels into metadata: %v", s.Name, s.Labels)
			}
			if contains(s.Spec.Labels, "pod-template-hash") {
				t.Errorf("identity %s keeps pod-template-hash: %v", s.Name, s.Spec.Labels)
			}
			if s.Spec.Namespace != "production" || !contains(s.Spec.Labels, "io.kubernetes.pod.namespace=production") ||
				!contains(s.Spec.Labels, "namespace.labels.team=payments") {
				t.Errorf("identity %s lacks its namespace labels: %v", s.Name, s.Spec.Labels)
			}
		}
	})

	t.Run("a pod label change moves the pod to a new identity and updates the node policy", func(t *testing.T) {
		ipc := ipcacheFromShards(t)
		before := ipc[podIP("reporting-service")]
		var pod corev1.Pod
		if err := cp.Client.Get(ctxT(t), types.NamespacedName{Namespace: "production", Name: "reporting-service"}, &pod); err != nil {
			t.Fatal(err)
		}
		pod.Labels["app"] = "reporting-service-v2"
		if err := cp.Client.Update(ctxT(t), &pod); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "new identity in the IP cache", func() error {
			if id := ipcacheFromShards(t)[podIP("reporting-service")]; id == before || id == 0 {
				return fmt.Errorf("identity still %d", id)
			}
			return nil
		})
		eventually(t, 10*time.Second, "node-a denies the relabelled pod", func() error {
			np, err := getNodePolicy(t, "node-a")
			if err != nil {
				return err
			}
			ev, err := evaluator.New(&np.Spec, ipcacheFromShards(t))
			if err != nil {
				return err
			}
			res, err := ev.Evaluate(evaluator.Flow{Direction: evaluator.Ingress, Source: podIP("reporting-service"),
				Destination: podIP("billing-service"), Protocol: "TCP", Port: 9000, HTTP: get("/v1/invoices/42")})
			if err != nil {
				return err
			}
			if res.Verdict != evaluator.Deny {
				return fmt.Errorf("verdict %s", res.Verdict)
			}
			return nil
		})
		pod.Labels["app"] = "reporting-service"
		if err := cp.Client.Update(ctxT(t), &pod); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "old identity back", func() error {
			if id := ipcacheFromShards(t)[podIP("reporting-service")]; id != before {
				return fmt.Errorf("identity %d, want %d again", id, before)
			}
			return nil
		})
	})

	t.Run("a change writes only the objects it affects", func(t *testing.T) {
		createNode(t, "node-d", "172.18.0.5")
		createNamespace(t, "other", nil)
		pod := createPod(t, "other", "batch", "node-d", "10.0.4.10", map[string]string{"app": "batch"})
		eventually(t, 10*time.Second, "node-d publishes the pod", func() error {
			np, err := getNodePolicy(t, "node-d")
			if err != nil {
				return err
			}
			_, _, _, err = ruleSetOf(np, "other", "batch")
			return err
		})
		time.Sleep(300 * time.Millisecond) // let the IP cache settle
		rv := func(node string) string {
			np, err := getNodePolicy(t, node)
			if err != nil {
				t.Fatal(err)
			}
			return np.ResourceVersion
		}
		a, b := rv("node-a"), rv("node-b")
		writes0, bytes0 := writeCounters(t)
		pod.Labels["version"] = "v2"
		if err := cp.Client.Update(ctxT(t), pod); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "node-d and the IP cache take the new identity", func() error {
			np, err := getNodePolicy(t, "node-d")
			if err != nil {
				return err
			}
			_, _, ep, err := ruleSetOf(np, "other", "batch")
			if err != nil {
				return err
			}
			if ipcacheFromShards(t)[netip.MustParseAddr("10.0.4.10")] != identity.ID(ep.Identity) {
				return errNotYet
			}
			w, _ := writeCounters(t)
			if w-writes0 < 2 {
				return errNotYet
			}
			return nil
		})
		time.Sleep(300 * time.Millisecond)
		writes, bytes := writeCounters(t)
		t.Logf("one pod label change: %.0f writes, %.0f bytes of spec written", writes-writes0, bytes-bytes0)
		if writes-writes0 != 2 {
			t.Errorf("one pod label change caused %.0f writes; want 2 (its node's NodePolicy and one IP cache shard)", writes-writes0)
		}
		if rv("node-a") != a || rv("node-b") != b {
			t.Errorf("a pod in a namespace no policy mentions rewrote the NodePolicies of other nodes")
		}
		if err := cp.Client.Delete(ctxT(t), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-d"}}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a path that can match no request is enforced as written and warned about", func(t *testing.T) {
		// Written as in Cilium, where the path is matched with its query string.
		setUserServicePath(t, `/v1/users\?notify=.*`)
		judge(t, "node-a", []request{
			{"the rule allows nothing: not even the request it was written for", evaluator.Ingress, podIP("auth-service"), podIP("user-service"), 8080, method("POST", "/v1/users?notify=1"), evaluator.Deny, ""},
		})
		eventually(t, 10*time.Second, "Warning event", func() error {
			var evs eventsv1.EventList
			if err := cp.Client.List(ctxT(t), &evs, client.InNamespace("production")); err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Regarding.Name == "user-service-api-policy" && e.Type == "Warning" && e.Reason == operator.ReasonRuleMatchesNothing &&
					strings.Contains(e.Note, "spec.ingress[0].toPorts[0].rules.http[0].path") {
					return nil
				}
			}
			return fmt.Errorf("%d events, none a Warning %s for the policy", len(evs.Items), operator.ReasonRuleMatchesNothing)
		})
		setUserServicePath(t, "/v1/users")
	})

	t.Run("an invalid edit is Stalled and the last good rules stay in force", func(t *testing.T) {
		npBefore, _ := getNodePolicy(t, "node-a")
		p := getPolicy(t, "production", "user-service-api-policy")
		goodGen := p.Generation
		p.Spec.Ingress[0].ToPorts[0].Rules.HTTP[0].Path = "/v1/(users"
		if err := cp.Client.Update(ctxT(t), p); err != nil {
			t.Fatalf("the API server should accept what only Go can find invalid: %v", err)
		}
		eventually(t, 10*time.Second, "Stalled", func() error {
			p = getPolicy(t, "production", "user-service-api-policy")
			if !meta.IsStatusConditionTrue(p.Status.Conditions, v1alpha1.ConditionStalled) || p.Status.ObservedGeneration != p.Generation {
				return fmt.Errorf("conditions %+v", p.Status.Conditions)
			}
			return nil
		})
		stalled := condition(&p.Status, v1alpha1.ConditionStalled)
		ready := condition(&p.Status, v1alpha1.ConditionReady)
		if stalled.Reason != operator.ReasonInvalidSpec || ready.Status != metav1.ConditionFalse || !strings.Contains(stalled.Message, "spec.ingress[0].toPorts[0].rules.http[0].path") {
			t.Errorf("Stalled %+v / Ready %+v: want reason InvalidSpec, Ready False, and the field named", stalled, ready)
		}
		if p.Status.AcceptedGeneration != goodGen || p.Status.AcceptedSpec == nil {
			t.Errorf("accepted generation %d (want %d), acceptedSpec kept: %v", p.Status.AcceptedGeneration, goodGen, p.Status.AcceptedSpec != nil)
		}
		eventually(t, 10*time.Second, "Warning event", func() error {
			var evs eventsv1.EventList
			if err := cp.Client.List(ctxT(t), &evs, client.InNamespace("production")); err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Regarding.Name == "user-service-api-policy" && e.Type == "Warning" && e.Reason == operator.ReasonInvalidSpec {
					return nil
				}
			}
			return fmt.Errorf("%d events, none a Warning InvalidSpec for the policy", len(evs.Items))
		})
		time.Sleep(500 * time.Millisecond)
		npAfter, _ := getNodePolicy(t, "node-a")
		if npAfter.ResourceVersion != npBefore.ResourceVersion {
			t.Errorf("an invalid edit rewrote NodePolicy node-a")
		}
		judge(t, "node-a", []request{
			{"the last good rule still allows POST /v1/users", evaluator.Ingress, podIP("auth-service"), podIP("user-service"), 8080, method("POST", "/v1/users"), evaluator.Allow, "user-service-api-policy"},
			{"and still denies GET", evaluator.Ingress, podIP("auth-service"), podIP("user-service"), 8080, get("/v1/users/1"), evaluator.Deny, ""},
		})
	})

	t.Run("an operator restart keeps identities and rewrites nothing", func(t *testing.T) {
		snapshot := func() map[string]string {
			out := map[string]string{}
			var sids v1alpha1.SecurityIdentityList
			var nps v1alpha1.NodePolicyList
			var shards v1alpha1.IPCacheShardList
			for _, l := range []client.ObjectList{&sids, &nps, &shards} {
				if err := cp.Client.List(ctxT(t), l); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range sids.Items {
				out["sid/"+s.Name] = strings.Join(s.Spec.Labels, ",")
			}
			for _, n := range nps.Items {
				out["npol/"+n.Name] = n.ResourceVersion
			}
			for _, s := range shards.Items {
				out["ipc/"+s.Name] = s.ResourceVersion
			}
			return out
		}
		before := snapshot()
		stop()
		stop = startOperator(outer, opts) // lives on for the subtests that follow
		// The new operator answers: a new pod shows up in node-b's policy...
		createPod(t, "production", "late-pod", "node-b", "10.0.2.99", map[string]string{"app": "late"})
		eventually(t, 10*time.Second, "restarted operator publishes", func() error {
			np, err := getNodePolicy(t, "node-b")
			if err != nil {
				return err
			}
			if _, _, _, err := ruleSetOf(np, "production", "late-pod"); err != nil {
				return err
			}
			return nil
		})
		// ...and left everything else as it was.
		after := snapshot()
		for k, v := range before {
			if k == "npol/node-b" || strings.HasPrefix(k, "ipc/") {
				continue // changed by the new pod
			}
			if after[k] != v {
				t.Errorf("%s changed across the restart: %q → %q", k, v, after[k])
			}
		}
		p := getPolicy(t, "production", "user-service-api-policy")
		if !meta.IsStatusConditionTrue(p.Status.Conditions, v1alpha1.ConditionStalled) {
			t.Errorf("the invalid policy is no longer Stalled after the restart")
		}
		judge(t, "node-a", []request{
			{"after a restart the last good rule of the invalid policy still holds", evaluator.Ingress, podIP("auth-service"), podIP("user-service"), 8080, method("POST", "/v1/users"), evaluator.Allow, "user-service-api-policy"},
		})
	})

	t.Run("fixing the policy clears Stalled", func(t *testing.T) {
		p := setUserServicePath(t, "/v1/users")
		if condition(&p.Status, v1alpha1.ConditionStalled) != nil || p.Status.AcceptedSpec != nil {
			t.Errorf("fixed policy still carries Stalled or acceptedSpec: %+v", p.Status)
		}
	})

	t.Run("a deleted policy is removed from every node", func(t *testing.T) {
		p := getPolicy(t, "production", "billing-service-policy")
		if err := cp.Client.Delete(ctxT(t), p); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "billing policy gone from node-a", func() error {
			np, err := getNodePolicy(t, "node-a")
			if err != nil {
				return err
			}
			for _, ref := range np.Spec.Policies {
				if ref.Name == "billing-service-policy" {
					return errNotYet
				}
			}
			return nil
		})
		judge(t, "node-a", []request{
			{"without its policy, reporting-service no longer reads invoices (billing stays in default deny through the metrics policy)", evaluator.Ingress, podIP("reporting-service"), podIP("billing-service"), 9000, get("/v1/invoices/42"), evaluator.Deny, ""},
		})
	})

	t.Run("a deleted node takes its NodePolicy and IP cache entries with it", func(t *testing.T) {
		createNode(t, "node-c", "172.18.0.4")
		eventually(t, 10*time.Second, "NodePolicy node-c", func() error {
			_, err := getNodePolicy(t, "node-c")
			return err
		})
		eventually(t, 10*time.Second, "node-c address in the IP cache", func() error {
			if ipcacheFromShards(t)[netip.MustParseAddr("172.18.0.4")] != identity.RemoteNode {
				return errNotYet
			}
			return nil
		})
		if err := cp.Client.Delete(ctxT(t), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-c"}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "NodePolicy node-c deleted", func() error {
			if _, err := getNodePolicy(t, "node-c"); !apierrors.IsNotFound(err) {
				return fmt.Errorf("still there (%v)", err)
			}
			if _, ok := ipcacheFromShards(t)[netip.MustParseAddr("172.18.0.4")]; ok {
				return fmt.Errorf("address still in the IP cache")
			}
			return nil
		})
	})
}

func TestUnusedIdentitiesAreCollectedAfterTheDelay(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the control plane; not run with -short")
	}
	startOperator(t, operator.Options{IdentityGCDelay: 2 * time.Second, IdentityGCInterval: 200 * time.Millisecond})
	createNamespace(t, "gc", nil)
	if err := cp.Client.Create(ctxT(t), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-gc"}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := createPod(t, "gc", "short-lived", "node-gc", "10.0.9.9", map[string]string{"app": "short-lived"})
	var id string
	eventually(t, 10*time.Second, "identity allocated", func() error {
		var sids v1alpha1.SecurityIdentityList
		if err := cp.Client.List(ctxT(t), &sids); err != nil {
			return err
		}
		for _, s := range sids.Items {
			if contains(s.Spec.Labels, "k8s:app=short-lived") {
				id = s.Name
				return nil
			}
		}
		return errNotYet
	})
	deleted := time.Now()
	if err := cp.Client.Delete(ctxT(t), pod); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "unused identity marked", func() error {
		var sid v1alpha1.SecurityIdentity
		if err := cp.Client.Get(ctxT(t), types.NamespacedName{Name: id}, &sid); err != nil {
			return err
		}
		if sid.Status.UnusedSince == nil {
			return errNotYet
		}
		return nil
	})
	eventually(t, 10*time.Second, "unused identity deleted", func() error {
		var sid v1alpha1.SecurityIdentity
		err := cp.Client.Get(ctxT(t), types.NamespacedName{Name: id}, &sid)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	if since := time.Since(deleted); since < 2*time.Second {
		t.Errorf("identity deleted %s after its last pod, before the 2 s delay", since)
	}
}

package compiler_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/portcullis-dev/portcullis/internal/compiler"
	"github.com/portcullis-dev/portcullis/internal/identity"
)

func TestInvalidPolicyLeavesPreviousState(t *testing.T) {
	cl := standardCluster(t)
	cl.policy("AccessPolicy/production/p", userSvcPolicy)
	before := dump(cl.c.NodePolicy("node-a"))
	cl.c.DirtyNodes()
	for name, bad := range map[string]string{
		"regex":    "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"/v1/(\"}]}}]",
		"selector": "endpointSelector: {matchLabels: {\"bad key!\": x}}\ningress: [{}]",
		"cidr":     "endpointSelector: {}\ningress: [{fromCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]}]",
	} {
		err := cl.c.SetPolicy(compiler.Policy{Ref: ref("AccessPolicy/production/p"), Spec: spec(t, bad)})
		if !errors.Is(err, compiler.ErrInvalidPolicy) {
			t.Errorf("%s: SetPolicy error %v, want ErrInvalidPolicy", name, err)
		}
		if after := dump(cl.c.NodePolicy("node-a")); after != before {
			t.Errorf("%s: an invalid policy changed the compiled state", name)
		}
		if d := cl.c.DirtyNodes(); len(d) != 0 {
			t.Errorf("%s: an invalid policy dirtied %v", name, d)
		}
	}
	if res := cl.eval(flow{dir: in, text: otherPod + " -> " + userSvc + " TCP/8080"}); res.Verdict != deny {
		t.Errorf("the previous policy is no longer enforced: %s", res.Verdict)
	}
}

func TestDirtyNodesAndPolicyStatus(t *testing.T) {
	cl := newCluster(t)
	// Four nodes; a policy on node-1's pods names app=client peers; node-4 has unrelated pods.
	cl.pod("prod", "server-0", "node-1", "10.0.0.1", "app=server", "")
	cl.pod("prod", "server-1", "node-2", "10.0.0.2", "app=server", "")
	cl.pod("prod", "client-0", "node-3", "10.0.0.3", "app=client", "")
	cl.pod("prod", "batch-0", "node-4", "10.0.0.4", "app=batch", "")
	cl.pod("other", "x-0", "node-4", "10.0.0.5", "app=x", "")
	cl.policy("AccessPolicy/prod/server", "endpointSelector: {matchLabels: {app: server}}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}]}]")
	for _, n := range cl.c.Nodes() {
		cl.c.NodePolicy(n)
	}
	if got, want := cl.c.DirtyNodes(), []string{"node-1", "node-2", "node-3", "node-4"}; !slices.Equal(got, want) {
		t.Fatalf("first DirtyNodes = %v, want %v", got, want)
	}
	if n, nodes := cl.c.PolicyStatus(ref("AccessPolicy/prod/server")); n != 2 || !slices.Equal(nodes, []string{"node-1", "node-2"}) {
		t.Errorf("PolicyStatus = %d %v, want 2 [node-1 node-2]", n, nodes)
	}

	// batch-0 gains app=client (and a new identity): its own node, and the nodes whose policy
	// names app=client peers.
	cl.pod("prod", "batch-0", "node-4", "10.0.0.4", "app=client,tier=batch", "")
	if got, want := cl.c.DirtyNodes(), []string{"node-1", "node-2", "node-4"}; !slices.Equal(got, want) {
		t.Errorf("after a label change DirtyNodes = %v, want %v", got, want)
	}
	// A pod moves to an identity that exists already: group members do not change, only its node.
	cl.pod("prod", "batch-0", "node-4", "10.0.0.4", "app=client", "")
	if got, want := cl.c.DirtyNodes(), []string{"node-4"}; !slices.Equal(got, want) {
		t.Errorf("after a change to an existing identity DirtyNodes = %v, want %v", got, want)
	}
	// A pod in another namespace changes labels: only its node.
	cl.pod("other", "x-0", "node-4", "10.0.0.5", "app=client", "")
	if got, want := cl.c.DirtyNodes(), []string{"node-4"}; !slices.Equal(got, want) {
		t.Errorf("after an unrelated label change DirtyNodes = %v, want %v", got, want)
	}
	// Setting the same policy again changes nothing.
	cl.policy("AccessPolicy/prod/server", "endpointSelector: {matchLabels: {app: server}}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}]}]")
	if got := cl.c.DirtyNodes(); len(got) != 0 {
		t.Errorf("re-applying an unchanged policy dirtied %v", got)
	}
	// Deleting the policy: the nodes of the endpoints it selected.
	cl.c.DeletePolicy(ref("AccessPolicy/prod/server"))
	if got, want := cl.c.DirtyNodes(), []string{"node-1", "node-2"}; !slices.Equal(got, want) {
		t.Errorf("after DeletePolicy DirtyNodes = %v, want %v", got, want)
	}
	// An endpoint whose identity is unknown is denied, not left open.
	cl.c.SetEndpoint(compiler.Endpoint{Namespace: "prod", Name: "new-0", Node: "node-5", Identity: 9999, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.9")}})
	if ep := cl.c.NodePolicy("node-5").Endpoints[0]; ep.IngressRuleSet != compiler.PendingRuleSet || ep.EgressRuleSet != compiler.PendingRuleSet {
		t.Errorf("endpoint without identity got rule sets %s and %s, want %s", ep.IngressRuleSet, ep.EgressRuleSet, compiler.PendingRuleSet)
	}
}

// TestIncrementalEqualsFull drives a compiler through random changes and checks, after each
// batch, that every NodePolicy equals the one a fresh compiler builds from the final state.
func TestIncrementalEqualsFull(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	apps := []string{"web", "api", "db", "cache", "worker"}
	nss := []string{"a", "b", "c"}
	nodes := []string{"n1", "n2", "n3", "n4"}
	policies := []string{
		"endpointSelector: {matchLabels: {app: %[1]s}}\ningress: [{fromEndpoints: [{matchLabels: {app: %[2]s}}], toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{method: GET}]}}]}]",
		"endpointSelector: {matchLabels: {app: %[1]s}}\negress: [{toEndpoints: [{matchLabels: {app: %[2]s, io.kubernetes.pod.namespace: b}}]}]",
		"endpointSelector: {}\ningressDeny: [{fromEndpoints: [{matchLabels: {app: %[2]s}}], toPorts: [{ports: [{port: \"22\"}]}]}]",
		"endpointSelector: {matchLabels: {app: %[1]s}}\ningress: [{toPorts: [{ports: [{port: http}]}]}]\negress: [{toPorts: [{ports: [{port: http}]}]}]",
		"endpointSelector: {matchLabels: {app: %[1]s}}\nenforcementMode: Audit\negress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}]",
	}
	type podState struct{ ns, app, node string }
	pods := map[string]podState{}
	type polState struct{ kind, ns, text string }
	pols := map[string]polState{}

	labelsOf := func(p podState) identity.Labels {
		return identity.SecurityLabels(p.ns, map[string]string{"app": p.app}, nil)
	}
	idOf := func(l identity.Labels) identity.ID {
		for i, a := range apps {
			for j, n := range nss {
				if l.Key() == identity.SecurityLabels(n, map[string]string{"app": a}, nil).Key() {
					return identity.MinAllocatable + identity.ID(i*len(nss)+j)
				}
			}
		}
		return 0
	}
	endpoint := func(name string, p podState) compiler.Endpoint {
		ep := compiler.Endpoint{Namespace: p.ns, Name: name, Node: p.node, Identity: idOf(labelsOf(p)), IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(len(name)), name[len(name)-1]})}}
		if p.app == "web" || p.app == "api" {
			ep.NamedPorts = map[string]compiler.NamedPort{"http": {Port: 8000 + uint16(len(p.app)), Protocol: "TCP"}}
		}
		return ep
	}
	apply := func(c *compiler.Compiler, name string, p polState) {
		r := ref(p.kind + "/" + name)
		if p.ns != "" {
			r = ref(p.kind + "/" + p.ns + "/" + name)
		}
		if err := c.SetPolicy(compiler.Policy{Ref: r, Spec: spec(t, p.text)}); err != nil {
			t.Fatal(err)
		}
	}
	inc := compiler.New(compiler.Options{})
	for i, a := range apps {
		for j, n := range nss {
			inc.SetIdentity(identity.MinAllocatable+identity.ID(i*len(nss)+j), identity.SecurityLabels(n, map[string]string{"app": a}, nil))
		}
	}
	for round := 0; round < 60; round++ {
		for step := 0; step < 5; step++ {
			switch rng.IntN(4) {
			case 0, 1:
				name := fmt.Sprintf("pod-%d", rng.IntN(12))
				p := podState{nss[rng.IntN(len(nss))], apps[rng.IntN(len(apps))], nodes[rng.IntN(len(nodes))]}
				if old, ok := pods[name]; ok && old.ns != p.ns {
					inc.DeleteEndpoint(old.ns, name)
				}
				pods[name] = p
				inc.SetEndpoint(endpoint(name, p))
			case 2:
				name := fmt.Sprintf("pod-%d", rng.IntN(12))
				if p, ok := pods[name]; ok {
					inc.DeleteEndpoint(p.ns, name)
					delete(pods, name)
				}
			case 3:
				name := fmt.Sprintf("pol-%d", rng.IntN(6))
				if rng.IntN(4) == 0 {
					if p, ok := pols[name]; ok {
						r := ref(p.kind + "/" + name)
						if p.ns != "" {
							r = ref(p.kind + "/" + p.ns + "/" + name)
						}
						inc.DeletePolicy(r)
						delete(pols, name)
					}
					continue
				}
				p := polState{kind: "AccessPolicy", ns: nss[rng.IntN(len(nss))]}
				if rng.IntN(3) == 0 {
					p = polState{kind: "ClusterAccessPolicy"}
				}
				if old, ok := pols[name]; ok && old.kind != p.kind {
					continue
				}
				if old, ok := pols[name]; ok && old.ns != p.ns {
					continue
				}
				p.text = fmt.Sprintf(policies[rng.IntN(len(policies))], apps[rng.IntN(len(apps))], apps[rng.IntN(len(apps))])
				pols[name] = p
				apply(inc, name, p)
			}
		}
		// Compare with a fresh compile.
		full := compiler.New(compiler.Options{})
		for i, a := range apps {
			for j, n := range nss {
				full.SetIdentity(identity.MinAllocatable+identity.ID(i*len(nss)+j), identity.SecurityLabels(n, map[string]string{"app": a}, nil))
			}
		}
		for name, p := range pols {
			apply(full, name, p)
		}
		for name, p := range pods {
			full.SetEndpoint(endpoint(name, p))
		}
		dirty := inc.DirtyNodes()
		for _, n := range nodes {
			got, want := inc.NodePolicy(n), full.NodePolicy(n)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round %d: node %s: incremental result differs from a full compile (dirty=%v)\nincremental:\n%s\nfull:\n%s", round, n, dirty, dump(got), dump(want))
			}
		}
		if !slices.Equal(inc.Nodes(), full.Nodes()) {
			t.Fatalf("round %d: Nodes %v, want %v", round, inc.Nodes(), full.Nodes())
		}
	}
}

// TestDirtyNodesCoverChanges checks that a node not reported dirty keeps the exact same spec.
func TestDirtyNodesCoverChanges(t *testing.T) {
	cl := standardCluster(t)
	cl.policy("ClusterAccessPolicy/all", "endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: {app: auth-service}}]}]")
	snap := map[string]string{}
	for _, n := range cl.c.Nodes() {
		snap[n] = cl.c.NodePolicy(n).ContentHash
	}
	cl.c.DirtyNodes()
	steps := []func(){
		func() { cl.pod("production", "other-0", "node-a", otherPod, "app=auth-service", "") },
		func() { cl.pod("staging", "auth-service-0", "node-b", stgAuth, "app=foo", "") },
		func() { cl.policy("AccessPolicy/staging/x", "endpointSelector: {}\negress: [{}]") },
		func() { cl.c.DeleteEndpoint("production", "user-service-0") },
	}
	for i, step := range steps {
		step()
		dirty := cl.c.DirtyNodes()
		for _, n := range []string{"node-a", "node-b"} {
			h := cl.c.NodePolicy(n).ContentHash
			if h != snap[n] && !slices.Contains(dirty, n) {
				t.Errorf("step %d: node %s changed but was not reported dirty (%v)", i, n, dirty)
			}
			snap[n] = h
		}
	}
}

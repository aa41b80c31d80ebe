package compiler_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/compiler"
	"github.com/portcullis-dev/portcullis/internal/identity"
)

// synthetic is a generated cluster: ~50 namespaces, apps with several replicas spread over the
// nodes, and a mix of namespaced L4, L7 (HTTP), egress (FQDN, CIDR, cross-namespace) and cluster
// policies.
type synthetic struct {
	identities map[identity.ID]identity.Labels
	endpoints  []compiler.Endpoint
	policies   []compiler.Policy
	nodes      int
	podLabels  []map[string]string
	nsLabels   map[string]map[string]string
}

func genCluster(pods, policies, nodes int) *synthetic {
	rng := rand.New(rand.NewPCG(42, 7))
	const namespaces = 50
	s := &synthetic{identities: map[identity.ID]identity.Labels{}, nodes: nodes, nsLabels: map[string]map[string]string{}}
	ids := map[string]identity.ID{}
	next := identity.MinAllocatable
	tiers := []string{"web", "api", "worker", "db", "cache"}
	appsPerNS := pods / namespaces / 4 // four replicas on average
	for n := 0; n < namespaces; n++ {
		ns := fmt.Sprintf("team-%02d", n)
		s.nsLabels[ns] = map[string]string{"team": fmt.Sprintf("t%02d", n%20), "env": []string{"prod", "staging"}[n%2]}
	}
	podIdx := 0
	for podIdx < pods {
		for n := 0; n < namespaces && podIdx < pods; n++ {
			ns := fmt.Sprintf("team-%02d", n)
			for a := 0; a < appsPerNS && podIdx < pods; a++ {
				replicas := 2 + rng.IntN(5)
				labels := map[string]string{
					"app": fmt.Sprintf("app-%02d", a), "tier": tiers[a%len(tiers)],
					"app.kubernetes.io/part-of": fmt.Sprintf("sys-%d", a%7), "version": "v1",
				}
				if a%3 == 0 {
					labels["metrics.internal/scrape"] = "true"
				}
				for r := 0; r < replicas && podIdx < pods; r++ {
					pl := map[string]string{"pod-template-hash": fmt.Sprintf("%x", rng.Uint32())}
					for k, v := range labels {
						pl[k] = v
					}
					ls := identity.SecurityLabels(ns, pl, s.nsLabels[ns])
					id, ok := ids[ls.Key()]
					if !ok {
						id = next
						next++
						ids[ls.Key()] = id
						s.identities[id] = ls
					}
					ip := netip.AddrFrom4([4]byte{10, byte(podIdx >> 16), byte(podIdx >> 8), byte(podIdx)})
					s.endpoints = append(s.endpoints, compiler.Endpoint{
						Namespace: ns, Name: fmt.Sprintf("app-%02d-%d-%x", a, r, podIdx), Node: fmt.Sprintf("node-%03d", rng.IntN(nodes)),
						IPs: []netip.Addr{ip}, Identity: id,
						NamedPorts: map[string]compiler.NamedPort{"http": {Port: 8080, Protocol: "TCP"}, "metrics": {Port: 9090, Protocol: "TCP"}},
					})
					s.podLabels = append(s.podLabels, pl)
					podIdx++
				}
			}
		}
	}
	clusterPolicies := policies / 20
	for i := 0; i < policies-clusterPolicies; i++ {
		n := i % namespaces
		ns := fmt.Sprintf("team-%02d", n)
		a, b := rng.IntN(appsPerNS), rng.IntN(appsPerNS)
		var text string
		switch i % 6 {
		case 0: // L4 between two apps of the namespace
			text = fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"app":"app-%02d"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"app-%02d"}}],"toPorts":[{"ports":[{"port":"8080","protocol":"TCP"},{"port":"9000","endPort":9010,"protocol":"TCP"}]}]}]}`, a, b)
		case 1: // L7 HTTP
			text = fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"app":"app-%02d"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"app-%02d"}},{"matchLabels":{"tier":"web"}}],"toPorts":[{"ports":[{"port":"8080","protocol":"TCP"}],"rules":{"http":[{"method":"GET","path":"/v1/items/[0-9]+"},{"method":"POST","path":"/v1/items"},{"method":"GET","path":"/healthz","headers":["X-Probe: true"]}]}}]}]}`, a, b)
		case 2: // cross-namespace egress by namespace labels, with named port
			text = fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"app":"app-%02d"}},"egress":[{"toEndpoints":[{"matchLabels":{"io.kubernetes.pod.namespace":"team-%02d","app":"app-%02d"}}],"toPorts":[{"ports":[{"port":"http","protocol":"TCP"}]}]}]}`, a, (n+1)%namespaces, b)
		case 3: // FQDN and CIDR egress
			text = fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"tier":"%s"}},"egress":[{"toFQDNs":[{"matchName":"api%d.example.com"},{"matchPattern":"*.s3.amazonaws.com"}],"toPorts":[{"ports":[{"port":"443","protocol":"TCP"}]}]},{"toCIDRSet":[{"cidr":"172.16.0.0/12","except":["172.16.%d.0/24"]}]}]}`, tiers[a%len(tiers)], a, b)
		case 4: // namespace-wide ingress
			text = `{"endpointSelector":{},"ingress":[{"fromEndpoints":[{}]}]}`
		case 5: // deny from another namespace, in audit mode half the time
			mode := "Enforce"
			if i%12 == 5 {
				mode = "Audit"
			}
			text = fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"app":"app-%02d"}},"enforcementMode":"%s","ingressDeny":[{"fromEndpoints":[{"matchLabels":{"io.kubernetes.pod.namespace":"team-%02d"}}],"toPorts":[{"ports":[{"port":"22"}]}]}],"ingress":[{"fromEndpoints":[{"matchLabels":{"io.cilium.k8s.namespace.labels.env":"prod","io.kubernetes.pod.namespace":"team-%02d"}}]}]}`, a, mode, (n+2)%namespaces, (n+3)%namespaces)
		}
		s.policies = append(s.policies, mustPolicy(v1alpha1.PolicyReference{Kind: "AccessPolicy", Namespace: ns, Name: fmt.Sprintf("p-%04d", i), Generation: 1}, text))
	}
	for i := 0; i < clusterPolicies; i++ {
		var text string
		// Cluster policies differ from each other: each names its own ports, tiers or groups.
		switch i % 5 {
		case 0: // pods of some tier may resolve names through kube-dns
			text = fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"tier":"%s"}},"egress":[{"toEndpoints":[{"matchLabels":{"io.kubernetes.pod.namespace":"kube-system","k8s-app":"kube-dns"}}],"toPorts":[{"ports":[{"port":"53","protocol":"ANY"}],"rules":{"dns":[{"matchPattern":"*.svc%d.cluster.local"}]}}]}],"enableDefaultDeny":{"egress":false}}`, tiers[(i/5)%len(tiers)], i)
		case 1: // a monitoring app scrapes metrics on labelled pods
			text = fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"metrics.internal/scrape":"true","app.kubernetes.io/part-of":"sys-%d"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"io.kubernetes.pod.namespace":"team-%02d","app":"app-00"}}],"toPorts":[{"ports":[{"port":"metrics","protocol":"TCP"}],"rules":{"http":[{"method":"GET","path":"/metrics"}]}}]}],"enableDefaultDeny":{"ingress":false}}`, i%7, i%namespaces)
		case 2: // no world access to databases on a port range
			text = fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"tier":"db"}},"ingressDeny":[{"fromEntities":["world"],"toPorts":[{"ports":[{"port":"%d","endPort":%d}]}]}],"enableDefaultDeny":{"ingress":false}}`, 5000+i*10, 5009+i*10)
		case 3: // the cluster may reach one part of the web tier
			text = fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"tier":"web","app.kubernetes.io/part-of":"sys-%d"}},"ingress":[{"fromEntities":["cluster"],"toPorts":[{"ports":[{"port":"8080","protocol":"TCP"}]}]}]}`, i%7)
		case 4: // env=prod pods of one system talk to each other
			text = fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"io.cilium.k8s.namespace.labels.env":"prod","app.kubernetes.io/part-of":"sys-%d"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"io.cilium.k8s.namespace.labels.env":"prod","app.kubernetes.io/part-of":"sys-%d"}}],"toPorts":[{"ports":[{"port":"%d","protocol":"TCP"}]}]}]}`, i%7, i%7, 8443+i)
		}
		s.policies = append(s.policies, mustPolicy(v1alpha1.PolicyReference{Kind: "ClusterAccessPolicy", Name: fmt.Sprintf("c-%03d", i), Generation: 1}, text))
	}
	return s
}

func mustPolicy(ref v1alpha1.PolicyReference, text string) compiler.Policy {
	var spec v1alpha1.PolicySpec
	if err := json.Unmarshal([]byte(text), &spec); err != nil {
		panic(fmt.Sprintf("bad generated policy %s: %v", text, err)) // test data only
	}
	return compiler.Policy{Ref: ref, Spec: &spec}
}

func (s *synthetic) load(tb testing.TB) *compiler.Compiler {
	c := compiler.New(compiler.Options{})
	for id, ls := range s.identities {
		c.SetIdentity(id, ls)
	}
	for _, p := range s.policies {
		if err := c.SetPolicy(p); err != nil {
			tb.Fatal(err)
		}
	}
	for _, ep := range s.endpoints {
		c.SetEndpoint(ep)
	}
	return c
}

// publish builds the NodePolicy of every dirty node and returns the largest size in bytes.
func publish(c *compiler.Compiler, measure bool) (dirty, maxBytes int) {
	nodes := c.DirtyNodes()
	for _, n := range nodes {
		spec := c.NodePolicy(n)
		if measure {
			b, _ := json.Marshal(spec)
			maxBytes = max(maxBytes, len(b))
		}
	}
	return len(nodes), maxBytes
}

var benchCluster = func() func() *synthetic {
	var s *synthetic
	return func() *synthetic {
		if s == nil {
			s = genCluster(10000, 1000, 100)
		}
		return s
	}
}()

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// BenchmarkFullCompile compiles 10,000 pods, 1,000 policies and 100 nodes from scratch, and builds
// every NodePolicy.
func BenchmarkFullCompile(b *testing.B) {
	s := benchCluster()
	base := heapInUse()
	var c *compiler.Compiler
	b.ReportAllocs()
	for b.Loop() {
		c = s.load(b)
		publish(c, false)
	}
	b.StopTimer()
	c = s.load(b)
	_, maxBytes := publish(c, true)
	b.ReportMetric(float64(maxBytes), "max-nodepolicy-bytes")
	b.ReportMetric(float64(heapInUse()-base)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(len(s.identities)), "identities")
	runtime.KeepAlive(c)
}

// BenchmarkPodLabelChange changes the labels of one pod (giving it a new identity, then its old
// one back) and rebuilds the NodePolicies of the dirty nodes.
func BenchmarkPodLabelChange(b *testing.B) {
	s := benchCluster()
	c := s.load(b)
	publish(c, false)
	ep := s.endpoints[1234]
	oldID := ep.Identity
	newLabels := map[string]string{"canary": "true"}
	for k, v := range s.podLabels[1234] {
		newLabels[k] = v
	}
	newID := identity.ID(1 << 20)
	c.SetIdentity(newID, identity.SecurityLabels(ep.Namespace, newLabels, s.nsLabels[ep.Namespace]))
	publish(c, false)
	dirtyTotal, maxBytes, i := 0, 0, 0
	b.ReportAllocs()
	for b.Loop() {
		if i%2 == 0 {
			ep.Identity = newID
		} else {
			ep.Identity = oldID
		}
		i++
		c.SetEndpoint(ep)
		d, _ := publish(c, false)
		dirtyTotal += d
	}
	b.StopTimer()
	// One full new identity: allocated, then the pod moves to it.
	c.DeleteIdentity(newID)
	publish(c, false)
	c.SetIdentity(newID, identity.SecurityLabels(ep.Namespace, newLabels, s.nsLabels[ep.Namespace]))
	ep.Identity = newID
	c.SetEndpoint(ep)
	d, maxBytes := publish(c, true)
	b.ReportMetric(float64(dirtyTotal)/float64(max(i, 1)), "dirty-nodes/op")
	b.ReportMetric(float64(d), "dirty-nodes-new-identity")
	b.ReportMetric(float64(maxBytes), "max-nodepolicy-bytes")
}

// BenchmarkPodNewIdentity allocates a new identity for one pod (labels never seen before) and
// rebuilds the NodePolicies of the dirty nodes: the new identity joins peer groups everywhere.
func BenchmarkPodNewIdentity(b *testing.B) {
	s := benchCluster()
	c := s.load(b)
	publish(c, false)
	ep := s.endpoints[1234]
	oldID := ep.Identity
	dirtyTotal, i := 0, 0
	b.ReportAllocs()
	for b.Loop() {
		newLabels := map[string]string{"canary": fmt.Sprint(i)}
		for k, v := range s.podLabels[1234] {
			newLabels[k] = v
		}
		newID := identity.ID(1<<20 + i)
		c.SetIdentity(newID, identity.SecurityLabels(ep.Namespace, newLabels, s.nsLabels[ep.Namespace]))
		ep.Identity = newID
		c.SetEndpoint(ep)
		if i > 0 {
			c.DeleteIdentity(newID - 1)
		}
		i++
		d, _ := publish(c, false)
		dirtyTotal += d
	}
	ep.Identity = oldID
	b.ReportMetric(float64(dirtyTotal)/float64(max(i, 1)), "dirty-nodes/op")
}

// BenchmarkPolicyChange changes one namespaced L7 policy (its allowed paths) and rebuilds the
// NodePolicies of the dirty nodes.
func BenchmarkPolicyChange(b *testing.B) {
	s := benchCluster()
	c := s.load(b)
	publish(c, false)
	p := s.policies[1] // an HTTP policy
	alt := mustPolicy(p.Ref, `{"endpointSelector":{"matchLabels":{"app":"app-01"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"tier":"web"}}],"toPorts":[{"ports":[{"port":"8080","protocol":"TCP"}],"rules":{"http":[{"method":"GET","path":"/v2/items/[0-9]+"}]}}]}]}`)
	dirtyTotal, i := 0, 0
	b.ReportAllocs()
	for b.Loop() {
		q := p
		if i%2 == 0 {
			q = alt
		}
		q.Ref.Generation = int64(i + 2)
		i++
		if err := c.SetPolicy(q); err != nil {
			b.Fatal(err)
		}
		d, _ := publish(c, false)
		dirtyTotal += d
	}
	b.ReportMetric(float64(dirtyTotal)/float64(max(i, 1)), "dirty-nodes/op")
}

// BenchmarkClusterPolicyChange changes one cluster-wide policy that selects every pod.
func BenchmarkClusterPolicyChange(b *testing.B) {
	s := benchCluster()
	c := s.load(b)
	publish(c, false)
	ref := v1alpha1.PolicyReference{Kind: "ClusterAccessPolicy", Name: "c-000"}
	texts := []string{
		`{"endpointSelector":{},"egress":[{"toEndpoints":[{"matchLabels":{"io.kubernetes.pod.namespace":"kube-system","k8s-app":"kube-dns"}}],"toPorts":[{"ports":[{"port":"53","protocol":"ANY"}],"rules":{"dns":[{"matchPattern":"*.cluster.local"}]}}]}],"enableDefaultDeny":{"egress":false}}`,
		`{"endpointSelector":{},"egress":[{"toEndpoints":[{"matchLabels":{"io.kubernetes.pod.namespace":"kube-system","k8s-app":"kube-dns"}}],"toPorts":[{"ports":[{"port":"53","protocol":"ANY"}],"rules":{"dns":[{"matchPattern":"*"}]}}]}],"enableDefaultDeny":{"egress":false}}`,
	}
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		q := mustPolicy(ref, texts[i%2])
		q.Ref.Generation = int64(i + 2)
		i++
		if err := c.SetPolicy(q); err != nil {
			b.Fatal(err)
		}
		publish(c, false)
	}
}

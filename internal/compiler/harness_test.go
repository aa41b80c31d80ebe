package compiler_test

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/compiler"
	"github.com/portcullis-dev/portcullis/internal/evaluator"
	"github.com/portcullis-dev/portcullis/internal/identity"
)

// cluster is a small fake cluster around a Compiler: it allocates identities from labels, keeps
// the IP cache, and evaluates flows against the NodePolicy of the local endpoint's node.
type cluster struct {
	t       testing.TB
	c       *compiler.Compiler
	ipc     evaluator.MapIPCache
	ids     map[string]identity.ID
	next    identity.ID
	nsLabel map[string]map[string]string
	pods    map[string]compiler.Endpoint // by IP
}

func newCluster(t testing.TB) *cluster {
	cl := &cluster{t: t, c: compiler.New(compiler.Options{}), ipc: evaluator.MapIPCache{}, ids: map[string]identity.ID{},
		next: identity.MinAllocatable, nsLabel: map[string]map[string]string{}, pods: map[string]compiler.Endpoint{}}
	cl.ipc[netip.MustParseAddr("192.168.0.1")] = identity.Host
	cl.ipc[netip.MustParseAddr("192.168.0.2")] = identity.RemoteNode
	cl.ipc[netip.MustParseAddr("192.168.0.7")] = identity.KubeAPIServer
	return cl
}

// identityOf allocates (or reuses) the identity of a label set.
func (cl *cluster) identityOf(ns string, labels map[string]string) identity.ID {
	ls := identity.SecurityLabels(ns, labels, cl.nsLabel[ns])
	id, ok := cl.ids[ls.Key()]
	if !ok {
		id = cl.next
		cl.next++
		cl.ids[ls.Key()] = id
		cl.c.SetIdentity(id, ls)
	}
	return id
}

// pod adds a pod; labels are "k=v,k=v"; ports are "name=proto/port,...".
func (cl *cluster) pod(ns, name, node, ip, labels, ports string) compiler.Endpoint {
	lm := parseKV(labels)
	ep := compiler.Endpoint{Namespace: ns, Name: name, Node: node, IPs: []netip.Addr{netip.MustParseAddr(ip)}, Identity: cl.identityOf(ns, lm)}
	if ports != "" {
		ep.NamedPorts = map[string]compiler.NamedPort{}
		for n, v := range parseKV(ports) {
			proto, port, _ := strings.Cut(v, "/")
			p, _ := strconv.Atoi(port)
			ep.NamedPorts[n] = compiler.NamedPort{Port: uint16(p), Protocol: proto}
		}
	}
	cl.c.SetEndpoint(ep)
	cl.ipc[ep.IPs[0]] = ep.Identity
	cl.pods[ip] = ep
	return ep
}

func parseKV(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// spec parses a PolicySpec from YAML.
func spec(t testing.TB, y string) *v1alpha1.PolicySpec {
	t.Helper()
	var s v1alpha1.PolicySpec
	if err := yaml.UnmarshalStrict([]byte(y), &s); err != nil {
		t.Fatalf("parse spec: %v\n%s", err, y)
	}
	return &s
}

// ref parses "Kind/ns/name" or "ClusterAccessPolicy/name".
func ref(s string) v1alpha1.PolicyReference {
	parts := strings.Split(s, "/")
	if len(parts) == 2 {
		return v1alpha1.PolicyReference{Kind: parts[0], Name: parts[1], Generation: 1}
	}
	return v1alpha1.PolicyReference{Kind: parts[0], Namespace: parts[1], Name: parts[2], Generation: 1}
}

func (cl *cluster) policy(name, y string) {
	cl.t.Helper()
	if err := cl.c.SetPolicy(compiler.Policy{Ref: ref(name), Spec: spec(cl.t, y)}); err != nil {
		cl.t.Fatalf("SetPolicy %s: %v", name, err)
	}
}

// flow is "SRC -> DST PROTO/PORT [METHOD PATH [Header: value]...]" evaluated in one direction.
type flow struct {
	dir  evaluator.Direction
	text string
	name string // DestinationName
	dns  string
}

func (cl *cluster) eval(f flow) evaluator.Result {
	cl.t.Helper()
	fields := strings.Fields(f.text)
	src, dst := netip.MustParseAddr(fields[0]), netip.MustParseAddr(fields[2])
	proto, port, _ := strings.Cut(fields[3], "/")
	p, _ := strconv.Atoi(port)
	fl := evaluator.Flow{Direction: f.dir, Source: src, Destination: dst, Protocol: proto, Port: uint16(p), DestinationName: f.name, DNSQuery: f.dns}
	if len(fields) > 4 {
		req := &evaluator.HTTPRequest{Method: fields[4], Path: fields[5], Host: "svc", Headers: http.Header{}}
		rest := strings.Join(fields[6:], " ")
		for _, h := range strings.Split(rest, ";") {
			if n, v, ok := strings.Cut(h, ":"); ok {
				req.Headers.Add(strings.TrimSpace(n), strings.TrimSpace(v))
			}
		}
		fl.HTTP = req
	}
	local := dst
	if f.dir == evaluator.Egress {
		local = src
	}
	ep, ok := cl.pods[local.String()]
	if !ok {
		cl.t.Fatalf("no pod with address %s", local)
	}
	spec := cl.c.NodePolicy(ep.Node)
	ev, err := evaluator.New(spec, cl.ipc)
	if err != nil {
		cl.t.Fatalf("evaluator.New: %v\n%s", err, dump(spec))
	}
	res, err := ev.Evaluate(fl)
	if err != nil {
		cl.t.Fatalf("Evaluate %q: %v", f.text, err)
	}
	return res
}

func dump(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// The fixed cluster most semantic tests run in.
const (
	userSvc  = "10.0.1.1" // production/user-service on node-a, named port http=8080
	authSvc  = "10.0.1.2" // production/auth-service on node-b
	otherPod = "10.0.1.3" // production/other on node-a
	stgAuth  = "10.0.2.2" // staging/auth-service on node-b
	world    = "8.8.8.8"
	world2   = "10.9.9.9" // outside the cluster although inside 10/8
	hostIP   = "192.168.0.1"
	remoteIP = "192.168.0.2"
	apiIP    = "192.168.0.7"
)

func standardCluster(t testing.TB) *cluster {
	cl := newCluster(t)
	cl.nsLabel["production"] = map[string]string{"team": "core"}
	cl.nsLabel["staging"] = map[string]string{"team": "qa"}
	cl.pod("production", "user-service-0", "node-a", userSvc, "app=user-service,pod-template-hash=abc", "http=TCP/8080,metrics=TCP/9090")
	cl.pod("production", "auth-service-0", "node-b", authSvc, "app=auth-service", "")
	cl.pod("production", "other-0", "node-a", otherPod, "app=other", "")
	cl.pod("staging", "auth-service-0", "node-b", stgAuth, "app=auth-service", "")
	return cl
}

package compiler_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/portcullis-dev/portcullis/internal/evaluator"
)

type check struct {
	dir    evaluator.Direction
	flow   string
	want   evaluator.Verdict
	origin string // when set, must be among the result's origins
	name   string // DestinationName
	dns    string
}

const (
	in  = evaluator.Ingress
	out = evaluator.Egress
)

var (
	allow = evaluator.Allow
	deny  = evaluator.Deny
	audit = evaluator.Audit
)

type semanticCase struct {
	name     string
	policies [][2]string // name, yaml
	checks   []check
}

func runSemantic(t *testing.T, cases []semanticCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cl := standardCluster(t)
			for _, p := range tc.policies {
				cl.policy(p[0], p[1])
			}
			for _, ck := range tc.checks {
				res := cl.eval(flow{dir: ck.dir, text: ck.flow, name: ck.name, dns: ck.dns})
				if res.Verdict != ck.want {
					node := cl.pods[strings.Fields(ck.flow)[2]].Node
					if ck.dir == out {
						node = cl.pods[strings.Fields(ck.flow)[0]].Node
					}
					t.Errorf("%s %q: got %s (%s, %v), want %s\nnode policy:\n%s", ck.dir, ck.flow, res.Verdict, res.Reason, res.Origins, ck.want, dump(cl.c.NodePolicy(node)))
					continue
				}
				if ck.origin != "" && !slices.Contains(res.Origins, ck.origin) {
					t.Errorf("%s %q: origins %v, want %s among them", ck.dir, ck.flow, res.Origins, ck.origin)
				}
			}
		})
	}
}

const userSvcPolicy = `
endpointSelector: {matchLabels: {app: user-service}}
ingress:
- fromEndpoints: [{matchLabels: {app: auth-service}}]
`

func TestDefaultDeny(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "no policy allows everything", checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/1", allow, "", "", ""},
			{out, userSvc + " -> " + world + " TCP/443", allow, "", "", ""},
		}},
		{name: "an ingress rule puts ingress, and only ingress, in default-deny", policies: [][2]string{{"AccessPolicy/production/p", userSvcPolicy}}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/8080", allow, "AccessPolicy/production/p", "", ""},
			{in, otherPod + " -> " + userSvc + " TCP/8080", deny, "AccessPolicy/production/p", "", ""},
			{out, userSvc + " -> " + world + " TCP/443", allow, "", "", ""},
			{in, authSvc + " -> " + otherPod + " TCP/8080", allow, "", "", ""},
		}},
		{name: "an ingressDeny rule alone also enables ingress default-deny", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
ingressDeny:
- fromEndpoints: [{matchLabels: {app: other}}]
`}}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/8080", deny, "", "", ""},
			{in, otherPod + " -> " + userSvc + " TCP/8080", deny, "AccessPolicy/production/p", "", ""},
		}},
		{name: "enableDefaultDeny.ingress false adds rules without default-deny", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
enableDefaultDeny: {ingress: false}
ingress:
- fromEndpoints: [{matchLabels: {app: auth-service}}]
ingressDeny:
- fromEndpoints: [{matchLabels: {app: other}}]
  toPorts: [{ports: [{port: "22"}]}]
`}}, checks: []check{
			{in, stgAuth + " -> " + userSvc + " TCP/8080", allow, "", "", ""},
			{in, otherPod + " -> " + userSvc + " TCP/8080", allow, "", "", ""},
			{in, otherPod + " -> " + userSvc + " TCP/22", deny, "AccessPolicy/production/p", "", ""},
		}},
		{name: "default-deny from another policy still applies to a non-default-deny policy's endpoints", policies: [][2]string{
			{"AccessPolicy/production/open", "endpointSelector: {matchLabels: {app: user-service}}\nenableDefaultDeny: {ingress: false}\ningress: [{fromEndpoints: [{matchLabels: {app: other}}]}]"},
			{"AccessPolicy/production/p", userSvcPolicy}}, checks: []check{
			{in, otherPod + " -> " + userSvc + " TCP/8080", allow, "AccessPolicy/production/open", "", ""},
			{in, stgAuth + " -> " + userSvc + " TCP/8080", deny, "AccessPolicy/production/p", "", ""},
		}},
		{name: "enableDefaultDeny true without rules denies the direction", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
enableDefaultDeny: {egress: true}
`}}, checks: []check{
			{out, userSvc + " -> " + authSvc + " TCP/80", deny, "AccessPolicy/production/p", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/80", allow, "", "", ""},
		}},
	})
}

func TestPeerSelection(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "omitted fromEndpoints with toPorts applies to every peer", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
ingress:
- toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`}}, checks: []check{
			{in, world + " -> " + userSvc + " TCP/8080", allow, "", "", ""},
			{in, stgAuth + " -> " + userSvc + " TCP/8080", allow, "", "", ""},
			{in, hostIP + " -> " + userSvc + " TCP/8080", allow, "", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/8081", deny, "", "", ""},
			{in, authSvc + " -> " + userSvc + " UDP/8080", deny, "", "", ""},
		}},
		{name: "an empty fromEndpoints list selects no one", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
ingress:
- fromEndpoints: []
  toPorts: [{ports: [{port: "8080"}]}]
`}}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/8080", deny, "", "", ""},
			{in, world + " -> " + userSvc + " TCP/8080", deny, "", "", ""},
		}},
		{name: "[{}] selects every pod of the policy's namespace", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
ingress:
- fromEndpoints: [{}]
`}}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/8080", allow, "", "", ""},
			{in, otherPod + " -> " + userSvc + " UDP/53", allow, "", "", ""},
			{in, stgAuth + " -> " + userSvc + " TCP/8080", deny, "", "", ""},
			{in, world + " -> " + userSvc + " TCP/8080", deny, "", "", ""},
			{in, hostIP + " -> " + userSvc + " TCP/8080", deny, "", "", ""},
		}},
		{name: "a rule with no peer and no ports allows everything", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
ingress:
- {}
`}}, checks: []check{
			{in, world + " -> " + userSvc + " UDP/9", allow, "AccessPolicy/production/p", "", ""},
			{in, stgAuth + " -> " + userSvc + " TCP/8080", allow, "", "", ""},
		}},
		{name: "an AccessPolicy selects its own namespace unless a peer names one", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: auth-service}}
ingress:
- fromEndpoints:
  - matchLabels: {app: auth-service, k8s:io.kubernetes.pod.namespace: staging}
`}}, checks: []check{
			{in, stgAuth + " -> " + authSvc + " TCP/1", allow, "", "", ""},
			{in, userSvc + " -> " + authSvc + " TCP/1", deny, "", "", ""},
			// The endpoint selector never leaves the policy's namespace.
			{in, userSvc + " -> " + stgAuth + " TCP/1", allow, "", "", ""},
		}},
		{name: "k8s: prefixes and namespace labels match identity labels", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {k8s:app: user-service}}
ingress:
- fromEndpoints:
  - matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: core, k8s:app: auth-service}
`}}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/1", allow, "", "", ""},
			{in, otherPod + " -> " + userSvc + " TCP/1", deny, "", "", ""},
		}},
		{name: "a ClusterAccessPolicy spans namespaces", policies: [][2]string{{"ClusterAccessPolicy/c", `
endpointSelector: {matchLabels: {app: auth-service}}
ingress:
- fromEndpoints: [{matchLabels: {app: user-service}}]
`}}, checks: []check{
			{in, userSvc + " -> " + authSvc + " TCP/1", allow, "ClusterAccessPolicy/c", "", ""},
			{in, userSvc + " -> " + stgAuth + " TCP/1", allow, "ClusterAccessPolicy/c", "", ""},
			{in, otherPod + " -> " + stgAuth + " TCP/1", deny, "ClusterAccessPolicy/c", "", ""},
		}},
		{name: "a cluster policy's [{}] selects pods of every namespace", policies: [][2]string{{"ClusterAccessPolicy/c", `
endpointSelector: {matchLabels: {app: auth-service, io.kubernetes.pod.namespace: staging}}
ingress:
- fromEndpoints: [{}]
`}}, checks: []check{
			{in, userSvc + " -> " + stgAuth + " TCP/1", allow, "", "", ""},
			{in, world + " -> " + stgAuth + " TCP/1", deny, "", "", ""},
			{in, userSvc + " -> " + authSvc + " TCP/1", allow, "", "", ""}, // not selected
		}},
	})
}

func TestDenyAndL7Merging(t *testing.T) {
	httpPolicy := func(method, path string) string {
		return `
endpointSelector: {matchLabels: {app: user-service}}
ingress:
- fromEndpoints: [{matchLabels: {app: auth-service}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
    rules:
      http: [{method: "` + method + `", path: "` + path + `"}]
`
	}
	runSemantic(t, []semanticCase{
		{name: "deny wins over allow across policies", policies: [][2]string{
			{"AccessPolicy/production/allow", userSvcPolicy},
			{"ClusterAccessPolicy/deny", "endpointSelector: {}\ningressDeny:\n- fromEndpoints: [{matchLabels: {app: auth-service}}]\n  toPorts: [{ports: [{port: \"8080\"}]}]"},
		}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/8080", deny, "ClusterAccessPolicy/deny", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/8081", allow, "AccessPolicy/production/allow", "", ""},
		}},
		{name: "an L4-only allow beats L7 rules on the same peer and port", policies: [][2]string{
			{"AccessPolicy/production/l7", httpPolicy("POST", "/v1/users")},
			{"AccessPolicy/production/l4", "endpointSelector: {matchLabels: {app: user-service}}\ningress:\n- fromEndpoints: [{matchLabels: {app: auth-service}}]\n  toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]"},
		}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/8080 DELETE /v1/users/1", allow, "AccessPolicy/production/l4", "", ""},
		}},
		{name: "an L4-only allow of a wider peer also covers the port", policies: [][2]string{
			{"AccessPolicy/production/l7", httpPolicy("POST", "/v1/users")},
			{"AccessPolicy/production/l4", "endpointSelector: {matchLabels: {app: user-service}}\ningress:\n- fromEndpoints: [{}]"},
		}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/8080 DELETE /v1/users/1", allow, "AccessPolicy/production/l4", "", ""},
		}},
		{name: "HTTP rules of several policies are OR-ed", policies: [][2]string{
			{"AccessPolicy/production/a", httpPolicy("POST", "/v1/users")},
			{"AccessPolicy/production/b", httpPolicy("get", "/v1/users/[0-9]+")},
		}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/8080 POST /v1/users", allow, "AccessPolicy/production/a", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/8080 GET /v1/users/42", allow, "AccessPolicy/production/b", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/8080 GET /v1/users/42?x=1", allow, "", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/8080 GET /v1/users/42/x", deny, "", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/8080 PUT /v1/users/42", deny, "", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/8080 GET /v1/users", deny, "", "", ""},
			{in, otherPod + " -> " + userSvc + " TCP/8080 POST /v1/users", deny, "", "", ""},
		}},
		{name: "an empty http list allows every request", policies: [][2]string{
			{"AccessPolicy/production/a", "endpointSelector: {matchLabels: {app: user-service}}\ningress:\n- toPorts: [{ports: [{port: \"8080\", protocol: TCP}], rules: {http: []}}]"},
		}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/8080 BREW /coffee", allow, "", "", ""},
		}},
		{name: "an ingress named port resolves against the selected endpoint", policies: [][2]string{
			{"AccessPolicy/production/a", "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: http, protocol: TCP}]}]"},
		}, checks: []check{
			{in, authSvc + " -> " + userSvc + " TCP/8080", allow, "", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/9090", deny, "", "", ""},
			{in, authSvc + " -> " + otherPod + " TCP/8080", deny, "", "", ""}, // no port named http
		}},
		{name: "an egress named port resolves against the peers' ports", policies: [][2]string{
			{"AccessPolicy/production/a", "endpointSelector: {matchLabels: {app: auth-service}}\negress:\n- toPorts: [{ports: [{port: metrics}]}]"},
		}, checks: []check{
			{out, authSvc + " -> " + userSvc + " TCP/9090", allow, "", "", ""},
			{out, authSvc + " -> " + userSvc + " TCP/8080", deny, "", "", ""},
		}},
	})
}

func TestCIDRsEntitiesFQDNs(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "CIDR rules match only addresses outside the cluster", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
ingress:
- fromCIDR: [10.0.0.0/8]
`}}, checks: []check{
			{in, world2 + " -> " + userSvc + " TCP/1", allow, "", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/1", deny, "", "", ""},
		}},
		{name: "CIDR exceptions are subtracted", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
egress:
- toCIDRSet: [{cidr: 8.0.0.0/8, except: [8.8.8.0/24]}]
`}}, checks: []check{
			{out, userSvc + " -> 8.8.8.8 TCP/53", deny, "", "", ""},
			{out, userSvc + " -> 8.8.4.4 TCP/53", allow, "", "", ""},
			{out, userSvc + " -> 8.8.9.1 TCP/53", allow, "", "", ""},
		}},
		{name: "entities", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
ingress:
- fromEntities: [host]
  toPorts: [{ports: [{port: "1"}]}]
- fromEntities: [remote-node]
  toPorts: [{ports: [{port: "2"}]}]
- fromEntities: [world]
  toPorts: [{ports: [{port: "3"}]}]
- fromEntities: [cluster]
  toPorts: [{ports: [{port: "4"}]}]
- fromEntities: [kube-apiserver]
  toPorts: [{ports: [{port: "5"}]}]
- fromEntities: [all]
  toPorts: [{ports: [{port: "6"}]}]
- fromEntities: [none]
  toPorts: [{ports: [{port: "7"}]}]
- fromEntities: [world-ipv6]
  toPorts: [{ports: [{port: "8"}]}]
`}}, checks: []check{
			{in, hostIP + " -> " + userSvc + " TCP/1", allow, "", "", ""},
			{in, remoteIP + " -> " + userSvc + " TCP/1", deny, "", "", ""},
			{in, remoteIP + " -> " + userSvc + " TCP/2", allow, "", "", ""},
			{in, world + " -> " + userSvc + " TCP/3", allow, "", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/3", deny, "", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/4", allow, "", "", ""},
			{in, stgAuth + " -> " + userSvc + " TCP/4", allow, "", "", ""},
			{in, hostIP + " -> " + userSvc + " TCP/4", allow, "", "", ""},
			{in, remoteIP + " -> " + userSvc + " TCP/4", allow, "", "", ""},
			{in, world + " -> " + userSvc + " TCP/4", deny, "", "", ""},
			{in, apiIP + " -> " + userSvc + " TCP/5", allow, "", "", ""},
			{in, world + " -> " + userSvc + " TCP/6", allow, "", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/6", allow, "", "", ""},
			{in, world + " -> " + userSvc + " TCP/7", deny, "", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/7", deny, "", "", ""},
			{in, world + " -> " + userSvc + " TCP/8", deny, "", "", ""},
			{in, "2001:db8::1 -> " + userSvc + " TCP/8", allow, "", "", ""},
		}},
		{name: "toFQDNs and DNS rules", policies: [][2]string{{"AccessPolicy/production/p", `
endpointSelector: {matchLabels: {app: user-service}}
egress:
- toFQDNs: [{matchName: API.Stripe.com}, {matchPattern: "*.example.org"}]
  toPorts: [{ports: [{port: "443", protocol: TCP}]}]
- toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: staging}}]
  toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*.stripe.com"}]}}]
`}}, checks: []check{
			{out, userSvc + " -> 54.1.2.3 TCP/443", allow, "", "api.stripe.com", ""},
			{out, userSvc + " -> 54.1.2.3 TCP/443", allow, "", "www.example.org.", ""},
			{out, userSvc + " -> 54.1.2.3 TCP/443", deny, "", "a.b.example.org", ""},
			{out, userSvc + " -> 54.1.2.3 TCP/443", deny, "", "evil.com", ""},
			{out, userSvc + " -> 54.1.2.3 TCP/443", deny, "", "", ""},
			{out, userSvc + " -> " + stgAuth + " UDP/53", allow, "", "", "api.stripe.com"},
			{out, userSvc + " -> " + stgAuth + " UDP/53", deny, "", "", "evil.com"},
		}},
	})
}

func TestAudit(t *testing.T) {
	auditPolicy := "endpointSelector: {matchLabels: {app: user-service}}\nenforcementMode: Audit\ningress:\n- fromEndpoints: [{matchLabels: {app: auth-service}}]"
	runSemantic(t, []semanticCase{
		{name: "what only an audit policy would deny is forwarded as audited", policies: [][2]string{{"AccessPolicy/production/a", auditPolicy}}, checks: []check{
			{in, otherPod + " -> " + userSvc + " TCP/1", audit, "AccessPolicy/production/a", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/1", allow, "AccessPolicy/production/a", "", ""},
		}},
		{name: "an enforce deny beats an audit deny", policies: [][2]string{
			{"AccessPolicy/production/a", "endpointSelector: {matchLabels: {app: user-service}}\nenforcementMode: Audit\ningressDeny: [{fromEndpoints: [{matchLabels: {app: other}}]}]"},
			{"AccessPolicy/production/e", "endpointSelector: {matchLabels: {app: user-service}}\ningressDeny: [{fromEndpoints: [{matchLabels: {app: other}}]}]\nenableDefaultDeny: {ingress: false}"},
		}, checks: []check{
			{in, otherPod + " -> " + userSvc + " TCP/1", deny, "AccessPolicy/production/e", "", ""},
		}},
		{name: "an audit allow never opens what an enforce policy denies", policies: [][2]string{
			{"AccessPolicy/production/a", "endpointSelector: {matchLabels: {app: user-service}}\nenforcementMode: Audit\ningress: [{fromEndpoints: [{matchLabels: {app: other}}]}]"},
			{"AccessPolicy/production/e", userSvcPolicy},
		}, checks: []check{
			{in, otherPod + " -> " + userSvc + " TCP/1", deny, "AccessPolicy/production/e", "", ""},
			{in, authSvc + " -> " + userSvc + " TCP/1", allow, "AccessPolicy/production/e", "", ""},
		}},
		{name: "audit L7 rules audit requests the enforce policies let through", policies: [][2]string{
			{"AccessPolicy/production/a", "endpointSelector: {matchLabels: {app: user-service}}\nenforcementMode: Audit\ningress:\n- toPorts: [{ports: [{port: \"8080\", protocol: TCP}], rules: {http: [{method: GET}]}}]"},
		}, checks: []check{
			{in, otherPod + " -> " + userSvc + " TCP/8080 GET /", allow, "", "", ""},
			{in, otherPod + " -> " + userSvc + " TCP/8080 POST /", audit, "AccessPolicy/production/a", "", ""},
		}},
	})
}

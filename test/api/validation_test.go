package api_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/controlplane"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func ensureNamespace(t *testing.T, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Create(ctx(t), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

func decode(t *testing.T, manifest string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest), &u.Object); err != nil {
		t.Fatalf("manifest is not YAML: %v\n%s", err, manifest)
	}
	return u
}

func TestSeedPoliciesAreAccepted(t *testing.T) {
	needControlPlane(t)
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ensureNamespace(t, "production")
	files, err := filepath.Glob(filepath.Join(root, "examples", "seed", "0*.yaml"))
	if err != nil || len(files) < 5 {
		t.Fatalf("seed manifests: %v (found %d)", err, len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			u := decode(t, string(data))
			if err := k8s.Create(ctx(t), u); err != nil {
				t.Fatalf("API server rejected a seed policy: %v", err)
			}
			t.Cleanup(func() { _ = k8s.Delete(context.Background(), u) })

			// What the API server stored means what the file says: the spec read back equals the
			// file's spec once the server's one default (enforcementMode) is added.
			var want v1alpha1.AccessPolicy
			if err := yaml.UnmarshalStrict(data, &want); err != nil {
				t.Fatalf("seed manifest does not fit the Go types: %v", err)
			}
			want.Spec.EnforcementMode = v1alpha1.EnforcementModeEnforce
			var got v1alpha1.AccessPolicy
			if err := k8s.Get(ctx(t), client.ObjectKeyFromObject(u), &got); err != nil {
				t.Fatal(err)
			}
			wantJSON, _ := yaml.Marshal(want.Spec)
			gotJSON, _ := yaml.Marshal(got.Spec)
			if string(wantJSON) != string(gotJSON) {
				t.Errorf("stored spec differs from the manifest:\nwant:\n%s\ngot:\n%s", wantJSON, gotJSON)
			}
		})
	}
}

func TestEveryFieldManifestIsAccepted(t *testing.T) {
	needControlPlane(t)
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "examples", "reference", "every-field.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	u := decode(t, string(data))
	if err := k8s.Create(ctx(t), u); err != nil {
		t.Fatalf("API server rejected a manifest that uses every field: %v", err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), u) })
}

func TestEmptyAndOmittedPeerListsSurviveTheAPIServer(t *testing.T) {
	// fromEndpoints omitted and fromEndpoints: [] mean different things (every peer vs no peer), so the
	// distinction must survive storage.
	needControlPlane(t)
	ensureNamespace(t, "lists")
	p := decode(t, `
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: lists, namespace: lists}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEndpoints: []
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
`)
	if err := k8s.Create(ctx(t), p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), p) })
	var got v1alpha1.AccessPolicy
	if err := k8s.Get(ctx(t), client.ObjectKeyFromObject(p), &got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Ingress[0].FromEndpoints != nil {
		t.Errorf("omitted fromEndpoints came back as %#v, want nil", got.Spec.Ingress[0].FromEndpoints)
	}
	if fe := got.Spec.Ingress[1].FromEndpoints; fe == nil || len(fe) != 0 {
		t.Errorf("fromEndpoints: [] came back as %#v, want an empty non-nil list", fe)
	}
}

// invalid is a manifest a user could realistically write, and what the API server must say about it.
type invalid struct {
	name     string
	manifest string
	// field is the path the message must name.
	field string
	// says is a phrase the message must contain.
	says string
}

const apHeader = `apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: bad, namespace: invalid}
`

// ingressL7 builds an AccessPolicy with one ingress rule from auth-service with the given toPorts.
func ingressToPorts(toPorts string) string {
	return apHeader + `spec:
  endpointSelector: {matchLabels: {app: user-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: auth-service}}]
    toPorts:
` + toPorts
}

func egressRule(rule string) string {
	return apHeader + `spec:
  endpointSelector: {matchLabels: {app: payment-processor}}
  egress:
` + rule
}

var invalidManifests = []invalid{
	{
		name: "access policy without endpointSelector",
		manifest: apHeader + `spec:
  ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]
`,
		field: "spec.endpointSelector", says: "Required value",
	},
	{
		name: "cluster access policy without endpointSelector",
		manifest: `apiVersion: portcullis.dev/v1alpha1
kind: ClusterAccessPolicy
metadata: {name: bad-cluster}
spec:
  egress: [{toEntities: [world]}]
`,
		field: "spec.endpointSelector", says: "Required value",
	},
	{
		name: "policy with no rules at all",
		manifest: apHeader + `spec:
  endpointSelector: {matchLabels: {app: a}}
`,
		field: "spec", says: "at least one of ingress, ingressDeny, egress, egressDeny or enableDefaultDeny",
	},
	{
		name:     "port above 65535",
		manifest: ingressToPorts(`    - ports: [{port: "70000", protocol: TCP}]`),
		field:    "spec.ingress[0].toPorts[0].ports[0].port", says: "port must be a number from 0 to 65535",
	},
	{
		name:     "port name with upper case and underscore",
		manifest: ingressToPorts(`    - ports: [{port: "HTTP_PORT", protocol: TCP}]`),
		field:    "spec.ingress[0].toPorts[0].ports[0].port", says: "port name",
	},
	{
		name:     "port written as a YAML number, as Cilium also rejects",
		manifest: ingressToPorts(`    - ports: [{port: 8080, protocol: TCP}]`),
		field:    "spec.ingress[0].toPorts[0].ports[0].port", says: "must be of type string",
	},
	{
		name:     "endPort below port",
		manifest: ingressToPorts(`    - ports: [{port: "8080", endPort: 8000, protocol: TCP}]`),
		field:    "spec.ingress[0].toPorts[0].ports[0].endPort", says: "endPort must be greater than or equal to port",
	},
	{
		name:     "endPort with a named port",
		manifest: ingressToPorts(`    - ports: [{port: "http", endPort: 8000, protocol: TCP}]`),
		field:    "spec.ingress[0].toPorts[0].ports[0].endPort", says: "port must be a number when endPort is set",
	},
	{
		name:     "unknown protocol",
		manifest: ingressToPorts(`    - ports: [{port: "53", protocol: DNS}]`),
		field:    "spec.ingress[0].toPorts[0].ports[0].protocol", says: `supported values: "TCP", "UDP", "SCTP", "ANY"`,
	},
	{
		name: "HTTP rules on UDP",
		manifest: ingressToPorts(`    - ports: [{port: "8080", protocol: UDP}]
      rules: {http: [{method: GET}]}`),
		field: "spec.ingress[0].toPorts[0].rules.http", says: "needs protocol: TCP",
	},
	{
		name: "HTTP rules with the protocol left out (ANY)",
		manifest: ingressToPorts(`    - ports: [{port: "8080"}]
      rules: {http: [{method: GET}]}`),
		field: "spec.ingress[0].toPorts[0].rules.http", says: "needs protocol: TCP",
	},
	{
		name: "HTTP rules on port 0",
		manifest: ingressToPorts(`    - ports: [{port: "0", protocol: TCP}]
      rules: {http: [{path: /v1/users}]}`),
		field: "spec.ingress[0].toPorts[0].rules", says: "need a specific port",
	},
	{
		name: "DNS rules on ingress",
		manifest: ingressToPorts(`    - ports: [{port: "53", protocol: UDP}]
      rules: {dns: [{matchPattern: "*"}]}`),
		field: "spec.ingress[0]", says: "allowed only in egress rules",
	},
	{
		name: "DNS rules on a port range",
		manifest: egressRule(`  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", endPort: 54, protocol: UDP}]
      rules: {dns: [{matchPattern: "*"}]}`),
		field: "spec.egress[0].toPorts[0].rules.dns", says: "no endPort",
	},
	{
		name: "HTTP and DNS rules on the same ports",
		manifest: egressRule(`  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "53", protocol: TCP}]
      rules: {dns: [{matchName: a.example.com}], http: [{method: GET}]}`),
		field: "spec.egress[0].toPorts[0].rules", says: "not both",
	},
	{
		name: "toPorts entry without ports",
		manifest: ingressToPorts(`    - ports: []
      rules: {http: [{method: GET}]}`),
		field: "spec.ingress[0].toPorts[0].ports", says: "at least 1 items",
	},
	{
		name:     "FQDN with both matchName and matchPattern",
		manifest: egressRule(`  - toFQDNs: [{matchName: api.stripe.com, matchPattern: "*.stripe.com"}]`),
		field:    "spec.egress[0].toFQDNs[0]", says: "exactly one of matchName or matchPattern",
	},
	{
		name:     "FQDN with neither matchName nor matchPattern",
		manifest: egressRule(`  - toFQDNs: [{}]`),
		field:    "spec.egress[0].toFQDNs[0]", says: "exactly one of matchName or matchPattern",
	},
	{
		name:     "FQDN written as a URL",
		manifest: egressRule(`  - toFQDNs: [{matchName: "https://api.stripe.com/v1"}]`),
		field:    "spec.egress[0].toFQDNs[0].matchName", says: "should match",
	},
	{
		name: "header written with = instead of :",
		manifest: ingressToPorts(`    - ports: [{port: "9090", protocol: TCP}]
      rules: {http: [{path: /private/metrics, headers: ["X-Internal-Scraper=true"]}]}`),
		field: "spec.ingress[0].toPorts[0].rules.http[0].headers[0]", says: "should match",
	},
	{
		name: "header mismatch action that would rewrite the request",
		manifest: ingressToPorts(`    - ports: [{port: "9090", protocol: TCP}]
      rules: {http: [{headerMatches: [{name: X-Token, value: abc, mismatch: REPLACE}]}]}`),
		field: "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch", says: `supported values: "LOG"`,
	},
	{
		name:     "CIDR with a prefix length beyond 32",
		manifest: egressRule(`  - toCIDR: ["10.0.0.0/33"]`),
		field:    "spec.egress[0].toCIDR[0]", says: "must be an IP prefix in CIDR notation",
	},
	{
		name:     "bare IP address where a CIDR is expected",
		manifest: egressRule(`  - toCIDR: ["192.0.2.10"]`),
		field:    "spec.egress[0].toCIDR[0]", says: "must be an IP prefix in CIDR notation",
	},
	{
		name:     "except outside its cidr",
		manifest: egressRule(`  - toCIDRSet: [{cidr: 10.0.0.0/8, except: ["192.168.0.0/16"]}]`),
		field:    "spec.egress[0].toCIDRSet[0]", says: "every entry of except must lie inside cidr",
	},
	{
		name:     "unknown entity",
		manifest: egressRule(`  - toEntities: [internet]`),
		field:    "spec.egress[0].toEntities[0]", says: "supported values",
	},
	{
		name: "unknown enforcement mode",
		manifest: apHeader + `spec:
  endpointSelector: {}
  enforcementMode: DryRun
  ingress: [{}]
`,
		field: "spec.enforcementMode", says: `supported values: "Enforce", "Audit"`,
	},
	{
		name: "HTTP rule list beyond its limit",
		manifest: ingressToPorts(`    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [` + strings.Repeat(`{method: GET},`, 129) + `]}`),
		field: "spec.ingress[0].toPorts[0].rules.http", says: "must have at most 128 items",
	},
	{
		name: "description beyond its limit",
		manifest: apHeader + `spec:
  endpointSelector: {}
  description: "` + strings.Repeat("x", 1025) + `"
  ingress: [{}]
`,
		field: "spec.description", says: "may not be more than 1024 bytes",
	},
}

func TestInvalidManifestsAreRejectedWithAMessageNamingTheField(t *testing.T) {
	needControlPlane(t)
	ensureNamespace(t, "invalid")
	if len(invalidManifests) < 20 {
		t.Fatalf("the table has %d cases; it should cover at least 20 realistic mistakes", len(invalidManifests))
	}
	for _, tc := range invalidManifests {
		t.Run(tc.name, func(t *testing.T) {
			u := decode(t, tc.manifest)
			err := k8s.Create(ctx(t), u, client.DryRunAll)
			if err == nil {
				t.Fatalf("API server accepted:\n%s", tc.manifest)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want an Invalid error, got %v", err)
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.Contains(msg, tc.field) {
				t.Errorf("message does not name the field %q:\n%s", tc.field, msg)
			}
			if !strings.Contains(msg, tc.says) {
				t.Errorf("message does not say %q:\n%s", tc.says, msg)
			}
		})
	}
}

func TestStatusIsASubresourceWithPrinterColumns(t *testing.T) {
	// The operator writes status through the status subresource; a user's apply must not clobber it,
	// and kubectl shows Ready and Reason.
	needControlPlane(t)
	ensureNamespace(t, "status")
	p := &v1alpha1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "status"},
		Spec: v1alpha1.PolicySpec{
			EndpointSelector: &metav1.LabelSelector{},
			Ingress:          []v1alpha1.IngressRule{{}},
		},
	}
	if err := k8s.Create(ctx(t), p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), p) })
	p.Status.ObservedGeneration = p.Generation
	p.Status.Conditions = []metav1.Condition{{
		Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Enforced",
		Message: "enforced on 0 of 0 nodes", LastTransitionTime: metav1.Now(), ObservedGeneration: p.Generation,
	}}
	if err := k8s.Status().Update(ctx(t), p); err != nil {
		t.Fatalf("status update: %v", err)
	}
	// A spec update through the main resource leaves status alone.
	p.Spec.Description = "changed"
	if err := k8s.Update(ctx(t), p); err != nil {
		t.Fatal(err)
	}
	var got v1alpha1.AccessPolicy
	if err := k8s.Get(ctx(t), client.ObjectKeyFromObject(p), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Status.Conditions) != 1 || got.Status.Conditions[0].Reason != "Enforced" {
		t.Errorf("status after a spec update: %+v", got.Status)
	}
	if got.Generation != 2 {
		t.Errorf("generation after a spec change = %d, want 2", got.Generation)
	}
}

package compiler_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
)

// ruleSets returns the rule sets of a pod by name: its ingress and egress rule sets.
func ruleSets(t *testing.T, spec *v1alpha1.NodePolicySpec, ns, pod string) (in, eg *v1alpha1.RuleSet) {
	t.Helper()
	for _, ep := range spec.Endpoints {
		if ep.Namespace != ns || ep.Pod != pod {
			continue
		}
		for i := range spec.RuleSets {
			if spec.RuleSets[i].Name == ep.IngressRuleSet {
				in = &spec.RuleSets[i]
			}
			if spec.RuleSets[i].Name == ep.EgressRuleSet {
				eg = &spec.RuleSets[i]
			}
		}
		if in == nil || eg == nil {
			t.Fatalf("%s/%s names rule sets %q and %q, not both in the spec", ns, pod, ep.IngressRuleSet, ep.EgressRuleSet)
		}
		return in, eg
	}
	t.Fatalf("%s/%s is not in the NodePolicy of %s", ns, pod, spec.NodeName)
	return nil, nil
}

func TestRuleSetsAreSplitByDirectionWithShortOrigins(t *testing.T) {
	cl := standardCluster(t)
	cl.policy("AccessPolicy/production/in", userSvcPolicy)
	cl.policy("ClusterAccessPolicy/out", "endpointSelector: {matchLabels: {app: user-service}}\negress: [{toEndpoints: [{matchLabels: {app: auth-service}}]}]")
	spec := cl.c.NodePolicy("node-a")
	in, eg := ruleSets(t, spec, "production", "user-service-0")
	if !strings.HasPrefix(in.Name, "in-") || !strings.HasPrefix(eg.Name, "eg-") {
		t.Errorf("rule set names %q and %q do not say their direction", in.Name, eg.Name)
	}
	if !slices.Equal(in.EnforcedBy, []string{"ap/production/in"}) || !slices.Equal(in.Entries[0].Origins, []string{"ap/production/in"}) {
		t.Errorf("ingress origins %v %v, want the short kind ap/production/in", in.EnforcedBy, in.Entries[0].Origins)
	}
	if !slices.Equal(eg.EnforcedBy, []string{"cap/out"}) || !slices.Equal(eg.Entries[0].Origins, []string{"cap/out"}) {
		t.Errorf("egress origins %v %v, want the short kind cap/out", eg.EnforcedBy, eg.Entries[0].Origins)
	}
	// other-0 on the same node is selected by no policy: its rule sets are open, not user-service-0's.
	oin, oeg := ruleSets(t, spec, "production", "other-0")
	if oin.Enforced || oeg.Enforced || oin.Name == in.Name || oeg.Name == eg.Name {
		t.Errorf("other-0 got rule sets %+v and %+v", oin, oeg)
	}
}

func TestEgressChangeKeepsIngressRuleSets(t *testing.T) {
	cl := standardCluster(t)
	cl.policy("AccessPolicy/production/in", userSvcPolicy)
	cl.policy("ClusterAccessPolicy/out", "endpointSelector: {}\negress: [{toEndpoints: [{matchLabels: {app: auth-service}}]}]")
	before := cl.c.NodePolicy("node-a")
	in0, eg0 := ruleSets(t, before, "production", "user-service-0")
	cl.policy("ClusterAccessPolicy/out", "endpointSelector: {}\negress: [{toEndpoints: [{matchLabels: {app: other}}]}]")
	after := cl.c.NodePolicy("node-a")
	in1, eg1 := ruleSets(t, after, "production", "user-service-0")
	if in1.Name != in0.Name {
		t.Errorf("an egress-only change renamed the ingress rule set %s to %s", in0.Name, in1.Name)
	}
	if eg1.Name == eg0.Name {
		t.Errorf("the egress rule set %s did not change with its policy", eg0.Name)
	}
	if after.ContentHash == before.ContentHash {
		t.Errorf("the content hash did not change")
	}
}

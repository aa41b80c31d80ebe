package operator

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
)

func TestPolicyStatusFollowsKstatus(t *testing.T) {
	spec := &v1alpha1.PolicySpec{EndpointSelector: &metav1.LabelSelector{}, Ingress: []v1alpha1.IngressRule{{}}}
	bad := field.ErrorList{field.Invalid(field.NewPath("spec", "ingress").Index(0).Child("toPorts").Index(0).Child("rules", "http").Index(0).Child("path"), "/v1/(", "missing closing )")}
	cases := []struct {
		name          string
		invalid       field.ErrorList
		f             fanIn
		ready         metav1.ConditionStatus
		reason        string
		reconciling   bool
		stalled       bool
		keepsAccepted bool
		says          string
	}{
		{name: "accepted, no node enforces yet", f: fanIn{accepted: acceptedPolicy{3, spec}, hasAccepted: true, endpoints: 4, nodes: []string{"a", "b"}, enforcing: 1, waiting: "b"},
			ready: metav1.ConditionFalse, reason: ReasonRollingOut, reconciling: true, says: "enforced on 1 of 2 nodes; waiting for node b"},
		{name: "enforced everywhere", f: fanIn{accepted: acceptedPolicy{3, spec}, hasAccepted: true, endpoints: 4, nodes: []string{"a", "b"}, enforcing: 2},
			ready: metav1.ConditionTrue, reason: ReasonEnforced, says: "enforced on 2 nodes for 4 endpoints"},
		{name: "selects nothing", f: fanIn{accepted: acceptedPolicy{3, spec}, hasAccepted: true},
			ready: metav1.ConditionTrue, reason: ReasonNoEndpoints, says: "selects no endpoint"},
		{name: "invalid edit of an accepted policy", invalid: bad, f: fanIn{accepted: acceptedPolicy{2, spec}, hasAccepted: true, nodes: []string{"a"}, enforcing: 1},
			ready: metav1.ConditionFalse, reason: ReasonInvalidSpec, stalled: true, keepsAccepted: true, says: "spec.ingress[0].toPorts[0].rules.http[0].path"},
		{name: "invalid from the start", invalid: bad,
			ready: metav1.ConditionFalse, reason: ReasonInvalidSpec, stalled: true, says: "enforces nothing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &v1alpha1.AccessPolicy{ObjectMeta: metav1.ObjectMeta{Generation: 3}}
			// A Reconciling left from an earlier rollout must not survive a verdict.
			meta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReconciling, Status: metav1.ConditionTrue, Reason: ReasonRollingOut})
			setPolicyStatus(p, tc.invalid, tc.f)
			st := p.Status
			if st.ObservedGeneration != 3 {
				t.Errorf("observedGeneration = %d, want 3", st.ObservedGeneration)
			}
			ready := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady)
			if ready == nil || ready.Status != tc.ready || ready.Reason != tc.reason || ready.ObservedGeneration != 3 {
				t.Fatalf("Ready = %+v, want %s/%s", ready, tc.ready, tc.reason)
			}
			if !strings.Contains(ready.Message, tc.says) {
				t.Errorf("Ready message %q does not say %q", ready.Message, tc.says)
			}
			if got := meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionReconciling); got != tc.reconciling {
				t.Errorf("Reconciling = %v, want %v", got, tc.reconciling)
			}
			if got := meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionStalled); got != tc.stalled {
				t.Errorf("Stalled = %v, want %v", got, tc.stalled)
			}
			if got := st.AcceptedSpec != nil; got != tc.keepsAccepted {
				t.Errorf("acceptedSpec kept = %v, want %v", got, tc.keepsAccepted)
			}
			if tc.keepsAccepted {
				back, err := decodeAcceptedSpec(st.AcceptedSpec)
				if err != nil || back == nil || len(back.Ingress) != 1 {
					t.Errorf("acceptedSpec does not decode to the accepted spec: %v %+v", err, back)
				}
			}
		})
	}
}

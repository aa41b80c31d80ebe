package operator

import (
	"encoding/json"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
)

// Reasons of the policy conditions.
const (
	// ReasonInvalidSpec: the current generation failed validation; the last accepted one stays in force.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonRuleMatchesNothing: the reason of a Warning event for an accepted generation with an
	// HTTP rule that can match no request (policy.Warnings); the policy is enforced as written.
	ReasonRuleMatchesNothing = "RuleMatchesNothing"
	// ReasonRollingOut: accepted, not yet enforced by every node that needs it.
	ReasonRollingOut = "RollingOut"
	// ReasonEnforced: every node that needs the policy enforces the current generation.
	ReasonEnforced = "Enforced"
	// ReasonNoEndpoints: the policy selects no endpoint; there is nothing to enforce.
	ReasonNoEndpoints = "NoEndpoints"
)

// setPolicyStatus writes the kstatus conditions and counters of a policy from the outcome of one
// reconcile. observedGeneration follows the generation that was evaluated, also when it was found
// invalid, so that tools that read kstatus see Stalled as the verdict on the current generation
// (Flux fails a rollout at once on it) rather than as a stale leftover.
func setPolicyStatus(obj policyObject, invalid field.ErrorList, f fanIn) {
	st := obj.PolicyStatus()
	gen := obj.GetGeneration()
	st.ObservedGeneration = gen
	st.SelectedEndpoints = int32(f.endpoints)
	st.NodesDesired = int32(len(f.nodes))
	st.NodesEnforcing = int32(f.enforcing)
	if f.hasAccepted {
		st.AcceptedGeneration = f.accepted.generation
	}
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}

	if len(invalid) > 0 {
		msg := invalidMessage(invalid)
		if f.hasAccepted {
			msg += fmt.Sprintf("; generation %d stays in force", f.accepted.generation)
			st.AcceptedSpec = encodeSpec(f.accepted.spec)
		} else {
			msg += "; no earlier generation was accepted, so this policy enforces nothing"
			st.AcceptedSpec = nil
		}
		set(v1alpha1.ConditionStalled, metav1.ConditionTrue, ReasonInvalidSpec, msg)
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, ReasonInvalidSpec, msg)
		meta.RemoveStatusCondition(&st.Conditions, v1alpha1.ConditionReconciling)
		return
	}
	st.AcceptedSpec = nil
	meta.RemoveStatusCondition(&st.Conditions, v1alpha1.ConditionStalled)
	switch {
	case len(f.nodes) == 0:
		meta.RemoveStatusCondition(&st.Conditions, v1alpha1.ConditionReconciling)
		set(v1alpha1.ConditionReady, metav1.ConditionTrue, ReasonNoEndpoints, "the policy selects no endpoint")
	case f.enforcing < len(f.nodes):
		msg := fmt.Sprintf("enforced on %d of %d nodes; waiting for node %s", f.enforcing, len(f.nodes), f.waiting)
		set(v1alpha1.ConditionReconciling, metav1.ConditionTrue, ReasonRollingOut, msg)
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, ReasonRollingOut, msg)
	default:
		meta.RemoveStatusCondition(&st.Conditions, v1alpha1.ConditionReconciling)
		set(v1alpha1.ConditionReady, metav1.ConditionTrue, ReasonEnforced,
			fmt.Sprintf("generation %d enforced on %d nodes for %d endpoints", gen, len(f.nodes), f.endpoints))
	}
}

func invalidMessage(errs field.ErrorList) string {
	parts := make([]string, 0, len(errs))
	for _, e := range errs {
		parts = append(parts, e.Error())
	}
	msg := strings.Join(parts, "; ")
	if len(msg) > 30000 {
		msg = msg[:30000] + "..."
	}
	return msg
}

func encodeSpec(spec *v1alpha1.PolicySpec) *runtime.RawExtension {
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil
	}
	return &runtime.RawExtension{Raw: raw}
}

// equalStatus ignores condition transition times that SetStatusCondition keeps stable anyway.
func equalStatus(a, b *v1alpha1.PolicyStatus) bool {
	return equality.Semantic.DeepEqual(a, b)
}

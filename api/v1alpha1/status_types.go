package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Condition types used on every Portcullis kind. They follow kstatus, so that kubectl wait, Argo CD and
// Flux read them without custom code: Ready is the summary, Reconciling and Stalled are abnormal-true.
const (
	// ConditionReady is True when the current generation is in force everywhere it needs to be.
	ConditionReady = "Ready"
	// ConditionReconciling is True while the current generation is being rolled out.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True when the current generation cannot be rolled out without a change to it.
	ConditionStalled = "Stalled"
	// ConditionDegraded is True on a NodePolicy whose agent could not converge part of the kernel state.
	ConditionDegraded = "Degraded"
)

// PolicyStatus is the observed state of an AccessPolicy or a ClusterAccessPolicy.
type PolicyStatus struct {
	// ObservedGeneration is the generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions are Ready, Reconciling and Stalled.
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +kubebuilder:validation:MaxItems=8
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// SelectedEndpoints is the number of pods the policy selects.
	// +optional
	SelectedEndpoints int32 `json:"selectedEndpoints,omitempty"`

	// NodesDesired is the number of nodes that run pods the policy selects.
	// +optional
	NodesDesired int32 `json:"nodesDesired,omitempty"`

	// NodesEnforcing is the number of those nodes whose agent enforces the current generation.
	// +optional
	NodesEnforcing int32 `json:"nodesEnforcing,omitempty"`

	// AcceptedGeneration is the last generation that passed validation; its rules are the ones compiled.
	// +optional
	AcceptedGeneration int64 `json:"acceptedGeneration,omitempty"`

	// AcceptedSpec is the spec of acceptedGeneration, kept only while the current generation is invalid
	// (Stalled): the last good rules stay in force, also across operator restarts, until the policy is
	// fixed or deleted.
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Type=object
	// +optional
	AcceptedSpec *runtime.RawExtension `json:"acceptedSpec,omitempty"`
}

// PolicyReference names one generation of a policy.
type PolicyReference struct {
	// Kind is AccessPolicy, ClusterAccessPolicy or NetworkPolicy.
	// +kubebuilder:validation:Enum=AccessPolicy;ClusterAccessPolicy;NetworkPolicy
	// +required
	Kind string `json:"kind"`

	// Namespace of the policy; empty for a ClusterAccessPolicy.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Namespace string `json:"namespace,omitempty"`

	// Name of the policy.
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`

	// Generation of the policy that was compiled.
	// +optional
	Generation int64 `json:"generation,omitempty"`
}

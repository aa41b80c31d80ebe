package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// SecurityIdentity is the number the operator gave to one distinct set of security-relevant labels
// (namespace, pod labels, namespace labels). Its name is the number. It is a system object, written by
// the operator and read by the agents; never author it in Git.
//
// The label set is kept in spec, never copied into metadata.labels: copying pod labels (Argo CD's
// tracking label among them) into the object's own metadata makes GitOps tools claim it and show it as
// out of sync forever.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=sid,categories=portcullis
// +kubebuilder:printcolumn:name="Namespace",type=string,JSONPath=`.spec.namespace`
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=`.status.endpoints`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SecurityIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the label set this identity stands for.
	// +required
	Spec SecurityIdentitySpec `json:"spec"`

	// Status is written by the operator.
	// +optional
	Status SecurityIdentityStatus `json:"status,omitzero"`
}

// SecurityIdentitySpec is the label set of an identity. It never changes after creation.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="the label set of an identity cannot change"
type SecurityIdentitySpec struct {
	// Namespace of the pods with this identity.
	// +kubebuilder:validation:MaxLength=63
	// +required
	Namespace string `json:"namespace"`

	// Labels is the sorted label set, each "source:key=value" (k8s:app=web,
	// k8s:io.kubernetes.pod.namespace=prod, k8s:io.cilium.k8s.namespace.labels.team=a).
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	// +optional
	Labels []string `json:"labels,omitempty"`
}

// SecurityIdentityStatus says whether the identity is in use.
type SecurityIdentityStatus struct {
	// Endpoints is the number of pods that have this identity.
	// +optional
	Endpoints int32 `json:"endpoints,omitempty"`

	// UnusedSince is when the last pod with this identity went away; the identity is deleted some time
	// after it, unless a pod takes it again.
	// +optional
	UnusedSince *metav1.Time `json:"unusedSince,omitempty"`
}

// SecurityIdentityList is a list of SecurityIdentity.
//
// +kubebuilder:object:root=true
type SecurityIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SecurityIdentity `json:"items"`
}

// IPCacheShard is one bounded part of the cluster's IP address → security identity map, like an
// EndpointSlice: the operator keeps each shard at most MaxIPCacheShardEntries entries, so that no
// object grows without bound. Agents read every shard.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ipc,categories=portcullis
// +kubebuilder:printcolumn:name="Entries",type=integer,JSONPath=`.spec.count`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type IPCacheShard struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec holds the entries of this shard.
	// +required
	Spec IPCacheShardSpec `json:"spec"`
}

// MaxIPCacheShardEntries bounds the entries of one IPCacheShard.
const MaxIPCacheShardEntries = 1000

// IPCacheShardSpec is a bounded list of address → identity entries.
type IPCacheShardSpec struct {
	// Count is the number of entries, for kubectl.
	// +optional
	Count int32 `json:"count,omitempty"`

	// Entries map addresses to identities, sorted by address.
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=1000
	// +optional
	Entries []IPCacheEntry `json:"entries,omitempty"`
}

// IPCacheEntry maps one address to a security identity.
type IPCacheEntry struct {
	// IP is the address (a pod's, or a node's).
	// +kubebuilder:validation:MaxLength=45
	// +required
	IP string `json:"ip"`

	// Identity is the security identity of the address.
	// +required
	Identity uint32 `json:"identity"`

	// Node is the node the address lives on.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Node string `json:"node,omitempty"`

	// Pod is "namespace/name" of the pod with this address (empty for a node address), so that
	// agents can name both ends of a flow.
	// +kubebuilder:validation:MaxLength=317
	// +optional
	Pod string `json:"pod,omitempty"`
}

// IPCacheShardList is a list of IPCacheShard.
//
// +kubebuilder:object:root=true
type IPCacheShardList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPCacheShard `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SecurityIdentity{}, &SecurityIdentityList{}, &IPCacheShard{}, &IPCacheShardList{})
}

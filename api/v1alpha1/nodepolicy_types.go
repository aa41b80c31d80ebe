package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// NodePolicy is the compiled policy for the endpoints of one node, named after the node. The operator
// writes its spec; the node's agent converges the kernel to it and writes its status. It is a system
// object: never author it in Git.
//
// The spec is normalized and human-readable (identities, port ranges, L7 rules as normalized strings),
// holds no list of peer addresses (those are in the IP-cache objects), and changes only when the
// compiled content changes.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=npol,categories=portcullis
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=`.status.endpoints`
// +kubebuilder:printcolumn:name="Entries",type=integer,JSONPath=`.status.entries`
// +kubebuilder:printcolumn:name="Repairs",type=integer,JSONPath=`.status.driftRepairs`,description="Kernel state repaired by the agent since it started"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NodePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the compiled policy, written by the operator.
	// +optional
	Spec NodePolicySpec `json:"spec,omitzero"`

	// Status is written by the node's agent.
	// +optional
	Status NodePolicyStatus `json:"status,omitzero"`
}

// NodePolicySpec is the compiled policy of one node.
type NodePolicySpec struct {
	// NodeName is the node this policy is for.
	// +kubebuilder:validation:MaxLength=253
	// +required
	NodeName string `json:"nodeName"`

	// ContentHash is a hash of the rest of the spec; the operator writes only when it changes.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	ContentHash string `json:"contentHash,omitempty"`

	// Policies are the policy generations compiled into this spec.
	// +listType=atomic
	// +optional
	Policies []PolicyReference `json:"policies,omitempty"`

	// Endpoints are the node's local pods and the rule sets that apply to each.
	// +listType=atomic
	// +optional
	Endpoints []NodeEndpoint `json:"endpoints,omitempty"`

	// RuleSets are the distinct compiled rule sets, each of one direction; endpoints share them by
	// name (endpoints with the same security identity share both of theirs).
	// +listType=atomic
	// +optional
	RuleSets []RuleSet `json:"ruleSets,omitempty"`

	// PeerGroups are the identity sets that entries name as "group:NAME": one per distinct peer
	// selector (scoped to its namespace), shared by every entry and rule set that uses it.
	// +listType=atomic
	// +optional
	PeerGroups []PeerGroup `json:"peerGroups,omitempty"`
}

// PeerGroup is the set of security identities a peer selector matches.
type PeerGroup struct {
	// Name identifies the group within the NodePolicy; entries refer to it as "group:NAME".
	// +kubebuilder:validation:MaxLength=63
	// +required
	Name string `json:"name"`

	// Selector is the canonical text of the label selector, with the namespace scope the policy
	// gave it, for example "app=web,io.kubernetes.pod.namespace=prod".
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Selector string `json:"selector,omitempty"`

	// Identities are the security identities the selector matches now, sorted.
	// +listType=atomic
	// +optional
	Identities []uint32 `json:"identities,omitempty"`
}

// NodeEndpoint is a local pod whose traffic the agent enforces.
type NodeEndpoint struct {
	// Namespace of the pod.
	// +required
	Namespace string `json:"namespace"`

	// Pod is the name of the pod.
	// +required
	Pod string `json:"pod"`

	// IPs are the pod's addresses.
	// +listType=atomic
	// +optional
	IPs []string `json:"ips,omitempty"`

	// Identity is the pod's security identity.
	// +required
	Identity uint32 `json:"identity"`

	// IngressRuleSet names the entry of ruleSets that decides traffic into this pod.
	// +kubebuilder:validation:MaxLength=63
	// +required
	IngressRuleSet string `json:"ingressRuleSet"`

	// EgressRuleSet names the entry of ruleSets that decides traffic out of this pod.
	// +kubebuilder:validation:MaxLength=63
	// +required
	EgressRuleSet string `json:"egressRuleSet"`
}

// RuleSet is the compiled policy of one direction, shared by every endpoint of the node whose
// identity is selected by the same policies in that direction. The compiler names ingress rule sets
// "in-HASH" and egress rule sets "eg-HASH"; "identity-pending" (default-deny, no entries) serves both
// directions of an endpoint whose identity is not known yet.
type RuleSet struct {
	// Name identifies the rule set within the NodePolicy.
	// +kubebuilder:validation:MaxLength=63
	// +required
	Name string `json:"name"`

	// DirectionPolicy is the compiled policy of the direction the rule set is used for.
	DirectionPolicy `json:",inline"`
}

// DirectionPolicy is the compiled policy of one direction.
type DirectionPolicy struct {
	// Enforced is true when the direction is in default-deny: only what an entry allows passes.
	// +optional
	Enforced bool `json:"enforced,omitempty"`

	// EnforcedBy are the Enforce-mode policies that put the direction in default-deny, named as in
	// PolicyEntry.Origins. When this list is empty and AuditEnforcedBy is not, only Audit-mode
	// policies enable default-deny: what they alone would drop is forwarded and reported as
	// audited. Enforced with both lists empty is a default-deny of the compiler's own (an endpoint
	// whose identity is not known yet).
	// +listType=atomic
	// +optional
	EnforcedBy []string `json:"enforcedBy,omitempty"`

	// AuditEnforcedBy are the Audit-mode policies that enable default-deny for the direction, named
	// as in PolicyEntry.Origins.
	// +listType=atomic
	// +optional
	AuditEnforcedBy []string `json:"auditEnforcedBy,omitempty"`

	// Entries are keyed by peer, protocol and port range; deny wins over allow.
	// +listType=atomic
	// +optional
	Entries []PolicyEntry `json:"entries,omitempty"`
}

// PolicyEntry is one compiled decision.
type PolicyEntry struct {
	// Peer is "group:NAME" (an entry of peerGroups), "identity:N", "cidr:PREFIX" (addresses outside
	// the cluster only), "entity:NAME", "fqdn:NAME" (a normalized DNS name or pattern) or "any".
	// +required
	Peer string `json:"peer"`

	// Protocol is TCP, UDP, SCTP or ANY.
	// +required
	Protocol string `json:"protocol"`

	// Ports is a single port, a range "LOW-HIGH", or "*" for every port.
	// +required
	Ports string `json:"ports"`

	// Action is Allow or Deny.
	// +kubebuilder:validation:Enum=Allow;Deny
	// +required
	Action string `json:"action"`

	// Audit is true when every policy behind this entry is in Audit mode.
	// +optional
	Audit bool `json:"audit,omitempty"`

	// HTTP lists the normalized HTTP rules that further restrict an Allow; empty means L4 only. A
	// request is allowed when it matches one of them. Each is written as key="value" tokens
	// (method, path, host, header, logHeader), for example
	// method="GET" path="/v1/invoices/[0-9]+"; "any" matches every request.
	// +listType=atomic
	// +optional
	HTTP []string `json:"http,omitempty"`

	// DNS lists the normalized DNS names and patterns (lower case, trailing dot, * within a label)
	// the endpoint may look up through this entry; empty means no DNS filtering.
	// +listType=atomic
	// +optional
	DNS []string `json:"dns,omitempty"`

	// Origins are the policies that produced this entry, sorted, each as its kubectl short kind and
	// name: "ap/NAMESPACE/NAME" (AccessPolicy), "cap/NAME" (ClusterAccessPolicy) or
	// "netpol/NAMESPACE/NAME" (NetworkPolicy).
	// +listType=atomic
	// +optional
	Origins []string `json:"origins,omitempty"`
}

// NodePolicyStatus is written by the node's agent.
type NodePolicyStatus struct {
	// ObservedGeneration is the generation of the spec the agent last converged to.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions are Ready (kernel converged), Reconciling, Stalled and Degraded.
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +kubebuilder:validation:MaxItems=8
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// EnforcedPolicies are the policy generations the kernel enforces now.
	// +listType=atomic
	// +optional
	EnforcedPolicies []PolicyReference `json:"enforcedPolicies,omitempty"`

	// Endpoints is the number of local endpoints with programs attached.
	// +optional
	Endpoints int32 `json:"endpoints,omitempty"`

	// Entries is the number of policy map entries in the kernel.
	// +optional
	Entries int32 `json:"entries,omitempty"`

	// DriftRepairs counts kernel state the agent found changed behind its back and repaired.
	// +optional
	DriftRepairs int64 `json:"driftRepairs,omitempty"`

	// LastDriftRepair says when and what the agent last repaired.
	// +optional
	LastDriftRepair *DriftRepair `json:"lastDriftRepair,omitempty"`
}

// DriftRepair describes one repair of kernel state.
type DriftRepair struct {
	// Time of the repair.
	// +required
	Time metav1.Time `json:"time"`

	// What was repaired, for example "map policy: 3 entries restored".
	// +required
	What string `json:"what"`
}

// NodePolicyList is a list of NodePolicy.
//
// +kubebuilder:object:root=true
type NodePolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodePolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&NodePolicy{}, &NodePolicyList{})
}

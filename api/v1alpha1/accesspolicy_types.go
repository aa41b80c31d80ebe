package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// AccessPolicy is a namespaced network policy: it selects pods of its own namespace and says which
// peers, ports and HTTP requests they may receive (ingress) and send (egress). Its spec is
// CiliumNetworkPolicy's, so a Cilium manifest moves here by changing apiVersion and kind.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ap,categories=portcullis
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.enforcementMode`
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=`.status.selectedEndpoints`
// +kubebuilder:printcolumn:name="Enforcing",type=integer,JSONPath=`.status.nodesEnforcing`,description="Nodes enforcing the current generation"
// +kubebuilder:printcolumn:name="Nodes",type=integer,JSONPath=`.status.nodesDesired`,description="Nodes with selected endpoints"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AccessPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the policy as authored.
	// +required
	Spec PolicySpec `json:"spec"`

	// Status is written by the operator.
	// +optional
	Status PolicyStatus `json:"status,omitzero"`
}

// AccessPolicyList is a list of AccessPolicy.
//
// +kubebuilder:object:root=true
type AccessPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AccessPolicy `json:"items"`
}

// ClusterAccessPolicy is a cluster-scoped network policy: its endpointSelector and its peer selectors
// match pods of every namespace. Its spec is CiliumClusterwideNetworkPolicy's.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cap,categories=portcullis
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.enforcementMode`
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=`.status.selectedEndpoints`
// +kubebuilder:printcolumn:name="Enforcing",type=integer,JSONPath=`.status.nodesEnforcing`,description="Nodes enforcing the current generation"
// +kubebuilder:printcolumn:name="Nodes",type=integer,JSONPath=`.status.nodesDesired`,description="Nodes with selected endpoints"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ClusterAccessPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the policy as authored.
	// +required
	Spec PolicySpec `json:"spec"`

	// Status is written by the operator.
	// +optional
	Status PolicyStatus `json:"status,omitzero"`
}

// ClusterAccessPolicyList is a list of ClusterAccessPolicy.
//
// +kubebuilder:object:root=true
type ClusterAccessPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ClusterAccessPolicy `json:"items"`
}

// PolicySpec returns the spec; it lets code handle both policy kinds alike.
func (p *AccessPolicy) PolicySpec() *PolicySpec { return &p.Spec }

// PolicyStatus returns the status; it lets code handle both policy kinds alike.
func (p *AccessPolicy) PolicyStatus() *PolicyStatus { return &p.Status }

// PolicySpec returns the spec; it lets code handle both policy kinds alike.
func (p *ClusterAccessPolicy) PolicySpec() *PolicySpec { return &p.Spec }

// PolicyStatus returns the status; it lets code handle both policy kinds alike.
func (p *ClusterAccessPolicy) PolicyStatus() *PolicyStatus { return &p.Status }

func init() {
	SchemeBuilder.Register(&AccessPolicy{}, &AccessPolicyList{}, &ClusterAccessPolicy{}, &ClusterAccessPolicyList{})
}

// Package operator holds the cluster-level reconcilers of portcullis-operator: they validate and
// compile policies into one NodePolicy per node and fan node status back into each policy.
package operator

// The operator's permissions, generated into config/rbac/operator by `make manifests`.
//
// +kubebuilder:rbac:groups=portcullis.dev,resources=accesspolicies;clusteraccesspolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=portcullis.dev,resources=accesspolicies/status;clusteraccesspolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=portcullis.dev,resources=nodepolicies;securityidentities;ipcacheshards,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=portcullis.dev,resources=securityidentities/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=portcullis.dev,resources=nodepolicies/status,verbs=get
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods;namespaces;nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete

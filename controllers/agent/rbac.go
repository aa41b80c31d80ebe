// Package agent holds the node-level reconcilers of portcullis-agent: they converge the kernel to the
// node's NodePolicy and report what is enforced in its status.
package agent

// The agent's permissions, generated into config/rbac/agent by `make manifests`. The agent reads only
// its own node's objects; it selects them with field selectors, which RBAC cannot express.
//
// +kubebuilder:rbac:groups=portcullis.dev,resources=nodepolicies;securityidentities;ipcacheshards,verbs=get;list;watch
// +kubebuilder:rbac:groups=portcullis.dev,resources=nodepolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Package compiler compiles AccessPolicy and ClusterAccessPolicy specs, security identities and
// endpoints into one NodePolicySpec per node. It is pure Go, with no Kubernetes client, so the
// operator and the offline CLI share it.
//
// The compiler is incremental: it keeps the selector → identity sets, the per-policy rule
// templates and their compiled contributions to each direction, and the compiled rule sets of each
// direction (cached per set of policies that contribute to that direction), so that a change
// recompiles only the rule sets and the nodes it touches: a policy with egress rules only never
// recompiles an ingress rule set. DirtyNodes says which nodes to publish.
//
// Semantics follow CiliumNetworkPolicy: default-deny per direction when a selecting policy has a
// rule in that direction (unless enableDefaultDeny says otherwise), deny wins over allow, an
// L4-only allow on a peer and port wins over L7 rules on the same peer and port, L7 rules of one
// peer and port are OR-ed, CIDR peers match only addresses outside the cluster.
package compiler

import (
	"net/netip"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/identity"
)

// Options configures a Compiler. The zero value is ready to use.
type Options struct{}

// Policy is one AccessPolicy or ClusterAccessPolicy to compile.
type Policy struct {
	// Ref names the policy and the generation of Spec. Ref.Kind is AccessPolicy or
	// ClusterAccessPolicy; Ref.Namespace is set for an AccessPolicy only.
	Ref v1alpha1.PolicyReference
	// Spec is the policy as authored.
	Spec *v1alpha1.PolicySpec
}

// NamedPort is a container port that has a name.
type NamedPort struct {
	// Port is the port number.
	Port uint16
	// Protocol is TCP, UDP or SCTP; empty means TCP, as in a Pod spec.
	Protocol string
}

// Endpoint is a pod the compiler places on a node.
type Endpoint struct {
	// Namespace of the pod.
	Namespace string
	// Name of the pod.
	Name string
	// Node the pod runs on.
	Node string
	// IPs are the pod's addresses.
	IPs []netip.Addr
	// Identity is the pod's security identity (see SetIdentity).
	Identity identity.ID
	// NamedPorts are the pod's named container ports, by name.
	NamedPorts map[string]NamedPort
}

// PendingRuleSet is the name of the rule set of both directions of an endpoint whose identity is not
// known yet (no SetIdentity for it). It denies everything: an endpoint is never left open because
// its labels are not resolved.
const PendingRuleSet = "identity-pending"

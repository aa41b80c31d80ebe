package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The rule types below use the field names and the meaning of CiliumNetworkPolicy's spec
// (cilium.io/v2), so that a Cilium manifest moves to Portcullis by changing apiVersion and kind only.
// Where Portcullis supports less than Cilium, the API server rejects the manifest with a message that
// says so, rather than accepting a field and ignoring it.

// PolicySpec is the specification shared by AccessPolicy and ClusterAccessPolicy.
//
// An endpoint selected by endpointSelector is put in default-deny for a direction as soon as any policy
// selecting it has a rule in that direction (ingress or ingressDeny; egress or egressDeny), unless
// enableDefaultDeny says otherwise. Deny rules win over allow rules. Rules of all policies that select an
// endpoint are combined.
//
// +kubebuilder:validation:XValidation:rule="has(self.ingress) || has(self.ingressDeny) || has(self.egress) || has(self.egressDeny) || has(self.enableDefaultDeny)",message="spec must contain at least one of ingress, ingressDeny, egress, egressDeny or enableDefaultDeny"
type PolicySpec struct {
	// Description is free text for the people who read the policy. It has no effect on enforcement.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Description string `json:"description,omitempty"`

	// EndpointSelector selects the pods this policy applies to. In an AccessPolicy it selects pods of
	// the policy's own namespace only; in a ClusterAccessPolicy it selects pods of every namespace, and
	// the label io.kubernetes.pod.namespace (or k8s:io.kubernetes.pod.namespace) narrows it to one
	// namespace. An empty selector ({}) selects every pod in scope.
	// +required
	EndpointSelector *metav1.LabelSelector `json:"endpointSelector,omitempty"`

	// Ingress is a list of rules that allow traffic into the selected endpoints. A connection is allowed
	// when at least one rule allows it and no deny rule denies it.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	Ingress []IngressRule `json:"ingress,omitzero"`

	// IngressDeny is a list of rules that deny traffic into the selected endpoints. A deny always wins
	// over an allow, whichever policy the allow comes from.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	IngressDeny []IngressDenyRule `json:"ingressDeny,omitzero"`

	// Egress is a list of rules that allow traffic out of the selected endpoints.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	Egress []EgressRule `json:"egress,omitzero"`

	// EgressDeny is a list of rules that deny traffic out of the selected endpoints. A deny always wins
	// over an allow.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	EgressDeny []EgressDenyRule `json:"egressDeny,omitzero"`

	// EnableDefaultDeny says whether this policy puts the selected endpoints in default-deny for each
	// direction. When a direction is omitted, the default applies: default-deny is enabled for a
	// direction in which this policy has at least one rule. Setting it to false lets a policy add allow
	// or deny rules without turning everything else in that direction into a drop, as in Cilium.
	// +optional
	EnableDefaultDeny *DefaultDenyConfig `json:"enableDefaultDeny,omitempty"`

	// EnforcementMode is Enforce (the default: denied traffic is dropped) or Audit (traffic this policy
	// would deny is forwarded, counted and reported as an audited flow). Audit is per policy: a
	// connection is dropped if any enforcing policy denies it.
	// +kubebuilder:default=Enforce
	// +optional
	EnforcementMode EnforcementMode `json:"enforcementMode,omitempty"`
}

// EnforcementMode says whether a policy drops what it denies or only reports it.
// +kubebuilder:validation:Enum=Enforce;Audit
type EnforcementMode string

const (
	// EnforcementModeEnforce drops denied traffic.
	EnforcementModeEnforce EnforcementMode = "Enforce"
	// EnforcementModeAudit forwards denied traffic and reports it as audited.
	EnforcementModeAudit EnforcementMode = "Audit"
)

// DefaultDenyConfig says, per direction, whether a policy enables default-deny on its endpoints.
type DefaultDenyConfig struct {
	// Ingress enables (true) or leaves alone (false) default-deny for traffic into the selected
	// endpoints. Omitted: enabled when the policy has ingress or ingressDeny rules.
	// +optional
	Ingress *bool `json:"ingress,omitempty"`

	// Egress enables (true) or leaves alone (false) default-deny for traffic out of the selected
	// endpoints. Omitted: enabled when the policy has egress or egressDeny rules.
	// +optional
	Egress *bool `json:"egress,omitempty"`
}

// IngressCommonRule names the peers a rule applies to on ingress. When several peer fields are set,
// the rule applies to the union of the peers they select. A rule with no peer field at all applies to
// every peer.
type IngressCommonRule struct {
	// FromEndpoints selects peer pods by label. Each entry is a label selector; a peer matches when any
	// entry selects it. In an AccessPolicy a selector matches pods of the policy's namespace only,
	// unless it names a namespace with the label io.kubernetes.pod.namespace (or
	// k8s:io.kubernetes.pod.namespace); namespace labels are matched with the prefix
	// io.cilium.k8s.namespace.labels. As in Cilium, omitting the field (nil) selects no one by itself
	// but lets toPorts apply to every peer when no other peer field is set, an empty list ([]) selects
	// no one, and a list with one empty selector ([{}]) selects every pod in scope.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	FromEndpoints []metav1.LabelSelector `json:"fromEndpoints,omitzero"`

	// FromCIDR is a list of IP prefixes peers may come from. CIDR rules match only addresses outside
	// the cluster (not pods and not nodes): use fromEndpoints or fromEntities for those.
	// +kubebuilder:validation:MaxItems=256
	// +optional
	FromCIDR []CIDR `json:"fromCIDR,omitzero"`

	// FromCIDRSet is a list of IP prefixes, each with optional exceptions, peers may come from. Like
	// fromCIDR it matches only addresses outside the cluster.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	FromCIDRSet []CIDRRule `json:"fromCIDRSet,omitzero"`

	// FromEntities is a list of special peers: world (outside the cluster), cluster (every pod and node
	// of the cluster), host (the local node), remote-node (other nodes), kube-apiserver, unmanaged
	// (pods Portcullis does not manage), init, health, ingress, all (everything) and none.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	FromEntities []Entity `json:"fromEntities,omitzero"`
}

// IngressRule allows traffic from the peers it names, optionally only to some ports and, for HTTP,
// only for some requests.
// +kubebuilder:validation:XValidation:rule="!has(self.toPorts) || self.toPorts.all(p, !has(p.rules) || !has(p.rules.dns))",message="toPorts[].rules.dns is allowed only in egress rules: DNS rules describe the lookups an endpoint may make"
type IngressRule struct {
	IngressCommonRule `json:",inline"`

	// ToPorts restricts the rule to these destination ports (and, with rules.http, to these HTTP
	// requests). Omitted: all ports and protocols.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	ToPorts []PortRule `json:"toPorts,omitzero"`
}

// IngressDenyRule denies traffic from the peers it names, optionally only to some ports. Deny rules are
// L3/L4 only.
type IngressDenyRule struct {
	IngressCommonRule `json:",inline"`

	// ToPorts restricts the deny to these destination ports. Omitted: all ports and protocols.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	ToPorts []PortDenyRule `json:"toPorts,omitzero"`
}

// EgressCommonRule names the peers a rule applies to on egress. When several peer fields are set, the
// rule applies to the union of the peers they select. A rule with no peer field at all applies to
// every peer.
type EgressCommonRule struct {
	// ToEndpoints selects peer pods by label, with the same namespace scoping and the same nil / empty
	// list semantics as fromEndpoints.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	ToEndpoints []metav1.LabelSelector `json:"toEndpoints,omitzero"`

	// ToCIDR is a list of IP prefixes the endpoint may connect to. CIDR rules match only addresses
	// outside the cluster.
	// +kubebuilder:validation:MaxItems=256
	// +optional
	ToCIDR []CIDR `json:"toCIDR,omitzero"`

	// ToCIDRSet is a list of IP prefixes, each with optional exceptions, the endpoint may connect to.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	ToCIDRSet []CIDRRule `json:"toCIDRSet,omitzero"`

	// ToEntities is a list of special peers, as in fromEntities.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	ToEntities []Entity `json:"toEntities,omitzero"`
}

// EgressRule allows traffic to the peers it names, optionally only to some ports and, for HTTP, only
// for some requests.
type EgressRule struct {
	EgressCommonRule `json:",inline"`

	// ToPorts restricts the rule to these destination ports (and, with rules, to these HTTP requests or
	// DNS lookups). Omitted: all ports and protocols.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	ToPorts []PortRule `json:"toPorts,omitzero"`

	// ToFQDNs allows connections to the addresses that DNS names resolve to, as seen in the endpoint's
	// own DNS answers. The endpoint's lookups must themselves be allowed (an egress rule with
	// rules.dns to the cluster's DNS server) for the addresses to be learnt.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	ToFQDNs []FQDNSelector `json:"toFQDNs,omitzero"`
}

// EgressDenyRule denies traffic to the peers it names, optionally only to some ports. Deny rules are
// L3/L4 only.
type EgressDenyRule struct {
	EgressCommonRule `json:",inline"`

	// ToPorts restricts the deny to these destination ports. Omitted: all ports and protocols.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	ToPorts []PortDenyRule `json:"toPorts,omitzero"`
}

// CIDR is an IPv4 or IPv6 prefix in CIDR notation, such as 10.0.0.0/8 or 2001:db8::/32.
// +kubebuilder:validation:MaxLength=43
// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="must be an IP prefix in CIDR notation, such as 10.0.0.0/8 or 2001:db8::/32"
type CIDR string

// CIDRRule is an IP prefix with optional exceptions.
// +kubebuilder:validation:XValidation:rule="!has(self.except) || !isCIDR(self.cidr) || self.except.all(e, !isCIDR(e) || cidr(self.cidr).containsCIDR(cidr(e)))",message="every entry of except must lie inside cidr"
type CIDRRule struct {
	// Cidr is the prefix the rule matches.
	// +required
	Cidr CIDR `json:"cidr"`

	// ExceptCIDRs are prefixes inside cidr that the rule does not match.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	ExceptCIDRs []CIDR `json:"except,omitzero"`
}

// Entity is a special peer that is not selected by labels.
// +kubebuilder:validation:Enum=all;world;world-ipv4;world-ipv6;cluster;host;remote-node;kube-apiserver;init;health;unmanaged;ingress;none
type Entity string

// The entities a rule can name.
const (
	EntityAll           Entity = "all"
	EntityWorld         Entity = "world"
	EntityWorldIPv4     Entity = "world-ipv4"
	EntityWorldIPv6     Entity = "world-ipv6"
	EntityCluster       Entity = "cluster"
	EntityHost          Entity = "host"
	EntityRemoteNode    Entity = "remote-node"
	EntityKubeAPIServer Entity = "kube-apiserver"
	EntityInit          Entity = "init"
	EntityHealth        Entity = "health"
	EntityUnmanaged     Entity = "unmanaged"
	EntityIngress       Entity = "ingress"
	EntityNone          Entity = "none"
)

// PortRule restricts a rule to some ports and, optionally, to some application-level requests.
// +kubebuilder:validation:XValidation:rule="!has(self.rules) || !has(self.rules.http) || self.ports.all(p, has(p.protocol) && p.protocol == 'TCP')",message="rules.http needs protocol: TCP on every port of this rule: HTTP can only be judged on TCP",fieldPath=".rules.http"
// +kubebuilder:validation:XValidation:rule="!has(self.rules) || (!has(self.rules.http) && !has(self.rules.dns)) || self.ports.all(p, has(p.port) && p.port != '0')",message="rules.http and rules.dns need a specific port: port 0 or an omitted port means every port",fieldPath=".rules"
// +kubebuilder:validation:XValidation:rule="!has(self.rules) || !has(self.rules.dns) || self.ports.all(p, (!has(p.endPort) || p.endPort == 0) && (!has(p.protocol) || p.protocol != 'SCTP'))",message="rules.dns needs single ports (no endPort) with protocol UDP, TCP or ANY",fieldPath=".rules.dns"
// +kubebuilder:validation:XValidation:rule="!has(self.rules) || !has(self.rules.http) || !has(self.rules.dns)",message="rules can hold http or dns rules, not both",fieldPath=".rules"
type PortRule struct {
	// Ports is the list of destination ports and protocols the rule applies to.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=40
	// +required
	Ports []PortProtocol `json:"ports"`

	// Rules, when set, restricts traffic on these ports to the HTTP requests or DNS lookups it lists.
	// +optional
	Rules *L7Rules `json:"rules,omitempty"`
}

// PortDenyRule restricts a deny rule to some ports.
type PortDenyRule struct {
	// Ports is the list of destination ports and protocols the deny applies to.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=40
	// +required
	Ports []PortProtocol `json:"ports"`
}

// PortProtocol is a destination port, or a range of ports, and a protocol.
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || self.endPort == 0 || (has(self.port) && self.port.matches('^[0-9]+$') && int(self.port) <= self.endPort)",message="endPort must be greater than or equal to port, and port must be a number when endPort is set",fieldPath=".endPort"
type PortProtocol struct {
	// Port is a destination port number (0 to 65535, 0 meaning every port) or the name of a named
	// container port (an IANA service name such as http). Omitted: every port.
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9]+$') ? int(self) <= 65535 : self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$') && self.matches('[a-z]')",message="port must be a number from 0 to 65535 or a port name (lower-case letters, digits and '-', at most 15 characters)"
	// +optional
	Port string `json:"port,omitempty"`

	// EndPort, when set, makes this a range of ports from port to endPort inclusive.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=65535
	// +optional
	EndPort int32 `json:"endPort,omitempty"`

	// Protocol is TCP, UDP, SCTP or ANY. Omitted: ANY.
	// +optional
	Protocol L4Proto `json:"protocol,omitempty"`
}

// L4Proto is a transport protocol.
// +kubebuilder:validation:Enum=TCP;UDP;SCTP;ANY
type L4Proto string

// The transport protocols a port can name.
const (
	ProtoTCP  L4Proto = "TCP"
	ProtoUDP  L4Proto = "UDP"
	ProtoSCTP L4Proto = "SCTP"
	ProtoAny  L4Proto = "ANY"
)

// L7Rules lists the application-level requests allowed on a port. Rules of one kind are OR-ed: a
// request is allowed when it matches at least one of them. An empty list allows every request of that
// protocol but still makes the port parse it.
type L7Rules struct {
	// HTTP lists the HTTP/1.1 requests allowed. The kernel judges each request of a connection,
	// including every request on a keep-alive connection. TLS and HTTP/2 cannot be judged in the kernel
	// and are denied on a port with HTTP rules.
	// +kubebuilder:validation:MaxItems=128
	// +optional
	HTTP []PortRuleHTTP `json:"http,omitzero"`

	// DNS lists the DNS names the endpoint may look up (egress only). Answers to allowed lookups feed
	// toFQDNs rules.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	DNS []FQDNSelector `json:"dns,omitzero"`
}

// PortRuleHTTP matches HTTP requests. Every field that is set must match; an empty rule matches every
// request. Method, path and host are RE2 regular expressions matched against the whole value, as if
// written between ^ and $.
type PortRuleHTTP struct {
	// Path is an RE2 regular expression matched against the whole request path (the request target
	// without the query string), for example /v1/users or /v1/invoices/[0-9]+. Omitted: any path.
	// The path is matched as sent, not normalized; a path with a "." or ".." segment (also written
	// with %2e, %2f, %5c, a backslash or ";" parameters), a backslash, %2f or %5c matches no rule
	// that has a path.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Path string `json:"path,omitempty"`

	// Method is an RE2 regular expression matched against the whole request method, for example GET
	// or GET|HEAD. Omitted: any method.
	// +kubebuilder:validation:MaxLength=128
	// +optional
	Method string `json:"method,omitempty"`

	// Host is an RE2 regular expression matched against the whole Host header, for example
	// api\.example\.com. Omitted: any host.
	// +kubebuilder:validation:MaxLength=255
	// +optional
	Host string `json:"host,omitempty"`

	// Headers lists headers that must be present, each written "Name" (present with any value) or
	// "Name: value" (present with exactly this value). Names are compared without regard to case.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Headers []HTTPHeader `json:"headers,omitzero"`

	// HeaderMatches lists headers to compare with a value. Without mismatch, a header that is missing
	// or has another value makes the rule not match. With mismatch: LOG, the rule matches anyway and the
	// mismatch is recorded in the request's flow event.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	HeaderMatches []HeaderMatch `json:"headerMatches,omitzero"`
}

// HTTPHeader is a header requirement written "Name" or "Name: value".
// +kubebuilder:validation:MaxLength=512
// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!#$%&*+.^_|~-]+(:[ ]?[^\x00-\x1f\x7f]*)?$`
type HTTPHeader string

// HeaderMatch compares a request header with a value.
type HeaderMatch struct {
	// Name is the header name, compared without regard to case.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!#$%&*+.^_|~-]+$`
	// +required
	Name string `json:"name"`

	// Value is the exact value the header must have. Omitted: the header must be present.
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[^\x00-\x1f\x7f]*$`
	// +optional
	Value string `json:"value,omitempty"`

	// Mismatch says what to do when the header does not match. Only LOG is supported: the kernel judges
	// requests and does not rewrite them, so Cilium's ADD, DELETE and REPLACE are rejected.
	// +kubebuilder:validation:Enum=LOG
	// +optional
	Mismatch MismatchAction `json:"mismatch,omitempty"`
}

// MismatchAction is what happens when a headerMatches entry does not match.
type MismatchAction string

// MismatchLog records a header mismatch in the flow event and lets the request through.
const MismatchLog MismatchAction = "LOG"

// FQDNSelector matches DNS names, either exactly (matchName) or with wildcards (matchPattern).
// Exactly one of the two is set. Names are compared without regard to case.
// +kubebuilder:validation:XValidation:rule="has(self.matchName) != has(self.matchPattern)",message="exactly one of matchName or matchPattern must be set"
type FQDNSelector struct {
	// MatchName is a DNS name matched exactly, for example api.stripe.com.
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^([-a-zA-Z0-9_]+[.]?)+$`
	// +optional
	MatchName string `json:"matchName,omitempty"`

	// MatchPattern is a DNS name in which * stands for any run of characters allowed in a DNS label
	// (it does not cross a dot), for example *.stripe.com. A lone * matches every name.
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^([-a-zA-Z0-9_*]+[.]?)+$`
	// +optional
	MatchPattern string `json:"matchPattern,omitempty"`
}

package datapath

import (
	"fmt"
	"net/netip"
	"time"
)

// Identity is a security identity: a number standing for a set of security-relevant labels.
type Identity uint32

// Reserved identities, with Cilium's numbers.
const (
	// IdentityAny is the wildcard in a PolicyKey. It is never the identity of an endpoint or address.
	IdentityAny Identity = Identity(portcullisIdentityReservedIDENTITY_ANY)
	// IdentityHost is the node itself.
	IdentityHost Identity = Identity(portcullisIdentityReservedIDENTITY_HOST)
	// IdentityWorld is every address the IP cache does not know.
	IdentityWorld Identity = Identity(portcullisIdentityReservedIDENTITY_WORLD)
)

// Direction is a traffic direction seen from the pod.
type Direction uint8

const (
	// Ingress is traffic towards the pod (tcx egress hook of the host-side veth).
	Ingress Direction = Direction(portcullisDirectionDIR_INGRESS)
	// Egress is traffic sent by the pod (tcx ingress hook of the host-side veth).
	Egress Direction = Direction(portcullisDirectionDIR_EGRESS)
)

// String returns "ingress" or "egress".
func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// Protocol is an IP protocol number; ProtocolAny is the wildcard in a PolicyKey.
type Protocol uint8

// Protocols the dataplane parses. Any other protocol number may be used in a PolicyKey; it is matched
// by number, without ports.
const (
	ProtocolAny    Protocol = 0
	ProtocolICMP   Protocol = 1
	ProtocolTCP    Protocol = 6
	ProtocolUDP    Protocol = 17
	ProtocolICMPv6 Protocol = 58
)

// HasPorts reports whether the dataplane matches ports for the protocol.
func (p Protocol) HasPorts() bool { return p == ProtocolTCP || p == ProtocolUDP }

// Action is the action of a policy entry.
type Action uint8

const (
	// Allow admits a new connection.
	Allow Action = Action(portcullisPolicyActionPOLICY_ALLOW)
	// Deny drops it (or only reports it, with PolicyEntry.Audit). A deny always wins over an allow that
	// matches the same packet, whatever their specificity.
	Deny Action = Action(portcullisPolicyActionPOLICY_DENY)
)

// String returns "allow" or "deny".
func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Endpoint is a pod as the dataplane knows it, keyed in State by the ifindex of its host-side veth.
type Endpoint struct {
	// ID is the endpoint id policy keys refer to. It must not be zero.
	ID uint32
	// Identity is the pod's security identity.
	Identity Identity
	// IngressEnforced and EgressEnforced turn on default deny in that direction: a new connection
	// passes only when a policy entry allows it.
	IngressEnforced, EgressEnforced bool
	// IngressAudit and EgressAudit make default deny in that direction report instead of drop (set when
	// every policy selecting the endpoint in that direction is in audit mode).
	IngressAudit, EgressAudit bool
}

// PolicyKey selects the packets a policy entry applies to. A zero PeerIdentity, Protocol or Port is a
// wildcard; a Port needs a Protocol with ports (TCP or UDP). Port ranges are expanded by the caller into
// one key per port (see ExpandPorts).
type PolicyKey struct {
	EndpointID   uint32
	Direction    Direction
	PeerIdentity Identity
	Protocol     Protocol
	Port         uint16
}

// String renders the key, "*" for wildcards.
func (k PolicyKey) String() string {
	id, proto, port := "*", "*", "*"
	if k.PeerIdentity != IdentityAny {
		id = fmt.Sprint(uint32(k.PeerIdentity))
	}
	if k.Protocol != ProtocolAny {
		proto = fmt.Sprint(uint8(k.Protocol))
	}
	if k.Port != 0 {
		port = fmt.Sprint(k.Port)
	}
	return fmt.Sprintf("ep=%d %s peer=%s proto=%s port=%s", k.EndpointID, k.Direction, id, proto, port)
}

// PolicyEntry is what a policy key maps to.
type PolicyEntry struct {
	Action Action
	// Audit makes a Deny report and forward instead of drop.
	Audit bool
	// L7 marks an allow that HTTP rules will refine; until then it allows at L4.
	L7 bool
	// PolicyID attributes counters and flow events to the policy that produced the entry.
	PolicyID uint32
	// OverAllow, on an audited Deny, says that an allow named the same key and was merged into it by
	// the caller: the enforcing policies let these packets through, so the deny stays an audit even
	// where default deny is enforced (see Converge). It is not written to the kernel.
	OverAllow bool
}

// Reason tells why a packet got its verdict.
type Reason uint8

// Reasons, as counted and reported by the kernel.
const (
	ReasonAllowed     = Reason(portcullisReasonREASON_ALLOWED)
	ReasonDenied      = Reason(portcullisReasonREASON_DENIED)
	ReasonAudited     = Reason(portcullisReasonREASON_AUDITED)
	ReasonNoPolicy    = Reason(portcullisReasonREASON_NO_POLICY)
	ReasonEstablished = Reason(portcullisReasonREASON_ESTABLISHED)
	ReasonNotEnforced = Reason(portcullisReasonREASON_NOT_ENFORCED)
	ReasonMalformed   = Reason(portcullisReasonREASON_MALFORMED)
	ReasonUnsupported = Reason(portcullisReasonREASON_UNSUPPORTED)
	ReasonNeighbor    = Reason(portcullisReasonREASON_NEIGHBOR)
	ReasonEventLost   = Reason(portcullisReasonREASON_EVENT_LOST)
)

var reasonNames = map[Reason]string{
	ReasonAllowed: "allowed", ReasonDenied: "denied", ReasonAudited: "audited", ReasonNoPolicy: "no-policy",
	ReasonEstablished: "established", ReasonNotEnforced: "not-enforced", ReasonMalformed: "malformed",
	ReasonUnsupported: "unsupported", ReasonNeighbor: "neighbor", ReasonEventLost: "event-lost",
}

// String returns the reason's name as used in metrics labels.
func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Verdict is what happened to a packet.
type Verdict uint8

// Verdicts.
const (
	Forwarded = Verdict(portcullisVerdictVERDICT_FORWARDED)
	Dropped   = Verdict(portcullisVerdictVERDICT_DROPPED)
	// Audited means the packet would have been dropped and was forwarded (audit mode).
	Audited = Verdict(portcullisVerdictVERDICT_AUDITED)
)

// String returns "forwarded", "dropped" or "audited".
func (v Verdict) String() string {
	switch v {
	case Forwarded:
		return "forwarded"
	case Dropped:
		return "dropped"
	case Audited:
		return "audited"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Flow is one flow event from the kernel: a new connection judged, or a dropped packet.
type Flow struct {
	// Time is when the kernel judged the packet.
	Time             time.Time
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // ICMP echo: the identifier
	Protocol         Protocol
	EndpointID       uint32
	Ifindex          int
	SrcIdentity      Identity
	DstIdentity      Identity
	Direction        Direction
	Verdict          Verdict
	Reason           Reason
	// PolicyID is the policy whose entry decided; 0 for default deny and unenforced directions.
	PolicyID uint32
	// L7 is set when the entry that allowed the connection is reserved for L7 rules.
	L7 bool
	// Fragment is set for a non-first IP fragment (no ports).
	Fragment bool
}

// CounterKey identifies a counter: packets and bytes per policy, reason and direction.
type CounterKey struct {
	PolicyID  uint32
	Reason    Reason
	Direction Direction
}

// Counter is a packet and byte count summed over CPUs.
type Counter struct {
	Packets, Bytes uint64
}

package policy

import (
	"cmp"
	"encoding/json"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
)

// NormalizedPolicy is the canonical form of a PolicySpec: two specs that mean the same thing give
// byte-equal JSON. Its selectors are not yet scoped to a namespace: the compiler does that, since
// it depends on the kind and namespace of the policy.
type NormalizedPolicy struct {
	// EndpointSelector selects the endpoints the policy applies to.
	EndpointSelector Selector `json:"endpointSelector"`
	// Ingress are the ingress allow rules.
	Ingress []Rule `json:"ingress,omitempty"`
	// IngressDeny are the ingress deny rules.
	IngressDeny []Rule `json:"ingressDeny,omitempty"`
	// Egress are the egress allow rules.
	Egress []Rule `json:"egress,omitempty"`
	// EgressDeny are the egress deny rules.
	EgressDeny []Rule `json:"egressDeny,omitempty"`
	// DefaultDenyIngress is true when the policy puts its endpoints in ingress default-deny.
	DefaultDenyIngress bool `json:"defaultDenyIngress,omitempty"`
	// DefaultDenyEgress is true when the policy puts its endpoints in egress default-deny.
	DefaultDenyEgress bool `json:"defaultDenyEgress,omitempty"`
	// Audit is true for a policy in Audit mode.
	Audit bool `json:"audit,omitempty"`
}

// Rule is a normalized allow or deny rule: the peers it applies to and the ports.
type Rule struct {
	// Peers the rule applies to.
	Peers Peers `json:"peers"`
	// Ports the rule applies to; nil means every port of every protocol.
	Ports []Port `json:"ports,omitempty"`
}

// Peers is the union of the peers a rule names.
type Peers struct {
	// All is true when the rule applies to every peer (no peer field, or entity all).
	All bool `json:"all,omitempty"`
	// Endpoints are the peer selectors, canonical and sorted.
	Endpoints []Selector `json:"endpoints,omitempty"`
	// CIDRs are the peer prefixes (fromCIDR and fromCIDRSet, exceptions subtracted), masked,
	// aggregated and sorted.
	CIDRs []string `json:"cidrs,omitempty"`
	// Entities are the named entities, sorted (never all or none).
	Entities []string `json:"entities,omitempty"`
	// FQDNs are the normalized DNS names and patterns of toFQDNs, sorted.
	FQDNs []string `json:"fqdns,omitempty"`
}

// Empty reports whether the peer set selects no one.
func (p Peers) Empty() bool {
	return !p.All && len(p.Endpoints) == 0 && len(p.CIDRs) == 0 && len(p.Entities) == 0 && len(p.FQDNs) == 0
}

// Port is one destination port range (or named port) with its protocol and L7 rules.
type Port struct {
	// Protocol is TCP, UDP, SCTP or ANY.
	Protocol string `json:"protocol"`
	// Low is the first port of the range (0 with High 65535: every port).
	Low uint16 `json:"low"`
	// High is the last port of the range.
	High uint16 `json:"high"`
	// Name is a named container port, resolved by the compiler; Low and High are then 0.
	Name string `json:"name,omitempty"`
	// L7 restricts the port to some requests; nil means L4 only.
	L7 *L7 `json:"l7,omitempty"`
}

// L7 holds the normalized application rules of a port.
type L7 struct {
	// HTTP are normalized HTTP rules (HTTPRule.String), sorted; HTTPAny alone means "parse HTTP,
	// allow every request".
	HTTP []string `json:"http,omitempty"`
	// DNS are normalized DNS names and patterns, sorted.
	DNS []string `json:"dns,omitempty"`
}

// Normalize returns the canonical form of a spec. The spec should have passed Validate: parts that
// do not parse are left out.
func Normalize(spec *v1alpha1.PolicySpec) NormalizedPolicy {
	var np NormalizedPolicy
	if spec == nil {
		return np
	}
	np.EndpointSelector, _ = ParseSelector(spec.EndpointSelector)
	np.Audit = spec.EnforcementMode == v1alpha1.EnforcementModeAudit
	for _, r := range spec.Ingress {
		np.Ingress = appendRule(np.Ingress, ingressPeers(r.IngressCommonRule, nil), portRules(r.ToPorts))
	}
	for _, r := range spec.IngressDeny {
		np.IngressDeny = appendRule(np.IngressDeny, ingressPeers(r.IngressCommonRule, nil), portDenyRules(r.ToPorts))
	}
	for _, r := range spec.Egress {
		np.Egress = appendRule(np.Egress, egressPeers(r.EgressCommonRule, r.ToFQDNs), portRules(r.ToPorts))
	}
	for _, r := range spec.EgressDeny {
		np.EgressDeny = appendRule(np.EgressDeny, egressPeers(r.EgressCommonRule, nil), portDenyRules(r.ToPorts))
	}
	np.Ingress, np.IngressDeny = sortRules(np.Ingress), sortRules(np.IngressDeny)
	np.Egress, np.EgressDeny = sortRules(np.Egress), sortRules(np.EgressDeny)
	np.DefaultDenyIngress = len(spec.Ingress)+len(spec.IngressDeny) > 0
	np.DefaultDenyEgress = len(spec.Egress)+len(spec.EgressDeny) > 0
	if d := spec.EnableDefaultDeny; d != nil {
		if d.Ingress != nil {
			np.DefaultDenyIngress = *d.Ingress
		}
		if d.Egress != nil {
			np.DefaultDenyEgress = *d.Egress
		}
	}
	return np
}

// appendRule adds a rule unless its peers select no one (such a rule still counts for
// default-deny, which Normalize computes from the spec itself).
func appendRule(rules []Rule, peers Peers, ports []Port) []Rule {
	if peers.Empty() {
		return rules
	}
	return append(rules, Rule{Peers: peers, Ports: ports})
}

func ingressPeers(r v1alpha1.IngressCommonRule, _ []v1alpha1.FQDNSelector) Peers {
	return peers(r.FromEndpoints, r.FromCIDR, r.FromCIDRSet, r.FromEntities, nil)
}

func egressPeers(r v1alpha1.EgressCommonRule, fqdns []v1alpha1.FQDNSelector) Peers {
	return peers(r.ToEndpoints, r.ToCIDR, r.ToCIDRSet, r.ToEntities, fqdns)
}

// peers computes the normalized peer set. A rule with no peer field at all (every field nil)
// applies to every peer; a field that is set but empty selects no one.
func peers(eps []metav1.LabelSelector, cidrs []v1alpha1.CIDR, sets []v1alpha1.CIDRRule, ents []v1alpha1.Entity, fqdns []v1alpha1.FQDNSelector) Peers {
	var p Peers
	if eps == nil && cidrs == nil && sets == nil && ents == nil && fqdns == nil {
		p.All = true
		return p
	}
	for i := range eps {
		s, err := ParseSelector(&eps[i])
		if err == nil {
			p.Endpoints = append(p.Endpoints, s)
		}
	}
	var prefixes []netip.Prefix
	for _, c := range cidrs {
		if pf, err := netip.ParsePrefix(string(c)); err == nil {
			prefixes = append(prefixes, pf.Masked())
		}
	}
	for _, s := range sets {
		pf, err := netip.ParsePrefix(string(s.Cidr))
		if err != nil {
			continue
		}
		var ex []netip.Prefix
		for _, e := range s.ExceptCIDRs {
			if ep, err := netip.ParsePrefix(string(e)); err == nil {
				ex = append(ex, ep)
			}
		}
		prefixes = append(prefixes, SubtractPrefixes(pf, ex)...)
	}
	for _, pf := range AggregatePrefixes(prefixes) {
		p.CIDRs = append(p.CIDRs, pf.String())
	}
	for _, e := range ents {
		switch e {
		case v1alpha1.EntityAll:
			p.All = true
		case v1alpha1.EntityNone:
		default:
			p.Entities = append(p.Entities, string(e))
		}
	}
	for _, f := range fqdns {
		p.FQDNs = append(p.FQDNs, FormatFQDN(f))
	}
	if p.All {
		return Peers{All: true}
	}
	slices.SortFunc(p.Endpoints, func(a, b Selector) int { return strings.Compare(a.String(), b.String()) })
	p.Endpoints = slices.CompactFunc(p.Endpoints, func(a, b Selector) bool { return a.String() == b.String() })
	slices.Sort(p.Entities)
	p.Entities = slices.Compact(p.Entities)
	slices.Sort(p.FQDNs)
	p.FQDNs = slices.Compact(p.FQDNs)
	return p
}

// expandPorts turns one port list into normalized ports sharing l7.
func expandPorts(out []Port, ports []v1alpha1.PortProtocol, l7 *L7) []Port {
	for _, pp := range ports {
		proto := string(pp.Protocol)
		if proto == "" {
			proto = string(v1alpha1.ProtoAny)
		}
		p := Port{Protocol: proto, L7: l7}
		if n, err := strconv.ParseUint(pp.Port, 10, 16); err == nil || pp.Port == "" {
			switch {
			case pp.Port == "" || n == 0:
				p.Low, p.High = 0, 65535
			case pp.EndPort > 0 && pp.EndPort <= 65535 && uint64(pp.EndPort) >= n:
				p.Low, p.High = uint16(n), uint16(pp.EndPort)
			default:
				p.Low, p.High = uint16(n), uint16(n)
			}
		} else {
			p.Name = strings.ToLower(pp.Port)
		}
		out = append(out, p)
	}
	return out
}

func portRules(prs []v1alpha1.PortRule) []Port {
	if len(prs) == 0 {
		return nil
	}
	var out []Port
	for _, pr := range prs {
		out = expandPorts(out, pr.Ports, normalizeL7(pr.Rules))
	}
	return mergePorts(out)
}

func portDenyRules(prs []v1alpha1.PortDenyRule) []Port {
	if len(prs) == 0 {
		return nil
	}
	var out []Port
	for _, pr := range prs {
		out = expandPorts(out, pr.Ports, nil)
	}
	return mergePorts(out)
}

// normalizeL7 returns nil for L4-only rules. An http list that is present but empty means "parse
// HTTP, allow every request" and becomes [HTTPAny].
func normalizeL7(r *v1alpha1.L7Rules) *L7 {
	if r == nil || (r.HTTP == nil && r.DNS == nil) {
		return nil
	}
	l7 := &L7{}
	if r.HTTP != nil {
		for _, h := range r.HTTP {
			l7.HTTP = append(l7.HTTP, NormalizeHTTP(h).String())
		}
		if len(l7.HTTP) == 0 {
			l7.HTTP = []string{HTTPAny}
		}
	}
	for _, d := range r.DNS {
		l7.DNS = append(l7.DNS, FormatFQDN(d))
	}
	if r.DNS != nil && len(l7.DNS) == 0 {
		l7.DNS = []string{"*"}
	}
	return l7.canonical()
}

// canonical sorts and de-duplicates; a rule matching everything absorbs the others.
func (l *L7) canonical() *L7 {
	slices.Sort(l.HTTP)
	l.HTTP = slices.Compact(l.HTTP)
	if slices.Contains(l.HTTP, HTTPAny) {
		l.HTTP = []string{HTTPAny}
	}
	slices.Sort(l.DNS)
	l.DNS = slices.Compact(l.DNS)
	if slices.Contains(l.DNS, "*") {
		l.DNS = []string{"*"}
	}
	return l
}

// MergeL7 combines the L7 rules of two allows of the same peer and port: an L4-only allow (nil)
// wins, otherwise the rules are OR-ed.
func MergeL7(a, b *L7) *L7 {
	if a == nil || b == nil {
		return nil
	}
	m := &L7{HTTP: append(slices.Clone(a.HTTP), b.HTTP...), DNS: append(slices.Clone(a.DNS), b.DNS...)}
	return m.canonical()
}

func comparePort(a, b Port) int {
	return cmp.Or(strings.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Low, b.Low), cmp.Compare(a.High, b.High), strings.Compare(a.Name, b.Name))
}

// mergePorts sorts ports and merges the L7 rules of equal ports.
func mergePorts(ps []Port) []Port {
	slices.SortStableFunc(ps, comparePort)
	out := ps[:0]
	for _, p := range ps {
		if n := len(out); n > 0 && comparePort(out[n-1], p) == 0 {
			out[n-1].L7 = MergeL7(out[n-1].L7, p.L7)
			continue
		}
		out = append(out, p)
	}
	return out
}

// sortRules sorts rules by their JSON text and drops duplicates: the order of rules has no meaning.
func sortRules(rs []Rule) []Rule {
	if len(rs) == 0 {
		return nil
	}
	type keyed struct {
		key string
		r   Rule
	}
	ks := make([]keyed, 0, len(rs))
	for _, r := range rs {
		b, _ := json.Marshal(r)
		ks = append(ks, keyed{string(b), r})
	}
	slices.SortFunc(ks, func(a, b keyed) int { return strings.Compare(a.key, b.key) })
	ks = slices.CompactFunc(ks, func(a, b keyed) bool { return a.key == b.key })
	out := make([]Rule, len(ks))
	for i, k := range ks {
		out[i] = k.r
	}
	return out
}

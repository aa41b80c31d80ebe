// Package policy validates and normalizes the spec of AccessPolicy and ClusterAccessPolicy. It is
// pure Go, with no Kubernetes client: the operator, the compiler and the CLI all use it.
package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"regexp/syntax"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/dfa"
)

// Policy kinds.
const (
	// KindAccessPolicy is the namespaced policy kind.
	KindAccessPolicy = "AccessPolicy"
	// KindClusterAccessPolicy is the cluster-scoped policy kind.
	KindClusterAccessPolicy = "ClusterAccessPolicy"
)

// MaxDFAStates is the state budget of the DFA that each HTTP method, path and host expression must
// fit in: the kernel walks these tables, so their size is bounded.
const MaxDFAStates = dfa.DefaultMaxStates

var (
	headerName   = regexp.MustCompile(`^[A-Za-z0-9!#$%&*+.^_|~-]+$`)
	controlChars = regexp.MustCompile(`[\x00-\x1f\x7f]`)
	portName     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	fqdnName     = regexp.MustCompile(`^([-a-zA-Z0-9_]+[.]?)+$`)
	fqdnPattern  = regexp.MustCompile(`^([-a-zA-Z0-9_*]+[.]?)+$`)
)

// Validate checks what the CRD schema cannot: regular expression syntax and DFA size, label
// selectors (with Cilium's k8s: prefix), CIDRs and their exceptions, DNS names, headers and ports.
// Each error names the field (for example spec.ingress[0].toPorts[0].rules.http[1].path) and says
// what is wrong. An empty list means the spec is valid.
func Validate(kind string, spec *v1alpha1.PolicySpec) field.ErrorList {
	root := field.NewPath("spec")
	var errs field.ErrorList
	if kind != KindAccessPolicy && kind != KindClusterAccessPolicy {
		errs = append(errs, field.NotSupported(field.NewPath("kind"), kind, []string{KindAccessPolicy, KindClusterAccessPolicy}))
	}
	if spec == nil {
		return append(errs, field.Required(root, "a policy needs a spec"))
	}
	if spec.EndpointSelector == nil {
		errs = append(errs, field.Required(root.Child("endpointSelector"), "select the pods this policy applies to; {} selects every pod in scope"))
	} else {
		errs = append(errs, validateSelector(root.Child("endpointSelector"), spec.EndpointSelector)...)
	}
	if spec.Ingress == nil && spec.IngressDeny == nil && spec.Egress == nil && spec.EgressDeny == nil && spec.EnableDefaultDeny == nil {
		errs = append(errs, field.Required(root, "spec must contain at least one of ingress, ingressDeny, egress, egressDeny or enableDefaultDeny"))
	}
	switch spec.EnforcementMode {
	case "", v1alpha1.EnforcementModeEnforce, v1alpha1.EnforcementModeAudit:
	default:
		errs = append(errs, field.NotSupported(root.Child("enforcementMode"), spec.EnforcementMode, []string{string(v1alpha1.EnforcementModeEnforce), string(v1alpha1.EnforcementModeAudit)}))
	}
	for i, r := range spec.Ingress {
		p := root.Child("ingress").Index(i)
		errs = append(errs, validatePeers(p, "from", r.FromEndpoints, r.FromCIDR, r.FromCIDRSet, r.FromEntities)...)
		errs = append(errs, validatePortRules(p.Child("toPorts"), r.ToPorts, false)...)
	}
	for i, r := range spec.IngressDeny {
		p := root.Child("ingressDeny").Index(i)
		errs = append(errs, validatePeers(p, "from", r.FromEndpoints, r.FromCIDR, r.FromCIDRSet, r.FromEntities)...)
		errs = append(errs, validatePortDenyRules(p.Child("toPorts"), r.ToPorts)...)
	}
	for i, r := range spec.Egress {
		p := root.Child("egress").Index(i)
		errs = append(errs, validatePeers(p, "to", r.ToEndpoints, r.ToCIDR, r.ToCIDRSet, r.ToEntities)...)
		errs = append(errs, validatePortRules(p.Child("toPorts"), r.ToPorts, true)...)
		for j, f := range r.ToFQDNs {
			errs = append(errs, validateFQDN(p.Child("toFQDNs").Index(j), f)...)
		}
	}
	for i, r := range spec.EgressDeny {
		p := root.Child("egressDeny").Index(i)
		errs = append(errs, validatePeers(p, "to", r.ToEndpoints, r.ToCIDR, r.ToCIDRSet, r.ToEntities)...)
		errs = append(errs, validatePortDenyRules(p.Child("toPorts"), r.ToPorts)...)
	}
	return errs
}

func validateSelector(p *field.Path, ls *metav1.LabelSelector) field.ErrorList {
	if _, err := ParseSelector(ls); err != nil {
		return field.ErrorList{field.Invalid(p, ls.String(), err.Error())}
	}
	return nil
}

func validatePeers(p *field.Path, dir string, eps []metav1.LabelSelector, cidrs []v1alpha1.CIDR, sets []v1alpha1.CIDRRule, ents []v1alpha1.Entity) field.ErrorList {
	var errs field.ErrorList
	for i := range eps {
		errs = append(errs, validateSelector(p.Child(dir+"Endpoints").Index(i), &eps[i])...)
	}
	for i, c := range cidrs {
		if _, err := parseCIDR(c); err != nil {
			errs = append(errs, field.Invalid(p.Child(dir+"CIDR").Index(i), string(c), err.Error()))
		}
	}
	for i, s := range sets {
		sp := p.Child(dir + "CIDRSet").Index(i)
		pf, err := parseCIDR(s.Cidr)
		if err != nil {
			errs = append(errs, field.Invalid(sp.Child("cidr"), string(s.Cidr), err.Error()))
			continue
		}
		for j, e := range s.ExceptCIDRs {
			ep := sp.Child("except").Index(j)
			ex, err := parseCIDR(e)
			switch {
			case err != nil:
				errs = append(errs, field.Invalid(ep, string(e), err.Error()))
			case ex.Addr().Is4() != pf.Addr().Is4():
				errs = append(errs, field.Invalid(ep, string(e), fmt.Sprintf("must be of the same address family as cidr %s", pf)))
			case ex.Masked() == pf.Masked():
				errs = append(errs, field.Invalid(ep, string(e), fmt.Sprintf("must be smaller than cidr %s: an exception equal to the prefix leaves nothing to match", pf)))
			case ex.Bits() < pf.Bits() || !pf.Contains(ex.Addr()):
				errs = append(errs, field.Invalid(ep, string(e), fmt.Sprintf("must lie inside cidr %s", pf)))
			}
		}
	}
	for i, e := range ents {
		switch e {
		case v1alpha1.EntityAll, v1alpha1.EntityWorld, v1alpha1.EntityWorldIPv4, v1alpha1.EntityWorldIPv6,
			v1alpha1.EntityCluster, v1alpha1.EntityHost, v1alpha1.EntityRemoteNode, v1alpha1.EntityKubeAPIServer,
			v1alpha1.EntityInit, v1alpha1.EntityHealth, v1alpha1.EntityUnmanaged, v1alpha1.EntityIngress, v1alpha1.EntityNone:
		default:
			errs = append(errs, field.NotSupported(p.Child(dir+"Entities").Index(i), e, []string{"all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "remote-node", "kube-apiserver", "init", "health", "unmanaged", "ingress", "none"}))
		}
	}
	return errs
}

var errCIDR = errors.New("not an IP prefix in CIDR notation such as 10.0.0.0/8 or 2001:db8::/32")

func parseCIDR(c v1alpha1.CIDR) (netip.Prefix, error) {
	pf, err := netip.ParsePrefix(string(c))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: %w", errCIDR, err)
	}
	return pf, nil
}

func validatePorts(p *field.Path, ports []v1alpha1.PortProtocol, l7 string) field.ErrorList {
	var errs field.ErrorList
	if len(ports) == 0 {
		errs = append(errs, field.Required(p, "list at least one port"))
	}
	for i, pp := range ports {
		ip := p.Index(i)
		switch pp.Protocol {
		case "", v1alpha1.ProtoAny, v1alpha1.ProtoTCP, v1alpha1.ProtoUDP, v1alpha1.ProtoSCTP:
		default:
			errs = append(errs, field.NotSupported(ip.Child("protocol"), pp.Protocol, []string{"TCP", "UDP", "SCTP", "ANY"}))
		}
		n, err := strconv.ParseUint(pp.Port, 10, 32)
		isNum := err == nil
		switch {
		case pp.Port == "":
		case isNum && n > 65535:
			errs = append(errs, field.Invalid(ip.Child("port"), pp.Port, "port must be from 0 to 65535"))
		case !isNum && (!portName.MatchString(pp.Port) || len(pp.Port) > 15 || !strings.ContainsAny(pp.Port, "abcdefghijklmnopqrstuvwxyz")):
			errs = append(errs, field.Invalid(ip.Child("port"), pp.Port, "port must be a number from 0 to 65535 or a container port name (lower-case letters, digits and '-', at most 15 characters, at least one letter)"))
		}
		if pp.EndPort != 0 {
			switch {
			case pp.EndPort < 0 || pp.EndPort > 65535:
				errs = append(errs, field.Invalid(ip.Child("endPort"), pp.EndPort, "endPort must be from 0 to 65535"))
			case !isNum:
				errs = append(errs, field.Invalid(ip.Child("endPort"), pp.EndPort, "endPort needs a numeric port: a named port cannot start a range"))
			case uint64(pp.EndPort) < n:
				errs = append(errs, field.Invalid(ip.Child("endPort"), pp.EndPort, fmt.Sprintf("endPort must be greater than or equal to port %d", n)))
			}
		}
		if l7 != "" && (pp.Port == "" || (isNum && n == 0)) {
			errs = append(errs, field.Invalid(ip.Child("port"), pp.Port, fmt.Sprintf("rules.%s needs a specific port: port 0 or an omitted port means every port", l7)))
		}
		if l7 == "http" && pp.Protocol != v1alpha1.ProtoTCP {
			errs = append(errs, field.Invalid(ip.Child("protocol"), pp.Protocol, "rules.http needs protocol: TCP: HTTP can only be judged on TCP"))
		}
		if l7 == "dns" && (pp.EndPort != 0 || pp.Protocol == v1alpha1.ProtoSCTP) {
			errs = append(errs, field.Invalid(ip, pp.Port, "rules.dns needs single ports (no endPort) with protocol UDP, TCP or ANY"))
		}
	}
	return errs
}

func validatePortDenyRules(p *field.Path, prs []v1alpha1.PortDenyRule) field.ErrorList {
	var errs field.ErrorList
	for i, pr := range prs {
		errs = append(errs, validatePorts(p.Index(i).Child("ports"), pr.Ports, "")...)
	}
	return errs
}

func validatePortRules(p *field.Path, prs []v1alpha1.PortRule, egress bool) field.ErrorList {
	var errs field.ErrorList
	for i, pr := range prs {
		ip := p.Index(i)
		l7 := ""
		if r := pr.Rules; r != nil {
			rp := ip.Child("rules")
			switch {
			case r.HTTP != nil && r.DNS != nil:
				errs = append(errs, field.Invalid(rp, "http+dns", "rules can hold http or dns rules, not both"))
			case r.HTTP != nil:
				l7 = "http"
			case r.DNS != nil:
				l7 = "dns"
				if !egress {
					errs = append(errs, field.Forbidden(rp.Child("dns"), "rules.dns is allowed only in egress rules: DNS rules describe the lookups an endpoint may make"))
				}
			}
			for j, h := range r.HTTP {
				errs = append(errs, validateHTTP(rp.Child("http").Index(j), h)...)
			}
			for j, d := range r.DNS {
				errs = append(errs, validateFQDN(rp.Child("dns").Index(j), d)...)
			}
		}
		errs = append(errs, validatePorts(ip.Child("ports"), pr.Ports, l7)...)
	}
	return errs
}

// validateRegex checks RE2 syntax and that the expression compiles to a DFA within the budget.
func validateRegex(p *field.Path, what, expr string) *field.Error {
	if expr == "" {
		return nil
	}
	if _, err := syntax.Parse(expr, syntax.Perl); err != nil {
		return field.Invalid(p, expr, fmt.Sprintf("not a valid RE2 regular expression for the %s: %v", what, err))
	}
	err := dfaChecks.check(expr)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, dfa.ErrTooManyStates):
		return field.Invalid(p, expr, fmt.Sprintf("the %s expression is too complex to enforce in the kernel (its automaton needs more than %d states): simplify it, for example replace nested or bounded repetitions such as (a|b){20} by a shorter expression or several rules", what, MaxDFAStates))
	case errors.Is(err, dfa.ErrUnsupported):
		return field.Invalid(p, expr, fmt.Sprintf("the %s expression uses syntax the kernel matcher does not support: %v", what, err))
	default:
		return field.Invalid(p, expr, fmt.Sprintf("the %s expression cannot be compiled: %v", what, err))
	}
}

func validateHTTP(p *field.Path, h v1alpha1.PortRuleHTTP) field.ErrorList {
	var errs field.ErrorList
	for _, e := range []*field.Error{
		validateRegex(p.Child("method"), "method", h.Method),
		validateRegex(p.Child("path"), "path", h.Path),
		validateRegex(p.Child("host"), "host", h.Host),
	} {
		if e != nil {
			errs = append(errs, e)
		}
	}
	for i, hd := range h.Headers {
		name, value := splitHeader(string(hd))
		hp := p.Child("headers").Index(i)
		if !headerName.MatchString(name) {
			errs = append(errs, field.Invalid(hp, string(hd), `must be "Name" or "Name: value" with a header name made of letters, digits and !#$%&*+.^_|~-`))
		} else if controlChars.MatchString(value) {
			errs = append(errs, field.Invalid(hp, string(hd), "the header value must not contain control characters"))
		}
	}
	for i, hm := range h.HeaderMatches {
		hp := p.Child("headerMatches").Index(i)
		if !headerName.MatchString(hm.Name) {
			errs = append(errs, field.Invalid(hp.Child("name"), hm.Name, "must be a header name made of letters, digits and !#$%&*+.^_|~-"))
		}
		if controlChars.MatchString(hm.Value) {
			errs = append(errs, field.Invalid(hp.Child("value"), hm.Value, "must not contain control characters"))
		}
		if hm.Mismatch != "" && hm.Mismatch != v1alpha1.MismatchLog {
			errs = append(errs, field.NotSupported(hp.Child("mismatch"), hm.Mismatch, []string{string(v1alpha1.MismatchLog)}))
		}
	}
	return errs
}

func validateFQDN(p *field.Path, f v1alpha1.FQDNSelector) field.ErrorList {
	switch {
	case (f.MatchName == "") == (f.MatchPattern == ""):
		return field.ErrorList{field.Invalid(p, f, "exactly one of matchName or matchPattern must be set")}
	case f.MatchName != "":
		return validateDNSName(p.Child("matchName"), f.MatchName, fqdnName, "letters, digits, '-' and '_'")
	default:
		return validateDNSName(p.Child("matchPattern"), f.MatchPattern, fqdnPattern, "letters, digits, '-', '_' and '*'")
	}
}

func validateDNSName(p *field.Path, name string, re *regexp.Regexp, chars string) field.ErrorList {
	trimmed := strings.TrimSuffix(name, ".")
	if len(trimmed) > 253 || !re.MatchString(name) {
		return field.ErrorList{field.Invalid(p, name, fmt.Sprintf("must be a DNS name of at most 253 characters, labels of %s separated by dots", chars))}
	}
	for _, l := range strings.Split(trimmed, ".") {
		if len(l) > 63 {
			return field.ErrorList{field.Invalid(p, name, fmt.Sprintf("label %q is longer than 63 characters", l))}
		}
		if l == "" {
			return field.ErrorList{field.Invalid(p, name, "must not contain an empty label (two dots in a row)")}
		}
	}
	return nil
}

// Package evaluator is the reference evaluator of a compiled NodePolicy: given the spec, an
// IP → identity lookup and one flow, it says whether the flow is allowed, denied or audited, which
// policies decided, and why. It is the oracle the dataplane tests compare the kernel with, and the
// core of offline tracing, so it implements the policy semantics from the NodePolicy alone.
//
// Semantics, per direction, with the rule set the local endpoint names for that direction:
//   - An entry matches a flow when its peer matches the peer's identity (or, for cidr: and fqdn:
//     peers, the peer's address outside the cluster), its protocol is ANY or the flow's, and its
//     port range holds the destination port.
//   - A matching Deny wins. Otherwise, among matching Allows, one without L7 rules allows the flow;
//     else the HTTP (or DNS) rules of all matching allows are OR-ed for the request. With no
//     matching Allow the flow is denied when the direction is enforced (default-deny).
//   - Audit: the decision is first made with Enforce-mode entries only (and default-deny only when
//     an Enforce-mode policy enables it). If that denies, the verdict is Deny. If it allows but the
//     decision with every entry denies, the verdict is Audit: forwarded and reported.
package evaluator

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/identity"
	"github.com/portcullis-dev/portcullis/internal/policy"
)

// Verdict is the outcome for a flow.
type Verdict int

// Verdicts.
const (
	// Allow forwards the flow.
	Allow Verdict = iota + 1
	// Deny drops the flow.
	Deny
	// Audit forwards a flow that an Audit-mode policy would deny, and reports it.
	Audit
)

// String returns Allow, Deny or Audit.
func (v Verdict) String() string {
	switch v {
	case Allow:
		return "Allow"
	case Deny:
		return "Deny"
	case Audit:
		return "Audit"
	}
	return "Verdict(" + strconv.Itoa(int(v)) + ")"
}

// Direction of a flow relative to the local endpoint.
type Direction string

// Directions.
const (
	// Ingress is traffic into the local endpoint (the flow's destination).
	Ingress Direction = "Ingress"
	// Egress is traffic out of the local endpoint (the flow's source).
	Egress Direction = "Egress"
)

// HTTPRequest is the part of an HTTP request that rules judge.
type HTTPRequest struct {
	// Method such as GET.
	Method string
	// Path is the request target; a query string is ignored.
	Path string
	// Host is the Host header.
	Host string
	// Headers of the request; names are compared without regard to case.
	Headers http.Header
}

// Flow is one connection or request to judge.
type Flow struct {
	// Direction says which end is the local endpoint: the destination for Ingress, the source for
	// Egress.
	Direction Direction
	// Source address.
	Source netip.Addr
	// Destination address.
	Destination netip.Addr
	// Protocol is TCP, UDP or SCTP.
	Protocol string
	// Port is the destination port.
	Port uint16
	// HTTP, when set, is a request on the connection, judged by HTTP rules.
	HTTP *HTTPRequest
	// DNSQuery, when set, is a DNS lookup on the connection, judged by DNS rules.
	DNSQuery string
	// DestinationName is the DNS name the egress destination address was learnt from, for toFQDNs
	// peers; empty when unknown.
	DestinationName string
}

// IPCache maps addresses to security identities. Addresses it does not know are outside the
// cluster (world).
type IPCache interface {
	// Lookup returns the identity of an address.
	Lookup(addr netip.Addr) (identity.ID, bool)
}

// MapIPCache is an IPCache backed by a map.
type MapIPCache map[netip.Addr]identity.ID

// Lookup returns the identity of addr.
func (m MapIPCache) Lookup(addr netip.Addr) (identity.ID, bool) {
	id, ok := m[addr]
	return id, ok
}

// Result is the verdict for a flow and its explanation.
type Result struct {
	// Verdict is Allow, Deny or Audit.
	Verdict Verdict
	// Origins are the policies that decided, as Kind/namespace/name with the full kind (the
	// NodePolicy names them by short kind, ap/namespace/name); empty when no policy applies.
	Origins []string
	// Reason says in words why.
	Reason string
	// Endpoint is the local endpoint, namespace/pod.
	Endpoint string
	// PeerIdentity is the identity of the other end (world when the IP cache does not know it).
	PeerIdentity identity.ID
}

// ErrNoEndpoint is wrapped by Evaluate when the local end of a flow is not an endpoint of the node.
var ErrNoEndpoint = errors.New("no local endpoint")

// Evaluator judges flows against one NodePolicy. Build it with New; it is safe for concurrent use.
type Evaluator struct {
	ipcache   IPCache
	endpoints map[netip.Addr]*v1alpha1.NodeEndpoint
	ruleSets  map[string]*direction
}

// direction is a compiled rule set; one serves either direction.
type direction struct {
	enforced        bool
	enforcedBy      []string
	auditEnforcedBy []string
	entries         []entry
}

type entry struct {
	v1alpha1.PolicyEntry
	origins []string // Origins with full kinds
	match   func(p peerInfo) bool
	lo, hi  uint16
	http    []httpRule
	dns     []*regexp.Regexp
	hasHTTP bool
}

type httpRule struct {
	text                string
	method, path, host  *regexp.Regexp
	headers, logHeaders [][2]string
}

type peerInfo struct {
	id    identity.ID
	world bool
	addr  netip.Addr
	name  string
}

// New prepares an evaluator for a spec: it checks and compiles every entry. The spec must not be
// changed while the evaluator is in use.
func New(spec *v1alpha1.NodePolicySpec, ipcache IPCache) (*Evaluator, error) {
	if spec == nil {
		return nil, errors.New("nil node policy spec")
	}
	if ipcache == nil {
		ipcache = MapIPCache{}
	}
	e := &Evaluator{ipcache: ipcache, endpoints: map[netip.Addr]*v1alpha1.NodeEndpoint{}, ruleSets: map[string]*direction{}}
	groups := map[string]map[identity.ID]struct{}{}
	for _, g := range spec.PeerGroups {
		m := make(map[identity.ID]struct{}, len(g.Identities))
		for _, id := range g.Identities {
			m[identity.ID(id)] = struct{}{}
		}
		groups[g.Name] = m
	}
	for i := range spec.RuleSets {
		rs := &spec.RuleSets[i]
		d, err := compileDirection(rs.DirectionPolicy, groups)
		if err != nil {
			return nil, fmt.Errorf("rule set %s: %w", rs.Name, err)
		}
		e.ruleSets[rs.Name] = &d
	}
	for i := range spec.Endpoints {
		ep := &spec.Endpoints[i]
		for _, name := range []string{ep.IngressRuleSet, ep.EgressRuleSet} {
			if _, ok := e.ruleSets[name]; !ok {
				return nil, fmt.Errorf("endpoint %s/%s names rule set %q, which the spec does not define", ep.Namespace, ep.Pod, name)
			}
		}
		for _, s := range ep.IPs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("endpoint %s/%s: %w", ep.Namespace, ep.Pod, err)
			}
			e.endpoints[a] = ep
		}
	}
	return e, nil
}

func compileDirection(d v1alpha1.DirectionPolicy, groups map[string]map[identity.ID]struct{}) (direction, error) {
	out := direction{enforced: d.Enforced}
	var err error
	if out.enforcedBy, err = fullOrigins(d.EnforcedBy); err != nil {
		return out, fmt.Errorf("enforcedBy: %w", err)
	}
	if out.auditEnforcedBy, err = fullOrigins(d.AuditEnforcedBy); err != nil {
		return out, fmt.Errorf("auditEnforcedBy: %w", err)
	}
	for _, pe := range d.Entries {
		en := entry{PolicyEntry: pe}
		if en.origins, err = fullOrigins(pe.Origins); err != nil {
			return out, fmt.Errorf("entry %s: %w", pe.Peer, err)
		}
		if en.match, err = peerMatcher(pe.Peer, groups); err != nil {
			return out, err
		}
		if en.lo, en.hi, err = parsePorts(pe.Ports); err != nil {
			return out, err
		}
		if pe.Action != "Allow" && pe.Action != "Deny" {
			return out, fmt.Errorf("entry %s: unknown action %q", pe.Peer, pe.Action)
		}
		for _, h := range pe.HTTP {
			r, err := compileHTTP(h)
			if err != nil {
				return out, err
			}
			en.http = append(en.http, r)
		}
		en.hasHTTP = len(en.http) > 0
		for _, d := range pe.DNS {
			re, err := policy.FQDNRegexp(d)
			if err != nil {
				return out, err
			}
			en.dns = append(en.dns, re)
		}
		out.entries = append(out.entries, en)
	}
	return out, nil
}

// fullOrigins turns origins named by short kind (ap/namespace/name) into Kind/namespace/name.
func fullOrigins(origins []string) ([]string, error) {
	if len(origins) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(origins))
	for _, o := range origins {
		kind, ns, name, err := policy.ParseOrigin(o)
		if err != nil {
			return nil, err
		}
		if ns == "" {
			out = append(out, kind+"/"+name)
		} else {
			out = append(out, kind+"/"+ns+"/"+name)
		}
	}
	slices.Sort(out)
	return out, nil
}

func parsePorts(s string) (lo, hi uint16, err error) {
	if s == "*" {
		return 0, 65535, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	l, err := strconv.ParseUint(a, 10, 16)
	if err != nil {
		return 0, 0, fmt.Errorf("ports %q: %w", s, err)
	}
	h := l
	if isRange {
		if h, err = strconv.ParseUint(b, 10, 16); err != nil {
			return 0, 0, fmt.Errorf("ports %q: %w", s, err)
		}
	}
	return uint16(l), uint16(h), nil
}

func anchored(expr string) (*regexp.Regexp, error) {
	if expr == "" {
		return nil, nil
	}
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return nil, fmt.Errorf("http rule expression %q: %w", expr, err)
	}
	return re, nil
}

func compileHTTP(text string) (httpRule, error) {
	r, err := policy.ParseHTTPRule(text)
	if err != nil {
		return httpRule{}, err
	}
	out := httpRule{text: text}
	if out.method, err = anchored(r.Method); err != nil {
		return out, err
	}
	if out.path, err = anchored(r.Path); err != nil {
		return out, err
	}
	if out.host, err = anchored(r.Host); err != nil {
		return out, err
	}
	for _, h := range r.Headers {
		n, v := policy.SplitHeader(h)
		out.headers = append(out.headers, [2]string{n, v})
	}
	for _, h := range r.LogHeaders {
		n, v := policy.SplitHeader(h)
		out.logHeaders = append(out.logHeaders, [2]string{n, v})
	}
	return out, nil
}

var entityIDs = map[string]identity.ID{
	"host": identity.Host, "remote-node": identity.RemoteNode, "kube-apiserver": identity.KubeAPIServer,
	"init": identity.Init, "health": identity.Health, "unmanaged": identity.Unmanaged, "ingress": identity.Ingress,
}

func peerMatcher(peer string, groups map[string]map[identity.ID]struct{}) (func(peerInfo) bool, error) {
	kind, val, _ := strings.Cut(peer, ":")
	switch kind {
	case "any":
		return func(peerInfo) bool { return true }, nil
	case "group":
		g, ok := groups[val]
		if !ok {
			return nil, fmt.Errorf("peer %q names a group the spec does not define", peer)
		}
		return func(p peerInfo) bool { _, in := g[p.id]; return in && !p.world }, nil
	case "identity":
		n, err := strconv.ParseUint(val, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("peer %q: %w", peer, err)
		}
		return func(p peerInfo) bool { return p.id == identity.ID(n) }, nil
	case "cidr":
		pf, err := netip.ParsePrefix(val)
		if err != nil {
			return nil, fmt.Errorf("peer %q: %w", peer, err)
		}
		return func(p peerInfo) bool { return p.world && pf.Contains(p.addr) }, nil
	case "fqdn":
		re, err := policy.FQDNRegexp(val)
		if err != nil {
			return nil, fmt.Errorf("peer %q: %w", peer, err)
		}
		return func(p peerInfo) bool { return p.world && p.name != "" && re.MatchString(policy.NormalizeFQDN(p.name)) }, nil
	case "entity":
		switch val {
		case "all":
			return func(peerInfo) bool { return true }, nil
		case "world":
			return func(p peerInfo) bool { return p.world }, nil
		case "world-ipv4":
			return func(p peerInfo) bool { return p.world && p.addr.Unmap().Is4() }, nil
		case "world-ipv6":
			return func(p peerInfo) bool { return p.world && !p.addr.Unmap().Is4() }, nil
		case "cluster":
			return func(p peerInfo) bool { return !p.world && p.id.IsCluster() }, nil
		case "none":
			return func(peerInfo) bool { return false }, nil
		}
		if id, ok := entityIDs[val]; ok {
			return func(p peerInfo) bool { return p.id == id }, nil
		}
	}
	return nil, fmt.Errorf("unknown peer %q", peer)
}

// Evaluate judges one flow.
func (e *Evaluator) Evaluate(f Flow) (Result, error) {
	local, peerAddr := f.Destination, f.Source
	if f.Direction == Egress {
		local, peerAddr = f.Source, f.Destination
	} else if f.Direction != Ingress {
		return Result{}, fmt.Errorf("unknown direction %q", f.Direction)
	}
	ep := e.endpoints[local]
	if ep == nil {
		return Result{}, fmt.Errorf("%w with address %s on this node", ErrNoEndpoint, local)
	}
	res := Result{Endpoint: ep.Namespace + "/" + ep.Pod}
	d := e.ruleSets[ep.IngressRuleSet]
	if f.Direction == Egress {
		d = e.ruleSets[ep.EgressRuleSet]
	}
	pi := peerInfo{addr: peerAddr}
	if f.Direction == Egress {
		pi.name = f.DestinationName
	}
	if id, ok := e.ipcache.Lookup(peerAddr); ok && !id.IsWorld() {
		pi.id = id
	} else {
		pi.world = true
		pi.id = identity.World
		if ok {
			pi.id = id
		}
	}
	res.PeerIdentity = pi.id

	enf := d.decide(f, pi, false)
	if !enf.allowed {
		res.Verdict, res.Origins, res.Reason = Deny, enf.origins, enf.reason
		return res, nil
	}
	all := d.decide(f, pi, true)
	if !all.allowed {
		res.Verdict, res.Origins = Audit, all.origins
		res.Reason = "audit: forwarded, but an Audit-mode policy would deny it: " + all.reason
		return res, nil
	}
	res.Verdict, res.Origins, res.Reason = Allow, enf.origins, enf.reason
	if len(enf.origins) == 0 {
		res.Origins, res.Reason = all.origins, all.reason
	}
	return res, nil
}

type outcome struct {
	allowed bool
	origins []string
	reason  string
}

func originsOf(es []*entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.origins...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// decide makes the decision with Enforce-mode entries only, or with every entry.
func (d *direction) decide(f Flow, p peerInfo, withAudit bool) outcome {
	var denies, allows []*entry
	for i := range d.entries {
		en := &d.entries[i]
		if en.Audit && !withAudit {
			continue
		}
		if en.Protocol != "ANY" && en.Protocol != f.Protocol {
			continue
		}
		if f.Port < en.lo || f.Port > en.hi || !en.match(p) {
			continue
		}
		if en.Action == "Deny" {
			denies = append(denies, en)
		} else {
			allows = append(allows, en)
		}
	}
	where := fmt.Sprintf("%s %s/%d", strings.ToLower(string(f.Direction)), f.Protocol, f.Port)
	if len(denies) > 0 {
		return outcome{false, originsOf(denies), fmt.Sprintf("a deny rule matches %s from peer identity %s (%s)", where, p.id, denies[0].Peer)}
	}
	if len(allows) > 0 {
		var l4, l7 []*entry
		for _, en := range allows {
			if !en.hasHTTP && len(en.dns) == 0 {
				l4 = append(l4, en)
			} else {
				l7 = append(l7, en)
			}
		}
		if len(l4) > 0 {
			return outcome{true, originsOf(l4), fmt.Sprintf("an L4 allow rule matches %s (%s); no L7 filtering", where, l4[0].Peer)}
		}
		switch {
		case f.HTTP != nil:
			return decideHTTP(f.HTTP, l7)
		case f.DNSQuery != "":
			return decideDNS(f.DNSQuery, l7)
		}
		return outcome{true, originsOf(l7), fmt.Sprintf("the connection is allowed on %s; each request is judged by L7 rules", where)}
	}
	enforced := d.enforced
	origins := d.enforcedBy
	if !withAudit && len(d.enforcedBy) == 0 && len(d.auditEnforcedBy) > 0 {
		enforced = false
	}
	if withAudit {
		origins = append(slices.Clone(d.enforcedBy), d.auditEnforcedBy...)
		slices.Sort(origins)
	}
	if enforced {
		return outcome{false, origins, fmt.Sprintf("default deny: no rule allows %s from peer identity %s", where, p.id)}
	}
	return outcome{true, nil, fmt.Sprintf("no policy puts the %s direction in default-deny", strings.ToLower(string(f.Direction)))}
}

func decideHTTP(req *HTTPRequest, l7 []*entry) outcome {
	path, _, _ := strings.Cut(req.Path, "?")
	dots, slash := DotSegment(path), EscapedSlash(path)
	var matched []*entry
	var notes []string
	for _, en := range l7 {
		for _, r := range en.http {
			if (r.method == nil || r.method.MatchString(req.Method)) && (r.path == nil || !dots && !slash && r.path.MatchString(path)) &&
				(r.host == nil || r.host.MatchString(req.Host)) && headersMatch(req.Headers, r.headers) {
				matched = append(matched, en)
				if !headersMatch(req.Headers, r.logHeaders) {
					notes = append(notes, "header mismatch logged for rule "+r.text)
				}
				break
			}
		}
	}
	if len(matched) > 0 {
		reason := fmt.Sprintf("HTTP %s %s matches an allowed rule", req.Method, path)
		if len(notes) > 0 {
			reason += "; " + strings.Join(notes, "; ")
		}
		return outcome{true, originsOf(matched), reason}
	}
	switch {
	case dots:
		return outcome{false, originsOf(l7), fmt.Sprintf("HTTP %s %s has a dot segment, which no HTTP rule with a path matches, and no rule without a path allows it", req.Method, path)}
	case slash:
		return outcome{false, originsOf(l7), fmt.Sprintf("HTTP %s %s has a backslash or an escaped slash, which no HTTP rule with a path matches, and no rule without a path allows it", req.Method, path)}
	}
	return outcome{false, originsOf(l7), fmt.Sprintf("HTTP %s %s matches no HTTP rule of the port", req.Method, path)}
}

// DotSegment reports whether path (without its query) has a "." or ".." segment in any spelling a
// server may decode to one: dots written "." or "%2e", segments separated by "/", "\", "%2f" or
// "%5c", and a segment ending at ";" or "#" (Tomcat reads "/..;/" as "/../"). Such a path matches no
// rule that has a path: "/public/../internal" matches "/public/.*" as sent, and a server that
// normalizes it serves "/internal". The kernel runs the same machine (path_byte in
// bpf/http_match.h); a '%' not followed by two hex digits ends the segment's chance to be one.
func DotSegment(path string) bool {
	const (
		start = iota // at the start of a segment
		dot1         // the segment so far is one dot
		dot2         // two dots
		other        // anything else
	)
	seg, found := start, false
	unit := func(u byte, literal bool) {
		dots := seg == dot1 || seg == dot2
		switch {
		case u == '/' || u == '\\':
			found = found || dots
			seg = start
		case u == '.':
			if seg < other {
				seg++
			}
		default:
			found = found || literal && (u == ';' || u == '#') && dots
			seg = other
		}
	}
	for i := 0; i < len(path); i++ {
		if path[i] != '%' {
			unit(path[i], true)
			continue
		}
		if b, err := hex.DecodeString(path[i+1 : min(i+3, len(path))]); err == nil && len(b) == 1 {
			unit(b[0], false)
			i += 2
			continue
		}
		seg = other // the bytes after it are read as they come
	}
	return found || seg == dot1 || seg == dot2
}

// EscapedSlash reports whether path (without its query) has a backslash or an escaped '/' or '\'
// ("%2f", "%5c", any case), which a server may read as a '/': "/v1/users/x%2fadmin" matches
// "/v1/users/[^/]+" as sent, and a server that decodes it before routing serves a deeper path. Such
// a path matches no rule that has a path; Cilium's Envoy redirects it to the path unescaped. The
// kernel finds it with DotSegment's machine, where every "%2f" or "%5c" is an escape.
func EscapedSlash(path string) bool {
	if strings.Contains(path, `\`) {
		return true
	}
	for i := 0; i+2 < len(path); i++ {
		if path[i] == '%' && (path[i+1] == '2' && (path[i+2] == 'f' || path[i+2] == 'F') ||
			path[i+1] == '5' && (path[i+2] == 'c' || path[i+2] == 'C')) {
			return true
		}
	}
	return false
}

func headersMatch(h http.Header, reqs [][2]string) bool {
	for _, r := range reqs {
		vals := h.Values(r[0])
		if len(vals) == 0 {
			return false
		}
		if r[1] != "" && !slices.ContainsFunc(vals, func(v string) bool { return strings.TrimSpace(v) == r[1] }) {
			return false
		}
	}
	return true
}

func decideDNS(q string, l7 []*entry) outcome {
	name := policy.NormalizeFQDN(q)
	var matched []*entry
	for _, en := range l7 {
		for _, re := range en.dns {
			if re.MatchString(name) {
				matched = append(matched, en)
				break
			}
		}
	}
	if len(matched) > 0 {
		return outcome{true, originsOf(matched), fmt.Sprintf("DNS lookup %s matches an allowed name", name)}
	}
	return outcome{false, originsOf(l7), fmt.Sprintf("DNS lookup %s matches no DNS rule of the port", name)}
}

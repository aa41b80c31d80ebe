package lowering

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/datapath"
)

func spec() *v1alpha1.NodePolicySpec {
	return &v1alpha1.NodePolicySpec{
		NodeName: "node-a",
		PeerGroups: []v1alpha1.PeerGroup{
			{Name: "g-auth", Identities: []uint32{300, 301}},
		},
		Endpoints: []v1alpha1.NodeEndpoint{
			{Namespace: "prod", Pod: "web", IPs: []string{"10.0.1.10"}, Identity: 400, IngressRuleSet: "in-web", EgressRuleSet: "eg-web"},
			{Namespace: "prod", Pod: "new", IPs: []string{"10.0.1.11"}, Identity: 0, IngressRuleSet: "identity-pending", EgressRuleSet: "identity-pending"},
			{Namespace: "prod", Pod: "audited", IPs: []string{"10.0.1.12"}, Identity: 401, IngressRuleSet: "in-audit", EgressRuleSet: "eg-open"},
			{Namespace: "prod", Pod: "gone", IPs: []string{"10.0.1.13"}, Identity: 402, IngressRuleSet: "in-web", EgressRuleSet: "eg-open"},
		},
		RuleSets: []v1alpha1.RuleSet{
			{Name: "identity-pending", DirectionPolicy: v1alpha1.DirectionPolicy{Enforced: true}},
			{Name: "eg-open"},
			{Name: "in-audit", DirectionPolicy: v1alpha1.DirectionPolicy{Enforced: true, AuditEnforcedBy: []string{"ap/prod/a"}}},
			{Name: "in-web", DirectionPolicy: v1alpha1.DirectionPolicy{Enforced: true, EnforcedBy: []string{"ap/prod/web"}, Entries: []v1alpha1.PolicyEntry{
				{Peer: "group:g-auth", Protocol: "TCP", Ports: "8080", Action: "Allow", HTTP: []string{`method="POST"`}, Origins: []string{"ap/prod/web"}},
				{Peer: "identity:301", Protocol: "TCP", Ports: "8080", Action: "Allow", Origins: []string{"ap/prod/l4"}},
				{Peer: "entity:world", Protocol: "ANY", Ports: "53", Action: "Allow", Origins: []string{"ap/prod/dns"}},
				{Peer: "cidr:198.51.100.0/24", Protocol: "TCP", Ports: "9000-9002", Action: "Allow", Origins: []string{"ap/prod/ext"}},
				{Peer: "cidr:198.51.100.128/25", Protocol: "TCP", Ports: "9001", Action: "Deny", Origins: []string{"ap/prod/deny"}},
				{Peer: "fqdn:api.stripe.com.", Protocol: "TCP", Ports: "443", Action: "Allow", Origins: []string{"ap/prod/fqdn"}},
			}}},
			{Name: "eg-web", DirectionPolicy: v1alpha1.DirectionPolicy{Enforced: true, EnforcedBy: []string{"ap/prod/web"}, Entries: []v1alpha1.PolicyEntry{
				{Peer: "entity:host", Protocol: "ANY", Ports: "*", Action: "Allow", Origins: []string{"ap/prod/web"}},
				{Peer: "entity:remote-node", Protocol: "UDP", Ports: "*", Action: "Allow", Origins: []string{"ap/prod/web"}},
			}}},
		},
	}
}

var ipcache = []v1alpha1.IPCacheEntry{
	{IP: "10.0.1.10", Identity: 400, Node: "node-a", Pod: "prod/web"},
	{IP: "10.0.2.10", Identity: 300, Node: "node-b", Pod: "prod/auth-1"},
	{IP: "172.30.0.10", Identity: 6, Node: "node-a"},
	{IP: "172.30.0.11", Identity: 6, Node: "node-b"},
	{IP: "198.51.100.200", Identity: 300, Node: "node-b", Pod: "prod/odd"},
}

func lower(t *testing.T) Result {
	t.Helper()
	return Lower(Input{Node: "node-a", Spec: spec(), IPCache: ipcache,
		Interfaces: map[string]int{"prod/web": 11, "prod/new": 12, "prod/audited": 13}})
}

func key(ep uint32, dir datapath.Direction, peer datapath.Identity, proto datapath.Protocol, port uint16) datapath.PolicyKey {
	return datapath.PolicyKey{EndpointID: ep, Direction: dir, PeerIdentity: peer, Protocol: proto, Port: port}
}

func TestEndpointsAndDefaultDeny(t *testing.T) {
	r := lower(t)
	cases := []struct {
		ifindex                    int
		inEnf, egEnf, inAud, egAud bool
	}{
		{11, true, true, false, false},
		// An endpoint whose identity is pending is denied both ways, never audited open.
		{12, true, true, false, false},
		// Default deny enabled only by an Audit policy reports instead of dropping.
		{13, true, false, true, false},
	}
	for _, c := range cases {
		ep, ok := r.State.Endpoints[c.ifindex]
		if !ok {
			t.Fatalf("no endpoint for ifindex %d", c.ifindex)
		}
		if ep.ID != uint32(c.ifindex) || ep.IngressEnforced != c.inEnf || ep.EgressEnforced != c.egEnf || ep.IngressAudit != c.inAud || ep.EgressAudit != c.egAud {
			t.Errorf("ifindex %d: %+v", c.ifindex, ep)
		}
	}
	if !slices.Equal(r.Missing, []string{"prod/gone"}) {
		t.Errorf("missing interfaces %v, want [prod/gone]", r.Missing)
	}
}

func TestIPCacheNamesHostRemoteNodesAndCIDRs(t *testing.T) {
	r := lower(t)
	want := map[string]datapath.Identity{
		"10.0.1.10/32":   400,
		"172.30.0.10/32": datapath.IdentityHost, // this node
		"172.30.0.11/32": 6,                     // another node
	}
	for p, id := range want {
		if got := r.State.IPCache[netip.MustParsePrefix(p)]; got != id {
			t.Errorf("ipcache %s = %d, want %d", p, got, id)
		}
	}
	c24 := r.State.IPCache[netip.MustParsePrefix("198.51.100.0/24")]
	c25 := r.State.IPCache[netip.MustParsePrefix("198.51.100.128/25")]
	if c24 < cidrIdentityBase || c25 < cidrIdentityBase || c24 == c25 {
		t.Errorf("CIDR identities %d, %d: want two distinct local identities", c24, c25)
	}
	// A pod address inside a CIDR keeps its own identity: CIDR rules match only the outside.
	if got := r.State.IPCache[netip.MustParsePrefix("198.51.100.200/32")]; got != 300 {
		t.Errorf("pod inside a CIDR has identity %d, want 300", got)
	}
}

func TestPolicyEntries(t *testing.T) {
	r := lower(t)
	c24 := r.State.IPCache[netip.MustParsePrefix("198.51.100.0/24")]
	c25 := r.State.IPCache[netip.MustParsePrefix("198.51.100.128/25")]
	in, eg := datapath.Ingress, datapath.Egress
	tcp, udp := datapath.ProtocolTCP, datapath.ProtocolUDP
	type want struct {
		k      datapath.PolicyKey
		action datapath.Action
		l7     bool
		origin string
	}
	for _, w := range []want{
		// A group expands to its identities; the L4-only allow of 301 wins over the L7 allow.
		{key(11, in, 300, tcp, 8080), datapath.Allow, true, "ap/prod/web"},
		{key(11, in, 301, tcp, 8080), datapath.Allow, false, "ap/prod/l4"},
		// A port with protocol ANY is that port over TCP and UDP; world includes the CIDR identities.
		{key(11, in, datapath.IdentityWorld, tcp, 53), datapath.Allow, false, "ap/prod/dns"},
		{key(11, in, datapath.IdentityWorld, udp, 53), datapath.Allow, false, "ap/prod/dns"},
		{key(11, in, c24, udp, 53), datapath.Allow, false, "ap/prod/dns"},
		// A CIDR covers the identities of the CIDRs inside it; ranges are expanded; deny beats allow.
		{key(11, in, c24, tcp, 9000), datapath.Allow, false, "ap/prod/ext"},
		{key(11, in, c25, tcp, 9002), datapath.Allow, false, "ap/prod/ext"},
		{key(11, in, c25, tcp, 9001), datapath.Deny, false, "ap/prod/deny"},
		// Entities.
		{key(11, eg, datapath.IdentityHost, datapath.ProtocolAny, 0), datapath.Allow, false, "ap/prod/web"},
		{key(11, eg, 6, udp, 0), datapath.Allow, false, "ap/prod/web"},
	} {
		got, ok := r.State.Policy[w.k]
		if !ok {
			t.Errorf("no entry for %v", w.k)
			continue
		}
		if got.Action != w.action || got.L7 != w.l7 || r.Policies[got.PolicyID] != w.origin {
			t.Errorf("%v = %+v (%s), want %s l7=%v from %s", w.k, got, r.Policies[got.PolicyID], w.action, w.l7, w.origin)
		}
	}
	if _, ok := r.State.Policy[key(11, in, c24, tcp, 9003)]; ok {
		t.Error("a port outside the range got an entry")
	}
	for k := range r.State.Policy {
		if k.EndpointID == 12 {
			t.Errorf("the identity-pending endpoint got an entry: %v", k)
		}
	}
	// HTTP: 300 gets the rule; 301, also allowed by an L4-only rule on the port, gets every request.
	wantSets := []HTTPRuleSet{
		{EndpointID: 11, PeerIdentity: 300, Port: 8080, Rules: []string{`method="POST"`}},
		{EndpointID: 11, PeerIdentity: 301, Port: 8080, Rules: []string{"any"}},
	}
	if len(r.HTTPRuleSets) != len(wantSets) {
		t.Fatalf("HTTP rule sets %+v, want %+v", r.HTTPRuleSets, wantSets)
	}
	for i, w := range wantSets {
		g := r.HTTPRuleSets[i]
		if g.EndpointID != w.EndpointID || g.PeerIdentity != w.PeerIdentity || g.Port != w.Port || !slices.Equal(g.Rules, w.Rules) {
			t.Errorf("HTTP rule set %d = %+v, want %+v", i, g, w)
		}
	}
	if len(r.HTTPPorts) != 1 || r.HTTPPorts[0] != (HTTPPort{Addr: netip.MustParseAddr("10.0.1.10"), Port: 8080, EndpointID: 11}) {
		t.Errorf("judged ports %+v", r.HTTPPorts)
	}
	if !slices.ContainsFunc(r.Unsupported, func(s string) bool { return strings.Contains(s, "toFQDNs") }) {
		t.Errorf("the unresolved FQDN peer is not reported: %v", r.Unsupported)
	}
}

func TestLoweringIsDeterministic(t *testing.T) {
	a, b := lower(t), lower(t)
	if len(a.State.Policy) != len(b.State.Policy) {
		t.Fatal("different entry counts")
	}
	for k, v := range a.State.Policy {
		if b.State.Policy[k] != v {
			t.Fatalf("%v differs between two lowerings", k)
		}
	}
	for p, id := range a.State.IPCache {
		if b.State.IPCache[p] != id {
			t.Fatalf("ipcache %v differs", p)
		}
	}
}

func TestHTTPRulesForEveryPeerFoldIntoEachPeersSet(t *testing.T) {
	s := &v1alpha1.NodePolicySpec{
		NodeName:   "node-a",
		PeerGroups: []v1alpha1.PeerGroup{{Name: "g", Identities: []uint32{300}}},
		Endpoints:  []v1alpha1.NodeEndpoint{{Namespace: "p", Pod: "api", IPs: []string{"10.0.1.20", "fd00::20"}, Identity: 400, IngressRuleSet: "in", EgressRuleSet: "eg"}},
		RuleSets: []v1alpha1.RuleSet{
			{Name: "eg"},
			{Name: "in", DirectionPolicy: v1alpha1.DirectionPolicy{Enforced: true, EnforcedBy: []string{"ap/p/x"}, Entries: []v1alpha1.PolicyEntry{
				{Peer: "any", Protocol: "TCP", Ports: "9000", Action: "Allow", HTTP: []string{`method="GET" path="/a"`}, Origins: []string{"ap/p/x"}},
				{Peer: "group:g", Protocol: "TCP", Ports: "9000", Action: "Allow", HTTP: []string{`method="POST" path="/b"`}, Origins: []string{"ap/p/y"}},
			}}},
		},
	}
	r := Lower(Input{Node: "node-a", Spec: s, Interfaces: map[string]int{"p/api": 21}})
	want := map[datapath.Identity][]string{
		datapath.IdentityAny: {`method="GET" path="/a"`},
		300:                  {`method="GET" path="/a"`, `method="POST" path="/b"`},
	}
	if len(r.HTTPRuleSets) != len(want) {
		t.Fatalf("rule sets %+v", r.HTTPRuleSets)
	}
	for _, rs := range r.HTTPRuleSets {
		if !slices.Equal(rs.Rules, want[rs.PeerIdentity]) || rs.Port != 9000 || rs.EndpointID != 21 {
			t.Errorf("rule set %+v, want rules %v", rs, want[rs.PeerIdentity])
		}
	}
	if len(r.HTTPPorts) != 2 {
		t.Errorf("both addresses of the endpoint are judged on 9000: %+v", r.HTTPPorts)
	}
	for _, rs := range r.HTTPRuleSets {
		if rs.Audit {
			t.Errorf("rule set %+v in audit mode; the direction is enforced by ap/p/x", rs)
		}
		if got := rs.Origins[`method="GET" path="/a"`]; !slices.Equal(got, []string{"ap/p/x"}) {
			t.Errorf("origins of the GET rule: %v", got)
		}
	}

	// The same rules when only Audit-mode policies close the direction: every set audits, and the
	// wildcard set exists for peers without rules (their requests are forwarded and reported).
	s.RuleSets[1].Entries = s.RuleSets[1].Entries[1:]
	s.RuleSets[1].EnforcedBy, s.RuleSets[1].AuditEnforcedBy = nil, []string{"ap/p/y"}
	r = Lower(Input{Node: "node-a", Spec: s, Interfaces: map[string]int{"p/api": 21}})
	peers := map[datapath.Identity]bool{}
	for _, rs := range r.HTTPRuleSets {
		peers[rs.PeerIdentity] = true
		if !rs.Audit {
			t.Errorf("rule set %+v not in audit mode", rs)
		}
	}
	if !peers[datapath.IdentityAny] || !peers[300] || len(peers) != 2 {
		t.Errorf("audit rule sets for peers %v, want the wildcard and 300", peers)
	}
}

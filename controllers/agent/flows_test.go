package agent

import (
	"context"
	"iter"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portcullis-dev/portcullis/internal/l7"
)

// fakeRules stands in for *l7.L7's rule bookkeeping (a pure unit: the HTTP reader's naming).
type fakeRules struct {
	sources map[l7.RuleKey][][]string
	version uint64
	lookups int
}

func (r *fakeRules) RuleSources(key l7.RuleKey, rule int) ([]string, l7.RuleKey) {
	r.lookups++
	src, ok := r.sources[key]
	if !ok {
		key.PeerIdentity = 0
		src = r.sources[key]
	}
	if rule < 0 || rule >= len(src) {
		return nil, key
	}
	return src[rule], key
}

func (r *fakeRules) RulesVersion() uint64 { return r.version }

func (r *fakeRules) ReadEvents(context.Context) iter.Seq2[l7.Event, error] {
	return func(func(l7.Event, error) bool) {}
}

var (
	testServer = netip.MustParseAddr("10.0.1.5")
	testClient = netip.MustParseAddr("10.0.2.7")
	testKey    = l7.RuleKey{EndpointID: 3, PeerIdentity: 1001, Port: 8080}
)

func newTestFlows(size int) (*Flows, *fakeRules) {
	rules := &fakeRules{sources: map[l7.RuleKey][][]string{testKey: {
		{`method="GET" path="/a"`},
		{`method="GET" path="/private/metrics" header="X-Internal-Scraper: true" logHeader="X-Trace: 1" logHeader="X-Team: core"`},
	}}}
	f := NewFlows(nil, nil, nil, "node-a", size)
	f.http = rules
	f.setNames(names{pods: map[netip.Addr]string{testServer: "production/user-service", testClient: "production/auth-service"}})
	f.setHTTPOrigins(map[l7.RuleKey]map[string][]string{testKey: {
		`method="GET" path="/a"`: {"production/b-policy", "production/a-policy"},
		`method="GET" path="/private/metrics" header="X-Internal-Scraper: true" logHeader="X-Trace: 1" logHeader="X-Team: core"`: {"monitoring/scrape"},
	}})
	return f, rules
}

func testEvent(path string, rule int) l7.Event {
	return l7.Event{Time: time.Unix(1, 0), Latency: 900, EndpointID: testKey.EndpointID, PeerIdentity: testKey.PeerIdentity,
		Local: netip.AddrPortFrom(testServer, 8080), Remote: netip.AddrPortFrom(testClient, 40000), Port: 8080,
		Verdict: l7.VerdictAllowed, Method: "GET", Path: path, Host: "user-service", Rule: rule}
}

func TestHTTPFlowsNameRulesPodsAndPolicies(t *testing.T) {
	f, rules := newTestFlows(4)
	rd := newHTTPReader()
	f.takeHTTP(testEvent("/a", 0), rd)
	ev := testEvent("/private/metrics", 1)
	ev.LogMissing = 1 << 2 // the second logged header (after one matched header and the first logged)
	f.takeHTTP(ev, rd)
	f.takeHTTP(testEvent("/a", 0), rd)

	got := f.Recent()
	if len(got) != 3 {
		t.Fatalf("%d flows, want 3", len(got))
	}
	a, m := got[0], got[1]
	if a.Source.Pod != "production/auth-service" || a.Source.IP != "10.0.2.7" || a.Source.Identity != 1001 ||
		a.Dest.Pod != "production/user-service" || a.Dest.IP != "10.0.1.5" || a.Dest.Port != 8080 {
		t.Errorf("endpoints %+v → %+v", a.Source, a.Dest)
	}
	if a.Policy != "production/a-policy" || a.HTTP.Rule != `method="GET" path="/a"` || a.HTTP.JudgedAt != "server" {
		t.Errorf("first flow: policy %q, rule %q, judged at %q", a.Policy, a.HTTP.Rule, a.HTTP.JudgedAt)
	}
	if m.Policy != "monitoring/scrape" || len(m.HTTP.HeaderMismatches) != 1 || m.HTTP.HeaderMismatches[0] != "X-Team: core" {
		t.Errorf("second flow: policy %q, mismatches %q", m.Policy, m.HTTP.HeaderMismatches)
	}
	if rules.lookups != 2 {
		t.Errorf("%d rule lookups for two distinct rules, want 2 (the rest from the cache)", rules.lookups)
	}

	// A new rule set, new origins and new names are seen at once.
	rules.sources[testKey][0] = []string{`method="GET" path="/b"`}
	rules.version++
	f.setHTTPOrigins(map[l7.RuleKey]map[string][]string{testKey: {`method="GET" path="/b"`: {"production/c-policy"}}})
	f.setNames(names{pods: map[netip.Addr]string{testClient: "production/renamed"}})
	f.takeHTTP(testEvent("/b", 0), rd)
	got = f.Recent()
	b := got[len(got)-1]
	if b.HTTP.Rule != `method="GET" path="/b"` || b.Policy != "production/c-policy" || b.Source.Pod != "production/renamed" || b.Dest.Pod != "" {
		t.Errorf("after the change: rule %q, policy %q, source pod %q, destination pod %q", b.HTTP.Rule, b.Policy, b.Source.Pod, b.Dest.Pod)
	}
	rules.version++ // a rule set rewritten without an origins change
	rules.sources[testKey][0] = []string{`method="GET" path="/c"`}
	f.takeHTTP(testEvent("/c", 0), rd)
	if got := f.Recent(); got[len(got)-1].HTTP.Rule != `method="GET" path="/c"` {
		t.Errorf("after a rule set change: rule %q", got[len(got)-1].HTTP.Rule)
	}
}

func TestHTTPFlowsReturnedOutliveTheRing(t *testing.T) {
	f, _ := newTestFlows(2)
	rd := newHTTPReader()
	f.takeHTTP(testEvent("/a", 0), rd)
	first := f.Recent()
	for _, p := range []string{"/x", "/y", "/z"} { // the ring comes round twice
		f.takeHTTP(testEvent(p, -1), rd)
	}
	if first[0].HTTP.Path != "/a" || first[0].Policy != "production/a-policy" {
		t.Fatalf("a flow returned earlier changed to %+v, policy %q", *first[0].HTTP, first[0].Policy)
	}
	got := f.Recent()
	if len(got) != 2 || got[0].HTTP.Path != "/y" || got[1].HTTP.Path != "/z" || got[1].Policy != "" || got[1].HTTP.Rule != "" {
		t.Fatalf("kept %d flows: %+v", len(got), got)
	}
}

// BenchmarkTakeHTTP is the agent's CPU per judged request once the event is decoded: naming,
// keeping and counting it (allowed requests of one client under one rule, as in the lab's wrk runs).
func BenchmarkTakeHTTP(b *testing.B) {
	f, _ := newTestFlows(4096)
	rd := newHTTPReader()
	ev := testEvent("/a", 0)
	b.ReportAllocs()
	for b.Loop() {
		f.takeHTTP(ev, rd)
	}
}

type fakeCounters map[string]uint64

func (c fakeCounters) Counters() (map[string]uint64, error) { return c, nil }

func TestHTTPCountersAreExportedByReason(t *testing.T) {
	c := newHTTPCounterCollector(fakeCounters{"forbidden": 3, "event-lost": 2, "guard-drop": 1})
	want := `
# HELP portcullis_http_datapath_total The HTTP programs' counters by reason: requests allowed, audited and denied (by why), answered with 403 (forbidden) or reset, messages passed and dropped, data dropped by the guards, events lost, holds too long, pieces passed ahead of their judgment.
# TYPE portcullis_http_datapath_total counter
portcullis_http_datapath_total{reason="event-lost"} 2
portcullis_http_datapath_total{reason="forbidden"} 3
portcullis_http_datapath_total{reason="guard-drop"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

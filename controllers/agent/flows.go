package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/portcullis-dev/portcullis/internal/datapath"
	"github.com/portcullis-dev/portcullis/internal/l7"
	"github.com/portcullis-dev/portcullis/internal/policy"
)

// FlowEndpoint is one end of a flow, named.
type FlowEndpoint struct {
	IP       string `json:"ip"`
	Port     uint16 `json:"port,omitempty"`
	Identity uint32 `json:"identity"`
	// Pod is "namespace/name" when the address is a pod's.
	Pod string `json:"pod,omitempty"`
}

// FlowRecord is a flow event as the agent reports it: the kernel's verdict on a new connection,
// with both ends and the deciding policy named.
type FlowRecord struct {
	Time      time.Time    `json:"time"`
	Node      string       `json:"node"`
	Direction string       `json:"direction"`
	Verdict   string       `json:"verdict"`
	Reason    string       `json:"reason"`
	Protocol  string       `json:"protocol"`
	Source    FlowEndpoint `json:"source"`
	Dest      FlowEndpoint `json:"destination"`
	// Policy is the policy whose entry decided (kind/namespace/name); empty for default deny.
	Policy string `json:"policy,omitempty"`
	// HTTP is set for a request judged at the socket (Protocol "HTTP"): one record per request.
	HTTP *HTTPFlow `json:"http,omitempty"`
}

// HTTPFlow is what the kernel saw of one HTTP request and how it answered.
type HTTPFlow struct {
	Method string `json:"method,omitempty"`
	// Path and Host are cut at 128 and 64 bytes (Cut is then true).
	Path string `json:"path,omitempty"`
	Host string `json:"host,omitempty"`
	Cut  bool   `json:"cut,omitempty"`
	// Response is how a dropped request was answered: "403" (403 Forbidden, Connection: close) or
	// "reset" (the connection is reset); empty otherwise, and for egress, where the writer's send
	// fails with EACCES.
	Response string `json:"response,omitempty"`
	// Rule is the HTTP rule that allowed the request (normalized form).
	Rule string `json:"rule,omitempty"`
	// HeaderMismatches are the headerMatches with mismatch: LOG of that rule the request did not
	// meet.
	HeaderMismatches []string `json:"headerMismatches,omitempty"`
	// DecisionNanos is the time the kernel spent parsing the header block and matching the rules.
	DecisionNanos int64 `json:"decisionNanoseconds"`
	// JudgedAt is where an ingress request was judged: "server" (on the server's side: its socket,
	// or its pod's interfaces with --http-judge-before-tcp) or "client" (the socket of a client on
	// the same node, --http-judge-at-source); empty for egress.
	JudgedAt string `json:"judgedAt,omitempty"`
}

var (
	flowsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_agent_flows_total",
		Help: "Flow events read from the kernel, by direction and verdict.",
	}, []string{"direction", "verdict"})
	httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_agent_http_requests_total",
		Help: "HTTP requests judged at the socket, by direction, verdict, response (403, reset) and deciding policy.",
	}, []string{"direction", "verdict", "response", "policy"})
	httpDecisionSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "portcullis_agent_http_decision_seconds",
		Help:    "Time the kernel spent deciding an HTTP request (header block parse and rule match).",
		Buckets: prometheus.ExponentialBuckets(250e-9, 2, 12),
	})
)

func init() {
	metrics.Registry.MustRegister(flowsTotal, httpRequests, httpDecisionSeconds)
}

// names is the lookup the flow recorder uses to name addresses and policies; the reconciler
// replaces it after every converge.
type names struct {
	pods     map[netip.Addr]string
	policies map[uint32]string
}

// Flows reads the kernel's flow events (L3/L4 connections and, with HTTP judging on, HTTP
// requests), names them, counts them, and keeps the most recent ones for the /flows endpoint. It is
// a manager Runnable.
type Flows struct {
	dp    *datapath.Datapath
	http  httpSource // nil when HTTP judging is off
	reset *Resetter
	node  string

	mu          sync.Mutex
	names       names
	httpOrigins map[l7.RuleKey]map[string][]string
	ring        []FlowRecord
	httpRing    []HTTPFlow // ring[i].HTTP points at httpRing[i] for HTTP flows: no allocation per request
	next        int
	full        bool
	// namesGen and originsGen count the changes to names and httpOrigins, so that the HTTP reader
	// knows when what it cached from them is stale (httpReader).
	namesGen, originsGen uint64
}

// httpSource is what the HTTP reader needs of *l7.L7.
type httpSource interface {
	RuleSources(key l7.RuleKey, rule int) ([]string, l7.RuleKey)
	RulesVersion() uint64
	ReadEvents(ctx context.Context) iter.Seq2[l7.Event, error]
}

type endpointName struct{ ip, pod string }

type ruleRef struct {
	key  l7.RuleKey
	rule int
}

// ruleName is how the flows name the rule that allowed a request.
type ruleName struct {
	rule, policy string
	// logHeaders are the rule's logged headers, and firstLog the bit of the first in the event's
	// LogMissing (the matched headers come first).
	logHeaders []string
	firstLog   int
}

// NewFlows returns a recorder that keeps the last size flows. http and reset may be nil (HTTP
// judging off); reset, when set, is told about every denied request.
func NewFlows(dp *datapath.Datapath, http *l7.L7, reset *Resetter, node string, size int) *Flows {
	f := &Flows{dp: dp, reset: reset, node: node, ring: make([]FlowRecord, size), httpRing: make([]HTTPFlow, size),
		names: names{pods: map[netip.Addr]string{}, policies: map[uint32]string{}}}
	if http != nil { // a nil *l7.L7 in the interface would not compare equal to nil
		f.http = http
	}
	return f
}

func (f *Flows) setHTTPOrigins(o map[l7.RuleKey]map[string][]string) {
	f.mu.Lock()
	f.httpOrigins = o
	f.originsGen++
	f.mu.Unlock()
}

func (f *Flows) setNames(n names) {
	f.mu.Lock()
	f.names = n
	f.namesGen++
	f.mu.Unlock()
}

func protoName(p datapath.Protocol) string {
	switch p {
	case datapath.ProtocolTCP:
		return "TCP"
	case datapath.ProtocolUDP:
		return "UDP"
	case datapath.ProtocolICMP:
		return "ICMP"
	case datapath.ProtocolICMPv6:
		return "ICMPv6"
	}
	return strconv.Itoa(int(p))
}

// Start reads flows until ctx ends.
func (f *Flows) Start(ctx context.Context) error {
	if f.http != nil {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			f.readHTTP(ctx)
		}()
	}
	for fl, err := range f.dp.ReadFlows(ctx) {
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.FromContext(ctx).Error(err, "read flow")
			continue
		}
		f.mu.Lock()
		rec := FlowRecord{
			Time: fl.Time, Node: f.node, Direction: fl.Direction.String(), Verdict: fl.Verdict.String(),
			Reason: fl.Reason.String(), Protocol: protoName(fl.Protocol),
			Source: FlowEndpoint{IP: fl.Src.String(), Port: fl.SrcPort, Identity: uint32(fl.SrcIdentity), Pod: f.names.pods[fl.Src]},
			Dest:   FlowEndpoint{IP: fl.Dst.String(), Port: fl.DstPort, Identity: uint32(fl.DstIdentity), Pod: f.names.pods[fl.Dst]},
			Policy: f.names.policies[fl.PolicyID],
		}
		f.keepLocked(rec)
		f.mu.Unlock()
		flowsTotal.WithLabelValues(rec.Direction, rec.Verdict).Inc()
	}
	return nil
}

func (f *Flows) keepLocked(rec FlowRecord) {
	f.ring[f.next] = rec
	f.next = (f.next + 1) % len(f.ring)
	if f.next == 0 {
		f.full = true
	}
}

// keepHTTPLocked keeps an HTTP flow, its HTTP part in the slot's own storage.
func (f *Flows) keepHTTPLocked(rec FlowRecord, h *HTTPFlow) {
	f.httpRing[f.next] = *h
	rec.HTTP = &f.httpRing[f.next]
	f.keepLocked(rec)
}

// httpCounterKey labels the per-request counters; readHTTP keeps their children, since looking them
// up by label values for every request costs more than the kernel's decision.
type httpCounterKey struct{ direction, verdict, response, policy string }

type httpCounters struct {
	flows, requests prometheus.Counter
}

// httpReader is the HTTP reader's own state. It names each request from what it worked out once
// and reuses (at tens of thousands of requests per second, naming each one afresh cost the agent
// more CPU than the kernel's judging): the text and pod of each address, until the names change;
// each kernel rule's source, policy and logged headers, until the origins or the rule sets change
// (l7's RulesVersion). It never holds the flows' lock while asking l7, whose lock a converge holds.
type httpReader struct {
	counters  map[httpCounterKey]httpCounters
	endpoints map[netip.Addr]endpointName
	rules     map[ruleRef]ruleName
	// What the caches were filled under.
	namesGen, originsGen, rulesVersion uint64
}

func newHTTPReader() *httpReader {
	return &httpReader{counters: map[httpCounterKey]httpCounters{}, endpoints: map[netip.Addr]endpointName{}, rules: map[ruleRef]ruleName{}}
}

// readHTTP reads the kernel's HTTP request events until ctx ends.
func (f *Flows) readHTTP(ctx context.Context) {
	rd := newHTTPReader()
	for ev, err := range f.http.ReadEvents(ctx) {
		if err != nil {
			if ctx.Err() == nil {
				log.FromContext(ctx).Error(err, "read HTTP event")
			}
			continue
		}
		f.takeHTTP(ev, rd)
	}
}

// takeHTTP records, counts and (when denied) reports one HTTP event.
func (f *Flows) takeHTTP(ev l7.Event, rd *httpReader) {
	if f.reset != nil && ev.Verdict == l7.VerdictDenied {
		// Ingress: a 403 (reset later, after a grace) or a reset now. Egress: the writer got
		// EACCES; its connection is reset now.
		f.reset.Notify(ev.Response)
	}
	f.mu.Lock()
	namesGen, originsGen := f.namesGen, f.originsGen
	f.mu.Unlock()
	if namesGen != rd.namesGen {
		clear(rd.endpoints)
		rd.namesGen = namesGen
	}
	if v := f.http.RulesVersion(); originsGen != rd.originsGen || v != rd.rulesVersion {
		clear(rd.rules)
		rd.originsGen, rd.rulesVersion = originsGen, v
	}
	var h HTTPFlow
	rec := f.httpRecord(ev, rd, &h)
	f.mu.Lock()
	f.keepHTTPLocked(rec, &h)
	f.mu.Unlock()
	k := httpCounterKey{rec.Direction, rec.Verdict, h.Response, rec.Policy}
	c, ok := rd.counters[k]
	if !ok {
		c = httpCounters{flowsTotal.WithLabelValues(k.direction, k.verdict), httpRequests.WithLabelValues(k.direction, k.verdict, k.response, k.policy)}
		rd.counters[k] = c
	}
	c.flows.Inc()
	c.requests.Inc()
	httpDecisionSeconds.Observe(ev.Latency.Seconds())
}

// httpRecord names an HTTP event: both pods, the rule that allowed it and its policy, and the
// logged header mismatches; the HTTP part goes to h.
func (f *Flows) httpRecord(ev l7.Event, rd *httpReader, h *HTTPFlow) FlowRecord {
	*h = HTTPFlow{Method: ev.Method, Path: ev.Path, Host: ev.Host, Cut: ev.PathCut || ev.HostCut,
		Response: ev.Response.String(), DecisionNanos: ev.Latency.Nanoseconds()}
	rec := FlowRecord{Time: ev.Time, Node: f.node, Direction: "ingress", Verdict: ev.Verdict.String(),
		Reason: ev.Reason.String(), Protocol: "HTTP"}
	local, remote := f.endpoint(rd, ev.Local.Addr()), f.endpoint(rd, ev.Remote.Addr())
	rec.Dest = FlowEndpoint{IP: local.ip, Port: ev.Local.Port(), Pod: local.pod}
	rec.Source = FlowEndpoint{IP: remote.ip, Port: ev.Remote.Port(), Identity: ev.PeerIdentity, Pod: remote.pod}
	switch {
	case ev.Egress:
		rec.Direction, rec.Source, rec.Dest = "egress", rec.Dest, rec.Source
	case ev.AtSource:
		h.JudgedAt = "client"
	default:
		h.JudgedAt = "server"
	}
	if ev.Rule < 0 {
		return rec
	}
	r := f.rule(rd, ev.Key(), ev.Rule)
	h.Rule, rec.Policy = r.rule, r.policy
	if ev.LogMissing != 0 {
		for i, hdr := range r.logHeaders {
			if ev.LogMissing&(1<<(r.firstLog+i)) != 0 {
				h.HeaderMismatches = append(h.HeaderMismatches, hdr)
			}
		}
	}
	return rec
}

// endpoint names an address, from the reader's cache when it can.
func (f *Flows) endpoint(rd *httpReader, a netip.Addr) endpointName {
	if n, ok := rd.endpoints[a]; ok {
		return n
	}
	f.mu.Lock()
	pod := f.names.pods[a]
	f.mu.Unlock()
	n := endpointName{ip: a.String(), pod: pod}
	if len(rd.endpoints) >= 1<<16 { // peers outside the cluster can be many
		clear(rd.endpoints)
	}
	rd.endpoints[a] = n
	return n
}

// rule names the kernel's rule index rule of the rule set that judged key, from the reader's cache
// when it can.
func (f *Flows) rule(rd *httpReader, key l7.RuleKey, rule int) ruleName {
	ref := ruleRef{key, rule}
	if r, ok := rd.rules[ref]; ok {
		return r
	}
	var r ruleName
	sources, key := f.http.RuleSources(key, rule)
	if len(sources) > 0 {
		r.rule = sources[0]
		if len(sources) > 1 {
			r.rule = fmt.Sprintf("%s (and %d more rules that differ only in path)", sources[0], len(sources)-1)
		}
		var pols []string
		f.mu.Lock()
		for _, src := range sources {
			pols = append(pols, f.httpOrigins[key][src]...)
		}
		f.mu.Unlock()
		if len(pols) > 0 {
			r.policy = slices.Min(pols)
		}
		if p, err := policy.ParseHTTPRule(sources[0]); err == nil {
			r.logHeaders, r.firstLog = p.LogHeaders, len(p.Headers)
		}
	}
	rd.rules[ref] = r
	return r
}

// Recent returns the kept flows, oldest first.
func (f *Flows) Recent() []FlowRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []FlowRecord
	if f.full {
		out = append(out, f.ring[f.next:]...)
	}
	out = append(out, f.ring[:f.next]...)
	for i := range out {
		if out[i].HTTP != nil { // the slot's storage is reused when the ring comes round
			h := *out[i].HTTP
			out[i].HTTP = &h
		}
	}
	return out
}

// ServeHTTP answers GET /flows with the kept flows as JSON, optionally only those of one pod
// (?pod=namespace/name).
func (f *Flows) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	pod := r.URL.Query().Get("pod")
	out := []FlowRecord{}
	for _, rec := range f.Recent() {
		if pod == "" || rec.Source.Pod == pod || rec.Dest.Pod == pod {
			out = append(out, rec)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// httpCounterCollector exports the HTTP programs' per-reason counters (l7.Counters): what the
// flow events do not show, such as guard drops, events the ring could not take, connections held
// too long or denied because a working slot was busy, next to the requests allowed and denied.
type httpCounterCollector struct {
	src  httpCounterSource
	desc *prometheus.Desc
}

// httpCounterSource is what the collector needs of *l7.L7.
type httpCounterSource interface {
	Counters() (map[string]uint64, error)
}

func newHTTPCounterCollector(src httpCounterSource) *httpCounterCollector {
	return &httpCounterCollector{src: src, desc: prometheus.NewDesc("portcullis_http_datapath_total",
		"The HTTP programs' counters by reason: requests allowed, audited and denied (by why), answered with 403 (forbidden) or reset, messages passed and dropped, data dropped by the guards, events lost, holds too long, pieces passed ahead of their judgment.",
		[]string{"reason"}, nil)}
}

func (c *httpCounterCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *httpCounterCollector) Collect(ch chan<- prometheus.Metric) {
	counters, err := c.src.Counters()
	if err != nil {
		return
	}
	for reason, v := range counters {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), reason)
	}
}

// counterCollector exports the kernel's per-policy, per-reason counters to Prometheus.
type counterCollector struct {
	dp       *datapath.Datapath
	policies func() map[uint32]string
	packets  *prometheus.Desc
	bytes    *prometheus.Desc
}

func newCounterCollector(dp *datapath.Datapath, policies func() map[uint32]string) *counterCollector {
	labels := []string{"policy", "reason", "direction"}
	return &counterCollector{dp: dp, policies: policies,
		packets: prometheus.NewDesc("portcullis_datapath_packets_total", "Packets judged by the kernel, by deciding policy, reason and direction.", labels, nil),
		bytes:   prometheus.NewDesc("portcullis_datapath_bytes_total", "Bytes judged by the kernel, by deciding policy, reason and direction.", labels, nil),
	}
}

func (c *counterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
}

func (c *counterCollector) Collect(ch chan<- prometheus.Metric) {
	counters, err := c.dp.Counters()
	if err != nil {
		return
	}
	pols := c.policies()
	for k, v := range counters {
		pol := pols[k.PolicyID]
		if pol == "" && k.PolicyID != 0 {
			pol = "id:" + strconv.FormatUint(uint64(k.PolicyID), 10)
		}
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(v.Packets), pol, k.Reason.String(), k.Direction.String())
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(v.Bytes), pol, k.Reason.String(), k.Direction.String())
	}
}

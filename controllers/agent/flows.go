package agent

import (
	"context"
	"encoding/json"
	"fmt"
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
	// JudgedAt is where an ingress request was judged: "server" (the server's socket) or "client"
	// (the socket of a client on the same node, --http-judge-at-source); empty for egress.
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
	http  *l7.L7
	reset *Resetter
	node  string

	mu          sync.Mutex
	names       names
	httpOrigins map[l7.RuleKey]map[string][]string
	ring        []FlowRecord
	next        int
	full        bool
}

// NewFlows returns a recorder that keeps the last size flows. http and reset may be nil (HTTP
// judging off); reset, when set, is told about every denied request.
func NewFlows(dp *datapath.Datapath, http *l7.L7, reset *Resetter, node string, size int) *Flows {
	return &Flows{dp: dp, http: http, reset: reset, node: node, ring: make([]FlowRecord, size),
		names: names{pods: map[netip.Addr]string{}, policies: map[uint32]string{}}}
}

func (f *Flows) setHTTPOrigins(o map[l7.RuleKey]map[string][]string) {
	f.mu.Lock()
	f.httpOrigins = o
	f.mu.Unlock()
}

func (f *Flows) setNames(n names) {
	f.mu.Lock()
	f.names = n
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

// httpCounterKey labels the per-request counters; readHTTP keeps their children, since looking them
// up by label values for every request costs more than the kernel's decision.
type httpCounterKey struct{ direction, verdict, response, policy string }

type httpCounters struct {
	flows, requests prometheus.Counter
}

// readHTTP reads the kernel's HTTP request events until ctx ends.
func (f *Flows) readHTTP(ctx context.Context) {
	counters := map[httpCounterKey]httpCounters{}
	for ev, err := range f.http.ReadEvents(ctx) {
		if err != nil {
			if ctx.Err() == nil {
				log.FromContext(ctx).Error(err, "read HTTP event")
			}
			continue
		}
		if f.reset != nil && ev.Verdict == l7.VerdictDenied {
			// Ingress: a 403 (reset later, after a grace) or a reset now. Egress: the writer got
			// EACCES; its connection is reset now.
			f.reset.Notify(ev.Response)
		}
		rec := f.httpRecord(ev)
		f.mu.Lock()
		f.keepLocked(rec)
		f.mu.Unlock()
		k := httpCounterKey{rec.Direction, rec.Verdict, rec.HTTP.Response, rec.Policy}
		c, ok := counters[k]
		if !ok {
			c = httpCounters{flowsTotal.WithLabelValues(k.direction, k.verdict), httpRequests.WithLabelValues(k.direction, k.verdict, k.response, k.policy)}
			counters[k] = c
		}
		c.flows.Inc()
		c.requests.Inc()
		httpDecisionSeconds.Observe(ev.Latency.Seconds())
	}
}

// httpRecord names an HTTP event: both pods, the rule that allowed it and its policy, and the
// logged header mismatches.
func (f *Flows) httpRecord(ev l7.Event) FlowRecord {
	h := &HTTPFlow{Method: ev.Method, Path: ev.Path, Host: ev.Host, Cut: ev.PathCut || ev.HostCut,
		Response: ev.Response.String(), DecisionNanos: ev.Latency.Nanoseconds()}
	rec := FlowRecord{Time: ev.Time, Node: f.node, Direction: "ingress", Verdict: ev.Verdict.String(),
		Reason: ev.Reason.String(), Protocol: "HTTP", HTTP: h}
	f.mu.Lock()
	local := FlowEndpoint{IP: ev.Local.Addr().String(), Port: ev.Local.Port(), Pod: f.names.pods[ev.Local.Addr()]}
	remote := FlowEndpoint{IP: ev.Remote.Addr().String(), Port: ev.Remote.Port(), Identity: ev.PeerIdentity, Pod: f.names.pods[ev.Remote.Addr()]}
	origins := f.httpOrigins
	f.mu.Unlock()
	rec.Source, rec.Dest = remote, local
	switch {
	case ev.Egress:
	case ev.AtSource:
		h.JudgedAt = "client"
	default:
		h.JudgedAt = "server"
	}
	if ev.Egress {
		rec.Direction, rec.Source, rec.Dest = "egress", local, remote
	}
	if ev.Rule < 0 {
		return rec
	}
	sources, key := f.http.RuleSources(ev.Key(), ev.Rule)
	if len(sources) == 0 {
		return rec
	}
	h.Rule = sources[0]
	if len(sources) > 1 {
		h.Rule = fmt.Sprintf("%s (and %d more rules that differ only in path)", sources[0], len(sources)-1)
	}
	var pols []string
	for _, src := range sources {
		pols = append(pols, origins[key][src]...)
	}
	if len(pols) > 0 {
		rec.Policy = slices.Min(pols)
	}
	if ev.LogMissing != 0 {
		if r, err := policy.ParseHTTPRule(sources[0]); err == nil {
			for i, hdr := range r.LogHeaders {
				if ev.LogMissing&(1<<(len(r.Headers)+i)) != 0 {
					h.HeaderMismatches = append(h.HeaderMismatches, hdr)
				}
			}
		}
	}
	return rec
}

// Recent returns the kept flows, oldest first.
func (f *Flows) Recent() []FlowRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []FlowRecord
	if f.full {
		out = append(out, f.ring[f.next:]...)
	}
	return append(out, f.ring[:f.next]...)
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

package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/portcullis-dev/portcullis/internal/datapath"
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
}

var (
	flowsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_agent_flows_total",
		Help: "Flow events read from the kernel, by direction and verdict.",
	}, []string{"direction", "verdict"})
)

func init() {
	metrics.Registry.MustRegister(flowsTotal)
}

// names is the lookup the flow recorder uses to name addresses and policies; the reconciler
// replaces it after every converge.
type names struct {
	pods     map[netip.Addr]string
	policies map[uint32]string
}

// Flows reads the kernel's flow events, names them, counts them, and keeps the most recent ones for
// the /flows endpoint. It is a manager Runnable.
type Flows struct {
	dp   *datapath.Datapath
	node string

	mu    sync.Mutex
	names names
	ring  []FlowRecord
	next  int
	full  bool
}

// NewFlows returns a recorder that keeps the last size flows.
func NewFlows(dp *datapath.Datapath, node string, size int) *Flows {
	return &Flows{dp: dp, node: node, ring: make([]FlowRecord, size), names: names{pods: map[netip.Addr]string{}, policies: map[uint32]string{}}}
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
		f.ring[f.next] = rec
		f.next = (f.next + 1) % len(f.ring)
		if f.next == 0 {
			f.full = true
		}
		f.mu.Unlock()
		flowsTotal.WithLabelValues(rec.Direction, rec.Verdict).Inc()
	}
	return nil
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

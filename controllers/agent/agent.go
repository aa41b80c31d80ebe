package agent

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/datapath"
	"github.com/portcullis-dev/portcullis/internal/l7"
	"github.com/portcullis-dev/portcullis/internal/lowering"
	"github.com/portcullis-dev/portcullis/internal/netns"
)

// FieldOwner is the field manager of the agent's status writes.
const FieldOwner = client.FieldOwner("portcullis-agent")

// Reasons of the NodePolicy conditions the agent writes.
const (
	ReasonConverged         = "Converged"
	ReasonInterfaceNotFound = "InterfaceNotFound"
	ReasonUnsupportedRules  = "UnsupportedRules"
	ReasonAttachFailed      = "AttachFailed"
	ReasonMapUpdateFailed   = "MapUpdateFailed"
	ReasonDriftRepaired     = "DriftRepaired"
	ReasonHTTPRulesAtL4     = "HTTPRulesEnforcedAtL4"
)

var (
	driftRepairs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_agent_drift_repairs_total",
		Help: "Kernel state found changed behind the agent's back and repaired, by what was repaired.",
	}, []string{"what"})
	mapWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "portcullis_agent_map_writes_total",
		Help: "Map entries the agent wrote or deleted in the kernel. A restarted agent that adopts its pinned state writes none.",
	})
	convergeSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "portcullis_agent_converge_seconds",
		Help:    "Time to lower the NodePolicy and converge the kernel to it.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
)

func init() {
	metrics.Registry.MustRegister(driftRepairs, mapWrites, convergeSeconds)
}

// InterfaceFinder finds the host-side interface of each local pod address, as routed CNIs leave it:
// the interface of the route to the pod's address. It returns address → ifindex.
type InterfaceFinder func(ctx context.Context) (map[netip.Addr]int, error)

// Options configure the agent.
type Options struct {
	// NodeName is the agent's node (downward API).
	NodeName string
	// DriftCheckInterval is how often the kernel is compared with the desired state. Default 5 s.
	DriftCheckInterval time.Duration
	// Datapath is the loaded (or adopted) dataplane.
	Datapath *datapath.Datapath
	// Interfaces finds pods' host-side interfaces. Default: the node's routing table (RouteInterfaces).
	Interfaces InterfaceFinder
	// Netns, when set, is the network namespace (a path such as /run/netns/pcl-node-a) whose
	// interfaces and routes the agent works on, while the process itself stays where it reaches the
	// API server. The lab sets it; on a real node the agent runs in the host namespace and leaves it
	// empty.
	Netns string
	// L7, when set, judges HTTP requests at the socket for the ports that have HTTP rules; its
	// sock_ops program must already be attached to the node's (or pods') cgroup.
	L7 *l7.L7
	// BeforeTCP, when set, attaches the judging before TCP (started with the manager); each
	// converge syncs it around setting the judged ports, so that a pod's connections are judged
	// before TCP as soon as its port is judged.
	BeforeTCP *BeforeTCPAttacher
	// Flows, when set, receives the names of addresses and policies after every converge, and is
	// started with the manager. Serve it at /flows (see cmd/portcullis-agent).
	Flows *Flows
}

// Reconciler converges the kernel to the node's NodePolicy and the IP cache, repairs drift, and
// writes NodePolicy status. Every request is for the agent's own node.
type Reconciler struct {
	client   client.Client
	opts     Options
	recorder events.EventRecorder

	// lastDesired is the hash of the desired state last converged; a later converge of the same
	// desired state that still changes the kernel found drift.
	lastDesired string
	attached    map[int]bool
	repairs     int64
	lastRepair  *v1alpha1.DriftRepair

	mu       sync.Mutex
	policies map[uint32]string
}

// Setup registers the agent's reconciler with the manager. The manager's cache must be limited to
// the node's own NodePolicy (see CacheOptions).
func Setup(mgr ctrl.Manager, opts Options) (*Reconciler, error) {
	if opts.NodeName == "" {
		return nil, fmt.Errorf("node name is empty: set --node-name or NODE_NAME from the downward API")
	}
	if opts.Datapath == nil {
		return nil, fmt.Errorf("no datapath")
	}
	if opts.DriftCheckInterval == 0 {
		opts.DriftCheckInterval = 5 * time.Second
	}
	if opts.Interfaces == nil {
		opts.Interfaces = RouteInterfaces
	}
	r := &Reconciler{client: mgr.GetClient(), opts: opts, recorder: mgr.GetEventRecorder("portcullis-agent"), attached: map[int]bool{}}
	if opts.Flows != nil {
		if err := mgr.Add(opts.Flows); err != nil {
			return nil, err
		}
	}
	colls := []prometheus.Collector{newCounterCollector(opts.Datapath, r.policyNames)}
	if opts.L7 != nil {
		colls = append(colls, newHTTPCounterCollector(opts.L7))
	}
	for _, coll := range colls {
		if err := metrics.Registry.Register(coll); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return nil, err
			}
		}
	}
	own := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: opts.NodeName}}}
	})
	return r, ctrl.NewControllerManagedBy(mgr).
		Named("agent").
		Watches(&v1alpha1.NodePolicy{}, own, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&v1alpha1.IPCacheShard{}, own).
		Complete(r)
}

// CacheOptions limits the agent's cache to its own node's NodePolicy (and the IP cache shards, which
// every agent needs), so that an agent never holds the whole cluster.
func CacheOptions(node string) cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&v1alpha1.NodePolicy{}: {Field: fields.OneTermEqualSelector("metadata.name", node)},
	}}
}

// Reconcile lowers the node's policy, converges the kernel, and reports.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	start := time.Now()
	defer func() { convergeSeconds.Observe(time.Since(start).Seconds()) }()
	requeue := ctrl.Result{RequeueAfter: r.opts.DriftCheckInterval}

	var np v1alpha1.NodePolicy
	if err := r.client.Get(ctx, types.NamespacedName{Name: r.opts.NodeName}, &np); err != nil {
		if apierrors.IsNotFound(err) {
			// Nothing published yet: keep whatever the kernel enforces (pinned state from before a
			// restart) rather than open it up.
			return requeue, nil
		}
		return ctrl.Result{}, err
	}
	var shards v1alpha1.IPCacheShardList
	if err := r.client.List(ctx, &shards); err != nil {
		return ctrl.Result{}, err
	}
	var ipc []v1alpha1.IPCacheEntry
	for _, s := range shards.Items {
		ipc = append(ipc, s.Spec.Entries...)
	}
	var byAddr map[netip.Addr]int
	err := netns.Do(r.opts.Netns, func() (err error) {
		byAddr, err = r.opts.Interfaces(ctx)
		return err
	})
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("find pod interfaces: %w", err)
	}
	ifaces := map[string]int{}
	for _, ep := range np.Spec.Endpoints {
		for _, s := range ep.IPs {
			if a, err := netip.ParseAddr(s); err == nil {
				if ifx, ok := byAddr[a.Unmap()]; ok {
					ifaces[ep.Namespace+"/"+ep.Pod] = ifx
					break
				}
			}
		}
	}
	low := lowering.Lower(lowering.Input{Node: r.opts.NodeName, Spec: &np.Spec, IPCache: ipc, Interfaces: ifaces})
	r.setNames(ipc, low.Policies)
	desired := hashState(low)

	st := r.converge(ctx, &np, low, desired)
	if err := r.patchStatus(ctx, &np, st); err != nil {
		return ctrl.Result{}, err
	}
	if st.err != nil {
		return ctrl.Result{}, st.err
	}
	return requeue, nil
}

// convergeOutcome is what one converge did.
type convergeOutcome struct {
	err       error
	reason    string
	message   string
	repaired  []string
	endpoints int
	entries   int
}

func (r *Reconciler) converge(ctx context.Context, np *v1alpha1.NodePolicy, low lowering.Result, desired string) convergeOutcome {
	out := convergeOutcome{reason: ReasonConverged, entries: len(low.State.Policy)}
	sameDesired := desired == r.lastDesired

	// Maps first, so that a newly attached interface is enforced from its first packet.
	ch, err := r.opts.Datapath.Converge(low.State)
	if err != nil {
		out.err, out.reason, out.message = err, ReasonMapUpdateFailed, err.Error()
		return out
	}
	if n, err := r.convergeHTTP(ctx, low); err != nil {
		out.err, out.reason, out.message = err, ReasonMapUpdateFailed, err.Error()
		return out
	} else if n > 0 {
		log.FromContext(ctx).Info("converged HTTP rules", "generation", np.Generation, "changes", n, "drift", sameDesired)
		if sameDesired {
			out.repaired = append(out.repaired, fmt.Sprintf("HTTP rule sets and judged ports: %d entries", n))
			driftRepairs.WithLabelValues("map").Add(float64(n))
		}
	}
	mapWrites.Add(float64(ch.Endpoints.Total() + ch.IPCache.Total() + ch.Policy.Total()))
	if !ch.Empty() {
		log.FromContext(ctx).Info("converged kernel maps", "generation", np.Generation, "changes", ch.String(), "drift", sameDesired)
	}
	if sameDesired && !ch.Empty() {
		out.repaired = append(out.repaired, "maps: "+ch.String())
		driftRepairs.WithLabelValues("map").Add(float64(ch.Endpoints.Total() + ch.IPCache.Total() + ch.Policy.Total()))
	}

	want := map[int]bool{}
	err = netns.Do(r.opts.Netns, func() error {
		for ifx := range low.State.Endpoints {
			want[ifx] = true
			ok, err := r.opts.Datapath.AttachedInKernel(ifx)
			if err == nil && ok {
				r.attached[ifx] = true
				continue
			}
			if err := r.opts.Datapath.Attach(ifx); err != nil {
				return err
			}
			if r.attached[ifx] {
				out.repaired = append(out.repaired, fmt.Sprintf("programs re-attached to ifindex %d", ifx))
				driftRepairs.WithLabelValues("attachment").Inc()
			}
			r.attached[ifx] = true
		}
		for _, ifx := range r.opts.Datapath.Attached() {
			if !want[ifx] {
				if err := r.opts.Datapath.Detach(ifx); err != nil {
					log.FromContext(ctx).Error(err, "detach", "ifindex", ifx)
				}
				delete(r.attached, ifx)
			}
		}
		return nil
	})
	if err != nil {
		out.err, out.reason, out.message = err, ReasonAttachFailed, err.Error()
		return out
	}
	out.endpoints = len(want)
	r.lastDesired = desired

	if pins, err := r.opts.Datapath.RepairPins(); err != nil {
		log.FromContext(ctx).Error(err, "repair pins")
	} else if len(pins) > 0 {
		out.repaired = append(out.repaired, "pins restored: "+strings.Join(pins, ", "))
		driftRepairs.WithLabelValues("pin").Add(float64(len(pins)))
	}
	if len(out.repaired) > 0 {
		r.repairs += int64(len(out.repaired))
		what := strings.Join(out.repaired, "; ")
		r.lastRepair = &v1alpha1.DriftRepair{Time: metav1.Now(), What: what}
		r.recorder.Eventf(np, nil, "Warning", ReasonDriftRepaired, "Repair", "kernel state changed outside the agent was repaired: %s", what)
		log.FromContext(ctx).Info("drift repaired", "what", what)
	}
	switch {
	case len(low.Missing) > 0:
		out.reason = ReasonInterfaceNotFound
		out.message = "no host-side interface yet for " + strings.Join(low.Missing, ", ")
	case len(low.Unsupported) > 0:
		out.reason = ReasonUnsupportedRules
		out.message = "enforced as deny (not lowered): " + strings.Join(low.Unsupported, "; ")
	case r.opts.L7 == nil && len(low.HTTPPorts) > 0:
		out.reason = ReasonHTTPRulesAtL4
		out.message = fmt.Sprintf("HTTP judging is off (--http=false): %d judged ports are open at L4 to the allowed peers for every request", len(low.HTTPPorts))
	default:
		out.message = fmt.Sprintf("%d endpoints, %d policy entries in the kernel", out.endpoints, out.entries)
	}
	return out
}

func (r *Reconciler) patchStatus(ctx context.Context, np *v1alpha1.NodePolicy, o convergeOutcome) error {
	before := np.DeepCopy()
	st := &np.Status
	gen := np.Generation
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		if len(msg) > 32000 {
			msg = msg[:32000] + "..."
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	if o.err != nil {
		// The kernel holds a mix of the old and the new state; do not claim the new generation.
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, o.reason, o.message)
		set(v1alpha1.ConditionDegraded, metav1.ConditionTrue, o.reason, o.message)
	} else {
		st.ObservedGeneration = gen
		st.EnforcedPolicies = slices.Clone(np.Spec.Policies)
		st.Endpoints = int32(o.endpoints)
		st.Entries = int32(o.entries)
		set(v1alpha1.ConditionReady, metav1.ConditionTrue, ReasonConverged, o.message)
		if o.reason == ReasonConverged {
			meta.RemoveStatusCondition(&st.Conditions, v1alpha1.ConditionDegraded)
		} else {
			set(v1alpha1.ConditionDegraded, metav1.ConditionTrue, o.reason, o.message)
		}
	}
	st.DriftRepairs = r.repairs
	st.LastDriftRepair = r.lastRepair
	if equality.Semantic.DeepEqual(before.Status, np.Status) {
		return nil
	}
	if err := r.client.Status().Patch(ctx, np, client.MergeFrom(before), FieldOwner); err != nil && !apierrors.IsNotFound(err) {
		if apierrors.IsConflict(err) {
			return nil
		}
		return fmt.Errorf("patch NodePolicy status: %w", err)
	}
	return nil
}

func (r *Reconciler) setNames(ipc []v1alpha1.IPCacheEntry, policies map[uint32]string) {
	r.mu.Lock()
	r.policies = policies
	r.mu.Unlock()
	if r.opts.Flows == nil {
		return
	}
	pods := map[netip.Addr]string{}
	for _, e := range ipc {
		if a, err := netip.ParseAddr(e.IP); err == nil && e.Pod != "" {
			pods[a.Unmap()] = e.Pod
		}
	}
	r.opts.Flows.setNames(names{pods: pods, policies: policies})
}

func (r *Reconciler) policyNames() map[uint32]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.policies
}

// hashState identifies the desired kernel state (L3/L4 maps and HTTP rules): a converge of the same
// desired state that still changes the kernel found drift.
func hashState(low lowering.Result) string {
	type kv struct {
		K string
		V any
	}
	s := low.State
	items := []kv{{"http-rules", low.HTTPRuleSets}, {"http-ports", low.HTTPPorts}}
	for k, v := range s.Endpoints {
		items = append(items, kv{fmt.Sprint("e", k), v})
	}
	for k, v := range s.IPCache {
		items = append(items, kv{"i" + k.String(), v})
	}
	for k, v := range s.Policy {
		items = append(items, kv{"p" + k.String(), v})
	}
	slices.SortFunc(items, func(a, b kv) int { return strings.Compare(a.K, b.K) })
	raw, _ := json.Marshal(items)
	sum := sha256.Sum256(raw)
	return fmt.Sprintf("%x", sum[:16])
}

package operator

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/compiler"
	"github.com/portcullis-dev/portcullis/internal/identity"
	"github.com/portcullis-dev/portcullis/internal/ipcache"
)

// FieldOwner is the field manager of every write the operator makes.
const FieldOwner = client.FieldOwner("portcullis-operator")

// Options configure the operator.
type Options struct {
	// IdentityGCDelay is how long an identity no pod uses is kept before it is deleted. Default 10 min.
	IdentityGCDelay time.Duration
	// IdentityGCInterval is how often unused identities are looked for. Default 1 min.
	IdentityGCInterval time.Duration
	// IPCacheShardSize bounds the entries of one IPCacheShard. Default v1alpha1.MaxIPCacheShardEntries.
	IPCacheShardSize int
}

func (o *Options) defaults() {
	if o.IdentityGCDelay == 0 {
		o.IdentityGCDelay = 10 * time.Minute
	}
	if o.IdentityGCInterval == 0 {
		o.IdentityGCInterval = time.Minute
	}
	if o.IPCacheShardSize == 0 {
		o.IPCacheShardSize = v1alpha1.MaxIPCacheShardEntries
	}
}

// Operator is the state the operator's reconcilers share: the incremental compiler, the identity
// table, the IP cache and the last accepted version of each policy. Every access holds mu.
type Operator struct {
	client client.Client
	opts   Options

	mu        sync.Mutex
	loaded    bool
	comp      *compiler.Compiler
	ids       *identityTable
	endpoints map[types.NamespacedName]endpointState
	nodeIPs   map[string][]netip.Addr
	ipc       *ipcache.Shards
	accepted  map[policyKey]acceptedPolicy

	// nodeEvents and ipcacheEvents wake the publishers.
	nodeEvents    chan event.GenericEvent
	ipcacheEvents chan event.GenericEvent
	// lateWakes are nodes whose wake-up did not fit in nodeEvents and is being delivered by a
	// goroutine of its own (deduplicated until that goroutine starts sending).
	lateMu    sync.Mutex
	lateWakes map[string]bool
}

type endpointState struct {
	identity identity.ID
	node     string
	ips      []netip.Addr
}

// policyKey names a policy independently of its generation.
type policyKey struct {
	kind, namespace, name string
}

func (k policyKey) String() string {
	if k.namespace == "" {
		return k.kind + "/" + k.name
	}
	return k.kind + "/" + k.namespace + "/" + k.name
}

type acceptedPolicy struct {
	generation int64
	spec       *v1alpha1.PolicySpec
}

// New returns an operator that reads and writes through c (the manager's cached client).
func New(c client.Client, opts Options) *Operator {
	opts.defaults()
	return &Operator{
		client:        c,
		opts:          opts,
		comp:          compiler.New(compiler.Options{}),
		ids:           newIdentityTable(),
		endpoints:     map[types.NamespacedName]endpointState{},
		nodeIPs:       map[string][]netip.Addr{},
		ipc:           ipcache.New(opts.IPCacheShardSize),
		accepted:      map[policyKey]acceptedPolicy{},
		nodeEvents:    make(chan event.GenericEvent, 1024),
		ipcacheEvents: make(chan event.GenericEvent, 16),
	}
}

// ensureLoaded fills the compiler from the cache once, before anything is published, so that a
// starting operator never publishes a NodePolicy that lacks policies it has not read yet. Callers
// hold mu.
func (o *Operator) ensureLoaded(ctx context.Context) error {
	if o.loaded {
		return nil
	}
	start := time.Now()
	var sids v1alpha1.SecurityIdentityList
	if err := o.client.List(ctx, &sids); err != nil {
		return fmt.Errorf("list identities: %w", err)
	}
	for i := range sids.Items {
		if err := o.ids.adopt(&sids.Items[i]); err != nil {
			log.FromContext(ctx).Info("ignoring identity object", "name", sids.Items[i].Name, "reason", err.Error())
			continue
		}
	}
	for id, st := range o.ids.byID {
		o.comp.SetIdentity(id, st.labels)
	}

	var shards v1alpha1.IPCacheShardList
	if err := o.client.List(ctx, &shards); err != nil {
		return fmt.Errorf("list IP cache shards: %w", err)
	}
	for i := range shards.Items {
		idx, err := ipcache.ShardIndex(shards.Items[i].Name)
		if err != nil {
			continue
		}
		o.ipc.Adopt(idx, fromShard(shards.Items[i].Spec.Entries))
	}

	var nodes corev1.NodeList
	if err := o.client.List(ctx, &nodes); err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	for i := range nodes.Items {
		o.setNodeLocked(&nodes.Items[i])
	}

	var pods corev1.PodList
	if err := o.client.List(ctx, &pods); err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	nsLabels := map[string]map[string]string{}
	var nss corev1.NamespaceList
	if err := o.client.List(ctx, &nss); err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	for _, ns := range nss.Items {
		nsLabels[ns.Name] = ns.Labels
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if _, err := o.setPodLocked(ctx, p, nsLabels[p.Namespace]); err != nil {
			return err
		}
	}

	for _, kind := range []string{kindAccessPolicy, kindClusterAccessPolicy} {
		objs, err := listPolicies(ctx, o.client, kind)
		if err != nil {
			return err
		}
		for _, p := range objs {
			o.loadPolicyLocked(p)
		}
	}
	o.loaded = true
	o.ipc.TakeDirty()
	// Adopted shards and identities are written again only where they differ.
	for i := range o.ipc.NumShards() {
		o.ipc.MarkDirty(i)
	}
	log.FromContext(ctx).Info("compiler loaded", "identities", len(o.ids.byID), "endpoints", len(o.endpoints),
		"duration", time.Since(start).String())
	o.wakeAllNodesLocked()
	o.wakeIPCache()
	return nil
}

// loadPolicyLocked compiles a policy read at start-up: its current spec when valid, else the last
// accepted spec kept in its status.
func (o *Operator) loadPolicyLocked(p policyObject) {
	key := keyOf(p)
	spec, gen := p.PolicySpec(), p.GetGeneration()
	if errs := validatePolicy(key.kind, spec); len(errs) > 0 {
		st := p.PolicyStatus()
		kept, err := decodeAcceptedSpec(st.AcceptedSpec)
		if err != nil || kept == nil {
			return
		}
		spec, gen = kept, st.AcceptedGeneration
	}
	if err := o.comp.SetPolicy(compiler.Policy{Ref: refOf(key, gen), Spec: spec}); err != nil {
		return
	}
	o.accepted[key] = acceptedPolicy{generation: gen, spec: spec}
}

func (o *Operator) wakeNodesLocked(nodes []string) {
	for _, n := range nodes {
		select {
		case o.nodeEvents <- event.GenericEvent{Object: nodeKeyObject(n)}:
		default:
			// The queue is full: the publisher is behind. The compiler's dirty set is already
			// cleared, so this wake-up must not be lost: deliver it without holding the caller.
			o.lateWake(n)
		}
	}
}

func (o *Operator) lateWake(node string) {
	o.lateMu.Lock()
	defer o.lateMu.Unlock()
	if o.lateWakes == nil {
		o.lateWakes = map[string]bool{}
	}
	if o.lateWakes[node] {
		return
	}
	o.lateWakes[node] = true
	go func() {
		// Cleared before the send: a change after this point wakes the node again.
		o.lateMu.Lock()
		delete(o.lateWakes, node)
		o.lateMu.Unlock()
		o.nodeEvents <- event.GenericEvent{Object: nodeKeyObject(node)}
	}()
}

func (o *Operator) wakeAllNodesLocked() {
	var nodes corev1.NodeList
	if err := o.client.List(context.Background(), &nodes); err == nil {
		names := make([]string, 0, len(nodes.Items))
		for _, n := range nodes.Items {
			names = append(names, n.Name)
		}
		o.wakeNodesLocked(names)
	}
}

func (o *Operator) wakeDirtyLocked() {
	o.wakeNodesLocked(o.comp.DirtyNodes())
}

func (o *Operator) wakeIPCache() {
	select {
	case o.ipcacheEvents <- event.GenericEvent{Object: nodeKeyObject("ipcache")}:
	default:
	}
}

// nodeKeyObject is a stand-in object whose name is the request key of a publisher.
func nodeKeyObject(name string) client.Object {
	n := &corev1.Node{}
	n.Name = name
	return n
}

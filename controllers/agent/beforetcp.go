package agent

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/portcullis-dev/portcullis/internal/l7"
)

// BeforeTCPAttacher keeps the judging before TCP (--http-judge-before-tcp, l7.Options.JudgeBeforeTCP)
// attached in the network namespace of every pod with HTTP rules on its ingress: once a second it
// finds the namespaces of the processes under the cgroup the HTTP programs sit on, attaches l7_fast
// to the interfaces of each that holds an address with a judged port (new pods, new interfaces, new
// rules), and detaches it from namespaces whose pods are gone or hold no judged port any more (the
// ports are removed first, so the guard no longer asks for l7_fast's stamp there). Until a pod's
// namespace is attached its server connections are judged at their socket; other pods' segments
// never meet l7_fast. The node's own namespace (the
// agent's, and the one given as exclude) is never attached: its interfaces carry other pods'
// traffic on its way to theirs. It is a manager Runnable.
type BeforeTCPAttacher struct {
	l7         *l7.L7
	cgroupRoot string
	exclude    []string
	interval   time.Duration

	mu      sync.Mutex        // one scan at a time (the ticker's and a converge's)
	skip    map[nsID]bool     // the node's namespaces
	failed  map[uint64]string // the last error logged per namespace, by cookie
	cookies netnsCookies
}

// NewBeforeTCPAttacher returns a BeforeTCPAttacher for the pods under cgroupRoot, never attaching in
// the namespaces at the paths in exclude ("" entries are ignored) nor in the agent's own.
func NewBeforeTCPAttacher(l *l7.L7, cgroupRoot string, exclude ...string) *BeforeTCPAttacher {
	return &BeforeTCPAttacher{l7: l, cgroupRoot: cgroupRoot, exclude: append(exclude, "/proc/self/ns/net"), interval: time.Second,
		failed: map[uint64]string{}, cookies: netnsCookies{}}
}

// Start attaches until ctx ends.
func (a *BeforeTCPAttacher) Start(ctx context.Context) error {
	tick := time.NewTicker(a.interval)
	defer tick.Stop()
	for {
		a.Sync(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Sync attaches and detaches now: in the namespaces holding an address with a judged port, or one of
// also (the addresses about to get one: the agent calls it with them before it sets the ports, so
// that the connections accepted from then on are judged before TCP, and again after).
func (a *BeforeTCPAttacher) Sync(ctx context.Context, also ...netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.skip == nil {
		a.skip = map[nsID]bool{}
		for _, p := range a.exclude {
			if p == "" {
				continue
			}
			if id, err := netnsID(p); err == nil {
				a.skip[id] = true
			}
		}
	}
	judged, err := a.l7.JudgedAddrs()
	if err != nil {
		log.FromContext(ctx).Error(err, "find the pods with HTTP rules on their ingress")
		return
	}
	for _, addr := range also {
		judged[addr.Unmap()] = true
	}
	alive := map[uint64]bool{}
	seen := map[nsID]bool{}
	for _, ns := range podNamespaces(a.cgroupRoot) {
		id, p := ns.id, ns.path
		if a.skip[id] {
			continue // the node's namespace
		}
		c, err := a.cookies.of(id, p)
		if err != nil {
			continue
		}
		seen[id] = true
		alive[c] = true
		if _, err := a.l7.SyncNetns(p, c, judged); err != nil {
			if a.failed[c] != err.Error() {
				a.failed[c] = err.Error()
				log.FromContext(ctx).Error(err, "attach the judging before TCP; the namespace's connections are judged at their socket", "netns", p)
			}
			continue
		}
		delete(a.failed, c)
	}
	for c := range a.failed {
		if !alive[c] {
			delete(a.failed, c)
		}
	}
	a.cookies.keep(func(id nsID) bool { return seen[id] })
	if err := a.l7.PruneNetns(alive); err != nil {
		log.FromContext(ctx).Error(err, "detach the judging before TCP from namespaces that went away")
	}
}

package operator

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/portcullis-dev/portcullis/internal/compiler"
	"github.com/portcullis-dev/portcullis/internal/identity"
	"github.com/portcullis-dev/portcullis/internal/ipcache"
)

// EndpointReconciler turns each Pod into an endpoint of the compiler: its security identity
// (allocated from its labels and its namespace's labels), its node, addresses and named ports. A pod
// change touches only that pod's endpoint; a namespace label change re-reconciles the pods of that
// namespace.
type EndpointReconciler struct {
	*Operator
}

// SetupWithManager registers the reconciler.
func (r *EndpointReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("endpoint").
		For(&corev1.Pod{}).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.podsOfNamespace),
			builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Complete(r)
}

func (r *EndpointReconciler) podsOfNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	var pods corev1.PodList
	if err := r.client.List(ctx, &pods, client.InNamespace(obj.GetName())); err != nil {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(pods.Items))
	for _, p := range pods.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&p)})
	}
	return reqs
}

// Reconcile brings one pod's endpoint, identity and IP cache entries up to date.
func (r *EndpointReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.ensureLoaded(ctx); err != nil {
		return ctrl.Result{}, err
	}
	var pod corev1.Pod
	if err := r.client.Get(ctx, req.NamespacedName, &pod); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		r.deleteEndpointLocked(req.NamespacedName)
	} else {
		var ns corev1.Namespace
		if err := r.client.Get(ctx, types.NamespacedName{Name: pod.Namespace}, &ns); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		if _, err := r.setPodLocked(ctx, &pod, ns.Labels); err != nil {
			return ctrl.Result{}, err
		}
	}
	r.wakeDirtyLocked()
	r.wakeIPCache()
	return ctrl.Result{}, nil
}

// managed reports whether a pod is an endpoint Portcullis enforces: scheduled, with an address of its
// own (host-network pods share the node's), and not finished.
func managed(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Spec.NodeName != "" && !p.Spec.HostNetwork && len(podIPs(p)) > 0 &&
		p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out)
}

func namedPorts(p *corev1.Pod) map[string]compiler.NamedPort {
	var out map[string]compiler.NamedPort
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == "" {
				continue
			}
			proto := string(port.Protocol)
			if proto == "" {
				proto = string(corev1.ProtocolTCP)
			}
			if out == nil {
				out = map[string]compiler.NamedPort{}
			}
			out[port.Name] = compiler.NamedPort{Port: uint16(port.ContainerPort), Protocol: proto}
		}
	}
	return out
}

// setPodLocked updates the endpoint of a pod; it reports whether anything changed.
func (o *Operator) setPodLocked(ctx context.Context, p *corev1.Pod, nsLabels map[string]string) (bool, error) {
	key := client.ObjectKeyFromObject(p)
	if !managed(p) {
		return o.deleteEndpointLocked(key), nil
	}
	labels := identity.SecurityLabels(p.Namespace, p.Labels, nsLabels)
	id, err := o.allocate(ctx, p.Namespace, labels)
	if err != nil {
		return false, fmt.Errorf("identity of pod %s: %w", key, err)
	}
	ips := podIPs(p)
	old, had := o.endpoints[key]
	if had && old.identity == id && old.node == p.Spec.NodeName && slices.Equal(old.ips, ips) {
		for _, ip := range ips {
			o.ipc.Set(ipcache.Entry{IP: ip, Identity: uint32(id), Node: p.Spec.NodeName, Pod: key.String()})
		}
		// Named ports may still have changed; the compiler ignores an identical endpoint.
		o.comp.SetEndpoint(compiler.Endpoint{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName,
			IPs: ips, Identity: id, NamedPorts: namedPorts(p)})
		return false, nil
	}
	if had {
		o.ids.use(old.identity, -1)
		for _, ip := range old.ips {
			if !slices.Contains(ips, ip) {
				o.ipc.Delete(ip)
			}
		}
	}
	o.ids.use(id, +1)
	o.endpoints[key] = endpointState{identity: id, node: p.Spec.NodeName, ips: ips}
	for _, ip := range ips {
		o.ipc.Set(ipcache.Entry{IP: ip, Identity: uint32(id), Node: p.Spec.NodeName, Pod: key.String()})
	}
	o.comp.SetEndpoint(compiler.Endpoint{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName,
		IPs: ips, Identity: id, NamedPorts: namedPorts(p)})
	return true, nil
}

func (o *Operator) deleteEndpointLocked(key types.NamespacedName) bool {
	old, had := o.endpoints[key]
	if !had {
		return false
	}
	delete(o.endpoints, key)
	o.ids.use(old.identity, -1)
	for _, ip := range old.ips {
		if e, ok := o.ipc.Get(ip); ok && e.Identity == uint32(old.identity) {
			o.ipc.Delete(ip)
		}
	}
	o.comp.DeleteEndpoint(key.Namespace, key.Name)
	return true
}

// setNodeLocked records a node's addresses in the IP cache as remote-node; each agent maps its own
// node's addresses to host.
func (o *Operator) setNodeLocked(n *corev1.Node) {
	var ips []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	for _, ip := range o.nodeIPs[n.Name] {
		if !slices.Contains(ips, ip) {
			o.ipc.Delete(ip)
		}
	}
	for _, ip := range ips {
		o.ipc.Set(ipcache.Entry{IP: ip, Identity: uint32(identity.RemoteNode), Node: n.Name})
	}
	o.nodeIPs[n.Name] = ips
}

func (o *Operator) deleteNodeLocked(name string) {
	for _, ip := range o.nodeIPs[name] {
		o.ipc.Delete(ip)
	}
	delete(o.nodeIPs, name)
}

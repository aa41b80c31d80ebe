package operator

import (
	"context"
	"fmt"
	"net/netip"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/ipcache"
)

// IPCacheReconciler publishes the IP → identity map as bounded IPCacheShard objects, writing only the
// shards whose content differs from what is stored.
type IPCacheReconciler struct {
	*Operator
}

var ipcacheRequest = reconcile.Request{NamespacedName: types.NamespacedName{Name: "ipcache"}}

// SetupWithManager registers the reconciler; every event maps to one request.
func (r *IPCacheReconciler) SetupWithManager(mgr ctrl.Manager) error {
	one := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{ipcacheRequest}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("ipcache").
		Watches(&v1alpha1.IPCacheShard{}, one).
		WatchesRawSource(source.Channel(r.ipcacheEvents, one)).
		Complete(r)
}

func toShard(es []ipcache.Entry) []v1alpha1.IPCacheEntry {
	out := make([]v1alpha1.IPCacheEntry, 0, len(es))
	for _, e := range es {
		out = append(out, v1alpha1.IPCacheEntry{IP: e.IP.String(), Identity: e.Identity, Node: e.Node, Pod: e.Pod})
	}
	return out
}

func fromShard(es []v1alpha1.IPCacheEntry) []ipcache.Entry {
	out := make([]ipcache.Entry, 0, len(es))
	for _, e := range es {
		ip, err := netip.ParseAddr(e.IP)
		if err != nil {
			continue
		}
		out = append(out, ipcache.Entry{IP: ip, Identity: e.Identity, Node: e.Node, Pod: e.Pod})
	}
	return out
}

// Reconcile makes the shard objects equal to the in-memory map.
func (r *IPCacheReconciler) Reconcile(ctx context.Context, _ ctrl.Request) (ctrl.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.ensureLoaded(ctx); err != nil {
		return ctrl.Result{}, err
	}
	r.ipc.TakeDirty()
	var existing v1alpha1.IPCacheShardList
	if err := r.client.List(ctx, &existing); err != nil {
		return ctrl.Result{}, err
	}
	stored := map[string]*v1alpha1.IPCacheShard{}
	for i := range existing.Items {
		stored[existing.Items[i].Name] = &existing.Items[i]
	}
	for i := range r.ipc.NumShards() {
		name := ipcache.ShardName(i)
		entries := toShard(r.ipc.Entries(i))
		obj, ok := stored[name]
		delete(stored, name)
		want := v1alpha1.IPCacheShardSpec{Count: int32(len(entries)), Entries: entries}
		switch {
		case len(entries) == 0 && ok:
			if err := r.client.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, fmt.Errorf("delete %s: %w", name, err)
			}
		case len(entries) == 0:
		case !ok:
			obj = &v1alpha1.IPCacheShard{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: want}
			if err := r.client.Create(ctx, obj, FieldOwner); err != nil {
				return requeueIfRace(fmt.Errorf("create %s: %w", name, err))
			}
			recordWrite("IPCacheShard", want)
		case !equality.Semantic.DeepEqual(obj.Spec, want):
			obj.Spec = want
			if err := r.client.Update(ctx, obj, FieldOwner); err != nil {
				return requeueIfRace(fmt.Errorf("update %s: %w", name, err))
			}
			recordWrite("IPCacheShard", want)
		}
	}
	for _, obj := range stored {
		if err := r.client.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("delete %s: %w", obj.Name, err)
		}
	}
	return ctrl.Result{}, nil
}

package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
)

// NodePolicyReconciler publishes the compiled policy of one node as its NodePolicy, writing only
// when the content differs from what is stored (so an unchanged cluster causes no writes, and a
// NodePolicy edited or deleted behind the operator's back is put back). A deleted Node takes its
// NodePolicy with it.
type NodePolicyReconciler struct {
	*Operator
}

// SetupWithManager registers the reconciler; its request key is the node name.
func (r *NodePolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("nodepolicy").
		For(&corev1.Node{}).
		Watches(&v1alpha1.NodePolicy{}, &handler.EnqueueRequestForObject{}).
		WatchesRawSource(source.Channel(r.nodeEvents, &handler.EnqueueRequestForObject{})).
		Complete(r)
}

// Reconcile publishes one node's policy.
func (r *NodePolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.ensureLoaded(ctx); err != nil {
		return ctrl.Result{}, err
	}
	var node corev1.Node
	if err := r.client.Get(ctx, req.NamespacedName, &node); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		r.deleteNodeLocked(req.Name)
		r.wakeIPCache()
		np := &v1alpha1.NodePolicy{ObjectMeta: metav1.ObjectMeta{Name: req.Name}}
		if err := r.client.Delete(ctx, np); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("delete NodePolicy of deleted node %s: %w", req.Name, err)
		}
		return ctrl.Result{}, nil
	}
	r.setNodeLocked(&node)
	r.wakeIPCache()

	desired := r.comp.NodePolicy(node.Name)
	var existing v1alpha1.NodePolicy
	err := r.client.Get(ctx, types.NamespacedName{Name: node.Name}, &existing)
	switch {
	case apierrors.IsNotFound(err):
		np := &v1alpha1.NodePolicy{ObjectMeta: metav1.ObjectMeta{Name: node.Name}, Spec: *desired}
		if err := r.client.Create(ctx, np, FieldOwner); err != nil {
			return requeueIfRace(fmt.Errorf("create NodePolicy %s: %w", node.Name, err))
		}
		recordWrite("NodePolicy", np.Spec)
	case err != nil:
		return ctrl.Result{}, err
	case !equality.Semantic.DeepEqual(existing.Spec, *desired):
		existing.Spec = *desired
		if err := r.client.Update(ctx, &existing, FieldOwner); err != nil {
			return requeueIfRace(fmt.Errorf("update NodePolicy %s: %w", node.Name, err))
		}
		recordWrite("NodePolicy", existing.Spec)
	}
	return ctrl.Result{}, nil
}

// recordWrite counts a write and its size for the metrics that show API traffic per change.
func recordWrite(kind string, body any) {
	raw, err := json.Marshal(body)
	if err != nil {
		return
	}
	apiWrites.WithLabelValues(kind).Inc()
	apiBytesWritten.WithLabelValues(kind).Add(float64(len(raw)))
}

// requeueIfRace turns the two errors that only mean "the cache had not seen our last write yet"
// (a conflict on update, an existing object on create) into a quick retry without an error log.
func requeueIfRace(err error) (ctrl.Result, error) {
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		return ctrl.Result{RequeueAfter: 50 * time.Millisecond}, nil
	}
	return ctrl.Result{}, err
}

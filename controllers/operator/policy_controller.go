package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/compiler"
	"github.com/portcullis-dev/portcullis/internal/policy"
)

const (
	kindAccessPolicy        = "AccessPolicy"
	kindClusterAccessPolicy = "ClusterAccessPolicy"
)

// policyObject is an AccessPolicy or a ClusterAccessPolicy.
type policyObject interface {
	client.Object
	PolicySpec() *v1alpha1.PolicySpec
	PolicyStatus() *v1alpha1.PolicyStatus
}

func newPolicy(kind string) policyObject {
	if kind == kindClusterAccessPolicy {
		return &v1alpha1.ClusterAccessPolicy{}
	}
	return &v1alpha1.AccessPolicy{}
}

func listPolicies(ctx context.Context, c client.Reader, kind string) ([]policyObject, error) {
	var out []policyObject
	if kind == kindClusterAccessPolicy {
		var l v1alpha1.ClusterAccessPolicyList
		if err := c.List(ctx, &l); err != nil {
			return nil, fmt.Errorf("list %s: %w", kind, err)
		}
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
		return out, nil
	}
	var l v1alpha1.AccessPolicyList
	if err := c.List(ctx, &l); err != nil {
		return nil, fmt.Errorf("list %s: %w", kind, err)
	}
	for i := range l.Items {
		out = append(out, &l.Items[i])
	}
	return out, nil
}

func keyOf(p policyObject) policyKey {
	kind := kindAccessPolicy
	if _, ok := p.(*v1alpha1.ClusterAccessPolicy); ok {
		kind = kindClusterAccessPolicy
	}
	return policyKey{kind: kind, namespace: p.GetNamespace(), name: p.GetName()}
}

func refOf(k policyKey, generation int64) v1alpha1.PolicyReference {
	return v1alpha1.PolicyReference{Kind: k.kind, Namespace: k.namespace, Name: k.name, Generation: generation}
}

// validatePolicy runs the semantic checks the API server cannot: regular expressions and their DFA
// size, selectors, FQDN patterns, CIDR exceptions.
func validatePolicy(kind string, spec *v1alpha1.PolicySpec) field.ErrorList {
	return policy.Validate(kind, spec)
}

func decodeAcceptedSpec(raw *runtime.RawExtension) (*v1alpha1.PolicySpec, error) {
	if raw == nil || len(raw.Raw) == 0 {
		return nil, nil
	}
	var spec v1alpha1.PolicySpec
	if err := json.Unmarshal(raw.Raw, &spec); err != nil {
		return nil, fmt.Errorf("decode acceptedSpec: %w", err)
	}
	return &spec, nil
}

// PolicyReconciler validates one AccessPolicy or ClusterAccessPolicy, compiles it into the node
// policies, and reports in its status whether every node that needs it enforces its generation.
type PolicyReconciler struct {
	*Operator
	// Kind is AccessPolicy or ClusterAccessPolicy.
	Kind     string
	Recorder events.EventRecorder
}

// SetupWithManager registers the reconciler. NodePolicy changes (new content, agent status) requeue
// the policies that the NodePolicy lists. A change of the policy's own status requeues it too: the
// status is written only when it differs from the cached policy, so a reconcile that reads the
// policy before the cache has seen the previous status write finds nothing to write, and only the
// event that brings that write into the cache can correct it.
func (r *PolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named(map[string]string{kindAccessPolicy: "accesspolicy", kindClusterAccessPolicy: "clusteraccesspolicy"}[r.Kind]).
		For(newPolicy(r.Kind)).
		Watches(&v1alpha1.NodePolicy{}, handler.EnqueueRequestsFromMapFunc(r.policiesOfNode)).
		Complete(r)
}

func (r *PolicyReconciler) policiesOfNode(_ context.Context, obj client.Object) []reconcile.Request {
	np, ok := obj.(*v1alpha1.NodePolicy)
	if !ok {
		return nil
	}
	var reqs []reconcile.Request
	seen := map[types.NamespacedName]bool{}
	add := func(refs []v1alpha1.PolicyReference) {
		for _, ref := range refs {
			k := types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}
			if ref.Kind == r.Kind && !seen[k] {
				seen[k] = true
				reqs = append(reqs, reconcile.Request{NamespacedName: k})
			}
		}
	}
	add(np.Spec.Policies)
	add(np.Status.EnforcedPolicies)
	return reqs
}

// reconcileScope is the state of one Reconcile call.
type reconcileScope struct {
	key     policyKey
	obj     policyObject
	invalid field.ErrorList
	// warnings about a generation accepted by this call (policy.Warnings), reported as an event.
	warnings []string
	report   fanIn
}

// Reconcile validates, compiles and reports one policy.
func (r *PolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, err error) {
	s := &reconcileScope{key: policyKey{kind: r.Kind, namespace: req.Namespace, name: req.Name}, obj: newPolicy(r.Kind)}
	if err := r.client.Get(ctx, req.NamespacedName, s.obj); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		r.forget(ctx, s.key)
		return ctrl.Result{}, nil
	}
	if s.obj.GetDeletionTimestamp() != nil {
		r.forget(ctx, s.key)
		return ctrl.Result{}, nil
	}

	before := s.obj.DeepCopyObject().(policyObject)
	defer func() {
		if patchErr := r.patchStatus(ctx, before, s); patchErr != nil && err == nil {
			err = patchErr
		}
	}()

	if err := r.compile(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	if len(s.invalid) > 0 {
		r.Recorder.Eventf(s.obj, nil, "Warning", ReasonInvalidSpec, "Validate", "%s", s.invalid.ToAggregate().Error())
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("%s is invalid: %w", s.key, s.invalid.ToAggregate()))
	}
	if len(s.warnings) > 0 {
		r.Recorder.Eventf(s.obj, nil, "Warning", ReasonRuleMatchesNothing, "Validate", "%s", strings.Join(s.warnings, "; "))
	}
	if s.report.enforcing < len(s.report.nodes) {
		// Waiting on the agents: NodePolicy events normally bring the policy back, and this requeue
		// makes sure a missed one cannot leave it Reconciling.
		return ctrl.Result{RequeueAfter: rolloutRecheck}, nil
	}
	return ctrl.Result{}, nil
}

// rolloutRecheck is how often a policy that is rolling out looks at the agents' reports again.
const rolloutRecheck = 2 * time.Second

// compile validates the policy and, when valid, gives it to the compiler; either way it computes the
// status fan-in from the compiled state.
func (r *PolicyReconciler) compile(ctx context.Context, s *reconcileScope) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.ensureLoaded(ctx); err != nil {
		return err
	}
	gen := s.obj.GetGeneration()
	s.invalid = validatePolicy(r.Kind, s.obj.PolicySpec())
	if len(s.invalid) == 0 {
		prev, had := r.accepted[s.key]
		if !had || prev.generation != gen {
			spec := s.obj.PolicySpec().DeepCopy()
			if err := r.comp.SetPolicy(compiler.Policy{Ref: refOf(s.key, gen), Spec: spec}); err != nil {
				// The semantic checks passed but the compiler refused: report it like any invalid spec.
				s.invalid = field.ErrorList{field.Invalid(field.NewPath("spec"), "", err.Error())}
			} else {
				r.accepted[s.key] = acceptedPolicy{generation: gen, spec: spec}
				r.wakeDirtyLocked()
				s.warnings = policy.Warnings(spec)
			}
		}
	}
	s.report = r.fanIn(ctx, s.key)
	return nil
}

// forget removes a deleted policy from every node.
func (r *PolicyReconciler) forget(ctx context.Context, key policyKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.ensureLoaded(ctx); err != nil {
		return
	}
	if _, had := r.accepted[key]; !had {
		return
	}
	delete(r.accepted, key)
	r.comp.DeletePolicy(refOf(key, 0))
	r.wakeDirtyLocked()
}

// fanIn is what the nodes say about one policy.
type fanIn struct {
	accepted    acceptedPolicy
	hasAccepted bool
	endpoints   int
	nodes       []string
	enforcing   int
	// waiting names one node that does not enforce the generation yet, for the message.
	waiting string
}

// fanIn reads the NodePolicy status of every node that needs the policy. Callers hold mu.
func (r *PolicyReconciler) fanIn(ctx context.Context, key policyKey) fanIn {
	acc, ok := r.accepted[key]
	f := fanIn{accepted: acc, hasAccepted: ok}
	if !ok {
		return f
	}
	f.endpoints, f.nodes = r.comp.PolicyStatus(refOf(key, acc.generation))
	for _, node := range f.nodes {
		var np v1alpha1.NodePolicy
		if err := r.client.Get(ctx, types.NamespacedName{Name: node}, &np); err == nil && enforces(&np, key, acc.generation) {
			f.enforcing++
		} else if f.waiting == "" {
			f.waiting = node
		}
	}
	return f
}

// enforces reports whether a node's agent says it enforces this generation of the policy, for the
// NodePolicy generation it last converged to.
func enforces(np *v1alpha1.NodePolicy, key policyKey, generation int64) bool {
	if np.Status.ObservedGeneration != np.Generation {
		return false
	}
	for _, ref := range np.Status.EnforcedPolicies {
		if ref.Kind == key.kind && ref.Namespace == key.namespace && ref.Name == key.name {
			return ref.Generation == generation
		}
	}
	return false
}

func (r *PolicyReconciler) patchStatus(ctx context.Context, before policyObject, s *reconcileScope) error {
	setPolicyStatus(s.obj, s.invalid, s.report)
	if equalStatus(before.PolicyStatus(), s.obj.PolicyStatus()) {
		return nil
	}
	if err := r.client.Status().Patch(ctx, s.obj, client.MergeFrom(before), FieldOwner); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("patch status of %s: %w", s.key, err)
	}
	return nil
}

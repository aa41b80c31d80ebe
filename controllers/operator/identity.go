package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/internal/identity"
)

// maxIdentity is the largest identity the operator allocates: identities travel in 16 bits on the
// wire in some encodings, as Cilium's cluster-local identities do.
const maxIdentity = 65535

// identityTable maps label sets to identities and counts the endpoints using each.
type identityTable struct {
	byKey map[string]identity.ID
	byID  map[identity.ID]*identityState
	next  identity.ID
}

type identityState struct {
	labels    identity.Labels
	namespace string
	endpoints int
	// unusedSince is when endpoints dropped to zero; zero while in use.
	unusedSince time.Time
	// written is the endpoint count last written to the object's status.
	written int32
}

func newIdentityTable() *identityTable {
	return &identityTable{byKey: map[string]identity.ID{}, byID: map[identity.ID]*identityState{}, next: identity.MinAllocatable}
}

// adopt takes an identity object written earlier (by this or a previous operator).
func (t *identityTable) adopt(sid *v1alpha1.SecurityIdentity) error {
	n, err := strconv.ParseUint(sid.Name, 10, 32)
	if err != nil || n < uint64(identity.MinAllocatable) || n > maxIdentity {
		return fmt.Errorf("name %q is not an allocatable identity number", sid.Name)
	}
	id := identity.ID(n)
	labels := identity.Labels(slices.Clone(sid.Spec.Labels)).Normalized()
	key := labels.Key()
	if other, dup := t.byKey[key]; dup && other != id {
		return fmt.Errorf("label set already has identity %d", other)
	}
	t.byKey[key] = id
	st := &identityState{labels: labels, namespace: sid.Spec.Namespace, written: sid.Status.Endpoints, unusedSince: time.Now()}
	if sid.Status.UnusedSince != nil {
		st.unusedSince = sid.Status.UnusedSince.Time
	}
	t.byID[id] = st
	if id >= t.next {
		t.next = id + 1
	}
	return nil
}

// allocate returns the identity of a label set, creating its API object when the set is new. The
// object is created before the number is used, so a number is never used without being persisted.
func (o *Operator) allocate(ctx context.Context, namespace string, labels identity.Labels) (identity.ID, error) {
	t := o.ids
	key := labels.Key()
	if id, ok := t.byKey[key]; ok {
		return id, nil
	}
	for tries := 0; tries < maxIdentity; tries++ {
		id := t.next
		t.next++
		if t.next > maxIdentity {
			t.next = identity.MinAllocatable
		}
		if _, used := t.byID[id]; used {
			continue
		}
		sid := &v1alpha1.SecurityIdentity{
			ObjectMeta: metav1.ObjectMeta{Name: strconv.FormatUint(uint64(id), 10)},
			Spec:       v1alpha1.SecurityIdentitySpec{Namespace: namespace, Labels: labels},
		}
		err := o.client.Create(ctx, sid, FieldOwner)
		if apierrors.IsAlreadyExists(err) {
			// Written by someone else (an earlier leader) but not in our cache yet: adopt it if it
			// is ours, else move on.
			var existing v1alpha1.SecurityIdentity
			if err := o.client.Get(ctx, client.ObjectKeyFromObject(sid), &existing); err == nil {
				if adoptErr := t.adopt(&existing); adoptErr == nil && t.byKey[key] == id {
					o.comp.SetIdentity(id, t.byID[id].labels)
					return id, nil
				}
			}
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("create identity %d: %w", id, err)
		}
		t.byKey[key] = id
		t.byID[id] = &identityState{labels: labels, namespace: namespace}
		o.comp.SetIdentity(id, labels)
		log.FromContext(ctx).V(1).Info("allocated identity", "identity", id, "labels", key)
		return id, nil
	}
	return 0, fmt.Errorf("no free identity between %d and %d", identity.MinAllocatable, maxIdentity)
}

func (t *identityTable) use(id identity.ID, delta int) {
	st, ok := t.byID[id]
	if !ok {
		return
	}
	st.endpoints += delta
	if st.endpoints <= 0 {
		st.endpoints = 0
		if st.unusedSince.IsZero() {
			st.unusedSince = time.Now()
		}
	} else {
		st.unusedSince = time.Time{}
	}
}

// collectIdentities deletes identities that no pod has used for longer than the GC delay, and
// writes endpoint counts that changed. It runs periodically on the leader.
func (o *Operator) collectIdentities(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.ensureLoaded(ctx); err != nil {
		return err
	}
	now := time.Now()
	for id, st := range o.ids.byID {
		name := strconv.FormatUint(uint64(id), 10)
		if st.endpoints == 0 && !st.unusedSince.IsZero() && now.Sub(st.unusedSince) >= o.opts.IdentityGCDelay {
			sid := &v1alpha1.SecurityIdentity{ObjectMeta: metav1.ObjectMeta{Name: name}}
			if err := o.client.Delete(ctx, sid); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete identity %d: %w", id, err)
			}
			delete(o.ids.byKey, st.labels.Key())
			delete(o.ids.byID, id)
			o.comp.DeleteIdentity(id)
			log.FromContext(ctx).Info("deleted unused identity", "identity", id, "unusedFor", now.Sub(st.unusedSince).Round(time.Second).String())
			continue
		}
		if int32(st.endpoints) == st.written {
			continue
		}
		sid := &v1alpha1.SecurityIdentity{ObjectMeta: metav1.ObjectMeta{Name: name}}
		status := map[string]any{"endpoints": st.endpoints, "unusedSince": nil}
		if st.endpoints == 0 {
			status["unusedSince"] = metav1.NewTime(st.unusedSince)
		}
		body, err := json.Marshal(map[string]any{"status": status})
		if err != nil {
			return err
		}
		if err := o.client.Status().Patch(ctx, sid, client.RawPatch(types.MergePatchType, body), FieldOwner); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("identity %d status: %w", id, err)
		}
		st.written = int32(st.endpoints)
	}
	o.wakeDirtyLocked()
	return nil
}

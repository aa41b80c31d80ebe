package operator_test

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/controllers/operator"
)

// A policy status that does not say what the agents report is put right, also when nothing but that
// status changed. The operator itself leaves such a status behind when a reconcile reads the policy
// from a cache that has not seen its previous status write yet: it finds nothing to change, while
// the API server keeps the older verdict (in CI: RollingOut, 0 of 1 nodes, though the agent had
// reported long before).
func TestStaleRollingOutStatusIsPutRight(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the control plane; not run with -short")
	}
	startOperator(t, operator.Options{IdentityGCDelay: time.Hour})
	createNode(t, "node-st", "172.18.0.9")
	createNamespace(t, "stale-status", nil)
	createPod(t, "stale-status", "web", "node-st", "10.0.7.10", map[string]string{"app": "web"})
	var p v1alpha1.AccessPolicy
	if err := yaml.UnmarshalStrict([]byte(`
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: web, namespace: stale-status}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`), &p); err != nil {
		t.Fatal(err)
	}
	if err := cp.Client.Create(ctxT(t), &p); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "NodePolicy node-st lists the policy", func() error {
		np, err := getNodePolicy(t, "node-st")
		if err != nil {
			return err
		}
		if len(np.Spec.Policies) != 1 {
			return fmt.Errorf("policies %v", np.Spec.Policies)
		}
		return nil
	})
	ackAsAgent(t, "node-st")
	waitReady(t, "stale-status", "web")
	// Longer than the operator's rollout recheck: no requeue of the rollout is left.
	time.Sleep(3 * time.Second)

	// The status an earlier reconcile wrote while the agent had not reported yet.
	stale := getPolicy(t, "stale-status", "web")
	msg := "enforced on 0 of 1 nodes; waiting for node node-st"
	stale.Status.NodesEnforcing = 0
	meta.SetStatusCondition(&stale.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReconciling,
		Status: metav1.ConditionTrue, Reason: operator.ReasonRollingOut, Message: msg, ObservedGeneration: stale.Generation})
	meta.SetStatusCondition(&stale.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady,
		Status: metav1.ConditionFalse, Reason: operator.ReasonRollingOut, Message: msg, ObservedGeneration: stale.Generation})
	if err := cp.Client.Status().Update(ctxT(t), stale); err != nil {
		t.Fatal(err)
	}

	eventually(t, 5*time.Second, "status put right", func() error {
		p := getPolicy(t, "stale-status", "web")
		if c := condition(&p.Status, v1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue || p.Status.NodesEnforcing != 1 {
			return fmt.Errorf("%d of %d nodes, %+v", p.Status.NodesEnforcing, p.Status.NodesDesired, p.Status.Conditions)
		}
		return nil
	})
}

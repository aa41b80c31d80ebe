// Package operator_test runs the operator against a real kube-apiserver and etcd: seed policies and
// pods in, NodePolicies, identities, IP cache shards and policy status out.
package operator_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/controllers/operator"
	"github.com/portcullis-dev/portcullis/internal/controlplane"
)

var cp *controlplane.ControlPlane

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.Level(zapLevel())))
	var err error
	cp, err = controlplane.Start(controlplane.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "control plane:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := cp.Stop(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

func zapLevel() zapcore.Level {
	if os.Getenv("PORTCULLIS_TEST_LOG") != "" {
		return -1
	}
	return 2 // errors only
}

// startOperator runs an operator until the test (or stop) ends it.
func startOperator(t *testing.T, opts operator.Options) (stop func()) {
	t.Helper()
	mgr, err := ctrl.NewManager(cp.Config, ctrl.Options{
		Scheme:                 cp.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             ctrlConfig(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := operator.Setup(mgr, opts); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("operator: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func ctxT(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// eventually retries check until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = check(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func createNode(t *testing.T, name, ip string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := cp.Client.Create(ctxT(t), n); err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if err := cp.Client.Status().Update(ctxT(t), n); err != nil {
		t.Fatal(err)
	}
}

func createNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := cp.Client.Create(ctxT(t), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// createPod creates a running pod on a node with an address, as a kubelet and a CNI would.
func createPod(t *testing.T, ns, name, node, ip string, labels map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "app", Image: "app", Ports: ports}},
		},
	}
	if err := cp.Client.Create(ctxT(t), p); err != nil {
		t.Fatal(err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	if err := cp.Client.Status().Update(ctxT(t), p); err != nil {
		t.Fatal(err)
	}
	return p
}

func applyFile(t *testing.T, path string) client.Object {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var p v1alpha1.AccessPolicy
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		t.Fatal(err)
	}
	if err := cp.Client.Create(ctxT(t), &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

func getNodePolicy(t *testing.T, node string) (*v1alpha1.NodePolicy, error) {
	var np v1alpha1.NodePolicy
	err := cp.Client.Get(ctxT(t), types.NamespacedName{Name: node}, &np)
	return &np, err
}

// ackAsAgent writes NodePolicy status as the node's agent does once the kernel is converged.
func ackAsAgent(t *testing.T, node string) {
	t.Helper()
	eventually(t, 10*time.Second, "agent acknowledgement of "+node, func() error {
		np, err := getNodePolicy(t, node)
		if err != nil {
			return err
		}
		np.Status.ObservedGeneration = np.Generation
		np.Status.EnforcedPolicies = np.Spec.Policies
		np.Status.Endpoints = int32(len(np.Spec.Endpoints))
		meta.SetStatusCondition(&np.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady,
			Status: metav1.ConditionTrue, Reason: "Converged", Message: "test agent", ObservedGeneration: np.Generation})
		return cp.Client.Status().Update(ctxT(t), np)
	})
}

func condition(st *v1alpha1.PolicyStatus, typ string) *metav1.Condition {
	return meta.FindStatusCondition(st.Conditions, typ)
}

func getPolicy(t *testing.T, ns, name string) *v1alpha1.AccessPolicy {
	t.Helper()
	var p v1alpha1.AccessPolicy
	if err := cp.Client.Get(ctxT(t), types.NamespacedName{Namespace: ns, Name: name}, &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

// ruleSetOf returns the ingress and egress rule sets of a pod in a NodePolicy.
func ruleSetOf(np *v1alpha1.NodePolicy, ns, pod string) (in, eg *v1alpha1.RuleSet, _ *v1alpha1.NodeEndpoint, _ error) {
	for i := range np.Spec.Endpoints {
		ep := &np.Spec.Endpoints[i]
		if ep.Namespace != ns || ep.Pod != pod {
			continue
		}
		for j := range np.Spec.RuleSets {
			switch np.Spec.RuleSets[j].Name {
			case ep.IngressRuleSet:
				in = &np.Spec.RuleSets[j]
			case ep.EgressRuleSet:
				eg = &np.Spec.RuleSets[j]
			}
		}
		if ep.IngressRuleSet == ep.EgressRuleSet {
			eg = in
		}
		if in == nil || eg == nil {
			return nil, nil, ep, fmt.Errorf("endpoint %s/%s names rule sets %q and %q, one of which is missing", ns, pod, ep.IngressRuleSet, ep.EgressRuleSet)
		}
		return in, eg, ep, nil
	}
	return nil, nil, nil, fmt.Errorf("endpoint %s/%s not in NodePolicy %s", ns, pod, np.Name)
}

// ctrlConfig lets several managers (one per test, and a restarted one) use the same controller names
// in one process.
func ctrlConfig() config.Controller {
	return config.Controller{SkipNameValidation: ptr.To(true)}
}

var errNotYet = errors.New("not yet")

func contains(haystack []string, needle string) bool {
	for _, s := range haystack {
		if strings.Contains(s, needle) {
			return true
		}
	}
	return false
}

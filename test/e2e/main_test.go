// Package e2e_test runs the whole lab — control plane, operator, one agent process per node, pods in
// network namespaces — and checks enforcement with real traffic. Every test here is privileged: it
// skips when not root, and fails under CI=true when it cannot run.
package e2e_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/portcullis-dev/portcullis/internal/controlplane"
	"github.com/portcullis-dev/portcullis/internal/lab"
	"github.com/portcullis-dev/portcullis/internal/labcluster"
)

var (
	cluster  *labcluster.Cluster
	root     string
	setupErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 || testing.Short() || os.Getenv(pairedEnv) != "" {
		// Each test decides: skip, or fail under CI.
		return m.Run()
	}
	var err error
	if root, err = controlplane.RepoRoot(); err != nil {
		setupErr = err
		return m.Run()
	}
	bin, err := os.MkdirTemp("", "portcullis-e2e-bin-")
	if err != nil {
		setupErr = err
		return m.Run()
	}
	defer os.RemoveAll(bin)
	for _, cmd := range []string{"portcullis", "portcullis-agent"} {
		build := exec.Command("go", "build", "-o", filepath.Join(bin, cmd), "./cmd/"+cmd)
		build.Dir = root
		out, err := build.CombinedOutput()
		if err != nil {
			setupErr = fmt.Errorf("build %s: %v\n%s", cmd, err, out)
			return m.Run()
		}
	}
	topo, err := lab.LoadTopology(filepath.Join(root, "examples", "lab", "seed.yaml"))
	if err != nil {
		setupErr = err
		return m.Run()
	}
	log := logr.Discard()
	if os.Getenv("PORTCULLIS_TEST_LOG") != "" {
		z, _ := zap.NewDevelopment()
		log = zapr.NewLogger(z)
	}
	ctrl.SetLogger(log)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster, err = labcluster.Up(ctx, labcluster.Options{
		Topology:           topo,
		Prefix:             fmt.Sprintf("pe%d-", os.Getpid()%100000),
		AgentBinary:        filepath.Join(bin, "portcullis-agent"),
		LabBinary:          filepath.Join(bin, "portcullis"),
		LabArgs:            []string{"lab"},
		DriftCheckInterval: time.Second,
		// Every HTTP request is judged at the server's socket by default. Lab pods are restricted
		// (no CAP_NET_RAW or CAP_NET_ADMIN): with PORTCULLIS_E2E_AGENT_ARGS=--http-judge-at-source=true
		// the agents judge same-node clients at their own socket instead. Also for benchmarks of
		// other agent options.
		AgentArgs: strings.Fields(os.Getenv("PORTCULLIS_E2E_AGENT_ARGS")),
		Log:       log,
	})
	if err != nil {
		setupErr = err
		return m.Run()
	}
	// Every test starts from the seed article's policies, and puts back what it changes.
	if err := cluster.Apply(ctx, filepath.Join(root, "examples", "seed")); err != nil {
		setupErr = err
	} else if err := cluster.WaitReady(ctx); err != nil {
		setupErr = err
	} else if err := cluster.WaitNodesConverged(ctx); err != nil {
		setupErr = err
	}
	code := m.Run()
	if code != 0 {
		for _, n := range topo.Nodes {
			fmt.Fprintf(os.Stderr, "---- agent log of %s (tail) ----\n%s\n", n.Name, tail(cluster.AgentLog(n.Name), 40))
		}
	}
	if err := cluster.Down(); err != nil {
		fmt.Fprintln(os.Stderr, "lab down:", err)
		code = 1
	}
	if _, err := os.Stat(cluster.StateDir()); !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "lab down left its state directory %s (%v)\n", cluster.StateDir(), err)
		code = 1
	}
	return code
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// needLab skips when the test cannot be privileged, unless under CI, where it fails.
func needLab(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: not run with -short")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("privileged test cannot run: not root (CI=true)")
		}
		t.Skip("needs root")
	}
	if setupErr != nil {
		t.Fatalf("lab set-up failed: %v", setupErr)
	}
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// apply applies YAML and waits until every policy is Ready and every node converged.
func apply(t *testing.T, yamlText string) {
	t.Helper()
	if err := cluster.ApplyYAML(ctxT(t, 10*time.Second), []byte(yamlText)); err != nil {
		t.Fatal(err)
	}
	settle(t)
}

func settle(t *testing.T) {
	t.Helper()
	ctx := ctxT(t, 20*time.Second)
	if err := cluster.WaitReady(ctx); err != nil {
		// What the agents reported, to tell a stuck agent from a stuck fan-in.
		for _, n := range cluster.Net.Topology().Nodes {
			if np, err := cluster.NodePolicy(context.Background(), n.Name); err == nil {
				t.Logf("NodePolicy %s: generation %d, observedGeneration %d, enforcedPolicies %+v, spec.policies %+v, conditions %+v",
					n.Name, np.Generation, np.Status.ObservedGeneration, np.Status.EnforcedPolicies, np.Spec.Policies, np.Status.Conditions)
			}
		}
		t.Fatal(err)
	}
	if err := cluster.WaitNodesConverged(ctx); err != nil {
		t.Fatal(err)
	}
}

func deleteYAML(t testing.TB, kind, ns, name string) {
	t.Helper()
	args := []string{"--kubeconfig", cluster.Kubeconfig, "delete", kind, name, "--ignore-not-found", "--wait=true"}
	if ns != "" {
		args = append(args, "-n", ns)
	}
	out, err := exec.Command(filepath.Join(root, "bin", "kubectl"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl delete: %v %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cluster.WaitNodesConverged(ctx); err != nil {
		t.Fatal(err)
	}
}

// outcome of one request as the client saw it.
type outcome string

const (
	allowed outcome = "allowed" // a response came back
	dropped outcome = "dropped" // no answer: the kernel dropped the connection attempt
	// forbidden: the kernel answered 403 Forbidden, "Access denied" (an HTTP rule denied the request)
	forbidden outcome = "forbidden"
)

// request makes one HTTP request from a pod and classifies the result. A timeout is a drop; any
// other failure is unexpected and fails the test.
func request(t *testing.T, from, to string, port int, method, path string, headers ...string) outcome {
	t.Helper()
	h := http.Header{}
	for _, kv := range headers {
		k, v, _ := strings.Cut(kv, ": ")
		h.Add(k, v)
	}
	ctx := ctxT(t, 2*time.Second)
	resp, err := cluster.Net.HTTP(ctx, from, to, port, method, path, h)
	switch {
	case err == nil && resp.Status == http.StatusForbidden && resp.Body == "Access denied":
		return forbidden
	case err == nil:
		if resp.Status != http.StatusOK {
			t.Errorf("%s → %s:%d %s %s: status %d", from, to, port, method, path, resp.Status)
		}
		return allowed
	case errors.Is(err, lab.ErrTimeout):
		return dropped
	default:
		t.Errorf("%s → %s:%d %s %s: unexpected error %v", from, to, port, method, path, err)
		return ""
	}
}

func udp(t *testing.T, from, to string, port int) outcome {
	t.Helper()
	ctx := ctxT(t, 2*time.Second)
	got, err := cluster.Net.UDPEcho(ctx, from, to, port, []byte("ping"))
	switch {
	case err == nil && string(got) == "ping":
		return allowed
	case errors.Is(err, lab.ErrTimeout):
		return dropped
	default:
		t.Errorf("udp %s → %s:%d: %q %v", from, to, port, got, err)
		return ""
	}
}

func ip6(t *testing.T, ref string) string {
	t.Helper()
	a, err := cluster.Net.PodIPs(ref)
	if err != nil {
		t.Fatal(err)
	}
	return a.IPv6.String()
}

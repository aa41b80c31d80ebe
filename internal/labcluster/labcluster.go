// Package labcluster runs the whole lab: the control plane, the operator, one agent process per
// simulated node, and the lab network with its pods, wired together so that policies applied to the
// API server are enforced on real traffic between the pods. The README's main command and the
// end-to-end tests both use it.
package labcluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
	"github.com/portcullis-dev/portcullis/controllers/operator"
	"github.com/portcullis-dev/portcullis/internal/controlplane"
	"github.com/portcullis-dev/portcullis/internal/lab"
)

// FieldOwner is the field manager of what the lab applies, as a GitOps tool would have its own.
const FieldOwner = client.FieldOwner("portcullis-lab")

// Options configure Up.
type Options struct {
	// Topology is the lab's nodes, pods and external hosts.
	Topology *lab.Topology
	// Prefix names the lab's namespaces and directories (see lab.Options.Prefix).
	Prefix string
	// AgentBinary is the portcullis-agent executable.
	AgentBinary string
	// LabBinary and LabArgs run the pods' servers and probes (see lab.Options.Binary).
	LabBinary string
	LabArgs   []string
	// DriftCheckInterval is passed to every agent. Default 2 s.
	DriftCheckInterval time.Duration
	// AgentArgs are added to every agent's command line (for example --http-delivery=pass).
	AgentArgs []string
	// StateDir holds the kubeconfig and the agents' logs. Default: a new temporary directory.
	StateDir string
	// Log receives progress messages.
	Log logr.Logger
}

// Cluster is a running lab.
type Cluster struct {
	// CP is the control plane; CP.Client reaches it as an administrator.
	CP *controlplane.ControlPlane
	// Net is the lab network.
	Net *lab.Lab
	// Kubeconfig is the path of the administrator kubeconfig.
	Kubeconfig string

	opts         Options
	ownStateDir  bool // Up made StateDir: Down removes it
	stopOperator func()
	mu           sync.Mutex
	agents       map[string]*agentProc
	ports        map[string]int
}

type agentProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// Up starts everything. On error it removes what it started.
func Up(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.Topology == nil {
		return nil, errors.New("no topology")
	}
	if opts.AgentBinary == "" {
		return nil, errors.New("no agent binary")
	}
	if opts.DriftCheckInterval == 0 {
		opts.DriftCheckInterval = 2 * time.Second
	}
	own := opts.StateDir == ""
	if own {
		if opts.StateDir, err = os.MkdirTemp("", "portcullis-lab-"); err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
	}
	c := &Cluster{opts: opts, ownStateDir: own, agents: map[string]*agentProc{}, ports: map[string]int{}}
	defer func() {
		if err != nil {
			_ = c.Down()
		}
	}()
	log := opts.Log
	log.Info("starting etcd and kube-apiserver")
	if c.CP, err = controlplane.Start(controlplane.Options{}); err != nil {
		return nil, err
	}
	kc, err := c.CP.Kubeconfig()
	if err != nil {
		return nil, err
	}
	c.Kubeconfig = filepath.Join(opts.StateDir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, kc, 0o600); err != nil {
		return nil, fmt.Errorf("write kubeconfig: %w", err)
	}
	log.Info("building the lab network", "nodes", len(opts.Topology.Nodes), "pods", len(opts.Topology.Pods))
	if c.Net, err = lab.Up(ctx, opts.Topology, lab.Options{Prefix: opts.Prefix, Binary: opts.LabBinary, BinaryArgs: opts.LabArgs, Log: log}); err != nil {
		return nil, err
	}
	if err := c.createObjects(ctx); err != nil {
		return nil, err
	}
	log.Info("starting the operator")
	if err := c.startOperator(); err != nil {
		return nil, err
	}
	for _, n := range opts.Topology.Nodes {
		if err := c.StartAgent(n.Name); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// createObjects writes the lab's namespaces, nodes and pods to the API server, with the status a
// kubelet and a CNI would report.
func (c *Cluster) createObjects(ctx context.Context) error {
	objs := c.Net.Objects()
	k := c.CP.Client
	for i := range objs.Namespaces {
		if err := k.Create(ctx, &objs.Namespaces[i]); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace: %w", err)
		}
	}
	for i := range objs.Nodes {
		n := objs.Nodes[i].DeepCopy()
		st := n.Status
		if err := k.Create(ctx, n); err != nil {
			return fmt.Errorf("create node %s: %w", n.Name, err)
		}
		n.Status = st
		if err := k.Status().Update(ctx, n); err != nil {
			return fmt.Errorf("node %s status: %w", n.Name, err)
		}
	}
	for i := range objs.Pods {
		p := objs.Pods[i].DeepCopy()
		st := p.Status
		if err := k.Create(ctx, p); err != nil {
			return fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		p.Status = st
		if err := k.Status().Update(ctx, p); err != nil {
			return fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
		}
	}
	return nil
}

func (c *Cluster) startOperator() error {
	mgr, err := ctrl.NewManager(c.CP.Config, ctrl.Options{
		Scheme:                 c.CP.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Logger:                 c.opts.Log.WithName("operator"),
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return fmt.Errorf("operator manager: %w", err)
	}
	if _, err := operator.Setup(mgr, operator.Options{}); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			c.opts.Log.Error(err, "operator stopped")
		}
	}()
	c.stopOperator = func() { cancel(); <-done }
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartAgent starts the agent of a node as its own process. It works on the node's network
// namespace (--netns) and pins in the node's bpffs directory; it reaches the API server from the
// root namespace.
func (c *Cluster) StartAgent(node string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if a, ok := c.agents[node]; ok && a.running() {
		return fmt.Errorf("agent of %s is running", node)
	}
	netnsPath, err := c.Net.NodeNetns(node)
	if err != nil {
		return err
	}
	bpffs, err := c.Net.NodeBPFFS(node)
	if err != nil {
		return err
	}
	cgroup, err := c.Net.NodeCgroup(node)
	if err != nil {
		return err
	}
	port, ok := c.ports[node]
	if !ok {
		if port, err = freePort(); err != nil {
			return err
		}
		c.ports[node] = port
	}
	logf, err := os.OpenFile(filepath.Join(c.opts.StateDir, "agent-"+node+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	args := append([]string{
		"--node-name=" + node, "--kubeconfig=" + c.Kubeconfig, "--netns=" + netnsPath,
		"--bpffs=" + bpffs, "--cgroup-root=" + cgroup,
		fmt.Sprintf("--drift-check-interval=%s", c.opts.DriftCheckInterval),
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", port), "--health-probe-bind-address=0"}, c.opts.AgentArgs...)
	cmd := exec.Command(c.opts.AgentBinary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The agent dies with the lab, never outlives it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start agent of %s: %w", node, err)
	}
	a := &agentProc{cmd: cmd, done: make(chan struct{}), log: logf}
	go func() { _ = cmd.Wait(); close(a.done) }()
	c.agents[node] = a
	return nil
}

func (a *agentProc) running() bool {
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

// StopAgent ends a node's agent with sig (SIGKILL for a crash, SIGTERM for an orderly stop) and
// waits for it. The kernel state it pinned stays and keeps enforcing.
func (c *Cluster) StopAgent(node string, sig syscall.Signal) error {
	c.mu.Lock()
	a, ok := c.agents[node]
	c.mu.Unlock()
	if !ok || !a.running() {
		return nil
	}
	if err := a.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal agent of %s: %w", node, err)
	}
	select {
	case <-a.done:
	case <-time.After(20 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	a.log.Close()
	return nil
}

// AgentLog returns what a node's agent has logged.
func (c *Cluster) AgentLog(node string) string {
	data, _ := os.ReadFile(filepath.Join(c.opts.StateDir, "agent-"+node+".log"))
	return string(data)
}

// AgentURL is the base URL of a node's agent metrics server, which also serves /flows.
func (c *Cluster) AgentURL(node string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("http://127.0.0.1:%d", c.ports[node])
}

// AgentGet fetches a path from a node's agent (for example /metrics or /flows?pod=ns/name).
func (c *Cluster) AgentGet(ctx context.Context, node, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.AgentURL(node)+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// StateDir is the directory of the kubeconfig and the agents' logs.
func (c *Cluster) StateDir() string { return c.opts.StateDir }

// Down stops the agents and the operator, removes the network, and stops the control plane. The
// agents' pins live in the network's bpffs directories, which go with it. A state directory that Up
// made is removed too (read the agents' logs before).
func (c *Cluster) Down() error {
	var errs []error
	for node := range c.agents {
		errs = append(errs, c.StopAgent(node, syscall.SIGTERM))
	}
	if c.stopOperator != nil {
		c.stopOperator()
		c.stopOperator = nil
	}
	if c.Net != nil {
		errs = append(errs, c.Net.Down())
		c.Net = nil
	}
	if c.CP != nil {
		errs = append(errs, c.CP.Stop(context.Background()))
		c.CP = nil
	}
	if c.ownStateDir {
		errs = append(errs, os.RemoveAll(c.opts.StateDir))
		c.ownStateDir = false
	}
	return errors.Join(errs...)
}

// Apply applies every YAML document of the given files, and of the .yaml files in the given
// directories, with server-side apply as a GitOps tool does.
func (c *Cluster) Apply(ctx context.Context, paths ...string) error {
	return ApplyPaths(ctx, c.CP.Client, paths...)
}

// ApplyYAML applies the YAML documents in data.
func (c *Cluster) ApplyYAML(ctx context.Context, data []byte) error {
	return ApplyYAML(ctx, c.CP.Client, data)
}

// ApplyPaths applies every YAML document of the given files, and of the .yaml files in the given
// directories (sorted by name), with server-side apply and the field manager portcullis-lab.
func ApplyPaths(ctx context.Context, k client.Client, paths ...string) error {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		matches, err := filepath.Glob(filepath.Join(p, "*.yaml"))
		if err != nil {
			return err
		}
		sort.Strings(matches)
		files = append(files, matches...)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := ApplyYAML(ctx, k, data); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
	}
	return nil
}

// ApplyYAML applies the YAML documents in data with server-side apply.
func ApplyYAML(ctx context.Context, k client.Client, data []byte) error {
	dec := utilyaml.NewYAMLOrJSONDecoder(bufio.NewReader(bytes.NewReader(data)), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("decode: %w", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		u.SetManagedFields(nil)
		if err := k.Patch(ctx, u, client.Apply, FieldOwner, client.ForceOwnership); err != nil {
			return fmt.Errorf("apply %s %s: %w", u.GetKind(), u.GetName(), err)
		}
	}
}

// WaitReady waits until every AccessPolicy and ClusterAccessPolicy is Ready for its current
// generation, or the context ends; the error names the policies that are not.
func (c *Cluster) WaitReady(ctx context.Context) error {
	for {
		notReady, err := c.notReady(ctx)
		if err != nil {
			return err
		}
		if len(notReady) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("policies not Ready: %s", strings.Join(notReady, "; "))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) notReady(ctx context.Context) ([]string, error) {
	var aps v1alpha1.AccessPolicyList
	var caps v1alpha1.ClusterAccessPolicyList
	if err := c.CP.Client.List(ctx, &aps); err != nil {
		return nil, err
	}
	if err := c.CP.Client.List(ctx, &caps); err != nil {
		return nil, err
	}
	var out []string
	check := func(name string, gen int64, st *v1alpha1.PolicyStatus) {
		for _, cond := range st.Conditions {
			if cond.Type == v1alpha1.ConditionReady && cond.Status == "True" && st.ObservedGeneration == gen {
				return
			}
		}
		msg := "no status"
		for _, cond := range st.Conditions {
			if cond.Type == v1alpha1.ConditionReady {
				msg = cond.Reason + ": " + cond.Message
			}
		}
		out = append(out, name+" ("+msg+")")
	}
	for i := range aps.Items {
		p := &aps.Items[i]
		check(p.Namespace+"/"+p.Name, p.Generation, &p.Status)
	}
	for i := range caps.Items {
		p := &caps.Items[i]
		check(p.Name, p.Generation, &p.Status)
	}
	return out, nil
}

// NodePolicy returns the NodePolicy of a node.
func (c *Cluster) NodePolicy(ctx context.Context, node string) (*v1alpha1.NodePolicy, error) {
	var np v1alpha1.NodePolicy
	if err := c.CP.Client.Get(ctx, types.NamespacedName{Name: node}, &np); err != nil {
		return nil, err
	}
	return &np, nil
}

// WaitNodesConverged waits until every node's agent reports Ready for the current generation of
// its NodePolicy.
func (c *Cluster) WaitNodesConverged(ctx context.Context) error {
	for {
		pending := ""
		for _, n := range c.opts.Topology.Nodes {
			np, err := c.NodePolicy(ctx, n.Name)
			if err != nil {
				pending = n.Name + ": " + err.Error()
				break
			}
			if np.Status.ObservedGeneration != np.Generation {
				pending = fmt.Sprintf("%s: agent at generation %d of %d", n.Name, np.Status.ObservedGeneration, np.Generation)
				break
			}
		}
		if pending == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes not converged: %s", pending)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Pod returns a pod of the lab from the API server.
func (c *Cluster) Pod(ctx context.Context, ref string) (*corev1.Pod, error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok {
		return nil, fmt.Errorf("pod reference %q is not namespace/name", ref)
	}
	var p corev1.Pod
	if err := c.CP.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// Command portcullis is the project's command-line tool. It runs the lab: a cluster on this machine
// (a real control plane, the operator, one agent per simulated node, pods in network namespaces)
// where policies from a Git checkout are enforced on real traffic.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/portcullis-dev/portcullis/internal/controlplane"
	"github.com/portcullis-dev/portcullis/internal/kube"
	"github.com/portcullis-dev/portcullis/internal/lab"
	"github.com/portcullis-dev/portcullis/internal/labcluster"
)

const usage = `usage: portcullis lab up [--topology FILE] [--policies DIR] [--exit] [--verbose]
       portcullis lab down
       portcullis lab exec POD -- COMMAND [ARG...]
       portcullis lab apply -f PATH [-f PATH...]
       portcullis lab net --topology FILE [--prefix P] [--exit]
       portcullis lab clean [--prefix P]

  lab up     (root) start the lab: etcd and kube-apiserver built from their Go modules, the operator,
             one agent per node, the topology's pods with their servers (default
             examples/lab/seed.yaml); apply the policies (default examples/seed); run the seed
             article's requests and print, for each, the expected and the observed outcome; then keep
             running until interrupted (or, with --exit, stop)
  lab down   stop the running lab and remove everything it created
  lab exec   run a command inside a pod (its network namespace and cgroup), e.g.
             portcullis lab exec production/auth-service -- curl -s http://10.0.1.10:8080/
  lab apply  apply manifests to the lab's API server as a GitOps tool would (server-side apply)
  lab net    only the network: nodes, pods with their servers, external hosts (see docs/lab.md)
  lab clean  remove what a lab with this prefix left behind (default prefix pcl-)
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "portcullis:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 || args[0] != "lab" {
		fmt.Fprint(os.Stderr, usage)
		return errors.New("unknown command")
	}
	switch args[1] {
	case "serve", "probe":
		// Hidden: the lab re-executes this binary as each pod's server and as its probe client.
		return lab.Main(args[1:])
	case "up":
		return labUp(args[2:])
	case "down":
		return labDown()
	case "exec":
		return labExec(args[2:])
	case "apply":
		return labApply(args[2:])
	case "net":
		return labNet(args[2:])
	case "clean":
		fs := flag.NewFlagSet("lab clean", flag.ContinueOnError)
		prefix := fs.String("prefix", lab.DefaultPrefix, "name prefix of the lab to remove")
		if err := fs.Parse(args[2:]); err != nil {
			return err
		}
		return lab.Cleanup(*prefix)
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown lab command %q", args[1])
}

func repoPath(parts ...string) (string, error) {
	root, err := controlplane.RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(append([]string{root}, parts...)...), nil
}

func statePath() (string, error) { return repoPath(".lab", "state.json") }

func labUp(args []string) error {
	fs := flag.NewFlagSet("lab up", flag.ContinueOnError)
	topoPath := fs.String("topology", "", "lab topology (default examples/lab/seed.yaml)")
	policies := fs.String("policies", "", "manifests to apply (default examples/seed)")
	agentBin := fs.String("agent-binary", "", "portcullis-agent executable (default bin/portcullis-agent)")
	exit := fs.Bool("exit", false, "stop once the scripted requests have run")
	verbose := fs.Bool("verbose", false, "log what the operator and the lab do")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root: it creates network namespaces, cgroups and BPF programs")
	}
	var err error
	for p, def := range map[*string][]string{topoPath: {"examples", "lab", "seed.yaml"}, policies: {"examples", "seed"}, agentBin: {"bin", "portcullis-agent"}} {
		if *p == "" {
			if *p, err = repoPath(def...); err != nil {
				return err
			}
		}
	}
	if _, err := os.Stat(*agentBin); err != nil {
		return fmt.Errorf("agent binary: %w (run `make build`)", err)
	}
	topo, err := lab.LoadTopology(*topoPath)
	if err != nil {
		return err
	}
	log := logr.Discard()
	if *verbose {
		z, _ := zap.NewDevelopment()
		log = zapr.NewLogger(z)
	}
	ctrl.SetLogger(log)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	stateDir, err := repoPath(".lab")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	fmt.Println("lab: starting the control plane, the operator, the network and one agent per node")
	c, err := labcluster.Up(ctx, labcluster.Options{
		Topology: topo, AgentBinary: *agentBin, LabBinary: self, LabArgs: []string{"lab"},
		StateDir: stateDir, Log: log,
	})
	if errors.Is(err, lab.ErrExists) {
		return fmt.Errorf("%w: a lab is already running or was not cleaned up; run `portcullis lab down`", err)
	}
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("lab: stopping")
		if err := c.Down(); err != nil {
			fmt.Fprintln(os.Stderr, "lab:", err)
		}
		if p, err := statePath(); err == nil {
			_ = os.Remove(p)
		}
	}()
	st, err := c.State()
	if err != nil {
		return err
	}
	sp, err := statePath()
	if err != nil {
		return err
	}
	if err := labcluster.SaveState(sp, st); err != nil {
		return err
	}
	fmt.Printf("lab: up in %s: %d nodes, %d pods\n", time.Since(start).Round(100*time.Millisecond), len(topo.Nodes), len(topo.Pods))

	fmt.Printf("lab: applying %s\n", *policies)
	if err := c.Apply(ctx, *policies); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = c.WaitReady(wctx)
	if err == nil {
		err = c.WaitNodesConverged(wctx)
	}
	cancel()
	if err != nil {
		return err
	}
	fmt.Println("lab: every policy is Ready on every node; the seed article's requests:")
	fmt.Println()
	bad := c.Report(ctx, os.Stdout, labcluster.SeedChecks())
	fmt.Println()
	fmt.Println("ok: as the policy says · gap: a known missing capability (see README) · FAIL: a bug")
	fmt.Printf("\nlab: kubeconfig %s\n", c.Kubeconfig)
	fmt.Printf("lab: try  bin/kubectl --kubeconfig %s get ap,npol,sid -A\n", c.Kubeconfig)
	fmt.Println("lab:      portcullis lab exec production/auth-service -- curl -s -X POST http://10.0.1.10:8080/v1/users")
	if bad > 0 {
		return fmt.Errorf("%d requests did not get the outcome the policy calls for", bad)
	}
	if *exit {
		return nil
	}
	fmt.Println("lab: running; `portcullis lab down` or Ctrl-C stops it")
	<-ctx.Done()
	return nil
}

func labDown() error {
	sp, err := statePath()
	if err != nil {
		return err
	}
	st, err := labcluster.LoadState(sp)
	if err != nil {
		// Nothing recorded: still remove what a default lab may have left.
		return lab.Cleanup(lab.DefaultPrefix)
	}
	if p, err := os.FindProcess(st.PID); err == nil && p.Signal(syscall.Signal(0)) == nil {
		fmt.Printf("lab: stopping the lab (pid %d)\n", st.PID)
		_ = p.Signal(syscall.SIGTERM)
		for i := 0; i < 300 && p.Signal(syscall.Signal(0)) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	_ = os.Remove(sp)
	return lab.Cleanup(st.Prefix)
}

func labExec(args []string) error {
	if len(args) < 3 || args[1] != "--" {
		return errors.New("usage: portcullis lab exec POD -- COMMAND [ARG...]")
	}
	sp, err := statePath()
	if err != nil {
		return err
	}
	st, err := labcluster.LoadState(sp)
	if err != nil {
		return err
	}
	pod, ok := st.Pods[args[0]]
	if !ok {
		var names []string
		for n := range st.Pods {
			names = append(names, n)
		}
		return fmt.Errorf("no pod %q in the lab (pods: %s)", args[0], strings.Join(names, ", "))
	}
	cmd := pod.Command(args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		os.Exit(exit.ExitCode()) // the command's own status, as kubectl exec does
	}
	return err
}

func labApply(args []string) error {
	fs := flag.NewFlagSet("lab apply", flag.ContinueOnError)
	var paths multi
	fs.Var(&paths, "f", "a manifest file or a directory of .yaml files (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(paths) == 0 {
		return errors.New("usage: portcullis lab apply -f PATH")
	}
	sp, err := statePath()
	if err != nil {
		return err
	}
	st, err := labcluster.LoadState(sp)
	if err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		return fmt.Errorf("lab kubeconfig: %w", err)
	}
	scheme, err := kube.NewScheme()
	if err != nil {
		return err
	}
	k, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := labcluster.ApplyPaths(ctx, k, paths...); err != nil {
		return err
	}
	fmt.Println("applied; watch with: bin/kubectl --kubeconfig " + st.Kubeconfig + " get ap,cap -A -w")
	return nil
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func labNet(args []string) error {
	fs := flag.NewFlagSet("lab net", flag.ContinueOnError)
	topoPath := fs.String("topology", "", "topology file (for example examples/lab/seed.yaml)")
	prefix := fs.String("prefix", lab.DefaultPrefix, "name prefix of the lab's namespaces and directories")
	exit := fs.Bool("exit", false, "remove the network right after it is up")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *topoPath == "" {
		return errors.New("lab net: --topology is required")
	}
	topo, err := lab.LoadTopology(*topoPath)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := lab.Up(ctx, topo, lab.Options{Prefix: *prefix})
	if err != nil {
		return err
	}
	defer func() {
		if err := l.Down(); err != nil {
			fmt.Fprintln(os.Stderr, "lab:", err)
		}
		fmt.Println("lab: network removed")
	}()
	for _, n := range topo.Nodes {
		ns, _ := l.NodeNetns(n.Name)
		ips, _ := l.NodeIPs(n.Name)
		fmt.Printf("node %-12s %s %s netns %s\n", n.Name, ips.IPv4, ips.IPv6, ns)
	}
	for _, ref := range l.Pods() {
		ips, _ := l.PodIPs(ref)
		ifc, _ := l.HostInterface(ref)
		ns, _ := l.PodNetns(ref)
		fmt.Printf("pod  %-36s %-10s %s host %s netns %s\n", ref, ips.IPv4, ips.IPv6, ifc.Name, ns)
	}
	for _, x := range topo.ExternalHosts {
		fmt.Printf("external %s %s %s\n", x.Name, x.IPv4, x.IPv6)
	}
	if *exit {
		return nil
	}
	fmt.Println("lab: network up; press Ctrl-C to remove it")
	<-ctx.Done()
	return nil
}

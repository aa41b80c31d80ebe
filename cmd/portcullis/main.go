// Command portcullis is the project's command-line tool. Today it runs the lab: a real control plane
// on this machine with the Portcullis CRDs installed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/portcullis-dev/portcullis/internal/controlplane"
	"github.com/portcullis-dev/portcullis/internal/lab"
)

const usage = `usage: portcullis lab up [--kubeconfig FILE] [--exit]
       portcullis lab net --topology FILE [--prefix P] [--exit]
       portcullis lab clean [--prefix P]

  lab up     start etcd and kube-apiserver (built from their Go modules into bin/), install the
             Portcullis CRDs, write an administrator kubeconfig and print it; runs until interrupted
             (or, with --exit, stops at once: a smoke test of the set-up)
  lab net    build the lab's network (nodes, pods with their servers, external hosts; see docs/lab.md)
             from a topology file and keep it until interrupted (or, with --exit, remove it at once)
  lab clean  remove what a lab with this prefix left behind (default prefix pcl-)
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "portcullis:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) >= 2 && args[0] == "lab" {
		switch args[1] {
		case "serve", "probe":
			// Hidden: the lab re-executes this binary as each pod's server and as its probe client.
			return lab.Main(args[1:])
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
	}
	if len(args) < 2 || args[0] != "lab" || args[1] != "up" {
		fmt.Fprint(os.Stderr, usage)
		return errors.New("unknown command")
	}
	fs := flag.NewFlagSet("lab up", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "where to write the kubeconfig (default: <repo>/.lab/kubeconfig)")
	exit := fs.Bool("exit", false, "stop the control plane right after it is up")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	return labUp(*kubeconfig, *exit)
}

func labUp(kubeconfigPath string, exitAtOnce bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if kubeconfigPath == "" {
		root, err := controlplane.RepoRoot()
		if err != nil {
			return err
		}
		kubeconfigPath = filepath.Join(root, ".lab", "kubeconfig")
	}
	fmt.Println("lab: starting etcd and kube-apiserver with the Portcullis CRDs")
	cp, err := controlplane.Start(controlplane.Options{})
	if err != nil {
		return err
	}
	defer func() {
		if err := cp.Stop(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "lab:", err)
		}
		_ = os.Remove(kubeconfigPath)
		fmt.Println("lab: stopped")
	}()
	kc, err := cp.Kubeconfig()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(kubeconfigPath), 0o700); err != nil {
		return fmt.Errorf("kubeconfig directory: %w", err)
	}
	if err := os.WriteFile(kubeconfigPath, kc, 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	fmt.Printf("lab: API server at %s\n", cp.Config.Host)
	fmt.Printf("lab: kubeconfig written to %s:\n\n%s\n", kubeconfigPath, kc)
	fmt.Printf("lab: try  bin/kubectl --kubeconfig %s get crd\n", kubeconfigPath)
	if exitAtOnce {
		return nil
	}
	fmt.Println("lab: running; press Ctrl-C to stop")
	<-ctx.Done()
	return nil
}

// labNet builds the lab's network from a topology file and keeps it until interrupted.
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

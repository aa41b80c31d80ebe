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
)

const usage = `usage: portcullis lab up [--kubeconfig FILE] [--exit]

  lab up   start etcd and kube-apiserver (built from their Go modules into bin/), install the
           Portcullis CRDs, write an administrator kubeconfig and print it; runs until interrupted
           (or, with --exit, stops at once: a smoke test of the set-up)
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "portcullis:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
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

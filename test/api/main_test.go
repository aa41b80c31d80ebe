// Package api_test checks the portcullis.dev CRDs against a real kube-apiserver and etcd: what the
// API server accepts, and what it rejects with which message.
package api_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/portcullis-dev/portcullis/internal/controlplane"
)

// k8s is the client of the shared control plane, nil under -short.
var k8s client.Client

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse() // testing.Short needs the flags
	if testing.Short() {
		return m.Run()
	}
	cp, err := controlplane.Start(controlplane.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "control plane:", err)
		return 1
	}
	defer func() {
		if err := cp.Stop(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	k8s = cp.Client
	return m.Run()
}

// needControlPlane skips under -short only; otherwise the control plane is there or TestMain failed.
func needControlPlane(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the control plane; not run with -short")
	}
}

// Package controlplane starts a real Kubernetes control plane -- etcd and kube-apiserver built from
// their Go modules into bin/ by hack/build-controlplane.sh -- with the Portcullis CRDs installed. The
// tests, the lab and the README's main command all use it.
package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/portcullis-dev/portcullis/internal/kube"
)

// modulePath is the first line of the project's go.mod, used to find the repository root.
const modulePath = "module github.com/portcullis-dev/portcullis\n"

// Options configure Start. The zero value finds bin/ and the CRDs from the repository root.
type Options struct {
	// BinDir holds kube-apiserver, etcd and kubectl. Default: $KUBEBUILDER_ASSETS, else <root>/bin.
	BinDir string
	// CRDDir holds the CRD manifests to install. Default: <root>/config/crd/bases.
	CRDDir string
	// StartTimeout bounds the start of etcd and kube-apiserver. Default: 60 s.
	StartTimeout time.Duration
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	// Config reaches the API server as a cluster administrator.
	Config *rest.Config
	// Client is a controller-runtime client with the Portcullis and core kinds registered.
	Client client.Client
	// Scheme knows the Portcullis and core kinds.
	Scheme *runtime.Scheme

	env *envtest.Environment
}

// RepoRoot returns the repository root, found by walking up from the working directory to the go.mod
// of this module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte(modulePath)) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root not found: run from inside the portcullis checkout")
		}
		dir = parent
	}
}

// BinDir returns the directory holding the control plane binaries.
func BinDir() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin"), nil
}

// Start starts etcd and kube-apiserver and installs the CRDs. Stop must be called to end them.
func Start(opts Options) (*ControlPlane, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = BinDir(); err != nil {
			return nil, err
		}
	}
	if opts.CRDDir == "" {
		opts.CRDDir = filepath.Join(root, "config", "crd", "bases")
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	for _, name := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, name)); err != nil {
			return nil, fmt.Errorf("control plane binary %s missing in %s: run `make controlplane` (it builds it from the Go module): %w", name, opts.BinDir, err)
		}
	}
	s, err := kube.NewScheme()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    opts.BinDir,
		CRDDirectoryPaths:        []string{opts.CRDDir},
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: opts.StartTimeout,
		ControlPlaneStopTimeout:  20 * time.Second,
		Scheme:                   s,
	}
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("client: %w", err)
	}
	return &ControlPlane{Config: cfg, Client: c, Scheme: s, env: env}, nil
}

// Kubeconfig returns a kubeconfig for a cluster administrator, for kubectl and other tools.
func (cp *ControlPlane) Kubeconfig() ([]byte, error) {
	user, err := cp.env.AddUser(envtest.User{Name: "portcullis-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, fmt.Errorf("add admin user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return kc, nil
}

// Stop ends kube-apiserver and etcd and removes their data.
func (cp *ControlPlane) Stop(context.Context) error {
	if err := cp.env.Stop(); err != nil {
		return fmt.Errorf("stop control plane: %w", err)
	}
	return nil
}

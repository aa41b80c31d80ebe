// Package kube holds small Kubernetes helpers shared by the commands, without test dependencies.
package kube

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	portcullisv1alpha1 "github.com/portcullis-dev/portcullis/api/v1alpha1"
)

// NewScheme returns a scheme with the Kubernetes core kinds and the Portcullis kinds.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("register core kinds: %w", err)
	}
	if err := portcullisv1alpha1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("register portcullis kinds: %w", err)
	}
	return s, nil
}

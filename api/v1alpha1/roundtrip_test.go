package v1alpha1

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestYAMLRoundTripKeepsMeaning(t *testing.T) {
	manifests := map[string][]byte{}
	seeds, err := filepath.Glob(filepath.Join("..", "..", "examples", "[sr]e*", "*.yaml"))
	if err != nil || len(seeds) == 0 {
		t.Fatalf("seed manifests not found: %v", err)
	}
	for _, f := range seeds {
		if filepath.Base(f) == "namespace.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		manifests[filepath.Base(f)] = data
	}
	for name, data := range manifests {
		t.Run(name, func(t *testing.T) {
			// Strict: a field the Go types do not know is an error, not silently dropped.
			var first ClusterAccessPolicy
			if err := yaml.UnmarshalStrict(data, &first); err != nil {
				t.Fatalf("manifest does not fit the Go types: %v", err)
			}
			out, err := yaml.Marshal(&first)
			if err != nil {
				t.Fatal(err)
			}
			var second ClusterAccessPolicy
			if err := yaml.UnmarshalStrict(out, &second); err != nil {
				t.Fatalf("marshalled object does not read back: %v\n%s", err, out)
			}
			if !reflect.DeepEqual(first, second) {
				t.Errorf("object changed across YAML → object → YAML → object:\n%s", out)
			}
			// The YAML written means what the YAML read said: equal as generic documents.
			var in, again map[string]any
			if err := yaml.Unmarshal(data, &in); err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal(out, &again); err != nil {
				t.Fatal(err)
			}
			delete(again["metadata"].(map[string]any), "creationTimestamp")
			if !reflect.DeepEqual(in, again) {
				t.Errorf("document changed:\nin:\n%s\nout:\n%s", data, out)
			}
		})
	}
}

func TestNilAndEmptyPeerListsStayDistinct(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "examples", "reference", "every-field.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var p ClusterAccessPolicy
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		t.Fatal(err)
	}
	if p.Spec.Ingress[0].FromEndpoints == nil || len(p.Spec.Ingress[0].FromEndpoints) != 0 {
		t.Errorf("fromEndpoints: [] decoded as %#v, want empty non-nil", p.Spec.Ingress[0].FromEndpoints)
	}
	if p.Spec.Ingress[2].FromEndpoints != nil {
		t.Errorf("omitted fromEndpoints decoded as %#v, want nil", p.Spec.Ingress[2].FromEndpoints)
	}
	cp := p.DeepCopy()
	if cp.Spec.Ingress[0].FromEndpoints == nil {
		t.Error("DeepCopy turned an empty fromEndpoints list into nil")
	}
	if cp.Spec.Ingress[2].FromEndpoints != nil {
		t.Error("DeepCopy turned a nil fromEndpoints into a list")
	}
}

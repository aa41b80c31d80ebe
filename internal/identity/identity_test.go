package identity

import (
	"slices"
	"testing"
)

func TestSecurityLabelsDropsPerPodLabelsAndAddsNamespace(t *testing.T) {
	got := SecurityLabels("prod", map[string]string{
		"app":                                "web",
		"app.kubernetes.io/instance":         "web-prod",
		"job-name":                           "migrate",
		"batch.kubernetes.io/job-name":       "migrate",
		"pod-template-hash":                  "5c6b8b8f8f",
		"controller-revision-hash":           "abc",
		"statefulset.kubernetes.io/pod-name": "db-0",
		"pod-template-generation":            "3",
		"apps.kubernetes.io/pod-index":       "0",
		"batch.kubernetes.io/controller-uid": "u",
		"controller-uid":                     "u",
		"argocd.argoproj.io/instance":        "my-app",
		"io.kubernetes.pod.namespace":        "kube-system", // impersonation attempt
		"io.cilium.k8s.namespace.labels.x":   "y",           // impersonation attempt
	}, map[string]string{"team": "core"})
	want := Labels{
		"k8s:app.kubernetes.io/instance=web-prod",
		"k8s:app=web",
		"k8s:batch.kubernetes.io/job-name=migrate",
		"k8s:io.cilium.k8s.namespace.labels.team=core",
		"k8s:io.kubernetes.pod.namespace=prod",
		"k8s:job-name=migrate",
	}
	if !slices.Equal(got, want) {
		t.Errorf("SecurityLabels =\n%q\nwant\n%q", got, want)
	}
	if got.Namespace() != "prod" {
		t.Errorf("Namespace = %q", got.Namespace())
	}
	m := got.Map()
	if m["app"] != "web" || m["io.cilium.k8s.namespace.labels.team"] != "core" || m["io.kubernetes.pod.namespace"] != "prod" {
		t.Errorf("Map = %v", m)
	}
}

func TestReplicasAndRolloutsShareAKey(t *testing.T) {
	a := SecurityLabels("prod", map[string]string{"app": "web", "pod-template-hash": "aaa"}, nil)
	b := SecurityLabels("prod", map[string]string{"pod-template-hash": "bbb", "app": "web"}, nil)
	c := SecurityLabels("staging", map[string]string{"app": "web"}, nil)
	if a.Key() != b.Key() {
		t.Errorf("two rollouts of one app have different keys: %q %q", a.Key(), b.Key())
	}
	if a.Key() == c.Key() {
		t.Errorf("pods of different namespaces share a key")
	}
}

func TestReservedIdentities(t *testing.T) {
	for id, name := range map[ID]string{1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init", 6: "remote-node", 7: "kube-apiserver", 8: "ingress", 9: "world-ipv4", 10: "world-ipv6"} {
		if got, ok := ReservedName(id); !ok || got != name {
			t.Errorf("ReservedName(%d) = %q, want %q", id, got, name)
		}
		if back, ok := ReservedByName(name); !ok || back != id {
			t.Errorf("ReservedByName(%q) = %d", name, back)
		}
	}
	if MinAllocatable != 256 || !ID(256).IsCluster() || ID(2).IsCluster() || ID(7).IsCluster() || !ID(1).IsCluster() {
		t.Error("identity classes are wrong")
	}
}

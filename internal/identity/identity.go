// Package identity defines security identities: the numbers the dataplane uses for peers, the
// reserved numbers Cilium gives to special peers, and the security-relevant label set of a pod.
//
// The package is pure: it allocates nothing and talks to no API server.
package identity

import (
	"slices"
	"strconv"
	"strings"
)

// ID is a security identity: a number per distinct set of security-relevant labels.
type ID uint32

// Reserved identities, numbered as Cilium numbers them.
const (
	// Unknown is the zero identity: no identity is known.
	Unknown ID = 0
	// Host is the local node.
	Host ID = 1
	// World is every address outside the cluster.
	World ID = 2
	// Unmanaged is a pod that Portcullis does not manage.
	Unmanaged ID = 3
	// Health is the health-check endpoint of a node.
	Health ID = 4
	// Init is an endpoint whose identity is not resolved yet.
	Init ID = 5
	// RemoteNode is any node of the cluster other than the local one.
	RemoteNode ID = 6
	// KubeAPIServer is the Kubernetes API server.
	KubeAPIServer ID = 7
	// Ingress is the cluster's ingress proxy.
	Ingress ID = 8
	// WorldIPv4 is every IPv4 address outside the cluster (dual-stack clusters).
	WorldIPv4 ID = 9
	// WorldIPv6 is every IPv6 address outside the cluster (dual-stack clusters).
	WorldIPv6 ID = 10
	// MinAllocatable is the first identity that may be allocated to a label set.
	MinAllocatable ID = 256
)

var reservedNames = map[ID]string{
	Host:          "host",
	World:         "world",
	Unmanaged:     "unmanaged",
	Health:        "health",
	Init:          "init",
	RemoteNode:    "remote-node",
	KubeAPIServer: "kube-apiserver",
	Ingress:       "ingress",
	WorldIPv4:     "world-ipv4",
	WorldIPv6:     "world-ipv6",
}

// IsReserved reports whether id is one of the reserved identities (below MinAllocatable).
func (id ID) IsReserved() bool { return id < MinAllocatable }

// IsWorld reports whether id stands for addresses outside the cluster (world, world-ipv4, world-ipv6).
func (id ID) IsWorld() bool { return id == World || id == WorldIPv4 || id == WorldIPv6 }

// IsCluster reports whether id belongs to Cilium's "cluster" entity: every pod identity, the
// host, remote nodes, and the health, init, unmanaged and ingress identities. The kube-apiserver
// identity (7) and the world identities are not part of it.
func (id ID) IsCluster() bool {
	if id >= MinAllocatable {
		return true
	}
	switch id {
	case Host, RemoteNode, Health, Init, Unmanaged, Ingress:
		return true
	}
	return false
}

// String returns the reserved name of id ("host", "world", ...) or its number.
func (id ID) String() string {
	if n, ok := reservedNames[id]; ok {
		return n
	}
	return strconv.FormatUint(uint64(id), 10)
}

// ReservedName returns the name of a reserved identity, and false for any other identity.
func ReservedName(id ID) (string, bool) {
	n, ok := reservedNames[id]
	return n, ok
}

// ReservedByName returns the reserved identity with the given name ("host", "world", ...).
func ReservedByName(name string) (ID, bool) {
	for id, n := range reservedNames {
		if n == name {
			return id, true
		}
	}
	return Unknown, false
}

// Label sources and the well-known keys of a security label set.
const (
	// SourceK8s is the source prefix of labels taken from Kubernetes objects.
	SourceK8s = "k8s"
	// NamespaceKey is the label holding a pod's namespace.
	NamespaceKey = "io.kubernetes.pod.namespace"
	// NamespaceLabelPrefix prefixes the labels of a pod's namespace.
	NamespaceLabelPrefix = "io.cilium.k8s.namespace.labels."
)

// volatileLabels are pod labels that differ between the pods of one workload (per pod or per
// rollout). Keeping them would give every pod or every rollout its own identity, so they are not
// security-relevant. Labels that are stable for a workload (job-name, app.kubernetes.io/instance)
// are kept: policies legitimately select on them.
var volatileLabels = map[string]bool{
	"pod-template-hash":                        true,
	"controller-revision-hash":                 true,
	"statefulset.kubernetes.io/pod-name":       true,
	"pod-template-generation":                  true,
	"apps.kubernetes.io/pod-index":             true,
	"batch.kubernetes.io/controller-uid":       true,
	"controller-uid":                           true,
	"argocd.argoproj.io/instance":              true,
	"batch.kubernetes.io/job-completion-index": true,
}

// Labels is a security label set: sorted, distinct strings of the form "source:key=value", such as
// "k8s:app=web" or "k8s:io.kubernetes.pod.namespace=prod".
type Labels []string

// SecurityLabels returns the security label set of a pod: its own labels (without those that vary
// per pod or per rollout), its namespace as k8s:io.kubernetes.pod.namespace, and the labels of its
// namespace as k8s:io.cilium.k8s.namespace.labels.<key>.
//
// A pod label that would impersonate the namespace labels (io.kubernetes.pod.namespace, or a key
// under io.cilium.k8s.) is dropped: a pod must not be able to claim another namespace.
func SecurityLabels(namespace string, podLabels, namespaceLabels map[string]string) Labels {
	out := make(Labels, 0, len(podLabels)+len(namespaceLabels)+1)
	for k, v := range podLabels {
		if volatileLabels[k] || k == NamespaceKey || strings.HasPrefix(k, "io.cilium.k8s.") {
			continue
		}
		out = append(out, SourceK8s+":"+k+"="+v)
	}
	for k, v := range namespaceLabels {
		out = append(out, SourceK8s+":"+NamespaceLabelPrefix+k+"="+v)
	}
	out = append(out, SourceK8s+":"+NamespaceKey+"="+namespace)
	slices.Sort(out)
	return slices.Compact(out)
}

// Key returns the canonical string of the set: equal sets have equal keys.
func (l Labels) Key() string { return strings.Join(l, ",") }

// Map returns the labels as key → value, without their source prefix, for label selector
// matching. Labels without "=" map to the empty value.
func (l Labels) Map() map[string]string {
	m := make(map[string]string, len(l))
	for _, s := range l {
		k, v := splitLabel(s)
		m[k] = v
	}
	return m
}

// Namespace returns the value of the io.kubernetes.pod.namespace label, or "".
func (l Labels) Namespace() string {
	for _, s := range l {
		if k, v := splitLabel(s); k == NamespaceKey {
			return v
		}
	}
	return ""
}

// Normalized returns l sorted and without duplicates (a copy; l is not changed).
func (l Labels) Normalized() Labels {
	out := slices.Clone(l)
	slices.Sort(out)
	return slices.Compact(out)
}

// splitLabel splits "source:key=value" into key and value. The source is everything before the
// first ':' that comes before the '='.
func splitLabel(s string) (key, value string) {
	kv, v, _ := strings.Cut(s, "=")
	if i := strings.IndexByte(kv, ':'); i >= 0 {
		kv = kv[i+1:]
	}
	return kv, v
}

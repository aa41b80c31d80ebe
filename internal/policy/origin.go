package policy

import (
	"fmt"
	"strings"
)

// KindNetworkPolicy is the Kubernetes NetworkPolicy kind, which a PolicyReference may name.
const KindNetworkPolicy = "NetworkPolicy"

// shortKinds are the kubectl short names of the policy kinds, which origins use to keep compiled
// NodePolicies small.
var shortKinds = map[string]string{
	KindAccessPolicy:        "ap",
	KindClusterAccessPolicy: "cap",
	KindNetworkPolicy:       "netpol",
}

// Origin names a policy in compiled entries as its kubectl short kind and name: "ap/NAMESPACE/NAME",
// "cap/NAME" or "netpol/NAMESPACE/NAME". A kind without a short name keeps its full name.
func Origin(kind, namespace, name string) string {
	k, ok := shortKinds[kind]
	if !ok {
		k = kind
	}
	if namespace == "" {
		return k + "/" + name
	}
	return k + "/" + namespace + "/" + name
}

// ParseOrigin splits an origin written by Origin and returns the policy's full kind. The cluster-scoped
// ClusterAccessPolicy has no namespace; the other kinds must have one.
func ParseOrigin(origin string) (kind, namespace, name string, err error) {
	short, rest, ok := strings.Cut(origin, "/")
	if !ok {
		return "", "", "", fmt.Errorf("origin %q: want KIND/NAME or KIND/NAMESPACE/NAME", origin)
	}
	for long, s := range shortKinds {
		if s == short {
			kind = long
		}
	}
	if kind == "" {
		return "", "", "", fmt.Errorf("origin %q: unknown kind %q (want ap, cap or netpol)", origin, short)
	}
	if kind == KindClusterAccessPolicy {
		name = rest
	} else if namespace, name, ok = strings.Cut(rest, "/"); !ok || namespace == "" {
		return "", "", "", fmt.Errorf("origin %q: a %s needs a namespace", origin, kind)
	}
	if name == "" || strings.Contains(name, "/") {
		return "", "", "", fmt.Errorf("origin %q: bad policy name", origin)
	}
	return kind, namespace, name, nil
}

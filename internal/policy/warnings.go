package policy

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
)

// Warnings lists what a valid spec says that cannot do what it seems to: HTTP rules whose path can
// match no request such a rule may allow, as a path written with its query string ("/search\?q=.*":
// the path is matched without the query), without its leading '/', or only with an escaped slash
// ("/projects/[a-z]+%2F[a-z]+"), and rules whose method is none the kernel judges (PROPFIND). Such
// a rule allows nothing; the policy is still enforced as written (rejecting it could leave the port
// without the default deny the policy brings), and the operator reports the warning as an event.
func Warnings(spec *v1alpha1.PolicySpec) []string {
	if spec == nil {
		return nil
	}
	var out []string
	check := func(p *field.Path, prs []v1alpha1.PortRule) {
		for i, pr := range prs {
			if pr.Rules == nil {
				continue
			}
			for j, h := range pr.Rules.HTTP {
				hp := p.Index(i).Child("rules", "http").Index(j)
				if h.Path != "" {
					if c := dfaChecks.get(h.Path); c.err == nil && !c.matchesPath {
						out = append(out, fmt.Sprintf("%s: %q matches no request path this rule could allow, so it allows nothing: a "+
							"path is matched from its leading '/' up to the query string, which is not part of it, holds only "+
							"visible ASCII (percent-encoded otherwise), and one with a backslash, %%2F or %%5C matches no rule "+
							"with a path", hp.Child("path"), h.Path))
					}
				}
				if m := normalizeMethod(h.Method); m != "" {
					if c := dfaChecks.get(m); c.err == nil && !c.matchesMethod {
						out = append(out, fmt.Sprintf("%s: %q matches none of the methods the kernel judges (%s; any other method "+
							"is denied before the rules are read), so this rule allows nothing", hp.Child("method"), h.Method,
							strings.Join(KernelMethods, " ")))
					}
				}
			}
		}
	}
	root := field.NewPath("spec")
	for i, r := range spec.Ingress {
		check(root.Child("ingress").Index(i).Child("toPorts"), r.ToPorts)
	}
	for i, r := range spec.Egress {
		check(root.Child("egress").Index(i).Child("toPorts"), r.ToPorts)
	}
	return out
}

package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/portcullis-dev/portcullis/internal/identity"
)

// Selector operators, as they appear in the canonical string of a Selector.
const (
	OpEquals       = "="
	OpNotEquals    = "!="
	OpIn           = "in"
	OpNotIn        = "notin"
	OpExists       = "exists"
	OpDoesNotExist = "!"
)

// Requirement is one term of a label selector, with the label key stripped of Cilium's source
// prefix ("k8s:" or "any:").
type Requirement struct {
	// Key is the label key, for example app or io.kubernetes.pod.namespace.
	Key string `json:"key"`
	// Op is one of OpEquals, OpNotEquals, OpIn, OpNotIn, OpExists, OpDoesNotExist.
	Op string `json:"op"`
	// Values are the sorted, distinct values of =, !=, in and notin.
	Values []string `json:"values,omitempty"`
}

// Selector is a label selector in canonical form: requirements sorted by key, operator and values,
// without duplicates. The zero Selector selects every endpoint in scope.
type Selector struct {
	// Requirements must all hold for a label set to match.
	Requirements []Requirement `json:"requirements,omitempty"`
}

// errLabelSource is returned for a selector key with a label source other than k8s or any.
var errLabelSource = errors.New("unsupported label source")

// stripSource removes Cilium's "k8s:" or "any:" source prefix from a selector key.
func stripSource(key string) (string, error) {
	src, rest, ok := strings.Cut(key, ":")
	if !ok {
		return key, nil
	}
	switch src {
	case "k8s", "any":
		return rest, nil
	}
	return "", fmt.Errorf("%w %q in key %q: only k8s: and any: are supported; use fromEntities/toEntities for reserved peers", errLabelSource, src, key)
}

// stripSelector returns a copy of ls with the source prefixes removed from its keys.
func stripSelector(ls *metav1.LabelSelector) (*metav1.LabelSelector, error) {
	out := &metav1.LabelSelector{}
	if len(ls.MatchLabels) > 0 {
		out.MatchLabels = make(map[string]string, len(ls.MatchLabels))
	}
	for k, v := range ls.MatchLabels {
		sk, err := stripSource(k)
		if err != nil {
			return nil, err
		}
		if old, dup := out.MatchLabels[sk]; dup && old != v {
			return nil, fmt.Errorf("matchLabels names key %q twice with different values (%q and %q)", sk, old, v)
		}
		out.MatchLabels[sk] = v
	}
	for _, e := range ls.MatchExpressions {
		sk, err := stripSource(e.Key)
		if err != nil {
			return nil, err
		}
		e.Key = sk
		out.MatchExpressions = append(out.MatchExpressions, e)
	}
	return out, nil
}

// ParseSelector checks a label selector (keys may carry Cilium's k8s: or any: prefix) and returns
// its canonical form. A nil selector is the empty selector.
func ParseSelector(ls *metav1.LabelSelector) (Selector, error) {
	if ls == nil {
		return Selector{}, nil
	}
	st, err := stripSelector(ls)
	if err != nil {
		return Selector{}, err
	}
	if _, err := metav1.LabelSelectorAsSelector(st); err != nil {
		return Selector{}, fmt.Errorf("invalid label selector: %w", err)
	}
	var reqs []Requirement
	for k, v := range st.MatchLabels {
		reqs = append(reqs, Requirement{Key: k, Op: OpEquals, Values: []string{v}})
	}
	for _, e := range st.MatchExpressions {
		vals := slices.Clone(e.Values)
		slices.Sort(vals)
		vals = slices.Compact(vals)
		r := Requirement{Key: e.Key, Values: vals}
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			r.Op = OpIn
			if len(vals) == 1 {
				r.Op = OpEquals
			}
		case metav1.LabelSelectorOpNotIn:
			r.Op = OpNotIn
			if len(vals) == 1 {
				r.Op = OpNotEquals
			}
		case metav1.LabelSelectorOpExists:
			r.Op, r.Values = OpExists, nil
		case metav1.LabelSelectorOpDoesNotExist:
			r.Op, r.Values = OpDoesNotExist, nil
		default:
			return Selector{}, fmt.Errorf("invalid label selector operator %q", e.Operator)
		}
		reqs = append(reqs, r)
	}
	return newSelector(reqs), nil
}

// newSelector sorts and de-duplicates requirements.
func newSelector(reqs []Requirement) Selector {
	slices.SortFunc(reqs, compareRequirement)
	reqs = slices.CompactFunc(reqs, func(a, b Requirement) bool { return compareRequirement(a, b) == 0 })
	if len(reqs) == 0 {
		reqs = nil
	}
	return Selector{Requirements: reqs}
}

func compareRequirement(a, b Requirement) int {
	if c := strings.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	if c := strings.Compare(a.Op, b.Op); c != 0 {
		return c
	}
	return slices.Compare(a.Values, b.Values)
}

// String returns the canonical text of the selector, such as
// "app=web,io.kubernetes.pod.namespace=prod,tier in (a,b)"; the empty selector is "{}".
func (s Selector) String() string {
	if len(s.Requirements) == 0 {
		return "{}"
	}
	var b strings.Builder
	for i, r := range s.Requirements {
		if i > 0 {
			b.WriteByte(',')
		}
		switch r.Op {
		case OpEquals, OpNotEquals:
			b.WriteString(r.Key + r.Op + strings.Join(r.Values, ""))
		case OpIn, OpNotIn:
			b.WriteString(r.Key + " " + r.Op + " (" + strings.Join(r.Values, ",") + ")")
		case OpExists:
			b.WriteString(r.Key)
		case OpDoesNotExist:
			b.WriteString("!" + r.Key)
		}
	}
	return b.String()
}

// Matches reports whether a label set (key → value, without source prefixes) satisfies every
// requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s.Requirements {
		v, ok := labels[r.Key]
		switch r.Op {
		case OpEquals:
			if !ok || v != r.Values[0] {
				return false
			}
		case OpNotEquals:
			if ok && v == r.Values[0] {
				return false
			}
		case OpIn:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case OpNotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case OpExists:
			if !ok {
				return false
			}
		case OpDoesNotExist:
			if ok {
				return false
			}
		}
	}
	return true
}

// HasKey reports whether some requirement of the selector is about key.
func (s Selector) HasKey(key string) bool {
	for _, r := range s.Requirements {
		if r.Key == key {
			return true
		}
	}
	return false
}

// InNamespace returns the selector restricted to one namespace: the requirement
// io.kubernetes.pod.namespace=ns is added unless the selector already names the namespace label.
func (s Selector) InNamespace(ns string) Selector {
	if s.HasKey(identity.NamespaceKey) {
		return s
	}
	reqs := append(slices.Clone(s.Requirements), Requirement{Key: identity.NamespaceKey, Op: OpEquals, Values: []string{ns}})
	return newSelector(reqs)
}

// Namespaces returns the namespaces the selector is limited to, when a requirement on
// io.kubernetes.pod.namespace (= or in) limits it; ok is false when it may match any namespace.
func (s Selector) Namespaces() (namespaces []string, ok bool) {
	for _, r := range s.Requirements {
		if r.Key == identity.NamespaceKey && (r.Op == OpEquals || r.Op == OpIn) {
			return r.Values, true
		}
	}
	return nil, false
}

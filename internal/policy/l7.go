package policy

import (
	"errors"
	"fmt"
	"net/textproto"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/portcullis-dev/portcullis/api/v1alpha1"
)

// HTTPAny is the normalized text of an HTTP rule that matches every request.
const HTTPAny = "any"

// HTTPRule is a normalized HTTP rule. Its String form is what a NodePolicy carries, for example
// `method="GET" path="/private/metrics" header="X-Internal-Scraper: true"`.
type HTTPRule struct {
	// Method is an RE2 expression matched against the whole method; literal methods are upper-case.
	Method string
	// Path is an RE2 expression matched against the whole path (without the query string).
	Path string
	// Host is an RE2 expression matched against the whole Host header.
	Host string
	// Headers are required headers, "Name" (present) or "Name: value" (exact value), with canonical
	// names, sorted.
	Headers []string
	// LogHeaders are headers compared for the record only (headerMatches with mismatch: LOG): a
	// mismatch is reported and does not stop the rule from matching. Same form as Headers.
	LogHeaders []string
}

var literalMethods = regexp.MustCompile(`^[A-Za-z]+(\|[A-Za-z]+)*$`)

// normalizeMethod upper-cases a method written as a literal or an alternation of literals
// ("get|head" → "GET|HEAD") and sorts the alternatives; other expressions are kept as written.
func normalizeMethod(m string) string {
	if !literalMethods.MatchString(m) {
		return m
	}
	parts := strings.Split(strings.ToUpper(m), "|")
	slices.Sort(parts)
	return strings.Join(slices.Compact(parts), "|")
}

// normalizeHeader turns "name: value" or "name" into "Name: value" or "Name".
func normalizeHeader(name, value string) string {
	name = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name))
	value = strings.TrimSpace(value)
	if value == "" {
		return name
	}
	return name + ": " + value
}

// splitHeader splits "Name: value" (or "Name") into name and value.
func splitHeader(h string) (name, value string) {
	name, value, _ = strings.Cut(h, ":")
	return strings.TrimSpace(name), strings.TrimSpace(value)
}

// NormalizeHTTP returns the normalized form of an HTTP rule: literal methods upper-case, header
// names canonical, headerMatches without mismatch folded into headers, lists sorted and distinct.
func NormalizeHTTP(r v1alpha1.PortRuleHTTP) HTTPRule {
	out := HTTPRule{Method: normalizeMethod(r.Method), Path: r.Path, Host: r.Host}
	for _, h := range r.Headers {
		out.Headers = append(out.Headers, normalizeHeader(splitHeader(string(h))))
	}
	for _, hm := range r.HeaderMatches {
		h := normalizeHeader(hm.Name, hm.Value)
		if hm.Mismatch == v1alpha1.MismatchLog {
			out.LogHeaders = append(out.LogHeaders, h)
		} else {
			out.Headers = append(out.Headers, h)
		}
	}
	slices.Sort(out.Headers)
	out.Headers = slices.Compact(out.Headers)
	slices.Sort(out.LogHeaders)
	out.LogHeaders = slices.Compact(out.LogHeaders)
	// A header that must match anyway needs no logging.
	out.LogHeaders = slices.DeleteFunc(out.LogHeaders, func(h string) bool { return slices.Contains(out.Headers, h) })
	if len(out.Headers) == 0 {
		out.Headers = nil
	}
	if len(out.LogHeaders) == 0 {
		out.LogHeaders = nil
	}
	return out
}

// String returns the normalized text of the rule: key="value" tokens in a fixed order (method,
// path, host, header..., logHeader...), values quoted as Go strings; HTTPAny for the empty rule.
func (r HTTPRule) String() string {
	var parts []string
	add := func(k, v string) { parts = append(parts, k+"="+strconv.Quote(v)) }
	if r.Method != "" {
		add("method", r.Method)
	}
	if r.Path != "" {
		add("path", r.Path)
	}
	if r.Host != "" {
		add("host", r.Host)
	}
	for _, h := range r.Headers {
		add("header", h)
	}
	for _, h := range r.LogHeaders {
		add("logHeader", h)
	}
	if len(parts) == 0 {
		return HTTPAny
	}
	return strings.Join(parts, " ")
}

// errHTTPRule is wrapped by ParseHTTPRule errors.
var errHTTPRule = errors.New("malformed normalized http rule")

// ParseHTTPRule parses the text made by HTTPRule.String.
func ParseHTTPRule(s string) (HTTPRule, error) {
	var r HTTPRule
	if s == HTTPAny {
		return r, nil
	}
	rest := s
	for rest != "" {
		key, after, ok := strings.Cut(rest, "=")
		if !ok {
			return HTTPRule{}, fmt.Errorf("%w %q: expected key=\"value\"", errHTTPRule, s)
		}
		q, err := strconv.QuotedPrefix(after)
		if err != nil {
			return HTTPRule{}, fmt.Errorf("%w %q: %w", errHTTPRule, s, err)
		}
		v, err := strconv.Unquote(q)
		if err != nil {
			return HTTPRule{}, fmt.Errorf("%w %q: %w", errHTTPRule, s, err)
		}
		switch key {
		case "method":
			r.Method = v
		case "path":
			r.Path = v
		case "host":
			r.Host = v
		case "header":
			r.Headers = append(r.Headers, v)
		case "logHeader":
			r.LogHeaders = append(r.LogHeaders, v)
		default:
			return HTTPRule{}, fmt.Errorf("%w %q: unknown key %q", errHTTPRule, s, key)
		}
		rest = strings.TrimPrefix(after[len(q):], " ")
	}
	return r, nil
}

// SplitHeader splits a normalized header requirement into its name and value; the value is empty
// for a presence-only requirement.
func SplitHeader(h string) (name, value string) { return splitHeader(h) }

// NormalizeFQDN returns a DNS name or pattern in lower case with a trailing dot; the lone pattern
// "*" stays "*".
func NormalizeFQDN(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "*" || s == "" || strings.HasSuffix(s, ".") {
		return s
	}
	return s + "."
}

// FQDNRegexp compiles a normalized DNS name or pattern into an anchored expression that matches
// normalized names: "*" stands for any run of characters allowed in a DNS label (it does not cross
// a dot), and the lone "*" matches every name.
func FQDNRegexp(pattern string) (*regexp.Regexp, error) {
	if pattern == "*" {
		return regexp.Compile(`^.*$`)
	}
	expr := strings.ReplaceAll(regexp.QuoteMeta(pattern), `\*`, `[-a-z0-9_]*`)
	re, err := regexp.Compile("^" + expr + "$")
	if err != nil {
		return nil, fmt.Errorf("fqdn pattern %q: %w", pattern, err)
	}
	return re, nil
}

// FormatFQDN returns the normalized text of an FQDN selector (its matchName or matchPattern).
func FormatFQDN(s v1alpha1.FQDNSelector) string {
	if s.MatchName != "" {
		return NormalizeFQDN(s.MatchName)
	}
	return NormalizeFQDN(s.MatchPattern)
}

package l7

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BenchmarkJudge measures judge(), the kernel's decision for one header block, by the kernel's BPF
// statistics for l7_test_judge (which calls it once per run): the BPF time per decision, without the
// syscall that runs it. Cases: a wrk-like request against one rule, a curl-like request against a
// rule with a header requirement (the seed's Scenario 2), a request matched by the last of 100 path
// alternatives with regular expressions, and the wrk-like request with 400 more bytes of header
// value, of path, or with ten more short headers (what a byte and a header line cost). Root
// (BPF_PROG_TEST_RUN and the statistics).
func BenchmarkJudge(b *testing.B) {
	requireRoot(b)
	l, err := Load(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	hundred := hundredPathRules()
	// A REST service's rules: sixteen paths under four methods (merged by method into four kernel
	// rules), the request matching the last method's.
	var rest []string
	for i, m := range []string{"GET", "POST", "PUT", "DELETE"} {
		for j := range 4 {
			rest = append(rest, fmt.Sprintf(`method="%s" path="/v1/res%d(/[0-9]+)?"`, m, 4*i+j))
		}
	}
	curl := "GET /private/metrics HTTP/1.1\r\nHost: metrics.svc.cluster.local:9090\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Internal-Scraper: true\r\n\r\n"
	cases := []struct {
		name  string
		rules []string
		req   string
	}{
		{"one-rule", []string{`method="GET" path="/allowed(/.*)?"`}, req("GET", "/allowed/quiet")},
		{"header-rule", []string{`method="GET" path="/private/metrics" header="X-Internal-Scraper: true"`}, curl},
		{"100-regex-paths", hundred, req("GET", "/api/v1/resource99/12345")},
		{"one-rule-400B-header", []string{`method="GET" path="/allowed(/.*)?"`}, req("GET", "/allowed/quiet", "X-Pad: "+strings.Repeat("a", 400))},
		{"one-rule-400B-path", []string{`method="GET" path="/allowed(/.*)?"`}, req("GET", "/allowed/quiet"+strings.Repeat("a", 400))},
		{"one-rule-dotted-path", []string{`method="GET" path="/allowed(/.*)?"`}, req("GET", "/allowed/static/app.v2.min.js")},
		{"rest-4-methods", rest, req("DELETE", "/v1/res15/7")},
		{"one-rule-10-headers", []string{`method="GET" path="/allowed(/.*)?"`}, req("GET", "/allowed/quiet", "A: b", "C: d", "E: f", "G: h", "I: j", "K: l", "M: n", "O: p", "Q: r", "S: t")},
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	for i, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			key := RuleKey{EndpointID: uint32(200 + i), Port: 80}
			if err := l.SetRules(key, c.rules); err != nil {
				b.Fatal(err)
			}
			if r, err := l.Judge(key, []byte(c.req)); err != nil || r.Decision != Allow {
				b.Fatalf("judge: %+v, %v; want allow", r, err)
			}
			reportRunTime(b, l.objs.L7TestJudge, "bpf-ns/judge", func() {
				if _, err := l.Judge(key, []byte(c.req)); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// hundredPathRules are 100 GET rules with regular expressions over different paths (/api/v1/resourceN/…).
func hundredPathRules() []string {
	var rules []string
	for i := range 100 {
		rules = append(rules, fmt.Sprintf(`method="GET" path="/api/v1/resource%d/[0-9]+"`, i))
	}
	return rules
}

// reportRunTime runs run b.N times and reports prog's own run time per run of prog (the kernel's
// BPF statistics, which the caller has enabled) as unit.
func reportRunTime(b *testing.B, prog *ebpf.Program, unit string, run func()) {
	b.Helper()
	before, err := prog.Stats()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		run()
	}
	after, err := prog.Stats()
	if err != nil {
		b.Fatal(err)
	}
	runs := after.RunCount - before.RunCount
	if runs == 0 {
		b.Fatal("no runs counted")
	}
	b.ReportMetric(float64((after.Runtime-before.Runtime).Nanoseconds())/float64(runs), unit)
}

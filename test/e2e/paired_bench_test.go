package e2e_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// pairedEnv carries the helper client's job (JSON, pairedJob) when BenchmarkLabHTTPRulesPaired runs
// this test binary inside a client pod; TestMain then brings up no lab.
const pairedEnv = "PORTCULLIS_E2E_PAIRED"

type pairedJob struct {
	A, B     string // server addresses (ip:port): A gets the mode's policy, B never has one
	Path     string
	Duration time.Duration
}

type pairedResult struct {
	N     int     `json:"n"` // requests to each server
	AP50  float64 `json:"a_p50_ns"`
	BP50  float64 `json:"b_p50_ns"`
	AMean float64 `json:"a_mean_ns"`
	BMean float64 `json:"b_mean_ns"`
}

// TestHelperPairedClient is not a test: it is BenchmarkLabHTTPRulesPaired's client, run inside a
// client pod (its cgroup and network namespace) with the job in PORTCULLIS_E2E_PAIRED. It keeps one
// connection to each of two servers and sends GET requests on them in turn (A then B, then B then
// A), one at a time, on one OS thread with blocking system calls, timing each from its write to the
// last byte of its answer; it prints the two latency distributions' figures as JSON.
func TestHelperPairedClient(t *testing.T) {
	spec := os.Getenv(pairedEnv)
	if spec == "" {
		t.Skip("the client process of BenchmarkLabHTTPRulesPaired")
	}
	var job pairedJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	var conns [2]*pairedConn
	for i, addr := range []string{job.A, job.B} {
		c, err := dialPaired(addr, job.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(c.fd)
		conns[i] = c
	}
	// Warm-up, not counted: the connections' first requests.
	for range 200 {
		for _, c := range conns {
			if _, err := c.request(); err != nil {
				t.Fatal(err)
			}
		}
	}
	var lat [2][]float64
	end := time.Now().Add(job.Duration)
	for k := 0; time.Now().Before(end); k++ {
		order := [2]int{0, 1}
		if k%2 == 1 {
			order = [2]int{1, 0}
		}
		for _, i := range order {
			d, err := conns[i].request()
			if err != nil {
				t.Fatal(err)
			}
			lat[i] = append(lat[i], float64(d.Nanoseconds()))
		}
	}
	res := pairedResult{N: min(len(lat[0]), len(lat[1])), AMean: meanOf(lat[0]), BMean: meanOf(lat[1])}
	for i := range lat {
		slices.Sort(lat[i])
	}
	res.AP50, res.BP50 = lat[0][len(lat[0])/2], lat[1][len(lat[1])/2]
	out, _ := json.Marshal(res)
	fmt.Printf("PAIRED %s\n", out)
}

// pairedConn is a blocking TCP connection with its request ready to send.
type pairedConn struct {
	fd  int
	req []byte
	buf []byte
}

func dialPaired(addr, path string) (*pairedConn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr)
	return &pairedConn{fd: fd, req: []byte(req), buf: make([]byte, 64<<10)}, nil
}

// request sends the request and reads one whole answer (headers and a Content-Length body), timed.
func (c *pairedConn) request() (time.Duration, error) {
	start := time.Now()
	if _, err := unix.Write(c.fd, c.req); err != nil {
		return 0, err
	}
	got, want := 0, -1
	for want < 0 || got < want {
		n, err := unix.Read(c.fd, c.buf[got:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, fmt.Errorf("connection closed after %d bytes: %q", got, c.buf[:got])
		}
		got += n
		if want < 0 {
			hdr, _, ok := bytes.Cut(c.buf[:got], []byte("\r\n\r\n"))
			if !ok {
				continue
			}
			if !bytes.HasPrefix(hdr, []byte("HTTP/1.1 200 ")) {
				return 0, fmt.Errorf("answer %q", hdr)
			}
			_, v, ok := bytes.Cut(bytes.ToLower(hdr), []byte("\r\ncontent-length: "))
			if !ok {
				return 0, fmt.Errorf("answer without Content-Length: %q", hdr)
			}
			v, _, _ = bytes.Cut(v, []byte("\r\n"))
			cl, err := strconv.Atoi(string(v))
			if err != nil {
				return 0, fmt.Errorf("Content-Length %q", v)
			}
			want = len(hdr) + 4 + cl
		}
	}
	if got != want {
		return 0, fmt.Errorf("%d bytes more than the answer", got-want)
	}
	return time.Since(start), nil
}

// BenchmarkLabHTTPRulesPaired measures the c=1 latency a policy adds to user-service's round trip
// against a reference measured in the same instant: one client sends its requests in turn to
// user-service (A, which gets the mode's policy) and to billing-service (B, the same server program
// on the same node, which never has a policy), one at a time on two keep-alive connections. The
// machine's drift, which moves a whole wrk run's p50 by ±15 µs on this VM, moves both alike and
// leaves A's p50 minus B's p50 (the round's difference); a mode's added p50 is its difference minus
// "no policy"'s in the same round. With PORTCULLIS_BENCH_CPUS the client and both servers are
// pinned; PORTCULLIS_BENCH_ROUNDS, PORTCULLIS_BENCH_RUN and PORTCULLIS_BENCH_MODES as in
// BenchmarkLabHTTPRules (modes: none, l4, http-allow-all, http-100-rules).
//
// B is not untouched by A's policy: with HTTP rules on the node the ingress guard looks B's segments
// up in l7_ports (a miss) where "no policy" returns before it, which makes the result that lookup's
// time (about 0.1 µs) too low. PORTCULLIS_BENCH_BPF_STATS=1 also reports the BPF time per request
// (A's and B's together), at the cost of two clock reads per program run while the latency is
// measured.
func BenchmarkLabHTTPRulesPaired(b *testing.B) {
	needBenchLab(b)
	ipA, err := cluster.Net.PodIPs("production/user-service")
	if err != nil {
		b.Fatal(err)
	}
	ipB, err := cluster.Net.PodIPs("production/billing-service")
	if err != nil {
		b.Fatal(err)
	}
	withoutSeedPolicies(b)
	pinServer(b, "production/user-service")
	pinServer(b, "production/billing-service")
	job := pairedJob{A: ipA.IPv4.String() + ":8080", B: ipB.IPv4.String() + ":9000", Path: "/bench", Duration: benchRun(b)}
	for _, cl := range []struct{ name, pod, app string }{
		{"same-node", "production/auth-service", "auth-service"},
		{"cross-node", "production/reporting-service", "reporting-service"},
	} {
		b.Run(cl.name, func(b *testing.B) { benchPaired(b, cl.pod, cl.app, job) })
	}
	deleteYAML(b, "accesspolicy", "production", "bench-l4")
}

func benchPaired(b *testing.B, client, app string, job pairedJob) {
	modes := benchModes(b, policyModes(app), benchMode.modeName)
	spec, err := json.Marshal(job)
	if err != nil {
		b.Fatal(err)
	}
	st, err := cluster.State()
	if err != nil {
		b.Fatal(err)
	}
	run := func() pairedResult {
		b.Helper()
		argv := onClientCPU(os.Args[0], "-test.run=^TestHelperPairedClient$", "-test.count=1", "-test.v=false")
		cmd := st.Pods[client].Command(argv...)
		cmd.Env = append(os.Environ(), pairedEnv+"="+string(spec), "GOMAXPROCS=1")
		out, err := cmd.CombinedOutput()
		_, line, ok := bytes.Cut(out, []byte("PAIRED "))
		if err != nil || !ok {
			b.Fatalf("paired client: %v\n%s", err, out)
		}
		line, _, _ = bytes.Cut(line, []byte("\n"))
		var r pairedResult
		if err := json.Unmarshal(line, &r); err != nil {
			b.Fatalf("paired client: %v: %q", err, line)
		}
		return r
	}
	// The BPF statistics cost every program run two clock reads, and the HTTP modes run one program
	// more per request: on only when asked (PORTCULLIS_BENCH_BPF_STATS=1), the latency is measured
	// without them.
	withStats := os.Getenv("PORTCULLIS_BENCH_BPF_STATS") == "1"
	if withStats {
		stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			b.Fatal(err)
		}
		defer stats.Close()
	}
	results := map[string][]pairedResult{}
	bpfTime := map[string]map[string]time.Duration{}
	requests := map[string]float64{}
	for range b.N {
		deleteYAML(b, "accesspolicy", "production", "bench-l4")
		run() // not counted
		for round := 0; round < benchRounds(b); round++ {
			for k := range modes {
				m := modes[(round+k)%len(modes)]
				m.use(b)
				if !withStats {
					results[m.name] = append(results[m.name], run())
					continue
				}
				bpf0 := bpfRunTime(b)
				r := run()
				if bpfTime[m.name] == nil {
					bpfTime[m.name] = map[string]time.Duration{}
				}
				for name, t := range bpfRunTime(b) {
					bpfTime[m.name][name] += t - bpf0[name]
				}
				requests[m.name] += float64(2 * r.N)
				results[m.name] = append(results[m.name], r)
			}
		}
	}
	µs := func(ns float64) string { return strconv.FormatFloat(ns/1000, 'f', 1, 64) }
	none := results["none"]
	for _, m := range modes {
		var added, addedMean, rounds []string
		var a, am []float64
		for i, r := range results[m.name] {
			d := (r.AP50 - r.BP50) - (none[i].AP50 - none[i].BP50)
			dm := (r.AMean - r.BMean) - (none[i].AMean - none[i].BMean)
			a, am = append(a, d), append(am, dm)
			added, addedMean = append(added, µs(d)), append(addedMean, µs(dm))
			rounds = append(rounds, fmt.Sprintf("A %s B %s (n %d)", µs(r.AP50), µs(r.BP50), r.N))
		}
		b.Logf("%s p50 by round, µs: %s", m.name, strings.Join(rounds, ", "))
		if withStats {
			all, byProg := bpfPerRequest(bpfTime[m.name], requests[m.name])
			b.Logf("%s BPF ns per request (A and B together) by program: %s", m.name, byProg)
			b.ReportMetric(all, m.name+"-bpf-ns/req")
		}
		if m.name == "none" {
			continue
		}
		b.Logf("%s added p50 by round, µs: %s; added mean: %s", m.name, strings.Join(added, " "), strings.Join(addedMean, " "))
		slices.Sort(a)
		mid, low, high := medianCI95(a)
		b.ReportMetric(mid/1000, m.name+"-added-p50-µs")
		b.ReportMetric(low/1000, m.name+"-added-p50-ci95-low-µs")
		b.ReportMetric(high/1000, m.name+"-added-p50-ci95-high-µs")
		b.ReportMetric(meanOf(a)/1000, m.name+"-added-p50-mean-µs")
		b.ReportMetric(meanOf(am)/1000, m.name+"-added-mean-µs")
	}
	var ap, bp []float64
	for _, r := range none {
		ap, bp = append(ap, r.AP50), append(bp, r.BP50)
	}
	slices.Sort(ap)
	slices.Sort(bp)
	b.ReportMetric(ap[len(ap)/2]/1000, "none-A-p50-µs")
	b.ReportMetric(bp[len(bp)/2]/1000, "none-B-p50-µs")
}

func meanOf(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

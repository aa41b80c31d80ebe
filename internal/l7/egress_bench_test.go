package l7

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BenchmarkClientSideUpload measures what judging at the client's socket costs a bulk upload: a
// client (the helper, in the test cgroup) sends one 64 MiB POST in 256 KiB writes to a server in
// the other namespace and waits for the answer, on a port with egress HTTP rules ("judged": the
// sk_msg program frames the body and follows TCP's stream, the egress guard checks every data
// segment against what it judged) and on a port without ("plain"), alternating, rounds of each.
// It reports each mode's median throughput over the rounds, the ratio judged/plain of the medians,
// and the BPF time the judged uploads cost per MiB (l7_egress and the egress guard, the kernel's
// BPF statistics). Run with -benchtime=1x; root.
func BenchmarkClientSideUpload(b *testing.B) {
	requireRoot(b)
	b.Setenv("L7_TEST_SERVER_QUIET", "1")
	e := newTestEnv(b)
	const judged, plain = 8090, 8094
	e.judgeEgress(b, e.cliAddr, judged, `method="POST" path="/upload"`)
	e.startServer(b, judged, false)
	e.startServer(b, plain, false)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	bpfTime := func() time.Duration { return runTime(b, e.l.objs.L7Egress, e.l.objs.L7GuardEgress) }
	const mib, rounds = 64, 6
	for range b.N {
		rate := map[string][]float64{}
		var judgedBPF time.Duration
		for r := range rounds {
			for i, port := range []uint16{plain, judged} {
				if r%2 == 1 { // alternate which mode goes first
					port = []uint16{judged, plain}[i]
				}
				name := map[uint16]string{plain: "plain", judged: "judged"}[port]
				before := bpfTime()
				got := e.runClientEnv(b, port, false, 0, []string{"L7_TEST_CLIENT_BULK=" + strconv.Itoa(mib)})
				if port == judged {
					judgedBPF += bpfTime() - before
				}
				if len(got) != 1 || !strings.HasPrefix(got[0], "bulk ns ") {
					b.Fatalf("%s: client said %q", name, got)
				}
				ns, _ := strconv.ParseFloat(strings.TrimPrefix(got[0], "bulk ns "), 64)
				rate[name] = append(rate[name], mib/(ns/1e9))
			}
		}
		median := func(v []float64) float64 {
			s := slices.Clone(v)
			slices.Sort(s)
			return s[len(s)/2]
		}
		b.ReportMetric(median(rate["plain"]), "plain-MiB/s")
		b.ReportMetric(median(rate["judged"]), "judged-MiB/s")
		b.ReportMetric(median(rate["judged"])/median(rate["plain"]), "judged-ratio")
		b.ReportMetric(float64(judgedBPF.Nanoseconds())/float64(rounds*mib), "judged-bpf-ns/MiB")
		b.Logf("MiB/s by round: plain %.0f, judged %.0f", rate["plain"], rate["judged"])
	}
}

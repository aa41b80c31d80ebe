package l7

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// fastFrame is an Ethernet + IPv4 + TCP frame carrying payload from client to server, as l7_fast
// sees a request segment at the server pod's interface (checksums left zero: l7_fast reads none).
func fastFrame(client, server netip.AddrPort, seq uint32, payload []byte) []byte {
	f := make([]byte, 14+20+20+len(payload))
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+20+len(payload)))
	ip[8] = 64
	ip[9] = unix.IPPROTO_TCP
	c4, s4 := client.Addr().As4(), server.Addr().As4()
	copy(ip[12:], c4[:])
	copy(ip[16:], s4[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], client.Port())
	binary.BigEndian.PutUint16(tcp[2:], server.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 5 << 4
	tcp[13] = 0x18 // PSH, ACK
	copy(tcp[20:], payload)
	return f
}

// BenchmarkFastSegment measures l7_fast, the whole per-request program of judging before TCP (parse,
// the two lookups, framing, judge, the flow event), by the kernel's BPF statistics over
// BPF_PROG_TEST_RUN of a request segment: each run's segment starts where the last one ended, so
// every run takes the path of a keep-alive connection's next request, passed with its stamp (checked
// on every run). The events are read as the agent reads them. Cases as BenchmarkJudge's: wrk-like
// against one rule, and against 100 path rules with regular expressions; and a browser-like request
// of 1 KiB. The lab's per-request figure (-decision-ns, from the events) covers only the judge
// part. Root.
func BenchmarkFastSegment(b *testing.B) {
	requireRoot(b)
	l, err := Load(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for _, err := range l.ReadEvents(ctx) {
			if err != nil {
				return
			}
		}
	}()
	hundred := hundredPathRules()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	wrk := func(path string) []byte {
		return []byte("GET " + path + " HTTP/1.1\r\nHost: 10.244.1.5:8080\r\n\r\n")
	}
	// Memory written between runs, so that each run finds the programs' code and maps out of the
	// caches, as a request does after the server, the client and the network stack ran on the CPU
	// since the last one: "-l2" writes 2 MiB (more than this machine's 512 KiB L2: the code and
	// maps come from the shared L3, as they mostly do in the lab), "-cold" 32 MiB (more than its
	// L3: from memory).
	const l2, cold = 2 << 20, 32 << 20
	evict := make([]byte, cold)
	oneRule := []string{`method="GET" path="/bench(/.*)?"`}
	// A request as a browser or an instrumented service client sends it: 1 KiB of headers, most
	// of it a bearer token.
	browser := []byte("GET /api/v1/users/12345?include=profile,settings HTTP/1.1\r\n" +
		"Host: user-service.production.svc.cluster.local:8080\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n" +
		"Accept: application/json, text/plain, */*\r\n" +
		"Accept-Encoding: gzip, deflate, br\r\n" +
		"Accept-Language: en-US,en;q=0.9\r\n" +
		"Authorization: Bearer " + strings.Repeat("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9", 18) + "\r\n" +
		"X-Request-Id: 3f2b6c1e-8d4a-4b7e-9f0a-1c2d3e4f5a6b\r\n" +
		"Connection: keep-alive\r\n\r\n")
	browserRule := []string{`method="GET" path="/api/v1/users/[0-9]+"`}
	for i, c := range []struct {
		name  string
		rules []string
		req   []byte
		evict int
	}{
		{"one-rule", oneRule, wrk("/bench"), 0},
		{"100-regex-paths", hundred, wrk("/api/v1/resource99/12345"), 0},
		{"browser-1KiB", browserRule, browser, 0},
		{"one-rule-l2", oneRule, wrk("/bench"), l2},
		{"100-regex-paths-l2", hundred, wrk("/api/v1/resource99/12345"), l2},
		{"one-rule-cold", oneRule, wrk("/bench"), cold},
		{"100-regex-paths-cold", hundred, wrk("/api/v1/resource99/12345"), cold},
	} {
		b.Run(c.name, func(b *testing.B) {
			client := netip.MustParseAddrPort(fmt.Sprintf("10.244.0.7:%d", 40000+i))
			server := netip.MustParseAddrPort("10.244.1.5:8080")
			id := uint32(400 + i)
			if err := l.SetRules(RuleKey{EndpointID: id, Port: server.Port()}, c.rules); err != nil {
				b.Fatal(err)
			}
			cookie := uint64(1<<40 + i)
			var tk httpL7Tuple
			tk.Local, tk.Remote = server.Addr().As16(), client.Addr().As16()
			tk.LocalPort, tk.RemotePort = server.Port(), client.Port()
			if err := l.objs.L7FastConns.Put(&tk, &httpL7FastConn{Cookie: cookie}); err != nil {
				b.Fatal(err)
			}
			defer l.objs.L7FastConns.Delete(&tk)
			const seq0 = 1000
			st := httpL7SockState{EndpointId: id, PeerIdentity: 2, Port: server.Port(), Flags: 128 /* L7_SF_FAST */, RcvSeq: seq0}
			if err := l.objs.L7State.Put(cookie, &st); err != nil {
				b.Fatal(err)
			}
			defer l.objs.L7State.Delete(cookie)
			frame := fastFrame(client, server, seq0, c.req)
			seq := uint32(seq0)
			var out [48]uint32 // struct __sk_buff (192 bytes) after the run: mark is its third field
			run := func() {
				if c.evict > 0 {
					for k := 0; k < c.evict; k += 64 {
						evict[k]++
					}
				}
				binary.BigEndian.PutUint32(frame[14+20+4:], seq)
				ret, err := l.objs.L7Fast.Run(&ebpf.RunOptions{Data: frame, ContextOut: &out})
				if err != nil {
					b.Fatal(err)
				}
				// TCX_NEXT, with the stamp of a judged request ending at seq+len.
				end := (seq + uint32(len(c.req))) & 0x3fffffff
				if int32(ret) != -1 || out[2]&0x80000000 == 0 || out[2]&0x3fffffff != end {
					b.Fatalf("l7_fast returned %d, mark %#x; want TCX_NEXT (-1) and the stamp %#x", int32(ret), out[2], 0xc0000000|end)
				}
				seq += uint32(len(c.req))
			}
			run()
			reportRunTime(b, l.objs.L7Fast, "bpf-ns/segment", run)
		})
	}
}

package datapath

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/portcullis-dev/portcullis/internal/bpfevents"
)

// requirePrivileged skips a privileged test when not root, except under CI=true where a test that
// cannot run must fail rather than pass silently.
func requirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("privileged test cannot run: not root (CI=true forbids skipping)")
	}
	t.Skip("needs root")
}

// mustLoad loads an unpinned Datapath and closes it at the end of the test.
func mustLoad(t testing.TB, opts Options) *Datapath {
	t.Helper()
	requirePrivileged(t)
	d, err := Load(opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// tcx return codes as BPF_PROG_TEST_RUN reports them.
const (
	retNext = uint32(0xffffffff) // TCX_NEXT (-1)
	retDrop = uint32(2)          // TCX_DROP
)

// Test-run packets get skb->dev = the loopback device of the test's network namespace.
const loIfindex = 1

// packet describes a crafted Ethernet frame.
type packet struct {
	src, dst     netip.Addr
	proto        Protocol
	sport, dport uint16 // ICMP echo: dport is the identifier
	tcpFlags     uint8
	icmpType     uint8
	v6ext        []uint8 // IPv6 extension headers to insert, by next-header number, 8 bytes each
	fragOffset   uint16  // IPv4/IPv6 fragment offset in 8-byte units (nonzero: non-first fragment)
	inner        *packet // ICMP error: the quoted packet
	ethertype    uint16  // overrides the ethertype (ARP, VLAN)
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

func (p packet) l4() []byte {
	var b []byte
	switch p.proto {
	case ProtocolTCP:
		b = make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		b[12] = 5 << 4
		b[13] = p.tcpFlags
		binary.BigEndian.PutUint16(b[14:], 65535)
	case ProtocolUDP:
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		binary.BigEndian.PutUint16(b[4:], 8)
	case ProtocolICMP, ProtocolICMPv6:
		b = make([]byte, 8)
		b[0] = p.icmpType
		binary.BigEndian.PutUint16(b[4:], p.dport)
		if p.inner != nil {
			b = append(b, p.inner.ip()...)
		}
	default:
		b = make([]byte, 8)
	}
	return b
}

// ip returns the IP header and payload.
func (p packet) ip() []byte {
	l4 := p.l4()
	if p.src.Is4() {
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(h[6:], p.fragOffset&0x1fff)
		h[8] = 64
		h[9] = uint8(p.proto)
		s, d := p.src.As4(), p.dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		return append(h, l4...)
	}
	var ext []byte
	next := uint8(p.proto)
	hdrs := p.v6ext
	if p.fragOffset != 0 {
		hdrs = append(append([]uint8{}, hdrs...), 44)
	}
	for i := len(hdrs) - 1; i >= 0; i-- {
		e := make([]byte, 8)
		e[0] = next
		if hdrs[i] == 44 {
			binary.BigEndian.PutUint16(e[2:], p.fragOffset<<3)
		}
		ext = append(e, ext...)
		next = hdrs[i]
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(l4)))
	h[6] = next
	h[7] = 64
	s, d := p.src.As16(), p.dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(h, ext...), l4...)
}

func (p packet) bytes() []byte {
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{0x02, 0, 0, 0, 0, 1})
	copy(eth[6:12], []byte{0x02, 0, 0, 0, 0, 2})
	et := p.ethertype
	if et == 0 {
		et = 0x0800
		if p.src.Is6() {
			et = 0x86dd
		}
	}
	binary.BigEndian.PutUint16(eth[12:], et)
	if et == 0x0806 { // ARP request body, content irrelevant to the programs
		return append(eth, make([]byte, 28)...)
	}
	return append(eth, p.ip()...)
}

// reply swaps the ends of a packet.
func (p packet) reply(tcpFlags uint8) packet {
	r := p
	r.src, r.dst = p.dst, p.src
	if p.proto.HasPorts() {
		r.sport, r.dport = p.dport, p.sport
	}
	r.tcpFlags = tcpFlags
	switch p.icmpType {
	case 8:
		r.icmpType = 0
	case 128:
		r.icmpType = 129
	}
	return r
}

// run feeds a frame to the program for the direction.
func run(t testing.TB, d *Datapath, dir Direction, frame []byte) uint32 {
	t.Helper()
	prog := d.objs.PeToPod
	if dir == Egress {
		prog = d.objs.PeFromPod
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret
}

// eventReader reads flow events synchronously for tests.
type eventReader struct {
	rd *ringbuf.Reader
}

func newEventReader(t testing.TB, d *Datapath) *eventReader {
	t.Helper()
	rd, err := ringbuf.NewReader(d.objs.Flows)
	if err != nil {
		t.Fatalf("ring buffer reader: %v", err)
	}
	t.Cleanup(func() { rd.Close() })
	return &eventReader{rd: rd}
}

// drain returns every event queued now.
func (r *eventReader) drain(t testing.TB) []Flow {
	t.Helper()
	var out []Flow
	clock := bpfevents.Now()
	for {
		r.rd.SetDeadline(time.Now().Add(10 * time.Millisecond))
		rec, err := r.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatalf("read ring buffer: %v", err)
		}
		f, err := decodeFlow(rec.RawSample, clock)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f)
	}
}

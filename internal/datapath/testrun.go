package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// TestRunIfindex is the interface BPF_PROG_TEST_RUN makes a frame cross: the loopback device of the
// caller's network namespace. An endpoint keyed by it is the one RunFrame judges for.
const TestRunIfindex = 1

// RunFrame runs one Ethernet frame through the program that judges dir (Ingress: traffic delivered
// to the pod; Egress: traffic the pod sends) with BPF_PROG_TEST_RUN, and reports whether the frame
// passes. It exists for tests and benchmarks — differential checks of the kernel against the
// reference evaluator — and changes the maps exactly as a real packet would (conntrack, counters,
// flow events).
func (d *Datapath) RunFrame(dir Direction, frame []byte) (bool, error) {
	prog := d.objs.PeToPod
	if dir == Egress {
		prog = d.objs.PeFromPod
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		return false, fmt.Errorf("BPF_PROG_TEST_RUN: %w", err)
	}
	return ret != 2, nil // TCX_DROP
}

// FirstPacket builds the Ethernet frame that opens a connection: a TCP SYN, or a UDP datagram,
// between two addresses of the same family.
func FirstPacket(src, dst netip.Addr, proto Protocol, sport, dport uint16) ([]byte, error) {
	if src.Is4() != dst.Is4() {
		return nil, fmt.Errorf("first packet %s → %s: address families differ", src, dst)
	}
	var l4 []byte
	switch proto {
	case ProtocolTCP:
		l4 = make([]byte, 20)
		l4[12] = 5 << 4
		l4[13] = 0x02 // SYN
		binary.BigEndian.PutUint16(l4[14:], 65535)
	case ProtocolUDP:
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[4:], 8)
	default:
		return nil, fmt.Errorf("first packet: protocol %d is neither TCP nor UDP", proto)
	}
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	frame := make([]byte, 14)
	frame[0], frame[6] = 0x02, 0x02
	if src.Is4() {
		binary.BigEndian.PutUint16(frame[12:], 0x0800)
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		h[8], h[9] = 64, uint8(proto)
		s, d := src.As4(), dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		return append(append(frame, h...), l4...), nil
	}
	binary.BigEndian.PutUint16(frame[12:], 0x86dd)
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
	h[6], h[7] = uint8(proto), 64
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(frame, h...), l4...), nil
}

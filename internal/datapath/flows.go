package datapath

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"iter"
	"net/netip"
	"unsafe"

	"github.com/portcullis-dev/portcullis/internal/bpfevents"
)

// ReadFlows yields the flow events of the ring buffer until ctx is done (then it ends without error)
// or reading fails (then it yields the error and ends). A ring buffer has a single consumer position:
// run one ReadFlows per Datapath at a time. Events the kernel could not queue because the buffer was
// full are counted under ReasonEventLost.
func (d *Datapath) ReadFlows(ctx context.Context) iter.Seq2[Flow, error] {
	return func(yield func(Flow, error) bool) {
		clock := bpfevents.Now()
		for raw, err := range bpfevents.Records(ctx, d.objs.Flows, 0) {
			if err != nil {
				yield(Flow{}, fmt.Errorf("read flow ring buffer: %w", err))
				return
			}
			if !yield(decodeFlow(raw, clock)) {
				return
			}
		}
	}
}

var flowEventSize = int(unsafe.Sizeof(portcullisFlowEvent{}))

func decodeFlow(raw []byte, clock bpfevents.Clock) (Flow, error) {
	if len(raw) < flowEventSize {
		return Flow{}, fmt.Errorf("flow event of %d bytes, want %d", len(raw), flowEventSize)
	}
	var e portcullisFlowEvent
	if err := binary.Read(bytes.NewReader(raw[:flowEventSize]), binary.NativeEndian, &e); err != nil {
		return Flow{}, fmt.Errorf("decode flow event: %w", err)
	}
	return flowFromEvent(e, clock), nil
}

func flowFromEvent(e portcullisFlowEvent, clock bpfevents.Clock) Flow {
	addr := func(b [16]byte) netip.Addr {
		a := netip.AddrFrom16(b)
		if e.Flags&uint8(portcullisFlowFlagsFLOW_F_IPV6) == 0 {
			return a.Unmap()
		}
		return a
	}
	return Flow{
		Time:        clock.Time(e.TimestampNs),
		Src:         addr(e.Saddr),
		Dst:         addr(e.Daddr),
		SrcPort:     e.Sport,
		DstPort:     e.Dport,
		Protocol:    Protocol(e.Proto),
		EndpointID:  e.EndpointId,
		Ifindex:     int(e.Ifindex),
		SrcIdentity: Identity(e.SrcIdentity),
		DstIdentity: Identity(e.DstIdentity),
		Direction:   Direction(e.Direction),
		Verdict:     Verdict(e.Verdict),
		Reason:      Reason(e.Reason),
		PolicyID:    e.PolicyId,
		L7:          e.Flags&uint8(portcullisFlowFlagsFLOW_F_L7) != 0,
		Fragment:    e.Flags&uint8(portcullisFlowFlagsFLOW_F_FRAGMENT) != 0,
	}
}

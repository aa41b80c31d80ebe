package datapath

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"os"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/portcullis-dev/portcullis/internal/ktime"
)

// ReadFlows yields the flow events of the ring buffer until ctx is done (then it ends without error)
// or reading fails (then it yields the error and ends). A ring buffer has a single consumer position:
// run one ReadFlows per Datapath at a time. Events the kernel could not queue because the buffer was
// full are counted under ReasonEventLost.
func (d *Datapath) ReadFlows(ctx context.Context) iter.Seq2[Flow, error] {
	return func(yield func(Flow, error) bool) {
		rd, err := ringbuf.NewReader(d.objs.Flows)
		if err != nil {
			yield(Flow{}, fmt.Errorf("open flow ring buffer: %w", err))
			return
		}
		defer rd.Close()
		// Close interrupts a blocked read: that is how cancellation reaches it.
		stop := context.AfterFunc(ctx, func() { rd.Close() })
		defer stop()

		clock := ktime.Now()
		var rec ringbuf.Record
		for {
			if err := rd.ReadInto(&rec); err != nil {
				if ctx.Err() != nil && (errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed)) {
					return
				}
				yield(Flow{}, fmt.Errorf("read flow ring buffer: %w", err))
				return
			}
			f, err := decodeFlow(rec.RawSample, clock)
			if !yield(f, err) {
				return
			}
		}
	}
}

var flowEventSize = int(unsafe.Sizeof(portcullisFlowEvent{}))

func decodeFlow(raw []byte, clock ktime.Clock) (Flow, error) {
	if len(raw) < flowEventSize {
		return Flow{}, fmt.Errorf("flow event of %d bytes, want %d", len(raw), flowEventSize)
	}
	var e portcullisFlowEvent
	if err := binary.Read(bytes.NewReader(raw[:flowEventSize]), binary.NativeEndian, &e); err != nil {
		return Flow{}, fmt.Errorf("decode flow event: %w", err)
	}
	return flowFromEvent(e, clock), nil
}

func flowFromEvent(e portcullisFlowEvent, clock ktime.Clock) Flow {
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

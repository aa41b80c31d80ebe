package bpfevents

import (
	"context"
	"errors"
	"iter"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Records yields the raw records of the ring buffer m until ctx is done (then it ends without
// error) or reading fails (then it yields the error and ends). With poll > 0 it also returns, at
// least that often, records the kernel wrote without waking the reader (BPF_RB_NO_WAKEUP). A
// record is valid until the next one is yielded. A ring buffer has a single consumer position: one
// reader at a time.
func Records(ctx context.Context, m *ebpf.Map, poll time.Duration) iter.Seq2[[]byte, error] {
	return func(yield func([]byte, error) bool) {
		rd, err := ringbuf.NewReader(m)
		if err != nil {
			yield(nil, err)
			return
		}
		defer rd.Close()
		// Close interrupts a blocked read: that is how cancellation reaches it.
		stop := context.AfterFunc(ctx, func() { rd.Close() })
		defer stop()
		if poll > 0 {
			rd.SetDeadline(time.Now().Add(poll))
		}
		var rec ringbuf.Record
		for {
			if err := rd.ReadInto(&rec); err != nil {
				if poll > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
					rd.SetDeadline(time.Now().Add(poll))
					continue
				}
				if ctx.Err() != nil && (errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed)) {
					return
				}
				yield(nil, err)
				return
			}
			if !yield(rec.RawSample, nil) {
				return
			}
		}
	}
}

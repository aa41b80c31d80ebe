package l7

import (
	"context"
	"fmt"
	"iter"
	"net/netip"
	"time"
	"unsafe"

	"github.com/portcullis-dev/portcullis/internal/bpfevents"
)

// Verdict is what the kernel did with one request.
type Verdict uint8

// Verdicts, as enum l7_event_verdict in bpf/l7.h.
const (
	VerdictAllowed Verdict = 1
	VerdictDenied  Verdict = 2
	// VerdictAudited: no rule allowed it (or it was malformed) and the rule set is in audit mode,
	// so it was forwarded.
	VerdictAudited Verdict = 3
)

// String returns forwarded, dropped or audited, as the L3/L4 flows name their verdicts.
func (v Verdict) String() string {
	switch v {
	case VerdictAllowed:
		return "forwarded"
	case VerdictDenied:
		return "dropped"
	case VerdictAudited:
		return "audited"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Response is how a denied request was answered.
type Response uint8

const (
	// ResponseNone: allowed or audited, or an egress deny (the writer got EACCES).
	ResponseNone Response = iota
	// ResponseForbidden: the client got "403 Forbidden" with Connection: close.
	ResponseForbidden
	// ResponseReset: the connection is reset (a 403 could have overtaken an earlier response, or
	// the request was malformed or too short to rewrite).
	ResponseReset
)

// String returns "", "403" or "reset".
func (r Response) String() string {
	return [...]string{"", "403", "reset"}[min(int(r), 2)]
}

// Event is one request the kernel judged.
type Event struct {
	Time time.Time
	// Latency is the time the kernel spent deciding (parsing the header block and matching).
	Latency      time.Duration
	EndpointID   uint32
	PeerIdentity uint32
	Egress       bool
	// Local is the endpoint's side of the connection, Remote the peer's.
	Local, Remote      netip.AddrPort
	Port               uint16 // the server's port
	Verdict            Verdict
	Reason             Reason
	Response           Response
	Method, Path, Host string
	PathCut, HostCut   bool // longer than what the event holds
	Rule               int  // index of the rule that allowed, -1 for none
	LogMissing         uint32
	// AtSource: ingress rules judged at the (local) client's socket rather than the server's
	// (Options.JudgeAtSource).
	AtSource bool
}

// Key is the rule key the request was judged under (before the wildcard-peer fallback).
func (e Event) Key() RuleKey {
	return RuleKey{EndpointID: e.EndpointID, PeerIdentity: e.PeerIdentity, Port: e.Port, Egress: e.Egress}
}

var eventSize = int(unsafe.Sizeof(httpL7Event{}))

// evShort is L7_EV_SHORT (bpf/l7.h): a request whose path and Host fit in evShort bytes each is
// reported in a short record of shortEventSize bytes, the event up to its path followed by evShort
// bytes of path and evShort bytes of Host.
const evShort = 32

var shortEventSize = int(unsafe.Offsetof(httpL7Event{}.Path)) + 2*evShort

// EventPollInterval bounds how long an allowed or audited request's event waits in the ring buffer
// before ReadEvents yields it (denied requests wake the reader at once).
const EventPollInterval = 100 * time.Millisecond

// ReadEvents yields the kernel's request events until ctx is done (then it ends without error) or
// reading fails (then it yields the error and ends). One reader at a time. Events the kernel could
// not queue because the buffer was full are counted under ReasonEventLost.
func (l *L7) ReadEvents(ctx context.Context) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		clock := bpfevents.Now()
		names := newInterner(4096)
		// Only denies wake the reader (bpf/http.c); the rest is read at least every poll interval.
		for raw, err := range bpfevents.Records(ctx, l.objs.L7Events, EventPollInterval) {
			if err != nil {
				yield(Event{}, fmt.Errorf("read l7 event ring buffer: %w", err))
				return
			}
			if !yield(decodeEvent(raw, clock, names)) {
				return
			}
		}
	}
}

// interner hands out one string per distinct byte sequence, so that the methods, hosts and paths
// that repeat from request to request cost a map lookup (which does not allocate) instead of a new
// string each. It forgets everything when it holds max strings.
type interner struct {
	m   map[string]string
	max int
}

func newInterner(max int) *interner { return &interner{m: make(map[string]string), max: max} }

func (in *interner) get(b []byte) string {
	if s, ok := in.m[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(in.m) >= in.max {
		clear(in.m)
	}
	in.m[s] = s
	return s
}

func decodeEvent(raw []byte, clock bpfevents.Clock, names *interner) (Event, error) {
	short := len(raw) == shortEventSize
	if !short && len(raw) < eventSize {
		return Event{}, fmt.Errorf("l7 event of %d bytes, want %d or %d", len(raw), shortEventSize, eventSize)
	}
	// The record is the C struct in native byte order, without padding the Go mirror lacks: a
	// copy is the whole decoding (binary.Read's reflection cost more than the kernel's judging).
	var e httpL7Event
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&e)), eventSize), raw)
	path, host := e.Path[:], e.Host[:]
	if short {
		path, host = e.Path[:evShort], e.Path[evShort:2*evShort]
	}
	text := func(b []byte, n uint16) (string, bool) {
		if int(n) > len(b) {
			return names.get(b), true
		}
		return names.get(b[:n]), false
	}
	out := Event{
		Time:         clock.Time(e.TimeNs),
		Latency:      time.Duration(e.LatencyNs),
		EndpointID:   e.EndpointId,
		PeerIdentity: e.PeerIdentity,
		Egress:       e.Direction == 1,
		Local:        netip.AddrPortFrom(netip.AddrFrom16(e.Local).Unmap(), e.LocalPort),
		Remote:       netip.AddrPortFrom(netip.AddrFrom16(e.Remote).Unmap(), e.RemotePort),
		Port:         e.Port,
		Verdict:      Verdict(e.Verdict),
		Reason:       Reason(e.Reason),
		Rule:         int(e.Rule) - 1,
		LogMissing:   e.LogMissing,
		AtSource:     e.Flags&4 != 0, // L7_EVF_AT_SOURCE
	}
	switch {
	case e.Flags&1 != 0: // L7_EVF_FORBIDDEN
		out.Response = ResponseForbidden
	case e.Flags&2 != 0: // L7_EVF_RESET
		out.Response = ResponseReset
	}
	out.Method, _ = text(e.Method[:], e.MethodLen)
	out.Path, out.PathCut = text(path, e.PathLen)
	out.Host, out.HostCut = text(host, e.HostLen)
	return out, nil
}

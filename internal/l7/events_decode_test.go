package l7

import (
	"testing"
	"unsafe"

	"github.com/portcullis-dev/portcullis/internal/bpfevents"
)

func rawEvent(method, path, host string) []byte {
	var e httpL7Event
	e.Verdict, e.Rule, e.PeerIdentity, e.LocalPort, e.Port = 1, 1, 1001, 8080, 8080
	e.MethodLen, e.PathLen, e.HostLen = uint16(copy(e.Method[:], method)), uint16(len(path)), uint16(len(host))
	copy(e.Path[:], path)
	copy(e.Host[:], host)
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&e)), eventSize)...)
}

// rawShortEvent is the kernel's short record (bpf/l7.h, L7_EV_SHORT) of a request whose path and
// host fit in evShort bytes each: the event up to its path, then the path's and the host's slots.
func rawShortEvent(method, path, host string) []byte {
	var e httpL7Event
	e.Verdict, e.Rule, e.PeerIdentity, e.LocalPort, e.Port = 1, 1, 1001, 8080, 8080
	e.MethodLen, e.PathLen, e.HostLen = uint16(copy(e.Method[:], method)), uint16(len(path)), uint16(len(host))
	copy(e.Path[:evShort], path)
	copy(e.Path[evShort:], host)
	copy(e.Host[:], "not the host") // past the record: never read
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&e)), eventSize)[:shortEventSize]...)
}

// A short record gives its path and host from their slots; a record of any other size than the two
// is an error.
func TestDecodeShortEvent(t *testing.T) {
	names := newInterner(16)
	clock := bpfevents.Now()
	raw := rawShortEvent("GET", "/v1/users/0123456789/abcdefghijk", "user-service.production:8080")
	if len(raw) != 160 {
		t.Fatalf("short record of %d bytes, want 160 (bpf/l7.h)", len(raw))
	}
	e, err := decodeEvent(raw, clock, names)
	if err != nil {
		t.Fatal(err)
	}
	if e.Method != "GET" || e.Path != "/v1/users/0123456789/abcdefghijk" || e.Host != "user-service.production:8080" ||
		e.PathCut || e.HostCut || e.Port != 8080 || e.PeerIdentity != 1001 {
		t.Fatalf("decoded %+v", e)
	}
	for _, n := range []int{0, shortEventSize - 8, shortEventSize + 8, eventSize - 8} {
		if _, err := decodeEvent(make([]byte, n), clock, names); err == nil {
			t.Errorf("a record of %d bytes decoded without an error", n)
		}
	}
}

// Repeated methods, hosts and paths come back as the same strings; a path longer than the event
// holds is reported cut; a full interner starts over rather than grow.
func TestDecodeEventInternsText(t *testing.T) {
	names := newInterner(3)
	clock := bpfevents.Now()
	a, err := decodeEvent(rawEvent("GET", "/v1/users", "user-service"), clock, names)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := decodeEvent(rawEvent("GET", "/v1/users", "user-service"), clock, names)
	if a.Method != "GET" || a.Path != "/v1/users" || a.Host != "user-service" || a.PathCut || a.Rule != 0 {
		t.Fatalf("decoded %+v", a)
	}
	if unsafe.StringData(a.Path) != unsafe.StringData(b.Path) || unsafe.StringData(a.Host) != unsafe.StringData(b.Host) {
		t.Fatal("a repeated path or host was copied again")
	}
	long := make([]byte, 200)
	for i := range long {
		long[i] = 'p'
	}
	raw := rawEvent("POST", "", "h")
	var e httpL7Event
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&e)), eventSize), raw)
	e.PathLen = uint16(len(long))
	copy(e.Path[:], long)
	c, _ := decodeEvent(unsafe.Slice((*byte)(unsafe.Pointer(&e)), eventSize), clock, names)
	if !c.PathCut || len(c.Path) != len(e.Path) || c.Method != "POST" {
		t.Fatalf("long path: cut %v, %d bytes, method %q", c.PathCut, len(c.Path), c.Method)
	}
	if len(names.m) > 3 {
		t.Fatalf("the interner holds %d strings, more than its 3", len(names.m))
	}
}

// BenchmarkDecodeEvent is the agent's CPU to decode one event (a repeated request, as wrk sends:
// a short record).
func BenchmarkDecodeEvent(b *testing.B) {
	raw := rawShortEvent("GET", "/bench", "10.0.1.5:8080")
	names := newInterner(4096)
	clock := bpfevents.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeEvent(raw, clock, names); err != nil {
			b.Fatal(err)
		}
	}
}

// The Go reasons are the kernel's enum l7_reason, one name each.
func TestReasonsAreTheKernels(t *testing.T) {
	if numReasons != Reason(httpL7ReasonL7R_MAX) || len(reasonNames) != int(numReasons) {
		t.Fatalf("%d Go reasons, %d names, %d in bpf/l7.h", numReasons, len(reasonNames), httpL7ReasonL7R_MAX)
	}
	if ReasonDotSegment != Reason(httpL7ReasonL7R_DOT_SEGMENT) || ReasonDotSegment.String() != "dot-segment" ||
		ReasonEscapedSlash != Reason(httpL7ReasonL7R_ESCAPED_SLASH) || ReasonEscapedSlash.String() != "escaped-slash" {
		t.Fatalf("ReasonDotSegment = %d %q, kernel %d; ReasonEscapedSlash = %d %q, kernel %d", ReasonDotSegment, ReasonDotSegment,
			httpL7ReasonL7R_DOT_SEGMENT, ReasonEscapedSlash, ReasonEscapedSlash, httpL7ReasonL7R_ESCAPED_SLASH)
	}
}

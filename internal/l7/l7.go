// Package l7 loads and drives the kernel half of Portcullis' HTTP/1.1 policy: programs that judge each
// request at the server's socket (sock_ops → SOCKHASH → sk_skb stream parser and verdict) and at the
// client's (sock_ops → SOCKHASH → sk_msg, a denied write fails with EACCES), built from
// ../../bpf/http.c. The map layout, scan limits and what is denied by design are documented in
// bpf/README.md ("L7: HTTP/1.1 at the socket").
//
// Use: Load, AttachCgroup for each endpoint's cgroup, SetPort for each (endpoint address, port) with
// ingress HTTP rules and SetEgressPort for each (endpoint address, server port) with egress ones, SetIdentity for peer addresses (or share the L3/L4 ipcache through
// Options.IPCache), and SetRules per (endpoint, peer identity, port). Judge runs the same matcher on
// a buffer through BPF_PROG_TEST_RUN.
package l7

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portcullis-dev/portcullis/internal/netns"
)

// ScanLimit is the largest request line plus header block (through the empty line) the kernel
// judges; a longer one is denied. It is the object's L7_SCAN_LIMIT (16 KiB since 2026-11-27, 8 KiB
// before), read off its scratch buffer (the limit, then a path's worth of slack): the two cannot
// drift apart.
const ScanLimit = len(httpL7Scratch{}.Buf) - len(httpL7Event{}.Path)

// MaxRules is the largest number of HTTP rules OR-ed for one (endpoint, peer, port).
const MaxRules = 16

// MaxHeaders is the largest number of header requirements of one rule.
const MaxHeaders = 4

// Header requirement limits, in bytes.
const (
	MaxHeaderName  = 64
	MaxHeaderValue = 192
)

// Options configure Load. The zero value loads unpinned maps.
type Options struct {
	// PinDir is a directory on a bpffs mount. When set, every map is pinned there by name and
	// existing pins are adopted (the SOCKHASH keeps its sockets and programs across restarts).
	PinDir string
	// IPCache, when set, replaces the l7_ipcache map: the L3/L4 datapath's ipcache has the same
	// key and value layout, so both halves can share one address → identity table.
	IPCache *ebpf.Map
	// Delivery is how allowed requests reach the application on judged ports (server side); the
	// zero value is DeliverDirect, which Load refuses on kernels before 6.5.
	Delivery Delivery
	// HoldMax bounds how long direct delivery holds an incomplete header block (a client sending
	// it slowly): the connection is then denied and reset by the next ResetDenied (to the
	// millisecond); 0 means DefaultHoldMax.
	HoldMax time.Duration
	// JudgeAtSource judges the ingress rules of a local server at the sockets of its local clients
	// (their sk_msg program) when those clients have no egress rules for that port and their
	// network namespace is trusted (SetTrustedNetns): the server's socket then stays out of the
	// stream parser, and allowed requests cost no delivery hop. The server's ingress guard drops the
	// connection's data if the client's socket ever leaves the judged set. Other clients are judged
	// at the server's socket as before.
	JudgeAtSource bool
	// JudgeBeforeTCP judges the requests of a server's connections segment by segment at the
	// interfaces of its network namespace (a tcx program, l7_fast), before TCP, where AttachNetns
	// attached that program: a connection none of whose segments needs more than one segment's
	// framing never enters the SOCKHASH receive path (about 5 µs a round trip on this project's
	// machine, docs/benchmarks.md). Anything else hands the connection to its socket, which judges
	// it as without this option (bpf/README.md, "Judging before TCP").
	JudgeBeforeTCP bool
}

// DefaultHoldMax is Options.HoldMax's default.
const DefaultHoldMax = 10 * time.Second

// Delivery is how the kernel frames requests at the server's socket and hands the allowed ones to
// the application.
type Delivery int

const (
	// DeliverDirect (the default): the verdict program alone (l7_stream) frames the requests in
	// each received segment itself and passes allowed bytes with SK_PASS; an incomplete header
	// block waits in l7_held for the segment that completes it. No stream parser, no backlog
	// hop (bpf/README.md, "Deliveries"). Needs Linux 6.5 or later (DirectDeliverySupported).
	DeliverDirect Delivery = iota
	// DeliverRedirect: the kernel's stream parser frames each request (l7_parser) and the verdict
	// program redirects allowed ones to the socket's own ingress, through the psock backlog (a
	// work item per request: about +25 µs at one connection, docs/benchmarks.md). For kernels
	// before 6.5.
	DeliverRedirect
	// DeliverPass: the stream parser, and SK_PASS for allowed requests. On this kernel it loses
	// requests: TCP's read cursor runs ahead of what the application has read and the next request
	// never reaches the parser (bpf/README.md, "Why allowed messages are not passed after the
	// stream parser"). Kept for measurements.
	DeliverPass
)

// DirectDeliverySupported reports whether the running kernel can use DeliverDirect: the verdict
// program grows and cuts the segments it is given, which is safe only since Linux 6.5, where the
// segment is no longer shared with the socket's receive path (bpf/README.md).
func DirectDeliverySupported() error {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return fmt.Errorf("kernel release: %w", err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	if !releaseAtLeast(release, 6, 5) {
		return fmt.Errorf("direct delivery needs Linux 6.5 or later, this kernel is %s", release)
	}
	return nil
}

// releaseAtLeast reports whether a kernel release string ("6.18.0-1-amd64") is major.minor or
// later; an unreadable one is not.
func releaseAtLeast(release string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// ParseDelivery reads a --http-delivery value: direct, redirect or pass.
func ParseDelivery(s string) (Delivery, error) {
	switch s {
	case "direct":
		return DeliverDirect, nil
	case "redirect":
		return DeliverRedirect, nil
	case "pass":
		return DeliverPass, nil
	}
	return 0, fmt.Errorf("http delivery %q: want direct, redirect or pass", s)
}

func (d Delivery) String() string {
	switch d {
	case DeliverDirect:
		return "direct"
	case DeliverRedirect:
		return "redirect"
	case DeliverPass:
		return "pass"
	}
	return fmt.Sprintf("Delivery(%d)", int(d))
}

// Bits of l7_config[0] (L7_CFG_* in bpf/http.c).
const (
	configPass      = 1
	configAtSource  = 2
	configBeforeTCP = 4
	// configIngressPorts and configEgressPorts: l7_ports may hold a key of that direction; the
	// guards look l7_ports up only then. Set before the first such key is written, cleared by
	// Converge once l7_ports holds none.
	configIngressPorts = 8
	configEgressPorts  = 16
)

// portBit is the l7_config bit of judged ports of a direction.
func portBit(egress bool) uint32 {
	if egress {
		return configEgressPorts
	}
	return configIngressPorts
}

// L7 is the loaded HTTP policy programs and maps. It is safe for concurrent use.
type L7 struct {
	mu     sync.Mutex
	objs   httpObjects
	pinDir string
	cg     map[string][]link.Link // cgroup path → sock_ops and guard links
	// fast is the l7_fast links of each network namespace AttachNetns attached, by cookie.
	fast map[uint64]*netnsLinks
	// prunedPins: PruneNetns has removed the l7_fast link pins an earlier agent left.
	prunedPins bool
	reset      *link.Iter // l7_reset, read once per namespace by ResetDenied
	// resetAtSource is l7_reset_at_source, read by ResetAtSource.
	resetAtSource *link.Iter
	tab           *tables
	// compiled memoizes CompileRules for the rule lists of the last Converge, by their text.
	compiled map[string][]CompiledRule
	// delivery and config are what Load attached and wrote to l7_config; Converge repairs both.
	delivery Delivery
	config   uint32
	// rulesVersion counts the changes to tab.ruleSrc (RulesVersion).
	rulesVersion atomic.Uint64
}

// workingMaps are the programs' per-CPU working memory (the request being judged, the scan's
// state, the nesting depth): nothing in them outlives one program run, so they are not pinned, and
// their layout can change between builds without making the pins of the last one incompatible.
var workingMaps = map[string]bool{"l7_scratch": true, "l7_scans": true, "l7_nesting": true}

// Load loads the programs, creates (or adopts) the maps and attaches the stream parser and verdict
// programs to the SOCKHASH.
func Load(opts Options) (_ *L7, err error) {
	if opts.Delivery == DeliverDirect {
		if err := DirectDeliverySupported(); err != nil {
			return nil, fmt.Errorf("load l7: %w (use DeliverRedirect)", err)
		}
	} else if opts.JudgeBeforeTCP {
		return nil, errors.New("load l7: judging before TCP hands connections to direct delivery: it needs DeliverDirect")
	}
	spec, err := loadHttp()
	if err != nil {
		return nil, fmt.Errorf("load l7 spec: %w", err)
	}
	holdMax := opts.HoldMax
	if holdMax <= 0 {
		holdMax = DefaultHoldMax
	}
	if err := spec.Variables["l7_hold_max_ms"].Set(uint32(holdMax.Milliseconds())); err != nil {
		return nil, fmt.Errorf("load l7 spec: set the hold limit: %w", err)
	}
	var collOpts ebpf.CollectionOptions
	if opts.PinDir != "" {
		if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
			return nil, fmt.Errorf("load l7: pin directory: %w", err)
		}
		for name, ms := range spec.Maps {
			if strings.HasPrefix(name, ".") {
				continue
			}
			if workingMaps[name] {
				// A pin left by an earlier build is not adopted: drop it.
				os.Remove(filepath.Join(opts.PinDir, name))
				continue
			}
			ms.Pinning = ebpf.PinByName
		}
		collOpts.Maps.PinPath = opts.PinDir
	}
	if opts.IPCache != nil {
		collOpts.MapReplacements = map[string]*ebpf.Map{"l7_ipcache": opts.IPCache}
	}
	l := &L7{pinDir: opts.PinDir, cg: map[string][]link.Link{}, fast: map[uint64]*netnsLinks{}}
	if err := spec.LoadAndAssign(&l.objs, &collOpts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load l7 programs: %+v", ve)
		}
		return nil, fmt.Errorf("load l7 programs: %w", err)
	}
	defer func() {
		if err != nil {
			l.objs.Close()
		}
	}()
	if opts.PinDir != "" {
		if err := migrateCells(opts.PinDir, l.objs.L7DfaBlocks); err != nil {
			return nil, fmt.Errorf("load l7: %w", err)
		}
		if err := migrateHeld(opts.PinDir, l.objs.L7Held); err != nil {
			return nil, fmt.Errorf("load l7: %w", err)
		}
	}
	// Ports an earlier agent left in pinned maps stay judged: their directions' bits go in l7_config
	// with the rest below.
	var portBits uint32
	var pk httpL7PortKey
	var pv httpL7PortValue
	it := l.objs.L7Ports.Iterate()
	for it.Next(&pk, &pv) {
		portBits |= portBit(pk.Direction != 0)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list l7 ports: %w", err)
	}
	if err := l.attachSockhashPrograms(opts.Delivery); err != nil {
		return nil, err
	}
	if l.resetAtSource, err = link.AttachIter(link.IterOptions{Program: l.objs.L7ResetAtSource}); err != nil {
		return nil, fmt.Errorf("create the l7 at-source reset iterator: %w", err)
	}
	if l.reset, err = link.AttachIter(link.IterOptions{Program: l.objs.L7Reset}); err != nil {
		l.resetAtSource.Close()
		return nil, fmt.Errorf("create the l7 reset iterator: %w", err)
	}
	cfg := portBits
	if opts.Delivery == DeliverPass {
		cfg |= configPass
	}
	if opts.JudgeAtSource {
		cfg |= configAtSource
	}
	if opts.JudgeBeforeTCP {
		cfg |= configBeforeTCP
	}
	l.delivery, l.config = opts.Delivery, cfg
	if err := l.objs.L7Config.Update(uint32(0), cfg, ebpf.UpdateAny); err != nil {
		l.reset.Close()
		l.resetAtSource.Close()
		return nil, fmt.Errorf("write l7 config: %w", err)
	}
	if l.tab, err = adoptTables(&l.objs); err != nil {
		l.reset.Close()
		l.resetAtSource.Close()
		return nil, err
	}
	return l, nil
}

// attachment is a program attached to a SOCKHASH.
type attachment struct {
	prog *ebpf.Program
	typ  ebpf.AttachType
	m    *ebpf.Map
}

// attachments are the programs delivery d attaches: the server side's stream verdict (and, except
// for direct delivery, its stream parser) on l7_socks and the client side's sk_msg on
// l7_egress_socks.
func (l *L7) attachments(d Delivery) []attachment {
	as := []attachment{{l.objs.L7Egress, ebpf.AttachSkMsgVerdict, l.objs.L7EgressSocks}}
	if d == DeliverDirect {
		return append(as, attachment{l.objs.L7Stream, ebpf.AttachSkSKBStreamVerdict, l.objs.L7Socks})
	}
	return append(as, attachment{l.objs.L7Parser, ebpf.AttachSkSKBStreamParser, l.objs.L7Socks},
		attachment{l.objs.L7Verdict, ebpf.AttachSkSKBStreamVerdict, l.objs.L7Socks})
}

// attachSockhashPrograms attaches the programs of the delivery to the SOCKHASHes. A parser left
// attached to an adopted l7_socks by an agent with another delivery is detached: the direct verdict
// program must see segments, not parsed messages. Sockets keep the programs they were inserted
// with.
func (l *L7) attachSockhashPrograms(d Delivery) error {
	if d == DeliverDirect {
		if _, err := detachAll(l.objs.L7Socks, ebpf.AttachSkSKBStreamParser); err != nil {
			return err
		}
	}
	for _, a := range l.attachments(d) {
		if err := link.RawAttachProgram(link.RawAttachProgramOptions{
			Target: a.m.FD(), Program: a.prog, Attach: a.typ,
		}); err != nil {
			return fmt.Errorf("attach %s to the l7 sockhash: %w", a.typ, err)
		}
	}
	return nil
}

// repairAttachments puts back what Load set up if it changed behind the agent's back: the
// SOCKHASH programs (a verdict program detached from l7_socks would leave new connections
// unjudged: a socket in a SOCKHASH without programs receives as if it were in none), a stream
// parser attached in direct delivery, and l7_config. It returns the number of repairs.
func (l *L7) repairAttachments() (int, error) {
	n := 0
	for _, a := range l.attachments(l.delivery) {
		info, err := a.prog.Info()
		if err != nil {
			return n, fmt.Errorf("l7 %s program info: %w", a.typ, err)
		}
		id, _ := info.ID()
		res, err := link.QueryPrograms(link.QueryOptions{Target: a.m.FD(), Attach: a.typ})
		if err != nil {
			return n, fmt.Errorf("query the %s program of the l7 sockhash: %w", a.typ, err)
		}
		if len(res.Programs) == 1 && res.Programs[0].ID == id {
			continue
		}
		if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: a.m.FD(), Program: a.prog, Attach: a.typ}); err != nil {
			return n, fmt.Errorf("re-attach %s to the l7 sockhash: %w", a.typ, err)
		}
		n++
	}
	if l.delivery == DeliverDirect {
		detached, err := detachAll(l.objs.L7Socks, ebpf.AttachSkSKBStreamParser)
		n += detached
		if err != nil {
			return n, err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var cfg uint32
	if err := l.objs.L7Config.Lookup(uint32(0), &cfg); err != nil {
		return n, fmt.Errorf("read l7 config: %w", err)
	}
	if cfg != l.config {
		if err := l.objs.L7Config.Update(uint32(0), l.config, ebpf.UpdateAny); err != nil {
			return n, fmt.Errorf("write l7 config: %w", err)
		}
		n++
	}
	return n, nil
}

// setPortBits makes the judged-port bits of l7_config bits (the others stay); with add, it adds
// bits to those it has.
func (l *L7) setPortBits(bits uint32, add bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	cfg := l.config&^(configIngressPorts|configEgressPorts) | bits
	if add {
		cfg |= l.config
	}
	if cfg == l.config {
		return nil
	}
	if err := l.objs.L7Config.Update(uint32(0), cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write l7 config: %w", err)
	}
	l.config = cfg
	return nil
}

// detachAll detaches whatever program of type typ is attached to the map m and returns how many
// it detached.
func detachAll(m *ebpf.Map, typ ebpf.AttachType) (int, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: m.FD(), Attach: typ})
	if err != nil {
		return 0, fmt.Errorf("query the %s programs of the l7 sockhash: %w", typ, err)
	}
	for i, p := range res.Programs {
		prog, err := ebpf.NewProgramFromID(p.ID)
		if err != nil {
			return i, fmt.Errorf("open attached %s program %d: %w", typ, p.ID, err)
		}
		err = link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: prog, Attach: typ})
		prog.Close()
		if err != nil {
			return i, fmt.Errorf("detach %s program %d from the l7 sockhash: %w", typ, p.ID, err)
		}
	}
	return len(res.Programs), nil
}

// Holding reports whether direct delivery holds an incomplete header block for any connection: the
// agent then sweeps with ResetDenied, which denies holds older than Options.HoldMax.
func (l *L7) Holding() bool {
	var key uint64
	val := make([]byte, l.objs.L7Held.ValueSize())
	return l.objs.L7Held.Iterate().Next(&key, val)
}

// oldHeldPin is the pin of the held header blocks of builds before 2026-11-27, whose scan limit was
// 8 KiB: the same layout as l7_held ({u32 len; u32 since; u8 buf[]}) with a buffer half as long.
const oldHeldPin = "l7_pending"

// migrateHeld copies the header blocks an earlier build's direct delivery holds, if pinDir has its
// map, into held (same socket cookies), and removes its pin. Called before the stream verdict program
// that reads held is attached. Without the copy, the segment that completes such a block would be
// judged as the start of a request: harmless where the server has none of the block (it then reads
// what was judged), and denied where part of it went ahead (L7_SF_AHEAD), as is a hold the earlier
// build's programs make between this copy and their replacement.
func migrateHeld(pinDir string, held *ebpf.Map) error {
	return migratePin(pinDir, oldHeldPin, "held header blocks", func(old *ebpf.Map, path string) error {
		return copyHeld(old, path, held)
	})
}

// copyHeld writes the held header blocks of old, an earlier build's map pinned at path, into held.
func copyHeld(old *ebpf.Map, path string, held *ebpf.Map) error {
	if old.Type() != ebpf.Hash || old.KeySize() != 8 || old.ValueSize() < 8 || old.ValueSize() > held.ValueSize() {
		return fmt.Errorf("%s: not an earlier build's held header blocks (%v, key size %d, value size %d)", path,
			old.Type(), old.KeySize(), old.ValueSize())
	}
	var cookie uint64
	in := make([]byte, old.ValueSize())
	out := make([]byte, held.ValueSize())
	it := old.Iterate()
	for it.Next(&cookie, in) {
		clear(out)
		copy(out, in)
		if err := held.Update(cookie, out, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("copy the held header block of socket %d: %w", cookie, err)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list the earlier build's held header blocks: %w", err)
	}
	return nil
}

// DeniedConnections is how many connections the kernel has denied so far, for any reason (the
// counter denied-connections). Some denies report no request (urgent data, a segment the direct
// delivery could not cut, a hold too long); the agent sweeps with ResetDenied when it moves.
func (l *L7) DeniedConnections() (uint64, error) {
	return l.counter(ReasonDeniedConnections)
}

// SweepCount moves whenever the agent should read l7_reset (ResetDenied) in each pod's namespace:
// a connection was denied (DeniedConnections), or a connection judged before TCP got a segment past
// l7_fast (fast-unstamped), which l7_reset hands to its socket.
func (l *L7) SweepCount() (uint64, error) {
	denied, err := l.counter(ReasonDeniedConnections)
	if err != nil {
		return 0, err
	}
	unstamped, err := l.counter(ReasonFastUnstamped)
	return denied + unstamped, err
}

// counter sums the kernel's per-CPU counter for r.
func (l *L7) counter(r Reason) (uint64, error) {
	var per []uint64
	if err := l.objs.L7Counters.Lookup(uint32(r), &per); err != nil {
		return 0, fmt.Errorf("read l7 counter %s: %w", r, err)
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	return sum, nil
}

// ResetDenied resets (TCP RST, from the server's side) every denied connection in the network
// namespace at netnsPath ("" for the caller's own), and hands to their socket the connections judged
// before TCP whose segments came past l7_fast. Until then a denied client only sees its request go
// unanswered. The agent calls it for an endpoint's namespace when SweepCount moves, or on a short
// period.
func (l *L7) ResetDenied(netnsPath string) error {
	if err := l.readIterIn(l.reset, netnsPath); err != nil {
		return fmt.Errorf("reset denied connections in %q: %w", netnsPath, err)
	}
	return nil
}

// ResetAtSource resets every client connection in the network namespace at netnsPath that is judged
// at source. The agent calls it for a namespace that lost its trust (SetTrustedNetns) for good.
func (l *L7) ResetAtSource(netnsPath string) error {
	if err := l.readIterIn(l.resetAtSource, netnsPath); err != nil {
		return fmt.Errorf("reset connections judged at source in %q: %w", netnsPath, err)
	}
	return nil
}

// readIterIn reads a socket iterator to its end inside the network namespace at netnsPath: a socket
// iterator walks the namespace of the thread that opens it.
func (l *L7) readIterIn(it *link.Iter, netnsPath string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return netns.Do(netnsPath, func() error {
		rd, err := it.Open()
		if err != nil {
			return err
		}
		defer rd.Close()
		_, err = io.Copy(io.Discard, rd)
		return err
	})
}

// AttachCgroup attaches the sock_ops program (which puts accepted and connected sockets of judged
// ports into their SOCKHASH) and the two guards (which drop data of judged ports outside it) to a
// cgroup v2 directory.
// Attaching a cgroup already attached does nothing.
func (l *L7) AttachCgroup(path string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	path = filepath.Clean(path)
	if _, ok := l.cg[path]; ok {
		return nil
	}
	var links []link.Link
	// The guard first: from the moment sock_ops puts sockets in the SOCKHASH, nothing on a judged
	// port may slip past outside it.
	for _, a := range []struct {
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{
		{l.objs.L7Guard, ebpf.AttachCGroupInetIngress},
		{l.objs.L7GuardEgress, ebpf.AttachCGroupInetEgress},
		{l.objs.L7Sockops, ebpf.AttachCGroupSockOps},
	} {
		lk, err := l.attachCgroupLink(path, a.typ, a.prog)
		if err != nil {
			for _, lk := range links {
				lk.Close()
			}
			return fmt.Errorf("attach %s to cgroup %s: %w", a.typ, path, err)
		}
		links = append(links, lk)
	}
	l.cg[path] = links
	return nil
}

// cgroupLinkPin is where the link of one program on one cgroup is pinned: the programs keep judging
// while the agent restarts, and the next agent updates the pinned links in place instead of
// attaching a second copy.
func (l *L7) cgroupLinkPin(path string, typ ebpf.AttachType) string {
	h := fnv.New64a()
	h.Write([]byte(path))
	return filepath.Join(l.pinDir, "cgroup-links", fmt.Sprintf("%016x-%d", h.Sum64(), typ))
}

func (l *L7) attachCgroupLink(path string, typ ebpf.AttachType, prog *ebpf.Program) (link.Link, error) {
	if l.pinDir == "" {
		return link.AttachCgroup(link.CgroupOptions{Path: path, Attach: typ, Program: prog})
	}
	pin := l.cgroupLinkPin(path, typ)
	if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := lk.Update(prog); err == nil {
			return lk, nil
		}
		// Defunct (the cgroup went away) or not updatable: replace it.
		_ = lk.Unpin()
		lk.Close()
	}
	lk, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: typ, Program: prog})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		lk.Close()
		return nil, fmt.Errorf("cgroup link pin directory: %w", err)
	}
	if err := lk.Pin(pin); err != nil {
		lk.Close()
		return nil, fmt.Errorf("pin cgroup link: %w", err)
	}
	return lk, nil
}

// DetachCgroup removes the programs AttachCgroup attached to a cgroup.
func (l *L7) DetachCgroup(path string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	path = filepath.Clean(path)
	var errs []error
	for _, lk := range l.cg[path] {
		if l.pinDir != "" {
			if err := lk.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin cgroup link of %s: %w", path, err))
			}
		}
		if err := lk.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach from cgroup %s: %w", path, err))
		}
	}
	delete(l.cg, path)
	return errors.Join(errs...)
}

func addr16(a netip.Addr) [16]byte {
	if a.Is4() {
		a = netip.AddrFrom16(a.As16())
	}
	return a.As16()
}

// SetPort makes accepted TCP connections to (addr, port) judged by the ingress HTTP rules of
// endpointID. IPv4 addresses are stored IPv4-mapped, which also covers dual-stack sockets.
func (l *L7) SetPort(addr netip.Addr, port uint16, endpointID uint32) error {
	return l.setPort(addr, port, endpointID, false)
}

// SetEgressPort makes TCP connections that the endpoint at local address addr opens to any server
// port `port` judged by the egress HTTP rules of endpointID (RuleKey.Egress).
func (l *L7) SetEgressPort(addr netip.Addr, port uint16, endpointID uint32) error {
	return l.setPort(addr, port, endpointID, true)
}

func portKey(addr netip.Addr, port uint16, egress bool) httpL7PortKey {
	k := httpL7PortKey{Addr: addr16(addr), Port: port}
	if egress {
		k.Direction = 1
	}
	return k
}

func (l *L7) setPort(addr netip.Addr, port uint16, endpointID uint32, egress bool) error {
	k := portKey(addr, port, egress)
	want := httpL7PortValue{EndpointId: endpointID}
	var have httpL7PortValue
	// The guards must look the port up before sock_ops can judge a connection to it.
	if err := l.setPortBits(portBit(egress), true); err != nil {
		return fmt.Errorf("set l7 port %s: %w", netip.AddrPortFrom(addr, port), err)
	}
	if err := l.objs.L7Ports.Lookup(&k, &have); err == nil && have == want {
		return nil
	}
	if err := l.objs.L7Ports.Update(&k, &want, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set l7 port %s: %w", netip.AddrPortFrom(addr, port), err)
	}
	return nil
}

// DeletePort stops judging new connections to (addr, port); it is not an error when absent.
func (l *L7) DeletePort(addr netip.Addr, port uint16) error {
	return l.deletePort(addr, port, false)
}

// DeleteEgressPort stops judging new connections from addr to server port `port`; it is not an
// error when absent.
func (l *L7) DeleteEgressPort(addr netip.Addr, port uint16) error {
	return l.deletePort(addr, port, true)
}

func (l *L7) deletePort(addr netip.Addr, port uint16, egress bool) error {
	k := portKey(addr, port, egress)
	if err := l.objs.L7Ports.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete l7 port %s: %w", netip.AddrPortFrom(addr, port), err)
	}
	return nil
}

func ipcacheKey(p netip.Prefix) httpL7IpcacheKey {
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return httpL7IpcacheKey{Prefixlen: uint32(bits), Addr: addr16(p.Masked().Addr())}
}

// SetIdentity records the security identity of peers in prefix (used when a connection is
// accepted; unknown peers are world, 2). Not needed when Options.IPCache shares the datapath's.
func (l *L7) SetIdentity(prefix netip.Prefix, id uint32) error {
	k, v := ipcacheKey(prefix), httpL7IpcacheValue{Identity: id}
	var have httpL7IpcacheValue
	if err := l.objs.L7Ipcache.Lookup(&k, &have); err == nil && have == v {
		return nil
	}
	if err := l.objs.L7Ipcache.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set identity of %s: %w", prefix, err)
	}
	return nil
}

// DeleteIdentity removes a prefix from the l7 ipcache; it is not an error when absent.
func (l *L7) DeleteIdentity(prefix netip.Prefix) error {
	k := ipcacheKey(prefix)
	if err := l.objs.L7Ipcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete identity of %s: %w", prefix, err)
	}
	return nil
}

// Sockets returns the socket cookies of the connections being judged: the ingress (or egress)
// SOCKHASH's, and on the ingress side those judged before TCP (Options.JudgeBeforeTCP).
func (l *L7) Sockets(egress bool) ([]uint64, error) {
	ms := []*ebpf.Map{l.objs.L7Socks, l.objs.L7FastSocks}
	if egress {
		ms = []*ebpf.Map{l.objs.L7EgressSocks}
	}
	var out []uint64
	for _, m := range ms {
		var k, v uint64
		it := m.Iterate()
		for it.Next(&k, &v) {
			if !slices.Contains(out, k) {
				out = append(out, k)
			}
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("list l7 sockets: %w", err)
		}
	}
	return out, nil
}

// RemoveSocket removes a socket from the ingress (or egress) SOCKHASH, and a connection judged
// before TCP from l7_fast_conns; the guard then drops its data. For tests and for repairing state;
// it is not an error when absent.
func (l *L7) RemoveSocket(cookie uint64, egress bool) error {
	m := l.objs.L7Socks
	if egress {
		m = l.objs.L7EgressSocks
	}
	if err := m.Delete(&cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove socket %d from the l7 sockhash: %w", cookie, err)
	}
	if egress {
		return nil
	}
	var k httpL7Tuple
	var v httpL7FastConn
	var gone []httpL7Tuple
	it := l.objs.L7FastConns.Iterate()
	for it.Next(&k, &v) {
		if v.Cookie == cookie {
			gone = append(gone, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list connections judged before TCP: %w", err)
	}
	for _, k := range gone {
		if err := l.objs.L7FastConns.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove connection %d from l7_fast_conns: %w", cookie, err)
		}
	}
	return nil
}

// Counters returns the per-reason counters summed over CPUs, by reason name.
func (l *L7) Counters() (map[string]uint64, error) {
	out := map[string]uint64{}
	for r := Reason(0); r < numReasons; r++ {
		sum, err := l.counter(r)
		if err != nil {
			return nil, err
		}
		if sum != 0 {
			out[r.String()] = sum
		}
	}
	return out, nil
}

// Close detaches the cgroup programs and releases file descriptors. Pinned maps stay (with the
// stream programs attached to the pinned SOCKHASH); unpinned ones are freed.
func (l *L7) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for path, links := range l.cg {
		for _, lk := range links {
			if err := lk.Close(); err != nil {
				errs = append(errs, fmt.Errorf("detach from cgroup %s: %w", path, err))
			}
		}
	}
	l.cg = map[string][]link.Link{}
	for _, nl := range l.fast {
		for _, lk := range nl.links {
			lk.Close()
		}
	}
	l.fast = map[uint64]*netnsLinks{}
	if l.reset != nil {
		if err := l.reset.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close the reset iterator: %w", err))
		}
	}
	if l.resetAtSource != nil {
		if err := l.resetAtSource.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close the at-source reset iterator: %w", err))
		}
	}
	if err := l.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close l7 objects: %w", err))
	}
	return errors.Join(errs...)
}

// SetTrustedNetns makes cookies (network namespace cookies, netns.Cookie) the set whose clients may
// be judged at source (Options.JudgeAtSource): the pods in which no process can hold CAP_NET_RAW or
// CAP_NET_ADMIN. It changes what new connections do; connections already judged at source stay so.
func (l *L7) SetTrustedNetns(cookies map[uint64]bool) error {
	want := map[uint64]uint32{}
	for c, ok := range cookies {
		if ok {
			want[c] = 1
		}
	}
	_, err := syncMap(l.objs.L7TrustedNetns, want, "trusted netns")
	return err
}

// Unpin removes the pins of every map (the kernel frees them once nothing else holds them).
func (l *L7) Unpin() error {
	if l.pinDir == "" {
		return nil
	}
	var errs []error
	for _, m := range []*ebpf.Map{l.objs.L7Counters, l.objs.L7DfaBlocks, l.objs.L7Dfas, l.objs.L7Headers,
		l.objs.L7Ipcache, l.objs.L7Nesting, l.objs.L7Ports, l.objs.L7Rulesets, l.objs.L7Scans,
		l.objs.L7Scratch, l.objs.L7Socks, l.objs.L7EgressSocks, l.objs.L7State, l.objs.L7EgressState, l.objs.L7AtSource, l.objs.L7TrustedNetns,
		l.objs.L7FastNetns, l.objs.L7FastSocks, l.objs.L7FastConns} {
		if m.IsPinned() {
			if err := m.Unpin(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

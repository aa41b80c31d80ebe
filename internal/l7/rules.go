package l7

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/portcullis-dev/portcullis/internal/dfa"
	"github.com/portcullis-dev/portcullis/internal/policy"
)

// Reason says why the kernel allowed or denied a request; it also names the kernel counters.
type Reason uint32

// Reasons, as enum l7_reason in bpf/l7.h.
const (
	ReasonNone Reason = iota
	ReasonAllowed
	ReasonNoRuleMatch
	ReasonNoRuleSet
	ReasonTooLong
	ReasonBadMethod
	ReasonBadTarget
	ReasonBadVersion
	ReasonBadHeader
	ReasonDuplicateContentLength
	ReasonBadContentLength
	ReasonTransferEncoding
	ReasonDuplicateHost
	ReasonSticky
	ReasonNoState
	ReasonBusy
	ReasonStateFailed
	ReasonInsertFailed
	ReasonGuardDrop
	ReasonMessagePassed
	ReasonMessageDropped
	ReasonReset
	ReasonBadChunk
	ReasonAudited
	ReasonForbidden
	ReasonEventLost
	ReasonHeldTooLong
	ReasonAhead
	// ReasonUpgraded counts connections switched to pass-through by the server's 101 to an allowed
	// WebSocket upgrade (it is no request's reason).
	ReasonUpgraded
	// ReasonDotSegment: a well-formed request that no rule allowed, where rules with a path were
	// not matched because the path has a dot segment ("/public/../internal", in any spelling a
	// server may decode to one; bpf/README.md, "Paths").
	ReasonDotSegment
	// ReasonEscapedSlash: as ReasonDotSegment, for a path with a backslash, "%2f" or "%5c", which a
	// server may read as a '/' ("/v1/users/x%2fadmin").
	ReasonEscapedSlash
	// ReasonOverlap counts received segments whose front repeated bytes the connection had already
	// received (a retransmission overlapping them, or a segment of the out-of-order queue
	// overlapping the one before it); the repeated bytes were cut off before framing and delivery
	// (direct delivery: bpf/README.md, "Overlapping segments"). It is no request's reason.
	ReasonOverlap
	// ReasonUrgent: urgent data (MSG_OOB) written on a connection judged at the client's socket
	// (egress rules, or a server's rules judged at source). A server reading with SO_OOBINLINE
	// off takes the urgent byte out of the stream the rules judged; the segment is dropped and the
	// connection denied.
	ReasonUrgent
	// ReasonDeniedConnections counts connections that became denied, for any reason (the agent's
	// reset sweep follows it). It is no request's reason.
	ReasonDeniedConnections
	// ReasonFastOpen: a client connection established with bytes already sent (TCP Fast Open data,
	// written before its socket could be judged), or with a write waiting for it that will write
	// past its socket's judge (sendto with MSG_FASTOPEN without a cookie, a blocking write during a
	// connect). Under egress rules the connection is denied; judged at source, the server's socket
	// judges it instead.
	ReasonFastOpen
	// ReasonUnjudgedWrite: a client connection judged at its socket sent, or queued, bytes its sk_msg
	// program never passed: the kernel sent a write under an earlier verdict (after a short write),
	// or a write raced the connection's establishment. The connection is denied and those bytes
	// dropped.
	ReasonUnjudgedWrite
	// ReasonNoRoom: a client connection judged at its socket wrote a header block or chunk-size line
	// when its send buffer had too little room to take it whole. Had the kernel taken it in part,
	// the client's next write would have been sent in the rest of its place under this verdict
	// (tcp_bpf_send_verdict keeps a verdict after a short push): the connection is denied instead.
	ReasonNoRoom
	// ReasonNoMemory: a client connection judged at its socket wrote a header block or chunk-size
	// line that TCP's memory accounting could refuse to charge (under TCP memory pressure, a socket
	// holding more than an even share of tcp_mem's hard limit; a cgroup v1 memory cgroup at its TCP
	// limit): a charge that fails makes TCP take it in part, as a full send buffer does. The
	// connection is denied.
	ReasonNoMemory
	// ReasonFastPassed counts segments judged before TCP (Options.JudgeBeforeTCP) and passed. It is
	// no request's reason.
	ReasonFastPassed
	// ReasonFastHanded counts connections judged before TCP handed to their server's socket (a
	// header block in pieces, a denied request, pipelined requests, a chunked body, a WebSocket
	// upgrade, a retransmission). It is no request's reason.
	ReasonFastHanded
	// ReasonFastWait counts segments of connections judged before TCP that were dropped for TCP to
	// send again: the connection could not be handed to its socket yet (TCP had bytes the
	// application had not read, or had not yet received all that was passed), or another CPU was
	// judging the connection.
	ReasonFastWait
	// ReasonFastLost: a connection judged before TCP whose TCP lost bytes that were judged and
	// passed (a checksum error, memory) and stayed behind them: their retransmission cannot be
	// judged in order, so the connection is denied (and reset).
	ReasonFastLost
	// ReasonFastUnstamped counts data segments of connections judged before TCP that reached TCP's
	// guard without l7_fast's stamp (an interface without it, NAT in the pod's namespace toward the
	// port): dropped, and the connection is handed to its socket by the next ResetDenied.
	ReasonFastUnstamped
	numReasons
)

var reasonNames = [...]string{"none", "allowed", "no-rule-match", "no-rule-set", "too-long", "bad-method",
	"bad-target", "bad-version", "bad-header", "duplicate-content-length", "bad-content-length",
	"transfer-encoding", "duplicate-host", "sticky", "no-state", "busy", "state-failed", "insert-failed",
	"guard-drop", "message-passed", "message-dropped", "reset", "bad-chunk", "audited", "forbidden",
	"event-lost", "held-too-long", "ahead", "upgraded", "dot-segment", "escaped-slash", "overlap", "urgent",
	"denied-connections", "fast-open", "unjudged-write", "no-room", "no-memory", "fast-passed", "fast-handed",
	"fast-wait", "fast-lost", "fast-unstamped"}

// String returns the reason in kebab case, as the counters are named.
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// Decision is the kernel matcher's answer for a buffer.
type Decision uint32

// Decisions, as enum l7_decision in bpf/l7.h.
const (
	// NeedMore: the header block is incomplete and well-formed so far.
	NeedMore Decision = iota
	// Allow: a rule matched.
	Allow
	// Deny: no rule matched, or the request is malformed, ambiguous, unsupported or too long.
	Deny
)

// String returns NeedMore, Allow or Deny.
func (d Decision) String() string {
	switch d {
	case NeedMore:
		return "NeedMore"
	case Allow:
		return "Allow"
	case Deny:
		return "Deny"
	}
	return "Decision(" + strconv.Itoa(int(d)) + ")"
}

// RuleKey selects the rules that judge a request: the local endpoint, the peer's identity (0: any
// peer, looked up when no entry for the peer's own identity exists), the server's port (the local
// port for ingress, the remote port for egress) and the direction.
type RuleKey struct {
	EndpointID   uint32
	PeerIdentity uint32
	Port         uint16
	// Egress selects the endpoint's client-side rules (requests it sends).
	Egress bool
}

func (k RuleKey) kernel() httpL7RulesetKey {
	out := httpL7RulesetKey{EndpointId: k.EndpointID, PeerIdentity: k.PeerIdentity, Port: k.Port}
	if k.Egress {
		out.Direction = 1
	}
	return out
}

// HeaderRequirement is a header a rule requires: Name lower-cased; Value empty for presence only.
type HeaderRequirement struct {
	Name, Value string
}

// CompiledRule is one HTTP rule lowered for the kernel: nil automata match any value.
type CompiledRule struct {
	Method, Path, Host *dfa.DFA
	// Patterns are the method, path and host expressions the automata were compiled from.
	Patterns [3]string
	Headers  []HeaderRequirement
	// LogHeaders are compared for the record only (headerMatches with mismatch: LOG); they share
	// the MaxHeaders slots with Headers.
	LogHeaders []HeaderRequirement
	// Text is the normalized rule the kernel rule stands for (rules merged by path: their merge).
	Text string
	// Sources are the rules given to CompileRules that this one stands for.
	Sources []string
}

var errRule = errors.New("http rule cannot be enforced in the kernel")

// Methods are the methods the kernel's scan accepts (any other request is denied before the rules
// are looked at), in the order of their bits in a rule's method set (l7_rule.methods, L7_M_* in
// bpf/l7.h).
var Methods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}

// methodsSet marks l7_rule.methods as a method set (L7_METHODS_SET): without it, an earlier agent's
// rule, the kernel walks method_dfa.
const methodsSet = 1 << 31

// methodSet is the kernel's form of a rule's method expression: the set of Methods it matches as a
// whole. The scan accepts no other method, so the set decides exactly as the DFA would, without a
// walk per rule and request.
func methodSet(d *dfa.DFA) uint32 {
	set := uint32(methodsSet)
	for i, m := range Methods {
		if d.Match([]byte(m)) {
			set |= 1 << i
		}
	}
	return set
}

// CompileRules lowers normalized HTTP rule strings (policy.HTTPRule.String form) for the kernel.
// logHeader requirements do not decide; a mismatch is reported in the request's event.
func CompileRules(rules []string) ([]CompiledRule, error) {
	parsed := make([]policy.HTTPRule, 0, len(rules))
	texts := make([]string, 0, len(rules))
	for _, text := range rules {
		r, err := policy.ParseHTTPRule(text)
		if err != nil {
			return nil, err
		}
		parsed = append(parsed, r)
		texts = append(texts, text)
	}
	parsed, texts, sources := mergePaths(parsed, texts)
	if len(parsed) > MaxRules {
		return nil, fmt.Errorf("%w: %d rules (after merging rules that differ only in path), at most %d", errRule, len(parsed), MaxRules)
	}
	out := make([]CompiledRule, 0, len(parsed))
	for i, r := range parsed {
		text := texts[i]
		cr := CompiledRule{Patterns: [3]string{r.Method, r.Path, r.Host}, Text: text, Sources: sources[i]}
		for i, dst := range []**dfa.DFA{&cr.Method, &cr.Path, &cr.Host} {
			if cr.Patterns[i] == "" {
				continue
			}
			var err error
			if *dst, err = dfa.Compile(cr.Patterns[i], dfa.Options{}); err != nil {
				return nil, fmt.Errorf("http rule %q: %w", text, err)
			}
		}
		if len(r.Headers)+len(r.LogHeaders) > MaxHeaders {
			return nil, fmt.Errorf("%w %q: %d headers and headerMatches, at most %d", errRule, text, len(r.Headers)+len(r.LogHeaders), MaxHeaders)
		}
		for _, list := range []struct {
			in  []string
			out *[]HeaderRequirement
		}{{r.Headers, &cr.Headers}, {r.LogHeaders, &cr.LogHeaders}} {
			for _, h := range list.in {
				n, v := policy.SplitHeader(h)
				n = strings.ToLower(n)
				if n == "" || len(n) > MaxHeaderName || len(v) > MaxHeaderValue {
					return nil, fmt.Errorf("%w %q: header %q: name 1-%d bytes, value at most %d bytes", errRule, text, h, MaxHeaderName, MaxHeaderValue)
				}
				*list.out = append(*list.out, HeaderRequirement{Name: n, Value: v})
			}
		}
		out = append(out, cr)
	}
	return out, nil
}

// mergePaths folds rules that differ only in their path into one rule whose path is the alternation
// of theirs: OR-ing such rules is matching their common method, host and headers and any of their
// paths, so the kernel walks one path DFA instead of one per rule, and a peer can have far more path
// rules than the kernel's rules per key. A rule without a path (any path) absorbs the others of its
// group. A group whose alternation needs more DFA states than the budget stays as it was.
func mergePaths(rules []policy.HTTPRule, texts []string) ([]policy.HTTPRule, []string, [][]string) {
	type group struct {
		first int
		paths []string
		any   bool
		texts []string
	}
	groups := map[string]*group{}
	var order []string
	for i, r := range rules {
		k := strings.Join([]string{r.Method, r.Host, strings.Join(r.Headers, "\x00"), strings.Join(r.LogHeaders, "\x00")}, "\x01")
		g, ok := groups[k]
		if !ok {
			g = &group{first: i}
			groups[k] = g
			order = append(order, k)
		}
		g.texts = append(g.texts, texts[i])
		if r.Path == "" {
			g.any = true
		} else if !slices.Contains(g.paths, r.Path) {
			g.paths = append(g.paths, r.Path)
		}
	}
	var outRules []policy.HTTPRule
	var outTexts []string
	var outSources [][]string
	emit := func(r policy.HTTPRule, sources []string) {
		outRules, outTexts, outSources = append(outRules, r), append(outTexts, r.String()), append(outSources, sources)
	}
	for _, k := range order {
		g := groups[k]
		base := rules[g.first]
		switch {
		case g.any:
			base.Path = ""
			emit(base, g.texts)
			continue
		case len(g.paths) == 1:
			base.Path = g.paths[0]
			emit(base, g.texts)
			continue
		}
		sorted := slices.Clone(g.paths)
		slices.Sort(sorted)
		alts := make([]string, len(sorted))
		for i, p := range sorted {
			alts[i] = "(?:" + p + ")"
		}
		merged := strings.Join(alts, "|")
		if _, err := dfa.Compile(merged, dfa.Options{}); err == nil {
			base.Path = merged
			emit(base, g.texts)
			continue
		}
		for _, p := range g.paths {
			r := base
			r.Path = p
			var src []string
			for _, t := range g.texts {
				if pr, err := policy.ParseHTTPRule(t); err == nil && pr.Path == p {
					src = append(src, t)
				}
			}
			emit(r, src)
		}
	}
	return outRules, outTexts, outSources
}

// quarantine is how long a freed DFA or header id, or a freed cell range, is not reused: a program
// that read the old rule set may still be walking it (BPF programs run in an RCU read section of
// microseconds; a second is generous).
const quarantine = time.Second

type span struct{ base, size uint32 }

type freed struct {
	id    uint32
	cells span
	at    time.Time
}

// tables allocates DFA ids, header ids and cell ranges, interned by content and reference counted
// by the rule sets that use them.
type tables struct {
	maxDFA, maxHdr, maxCells uint32

	dfaByKey  map[string]uint32 // pattern → id
	dfaSpan   map[uint32]span
	dfaRefs   map[uint32]int
	hdrByKey  map[string]uint32 // "name\x00value" → id
	hdrRefs   map[uint32]int
	nextDFA   uint32
	nextHdr   uint32
	freeIDs   []uint32 // DFA ids ready for reuse
	freeHdrs  []uint32
	freeCells []span // sorted by base, coalesced
	pending   []freed
	pendHdrs  []freed
	ruleRefs  map[RuleKey][]uint32   // dfa ids each rule set holds a reference on
	ruleHdrs  map[RuleKey][]uint32   // header ids each rule set holds a reference on
	ruleSrc   map[RuleKey][][]string // per kernel rule, the rules given to SetRules it stands for
	// dfaWant and hdrWant are what this process wrote for each table it interned, so that Converge
	// can check the kernel's copy (tables adopted from a previous agent are replaced, not checked).
	dfaWant map[uint32]dfaTable
	hdrWant map[uint32]httpL7Header
	now     func() time.Time
}

// dfaTable is a DFA as written: its descriptor and its cells from desc.Base on.
type dfaTable struct {
	desc  httpL7Dfa
	cells []uint16
}

func newTables(maxDFA, maxHdr, maxCells uint32) *tables {
	return &tables{
		maxDFA: maxDFA, maxHdr: maxHdr, maxCells: maxCells,
		dfaByKey: map[string]uint32{}, dfaSpan: map[uint32]span{}, dfaRefs: map[uint32]int{},
		hdrByKey: map[string]uint32{}, hdrRefs: map[uint32]int{},
		nextDFA: 1, nextHdr: 1, freeCells: []span{{0, maxCells}},
		ruleRefs: map[RuleKey][]uint32{}, ruleHdrs: map[RuleKey][]uint32{}, ruleSrc: map[RuleKey][][]string{},
		dfaWant: map[uint32]dfaTable{}, hdrWant: map[uint32]httpL7Header{}, now: time.Now,
	}
}

// adoptTables builds the allocator for maps that may already hold rule sets (pinned maps): every DFA
// and header referenced there stays reserved until the rule set that references it is replaced.
func adoptTables(objs *httpObjects) (*tables, error) {
	t := newTables(objs.L7Dfas.MaxEntries(), objs.L7Headers.MaxEntries(), cellCapacity(objs.L7DfaBlocks))
	var k httpL7RulesetKey
	var v httpL7Ruleset
	it := objs.L7Rulesets.Iterate()
	for it.Next(&k, &v) {
		key := RuleKey{EndpointID: k.EndpointId, PeerIdentity: k.PeerIdentity, Port: k.Port, Egress: k.Direction != 0}
		for _, r := range v.Rules[:min(int(v.Nrules), MaxRules)] {
			for _, id := range []uint32{r.MethodDfa, r.PathDfa, r.HostDfa} {
				if id == 0 || id >= t.maxDFA {
					continue
				}
				if _, ok := t.dfaSpan[id]; !ok {
					var d httpL7Dfa
					if err := objs.L7Dfas.Lookup(id, &d); err != nil {
						return nil, fmt.Errorf("adopt l7 dfa %d: %w", id, err)
					}
					sp := span{d.Base, d.Nstates*uint32(d.Nclasses) + d.Nstates}
					if !t.reserveCells(sp) {
						return nil, fmt.Errorf("adopt l7 dfa %d: cells %d+%d overlap or exceed the table", id, sp.base, sp.size)
					}
					t.dfaSpan[id] = sp
					t.nextDFA = max(t.nextDFA, id+1)
				}
				t.dfaRefs[id]++
				t.ruleRefs[key] = append(t.ruleRefs[key], id)
			}
			for _, id := range r.Headers[:min(int(r.Nheaders), MaxHeaders)] {
				if id == 0 || id >= t.maxHdr {
					continue
				}
				t.hdrRefs[id]++
				t.nextHdr = max(t.nextHdr, id+1)
				t.ruleHdrs[key] = append(t.ruleHdrs[key], id)
			}
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("adopt l7 rule sets: %w", err)
	}
	// Ids below next that nobody references are free (after quarantine: a previous agent may have
	// just released them). Their cells are free at once: an agent restart takes longer than the
	// quarantine.
	for id := uint32(1); id < t.nextDFA; id++ {
		if t.dfaRefs[id] == 0 {
			t.pending = append(t.pending, freed{id: id, at: t.now()})
		}
	}
	for id := uint32(1); id < t.nextHdr; id++ {
		if t.hdrRefs[id] == 0 {
			t.pendHdrs = append(t.pendHdrs, freed{id: id, at: t.now()})
		}
	}
	return t, nil
}

func (t *tables) reserveCells(sp span) bool {
	for i, f := range t.freeCells {
		if sp.base >= f.base && sp.base+sp.size <= f.base+f.size {
			rest := []span{}
			if sp.base > f.base {
				rest = append(rest, span{f.base, sp.base - f.base})
			}
			if end := sp.base + sp.size; end < f.base+f.size {
				rest = append(rest, span{end, f.base + f.size - end})
			}
			t.freeCells = slices.Replace(t.freeCells, i, i+1, rest...)
			return true
		}
	}
	return false
}

func (t *tables) allocCells(n uint32) (uint32, bool) {
	for i, f := range t.freeCells {
		if f.size >= n {
			t.freeCells[i] = span{f.base + n, f.size - n}
			if t.freeCells[i].size == 0 {
				t.freeCells = slices.Delete(t.freeCells, i, i+1)
			}
			return f.base, true
		}
	}
	return 0, false
}

func (t *tables) releaseCells(sp span) {
	i, _ := slices.BinarySearchFunc(t.freeCells, sp.base, func(f span, b uint32) int { return int(f.base) - int(b) })
	t.freeCells = slices.Insert(t.freeCells, i, sp)
	// Coalesce neighbours.
	merged := t.freeCells[:0]
	for _, f := range t.freeCells {
		if n := len(merged); n > 0 && merged[n-1].base+merged[n-1].size == f.base {
			merged[n-1].size += f.size
			continue
		}
		merged = append(merged, f)
	}
	t.freeCells = merged
}

// expire moves quarantined ids and ranges whose time is up to the free lists.
func (t *tables) expire() {
	now := t.now()
	keep := t.pending[:0]
	for _, f := range t.pending {
		if now.Sub(f.at) < quarantine {
			keep = append(keep, f)
			continue
		}
		t.freeIDs = append(t.freeIDs, f.id)
		if f.cells.size > 0 {
			t.releaseCells(f.cells)
		}
	}
	t.pending = keep
	keepH := t.pendHdrs[:0]
	for _, f := range t.pendHdrs {
		if now.Sub(f.at) < quarantine {
			keepH = append(keepH, f)
			continue
		}
		t.freeHdrs = append(t.freeHdrs, f.id)
	}
	t.pendHdrs = keepH
}

func (t *tables) newDFAID() (uint32, bool) {
	if n := len(t.freeIDs); n > 0 {
		id := t.freeIDs[n-1]
		t.freeIDs = t.freeIDs[:n-1]
		return id, true
	}
	if t.nextDFA >= t.maxDFA {
		return 0, false
	}
	t.nextDFA++
	return t.nextDFA - 1, true
}

func (t *tables) newHdrID() (uint32, bool) {
	if n := len(t.freeHdrs); n > 0 {
		id := t.freeHdrs[n-1]
		t.freeHdrs = t.freeHdrs[:n-1]
		return id, true
	}
	if t.nextHdr >= t.maxHdr {
		return 0, false
	}
	t.nextHdr++
	return t.nextHdr - 1, true
}

var errFull = errors.New("l7 tables are full")

// internDFA returns the id of d's table, writing it (cells first, then the descriptor, so that no
// rule set can reference a half-written table) when it is new.
func (l *L7) internDFA(pattern string, d *dfa.DFA) (uint32, error) {
	t := l.tab
	if id, ok := t.dfaByKey[pattern]; ok {
		t.dfaRefs[id]++
		return id, nil
	}
	nc, ns := uint32(d.NumClasses), uint32(d.NumStates())
	size := ns*nc + ns
	id, ok := t.newDFAID()
	if !ok {
		return 0, fmt.Errorf("%w: no free dfa id", errFull)
	}
	base, ok := t.allocCells(size)
	if !ok {
		t.freeIDs = append(t.freeIDs, id)
		return 0, fmt.Errorf("%w: no %d free dfa cells for %q", errFull, size, pattern)
	}
	vals := make([]uint16, size)
	copy(vals, d.Next)
	for s, acc := range d.Accept {
		if acc {
			vals[ns*nc+uint32(s)] = 1
		}
	}
	undo := func() { t.freeIDs = append(t.freeIDs, id); t.releaseCells(span{base, size}) }
	if err := l.writeCells(base, vals); err != nil {
		undo()
		return 0, fmt.Errorf("dfa for %q: %w", pattern, err)
	}
	desc := httpL7Dfa{Base: base, Nstates: ns, Nclasses: uint16(nc), Start: d.Start, Sink: uint32(acceptSink(d)), Classes: d.Classes}
	if err := l.objs.L7Dfas.Update(id, &desc, ebpf.UpdateAny); err != nil {
		undo()
		return 0, fmt.Errorf("write dfa %d for %q: %w", id, pattern, err)
	}
	t.dfaByKey[pattern] = id
	t.dfaSpan[id] = span{base, size}
	t.dfaRefs[id] = 1
	t.dfaWant[id] = dfaTable{desc: desc, cells: vals}
	return id, nil
}

// acceptSink is d's accepting state that every byte a judged value can hold leads back to ("/api/.*"
// after "/api/"), 0 when it has none. The kernel stops a walk there: whatever follows matches. A
// value's bytes are those the scan lets through (walkByte): a target has only visible bytes, a Host
// value visible bytes with spaces and tabs inside, a method upper-case letters. Other bytes are not
// looked at: "." does not match a newline, and no judged value holds one.
func acceptSink(d *dfa.DFA) uint16 {
	nc := d.NumClasses
	for s := 1; s < d.NumStates(); s++ {
		if !d.Accept[s] {
			continue
		}
		sink := true
		for b := range 256 {
			if walkByte(byte(b)) && int(d.Next[s*nc+int(d.Classes[b])]) != s {
				sink = false
				break
			}
		}
		if sink {
			return uint16(s)
		}
	}
	return 0
}

// walkByte reports whether b can be in a value the kernel walks a DFA over (bpf/http_match.h,
// scan_byte: the target 0x21-0x7e, header values also space and tab).
func walkByte(b byte) bool { return b == '\t' || b >= 0x20 && b <= 0x7e }

func (l *L7) internHeader(h HeaderRequirement) (uint32, error) {
	t := l.tab
	key := h.Name + "\x00" + h.Value
	if id, ok := t.hdrByKey[key]; ok {
		t.hdrRefs[id]++
		return id, nil
	}
	id, ok := t.newHdrID()
	if !ok {
		return 0, fmt.Errorf("%w: no free header id", errFull)
	}
	v := httpL7Header{NameLen: uint32(len(h.Name)), ValueLen: uint32(len(h.Value))}
	copy(v.Name[:], h.Name)
	copy(v.Value[:], h.Value)
	var w [8]byte
	copy(w[:], h.Name)
	for i := 7; i >= 0; i-- {
		v.NameW0 = v.NameW0<<8 | uint64(w[i])
	}
	if err := l.objs.L7Headers.Update(id, &v, ebpf.UpdateAny); err != nil {
		t.freeHdrs = append(t.freeHdrs, id)
		return 0, fmt.Errorf("write header requirement %q: %w", h.Name, err)
	}
	t.hdrByKey[key] = id
	t.hdrRefs[id] = 1
	t.hdrWant[id] = v
	return id, nil
}

func (l *L7) releaseDFAs(ids []uint32) {
	t := l.tab
	for _, id := range ids {
		if t.dfaRefs[id]--; t.dfaRefs[id] > 0 {
			continue
		}
		delete(t.dfaRefs, id)
		delete(t.dfaWant, id)
		for k, v := range t.dfaByKey {
			if v == id {
				delete(t.dfaByKey, k)
			}
		}
		t.pending = append(t.pending, freed{id: id, cells: t.dfaSpan[id], at: t.now()})
		delete(t.dfaSpan, id)
	}
}

func (l *L7) releaseHeaders(ids []uint32) {
	t := l.tab
	for _, id := range ids {
		if t.hdrRefs[id]--; t.hdrRefs[id] > 0 {
			continue
		}
		delete(t.hdrWant, id)
		delete(t.hdrRefs, id)
		for k, v := range t.hdrByKey {
			if v == id {
				delete(t.hdrByKey, k)
			}
		}
		t.pendHdrs = append(t.pendHdrs, freed{id: id, at: t.now()})
	}
}

// RuleSet is what judges the requests of one RuleKey.
type RuleSet struct {
	// Rules are normalized HTTP rule strings, OR-ed; "any" matches every request; none denies
	// every request.
	Rules []string
	// Audit forwards the requests the rules would deny (and malformed ones) and reports them as
	// audited: the direction's default deny comes from Audit-mode policies only.
	Audit bool
}

// SetRules makes the kernel judge requests for key by rules (normalized HTTP rule strings, OR-ed;
// "any" matches every request). An empty list denies every request for key. Tables are written
// before the rule set that references them and released after it is replaced; the rule set itself
// is written only when it differs from what the kernel holds.
func (l *L7) SetRules(key RuleKey, rules []string) error {
	return l.SetRuleSet(key, RuleSet{Rules: rules})
}

// SetRuleSet is SetRules with the rule set's mode.
func (l *L7) SetRuleSet(key RuleKey, rs RuleSet) error {
	compiled, err := CompileRules(rs.Rules)
	if err != nil {
		return fmt.Errorf("set l7 rules for %+v: %w", key, err)
	}
	_, err = l.setCompiled(key, compiled, rs.Audit)
	return err
}

// SetCompiledRules is SetRules for rules already lowered by CompileRules.
func (l *L7) SetCompiledRules(key RuleKey, rules []CompiledRule) error {
	_, err := l.setCompiled(key, rules, false)
	return err
}

// setCompiled writes the rule set of key when the kernel's differs, and reports whether it wrote.
func (l *L7) setCompiled(key RuleKey, rules []CompiledRule, audit bool) (wrote bool, err error) {
	if len(rules) > MaxRules {
		return false, fmt.Errorf("set l7 rules for %+v: %w: %d rules, at most %d", key, errRule, len(rules), MaxRules)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tab.expire()
	var dfas, hdrs []uint32
	defer func() {
		if err != nil {
			l.releaseDFAs(dfas)
			l.releaseHeaders(hdrs)
		}
	}()
	want := httpL7Ruleset{Nrules: uint32(len(rules))}
	if audit {
		want.Flags = 1 // L7_RS_AUDIT
	}
	for i, r := range rules {
		kr := &want.Rules[i]
		if r.Method != nil {
			kr.Methods = methodSet(r.Method)
		}
		// Path and host by their index in Patterns (0, the method, is a set above, not a DFA).
		for j, pair := range []struct {
			d   *dfa.DFA
			dst *uint32
		}{1: {r.Path, &kr.PathDfa}, 2: {r.Host, &kr.HostDfa}} {
			if pair.d == nil {
				continue
			}
			id, err := l.internDFA(r.Patterns[j], pair.d)
			if err != nil {
				return false, fmt.Errorf("set l7 rules for %+v: %w", key, err)
			}
			dfas = append(dfas, id)
			*pair.dst = id
		}
		all := append(slices.Clone(r.Headers), r.LogHeaders...)
		if len(all) > MaxHeaders {
			return false, fmt.Errorf("set l7 rules for %+v: %w: %d headers, at most %d", key, errRule, len(all), MaxHeaders)
		}
		kr.Nheaders = uint32(len(all))
		for j, h := range all {
			id, err := l.internHeader(h)
			if err != nil {
				return false, fmt.Errorf("set l7 rules for %+v: %w", key, err)
			}
			hdrs = append(hdrs, id)
			kr.Headers[j] = id
			if j >= len(r.Headers) {
				kr.LogMask |= 1 << j
			}
		}
	}
	k := key.kernel()
	var have httpL7Ruleset
	if err := l.objs.L7Rulesets.Lookup(&k, &have); err != nil || have != want {
		if err := l.objs.L7Rulesets.Update(&k, &want, ebpf.UpdateAny); err != nil {
			return false, fmt.Errorf("set l7 rules for %+v: %w", key, err)
		}
		wrote = true
	}
	l.releaseDFAs(l.tab.ruleRefs[key])
	l.releaseHeaders(l.tab.ruleHdrs[key])
	l.tab.ruleRefs[key], l.tab.ruleHdrs[key] = dfas, hdrs
	src := make([][]string, len(rules))
	for i, r := range rules {
		src[i] = r.Sources
	}
	l.tab.ruleSrc[key] = src
	l.rulesVersion.Add(1)
	return wrote, nil
}

// RulesVersion changes whenever what RuleSources returns may have changed (a rule set written or
// removed); reading it takes no lock, so that a reader of events can cache what RuleSources said.
func (l *L7) RulesVersion() uint64 { return l.rulesVersion.Load() }

// RuleSources returns the rules given to SetRules that the kernel's rule index (Event.Rule) stands
// for, in the rule set that judges key: key's own, or the wildcard peer's when key has none; it also
// returns the key of that rule set. Nil sources when unknown (a rule set written before a restart,
// or changed since).
func (l *L7) RuleSources(key RuleKey, rule int) ([]string, RuleKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	src, ok := l.tab.ruleSrc[key]
	if !ok {
		key.PeerIdentity = 0
		src = l.tab.ruleSrc[key]
	}
	if rule < 0 || rule >= len(src) {
		return nil, key
	}
	return src[rule], key
}

// DeleteRules removes the rule set of key: requests for it are then judged by the wildcard-peer
// rule set of the endpoint and port, or denied. It is not an error when absent.
func (l *L7) DeleteRules(key RuleKey) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := key.kernel()
	if err := l.objs.L7Rulesets.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete l7 rules for %+v: %w", key, err)
	}
	l.releaseDFAs(l.tab.ruleRefs[key])
	l.releaseHeaders(l.tab.ruleHdrs[key])
	delete(l.tab.ruleRefs, key)
	delete(l.tab.ruleHdrs, key)
	delete(l.tab.ruleSrc, key)
	l.rulesVersion.Add(1)
	return nil
}

// Result is the kernel matcher's judgement of a buffer.
type Result struct {
	Decision Decision
	Reason   Reason
	// HeaderLen is the length of the request line and header block, when complete.
	HeaderLen int
	// BodyLen is the Content-Length of an allowed request.
	BodyLen uint64
	// Chunked is true when an allowed request's body is chunked (framed by the stream parser).
	Chunked bool
	// Rule is the index of the first rule that allowed the request, or -1.
	Rule int
	// LogMissing has bit i set when the i-th header slot of that rule (Headers, then LogHeaders)
	// is a logged headerMatches the request did not meet.
	LogMissing uint32
	// Audit is true when the rule set that judged is in audit mode.
	Audit bool
	// WebSocket is true when the request asks to upgrade to WebSocket (Upgrade: websocket): if it
	// is a connection's first request and allowed, the connection passes through once the server
	// answers 101.
	WebSocket bool
}

// testSlot is L7_TEST_SLOT: the scratch buffer only the test program uses, so that Judge on an
// enforcing instance never disturbs a parser.
const testSlot = uint32(2)

// Judge runs the kernel matcher on req (the start of a connection's byte stream) for key through
// BPF_PROG_TEST_RUN: the same C code the stream parser runs on real sockets. Only the first
// ScanLimit bytes are looked at.
func (l *L7) Judge(key RuleKey, req []byte) (Result, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var sc httpL7Scratch
	n := copy(sc.Buf[:], req)
	sc.Len = uint32(n)
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return Result{}, fmt.Errorf("judge: %w", err)
	}
	per := make([]httpL7Scratch, ncpu)
	for i := range per {
		per[i] = sc
	}
	if err := l.objs.L7Scratch.Update(testSlot, per, ebpf.UpdateAny); err != nil {
		return Result{}, fmt.Errorf("judge: write scratch buffer: %w", err)
	}
	k := key.kernel()
	in := httpL7TestCtx{EndpointId: k.EndpointId, PeerIdentity: k.PeerIdentity, Port: uint32(k.Port),
		Direction: uint32(k.Direction), Len: uint32(len(req))}
	var out httpL7TestCtx
	if _, err := l.objs.L7TestJudge.Run(&ebpf.RunOptions{Context: in, ContextOut: &out}); err != nil {
		return Result{}, fmt.Errorf("judge: run matcher: %w", err)
	}
	return Result{Decision: Decision(out.Verdict), Reason: Reason(out.Reason), HeaderLen: int(out.HdrLen),
		BodyLen: out.BodyLen, Chunked: out.Chunked != 0, Rule: int(out.Rule) - 1, LogMissing: out.LogMissing,
		Audit: out.Audit != 0, WebSocket: out.Websocket != 0}, nil
}

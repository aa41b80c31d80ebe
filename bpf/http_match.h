//go:build ignore

/*
 * The HTTP/1.1 request matcher, shared by the sk_skb stream parser (real
 * sockets) and the l7_test_judge syscall program (BPF_PROG_TEST_RUN, which
 * sk_skb programs do not have), so that the code the differential test
 * compares with the Go reference is the code that judges real requests.
 *
 * judge() reads the request from a per-CPU scratch buffer, checks its syntax
 * strictly (anything ambiguous is denied, never guessed), and OR-s the rules
 * of (endpoint, peer identity, port). Every scan is a bpf_loop: the verifier
 * checks each callback once instead of unrolling 8 KiB of input.
 */
#ifndef PORTCULLIS_HTTP_MATCH_H
#define PORTCULLIS_HTTP_MATCH_H

#include "l7.h"

#define SCAN_MASK (L7_SCAN_LIMIT - 1)

/* Two slots per CPU: a parser running in process context (socket backlog,
 * strparser work) can be interrupted by a softirq that runs the parser for
 * another socket on the same CPU; each level gets its own buffer. */
#define L7_SCRATCH_SLOTS 2
/* The test program has a slot of its own: BPF_PROG_TEST_RUN on a loaded,
 * enforcing object must never overwrite a buffer a parser is judging. */
#define L7_TEST_SLOT L7_SCRATCH_SLOTS

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct l7_scratch);
	__uint(max_entries, L7_SCRATCH_SLOTS + 1);
} l7_scratch SEC(".maps");

/* Which scratch slots of this CPU are in use (slot_enter). */
struct l7_slots {
	__u32 busy[L7_SCRATCH_SLOTS];
};
_Static_assert(L7_SCRATCH_SLOTS == 2, "slot_enter takes slot 0 or 1");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct l7_slots);
	__uint(max_entries, 1);
} l7_nesting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct l7_ruleset_key);
	__type(value, struct l7_ruleset);
	__uint(max_entries, 16384);
} l7_rulesets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct l7_dfa);
	__uint(max_entries, 4096);
} l7_dfas SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct l7_cell_block);
	__uint(max_entries, L7_DFA_CELLS / L7_CELLS_PER_BLOCK);
	__uint(map_flags, BPF_F_MMAPABLE); /* the agent writes and compares its tables in place */
} l7_dfa_blocks SEC(".maps");

/* Cell i of the DFA tables; 0 (dead, no match) past the table. */
static __always_inline __u32 dfa_cell(__u32 i)
{
	__u32 blk = i / L7_CELLS_PER_BLOCK;
	struct l7_cell_block *b = bpf_map_lookup_elem(&l7_dfa_blocks, &blk);

	return b ? b->cells[i % L7_CELLS_PER_BLOCK] : 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct l7_header);
	__uint(max_entries, 4096);
} l7_headers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, L7_R_SLOTS);
} l7_counters SEC(".maps");

static __always_inline void count(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&l7_counters, &reason);

	if (c)
		*c += 1;
}

/* Method and version bytes packed big-endian as they are read. */
#define C2(a, b) (((__u64)(a) << 8) | (b))
#define C3(a, b, c) ((C2(a, b) << 8) | (c))
#define C4(a, b, c, d) ((C3(a, b, c) << 8) | (d))
#define C5(a, b, c, d, e) ((C4(a, b, c, d) << 8) | (e))
#define C6(a, b, c, d, e, f) ((C5(a, b, c, d, e) << 8) | (f))
#define C7(a, b, c, d, e, f, g) ((C6(a, b, c, d, e, f) << 8) | (g))
#define C8(a, b, c, d, e, f, g, h) ((C7(a, b, c, d, e, f, g) << 8) | (h))

/* Header names packed little-endian, 8 bytes a word (as l7_header.name_w0). */
#define L8(a, b, c, d, e, f, g, h)                                                          \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 | (__u64)(e) << 32 | \
	 (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)

enum scan_state {
	ST_METHOD = 0,
	ST_TARGET,
	ST_VERSION,
	ST_RL_LF,
	ST_LINE_START,
	ST_NAME,
	ST_VALUE,
	ST_HDR_LF,
	ST_END_LF,
};

enum scan_done {
	SCAN_RUNNING = 0,
	SCAN_COMPLETE,
	SCAN_REJECT,
};

struct walk {
	__u32 base;
	__u32 ncls;
	__u32 nstates;
	__u32 state;
	__u32 pos; /* next byte to walk */
	__u32 end;
	__u32 sink; /* l7_dfa.sink */
};

/* Bytes a scan_cb or walk_cb call handles: the callback's call and setup are
 * paid once per run instead of once per byte. */
#define SCAN_RUN 16

/* A callback's context, on its caller's stack: the per-CPU values it works
 * on, looked up once by the caller (the callback only reads these pointers;
 * its writes go to the map values). */
struct scan_ctx {
	struct scan *s;
	const struct l7_scratch *sc;
	const struct l7_dfa *d;
};

/* The machine's state: the current segment's (SEG_*), a percent escape being
 * read (1: after '%', 2: after its first hex digit, hi), whether a dot
 * segment was found, and whether a backslash or an escaped '/' or '\' was. */
struct pathm {
	__u32 seg, pct, hi, found, slash;
};

/*
 * Loop state lives in a per-CPU map value, not on the stack: with the state
 * on the caller's stack, the 6.18 verifier fails the program with EFAULT (an
 * internal "verifier bug") while tracking the callback's scalar writes back
 * into the parent frame. Callbacks get only the slot number.
 */
struct scan {
	struct walk w;
	struct l7_ruleset_key key;
	__u64 method;
	__u64 version;
	__u64 w0, w1, w2; /* current header name, lower-cased */
	__u64 cl;         /* current value as a number */
	__u64 content_length;
	__u64 seen; /* bit rule*L7_MAX_HEADERS+slot: requirement met */
	__u32 slot;
	__u32 len;
	__u32 st;
	__u32 done;
	__u32 reason;
	__u32 mlen;
	__u32 tstart, pend;
	__u32 vlen;
	__u32 nstart, nlen;
	__u32 vstart, vend, vstarted, vws;
	__u64 vw; /* first 8 bytes of the value, lower-cased */
	__u32 cl_ok, ncl, nte;
	__u32 cl_ok_ws_free; /* no whitespace inside the current value */
	__u32 nhost, hstart, hend;
	__u32 hdr_len;
	__u32 have_rs;
	__u32 matched;
	__u32 log_missing;
	__u32 websocket; /* an Upgrade: websocket header */
	__u32 pos;       /* next byte to scan */
	/* Paths a server may read otherwise (path_check): the machine, whether
	 * the target may hold such a path (a '%' or a backslash, or a '.' right
	 * after a '/'), and whether a rule with a path was skipped for it. */
	struct pathm dm;
	__u32 path_maybe, path_denied;
	__u32 hdr_reqs; /* a rule of rs has header requirements */
	__u32 mbit;     /* the method's L7_M_* bit */
	/* A copy of the rule set taken once per request: a concurrent update
	 * must not mix an old rule's header checks with a new rule's matching.
	 * The tables it references are not reused for a second after release.
	 * Last, and only its rs.nrules rules copied: judge() clears and
	 * fills only what a request reads (a whole struct scan is 14 cache
	 * lines, written on every request). */
	struct l7_ruleset rs;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct scan);
	__uint(max_entries, L7_SCRATCH_SLOTS + 1);
} l7_scans SEC(".maps");

static __always_inline struct scan *scan_state(const __u32 *slotp)
{
	__u32 slot = *slotp;

	return bpf_map_lookup_elem(&l7_scans, &slot);
}

static __always_inline int is_tchar(__u8 c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
	case '-': case '.': case '^': case '_': case '`': case '|': case '~':
		return 1;
	}
	return 0;
}

static __always_inline __u8 lower(__u8 c)
{
	return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* Dot segments. A path such as /public/../internal matches the rule
 * /public/.* as sent, and a server that normalizes it (RFC 3986 remove_dot_segments;
 * file servers, Python's http.server, Tomcat) serves /internal: the path
 * the rules judged is not the one the server acts on. Cilium's Envoy rewrites
 * the path before matching; the kernel cannot, so a path with a dot segment
 * matches no rule that has a path (rules without a path still allow it).
 * A segment is a "." or ".." in any spelling a server may decode to one:
 * dots as "." or %2e, segments separated by "/", "\", %2f or %5c, and a
 * segment ending at ";" or "#" (Tomcat reads /..;/ as /../).
 * Escaped slashes. The same for a path with a backslash or a %2f or %5c:
 * /v1/users/x%2fadmin matches /v1/users/[^/]+, and a server that decodes
 * %2f before routing, or reads a backslash as a '/', serves the deeper
 * /v1/users/x/admin (Cilium's Envoy redirects such a request to the path
 * unescaped, which is then judged).
 * Each path byte before the query goes through path_byte; the Go reference
 * (internal/evaluator's DotSegment and EscapedSlash) is the same in Go, and
 * the differential test holds them equal. The machine runs over the path
 * once per request, when there are rules and the target has a '%' or a
 * backslash, or a '.' right after a '/' (path_check). */
enum {
	SEG_START = 0, /* at the start of a segment */
	SEG_DOT1,      /* the segment so far is one dot */
	SEG_DOT2,      /* ... two dots */
	SEG_OTHER,     /* anything else: not a dot segment */
};

static __always_inline int hex_value(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* One unit of the path: a byte as sent (literal) or a decoded %XX. */
static __always_inline void seg_unit(struct pathm *m, __u32 u, int literal)
{
	int dots = m->seg == SEG_DOT1 || m->seg == SEG_DOT2;

	if (u == '/' || u == '\\') {
		if (dots)
			m->found = 1;
		if (!literal || u == '\\')
			m->slash = 1;
		m->seg = SEG_START;
	} else if (u == '.') {
		if (m->seg < SEG_OTHER)
			m->seg++;
	} else {
		if (literal && (u == ';' || u == '#') && dots)
			m->found = 1;
		m->seg = SEG_OTHER;
	}
}

static __always_inline void path_byte(struct pathm *m, __u8 c)
{
	int h = hex_value(c);

	if (m->pct == 1) {
		m->pct = 0;
		if (h >= 0) {
			m->pct = 2;
			m->hi = h;
			return;
		}
		m->seg = SEG_OTHER; /* a '%' not followed by two hex digits */
	} else if (m->pct == 2) {
		m->pct = 0;
		if (h >= 0) {
			seg_unit(m, (m->hi << 4) | h, 0);
			return;
		}
		m->seg = SEG_OTHER;
	}
	if (c == '%') {
		m->pct = 1;
		return;
	}
	seg_unit(m, c, 1);
}

/* Methods we judge, as their L7_M_* bit; anything else (lower case,
 * extension methods) is 0: denied rather than matched against a regex the
 * author wrote for known methods. */
static __always_inline __u32 known_method(__u64 m)
{
	switch (m) {
	case C3('G', 'E', 'T'):
		return L7_M_GET;
	case C4('H', 'E', 'A', 'D'):
		return L7_M_HEAD;
	case C4('P', 'O', 'S', 'T'):
		return L7_M_POST;
	case C3('P', 'U', 'T'):
		return L7_M_PUT;
	case C6('D', 'E', 'L', 'E', 'T', 'E'):
		return L7_M_DELETE;
	case C5('P', 'A', 'T', 'C', 'H'):
		return L7_M_PATCH;
	case C7('O', 'P', 'T', 'I', 'O', 'N', 'S'):
		return L7_M_OPTIONS;
	case C5('T', 'R', 'A', 'C', 'E'):
		return L7_M_TRACE;
	case C7('C', 'O', 'N', 'N', 'E', 'C', 'T'):
		return L7_M_CONNECT;
	}
	return 0;
}

static __always_inline struct l7_scratch *scratch(__u32 slot)
{
	return bpf_map_lookup_elem(&l7_scratch, &slot);
}

static __always_inline int reject(struct scan *s, __u32 reason)
{
	s->done = SCAN_REJECT;
	s->reason = reason;
	return 1; /* stop bpf_loop */
}

/* Compares n bytes of the request at start with a lower-cased (fold) or
 * exact rule string. */
static __always_inline int bytes_equal(const __u8 *buf, __u32 start, const __u8 *want, __u32 n,
				       __u32 max, int fold)
{
	__u32 k;

#pragma clang loop unroll(disable)
	for (k = 0; k < max; k++) {
		__u8 c;

		if (k >= n)
			break;
		c = buf[(start + k) & SCAN_MASK];
		if (fold)
			c = lower(c);
		if (c != want[k])
			return 0;
	}
	return 1;
}

/* bpf_loop callback: does the current header line meet requirement idx? */
static int req_cb(__u32 idx, __u32 *slotp)
{
	__u32 rule = idx / L7_MAX_HEADERS, slot = idx % L7_MAX_HEADERS, hid;
	struct scan *s = scan_state(slotp);
	struct l7_ruleset *rs;
	struct l7_scratch *sc;
	struct l7_header *h;
	struct l7_rule *r;

	if (!s)
		return 1;
	rs = &s->rs;
	if (rule >= rs->nrules || rule >= L7_MAX_RULES)
		return 1;
	r = &rs->rules[rule & (L7_MAX_RULES - 1)];
	if (slot >= r->nheaders)
		return 0;
	hid = r->headers[slot & (L7_MAX_HEADERS - 1)];
	h = bpf_map_lookup_elem(&l7_headers, &hid);
	if (!h || h->name_len != s->nlen || h->name_w0 != s->w0)
		return 0;
	sc = scratch(s->slot);
	if (!sc)
		return 1;
	if (!bytes_equal(sc->buf, s->nstart, h->name, h->name_len, L7_HEADER_NAME_MAX, 1))
		return 0;
	if (h->value_len) {
		if (s->vend - s->vstart != h->value_len)
			return 0;
		if (!bytes_equal(sc->buf, s->vstart, h->value, h->value_len, L7_HEADER_VALUE_MAX, 0))
			return 0;
	}
	s->seen |= 1ULL << (idx & 63);
	return 0;
}

/* A complete header line: framing headers are checked, rule requirements
 * recorded. Returns 1 when the request is rejected.
 *
 * A global function, verified once on its own: inlined in scan_cb's byte
 * loop, the verifier walked it for each of the loop's SCAN_RUN steps in
 * every program that judges (about 465,000 instructions each and a second
 * of loading; now about 45,000). Calling it once per line costs about as
 * much as inlining it (BenchmarkJudge; returning from scan_cb to call it
 * outside the loop measured slower). */
/* The lengths of the names header_line() looks at (header_line_wanted()). */
enum {
	NAME_HOST = 4,     /* host */
	NAME_UPGRADE = 7,  /* upgrade */
	NAME_CL = 14,      /* content-length */
	NAME_TE = 17,      /* transfer-encoding */
};

__noinline int header_line(struct scan *s)
{
	__u32 slot;

	if (!s)
		return 1;
	slot = s->slot;

	if (s->nlen == NAME_CL && s->w0 == L8('c', 'o', 'n', 't', 'e', 'n', 't', '-') &&
	    s->w1 == L8('l', 'e', 'n', 'g', 't', 'h', 0, 0)) {
		if (++s->ncl > 1)
			return reject(s, L7_R_DUP_CONTENT_LENGTH);
		if (!s->cl_ok || s->vend == s->vstart)
			return reject(s, L7_R_BAD_CONTENT_LENGTH);
		s->content_length = s->cl;
	}
	/* Transfer-Encoding: only a single "chunked" (any case, as Go's server
	 * reads it) on HTTP/1.1. Go ignores Transfer-Encoding on HTTP/1.0, so
	 * judging a 1.0 body as chunked would let the "body" be a request the
	 * server reads unjudged. Content-Length with it is checked at the end. */
	if (s->nlen == NAME_TE && s->w0 == L8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r') &&
	    s->w1 == L8('-', 'e', 'n', 'c', 'o', 'd', 'i', 'n') && s->w2 == 'g') {
		if (++s->nte > 1 || s->version != C8('H', 'T', 'T', 'P', '/', '1', '.', '1') ||
		    s->vend - s->vstart != 7 || !s->cl_ok_ws_free ||
		    s->vw != L8('c', 'h', 'u', 'n', 'k', 'e', 'd', 0))
			return reject(s, L7_R_TRANSFER_ENCODING);
	}
	/* Upgrade: websocket (any case, nothing else in the value). Only a
	 * WebSocket upgrade is let through once the server answers 101: after an
	 * h2c upgrade the connection carries HTTP/2 requests, which must not pass
	 * unjudged. */
	if (s->nlen == NAME_UPGRADE && s->w0 == L8('u', 'p', 'g', 'r', 'a', 'd', 'e', 0) && s->vend - s->vstart == 9 &&
	    s->cl_ok_ws_free && s->vw == L8('w', 'e', 'b', 's', 'o', 'c', 'k', 'e')) {
		struct l7_scratch *sc = scratch(slot);

		if (sc && lower(sc->buf[(s->vstart + 8) & (L7_SCAN_LIMIT - 1)]) == 't')
			s->websocket = 1;
	}
	if (s->nlen == NAME_HOST && s->w0 == L8('h', 'o', 's', 't', 0, 0, 0, 0)) {
		if (++s->nhost > 1)
			return reject(s, L7_R_DUP_HOST);
		s->hstart = s->vstart;
		s->hend = s->vend;
	}
	if (s->hdr_reqs)
		bpf_loop(L7_MAX_RULES * L7_MAX_HEADERS, req_cb, &slot, 0);
	return 0;
}

/* Whether header_line() can act on the line just ended: a name of one of the
 * lengths it looks at, or any name when a rule has header requirements. The
 * others (User-Agent, Accept, Cookie, ...) cost no BPF call. */
static __always_inline int header_line_wanted(const struct scan *s)
{
	return s->hdr_reqs || s->nlen == NAME_HOST || s->nlen == NAME_UPGRADE || s->nlen == NAME_CL ||
	       s->nlen == NAME_TE;
}

static __always_inline void name_byte(struct scan *s, __u32 k, __u8 c)
{
	__u64 v = (__u64)c << ((k & 7) * 8);

	if (k < 8)
		s->w0 |= v;
	else if (k < 16)
		s->w1 |= v;
	else if (k < 24)
		s->w2 |= v;
}

/* The colon after a header name: its value begins (as a number until a byte
 * says otherwise). */
static __always_inline void value_begin(struct scan *s)
{
	s->st = ST_VALUE;
	s->vstart = s->vend = 0;
	s->vstarted = s->vws = 0;
	s->vw = 0;
	s->cl = 0;
	s->cl_ok = 1;
	s->cl_ok_ws_free = 1;
}

/* One byte c at i of the request line or header block; 1 to stop. */
static __always_inline int scan_byte(struct scan *s, const struct l7_scratch *sc, __u32 i, __u8 c)
{
	switch (s->st) {
	case ST_METHOD:
		if (c >= 'A' && c <= 'Z') {
			if (++s->mlen > 7)
				return reject(s, L7_R_BAD_METHOD);
			s->method = (s->method << 8) | c;
			return 0;
		}
		if (c == ' ' && (s->mbit = known_method(s->method))) {
			s->st = ST_TARGET;
			s->tstart = i + 1;
			return 0;
		}
		return reject(s, L7_R_BAD_METHOD);
	case ST_TARGET:
		/* Origin-form only: absolute-form, authority-form (CONNECT) and
		 * asterisk-form would need a second notion of path and host. */
		if (i == s->tstart && c != '/')
			return reject(s, L7_R_BAD_TARGET);
		if (c == ' ') {
			if (!s->pend)
				s->pend = i;
			s->st = ST_VERSION;
			return 0;
		}
		if (c < 0x21 || c > 0x7e)
			return reject(s, L7_R_BAD_TARGET);
		if (c == '?' && !s->pend)
			s->pend = i;
		/* A dot segment or an escaped slash needs a '%' (%2e, %2f, %5c),
		 * a backslash, or a '.' right after a '/' (path_check);
		 * "/static/app.min.js" has none. */
		if (c == '%' || c == '\\') {
			s->path_maybe = 1;
		} else if (c == '.') {
			if (sc->buf[(i - 1) & SCAN_MASK] == '/')
				s->path_maybe = 1;
		}
		return 0;
	case ST_VERSION:
		if (c == '\r') {
			if (s->vlen != 8 || (s->version != C8('H', 'T', 'T', 'P', '/', '1', '.', '1') &&
					     s->version != C8('H', 'T', 'T', 'P', '/', '1', '.', '0')))
				return reject(s, L7_R_BAD_VERSION);
			s->st = ST_RL_LF;
			return 0;
		}
		if (++s->vlen > 8)
			return reject(s, L7_R_BAD_VERSION);
		s->version = (s->version << 8) | c;
		return 0;
	case ST_RL_LF:
		if (c != '\n')
			return reject(s, L7_R_BAD_HEADER);
		s->st = ST_LINE_START;
		return 0;
	case ST_LINE_START:
		if (c == '\r') {
			s->st = ST_END_LF;
			return 0;
		}
		/* SP or HTAB here is obs-fold, a bare LF ends nothing: deny. */
		if (!is_tchar(c))
			return reject(s, L7_R_BAD_HEADER);
		s->nstart = i;
		s->nlen = 1;
		s->w0 = s->w1 = s->w2 = 0;
		name_byte(s, 0, lower(c));
		s->st = ST_NAME;
		return 0;
	case ST_NAME:
		if (c == ':') {
			value_begin(s);
			return 0;
		}
		/* Whitespace before the colon is a known smuggling vector. */
		if (!is_tchar(c))
			return reject(s, L7_R_BAD_HEADER);
		name_byte(s, s->nlen, lower(c));
		s->nlen++;
		return 0;
	case ST_VALUE:
		if (c == '\r') {
			s->st = ST_HDR_LF;
			return 0;
		}
		if (c == ' ' || c == '\t') {
			if (s->vstarted)
				s->vws = 1;
			return 0;
		}
		/* NUL, other controls, bare LF, and non-ASCII bytes are denied. */
		if (c < 0x21 || c > 0x7e)
			return reject(s, L7_R_BAD_HEADER);
		if (!s->vstarted) {
			s->vstarted = 1;
			s->vstart = i;
		}
		if (s->vws) {
			s->cl_ok = 0; /* whitespace inside the value */
			s->cl_ok_ws_free = 0;
		}
		if (i - s->vstart < 8)
			s->vw |= (__u64)lower(c) << ((i - s->vstart) * 8);
		s->vend = i + 1;
		if (c >= '0' && c <= '9' && s->cl < 100000000000000ULL)
			s->cl = s->cl * 10 + (c - '0');
		else
			s->cl_ok = 0;
		return 0;
	case ST_HDR_LF:
		if (c != '\n')
			return reject(s, L7_R_BAD_HEADER);
		if (header_line_wanted(s) && header_line(s))
			return 1;
		s->st = ST_LINE_START;
		return 0;
	case ST_END_LF:
		if (c != '\n')
			return reject(s, L7_R_BAD_HEADER);
		s->hdr_len = i + 1;
		s->done = SCAN_COMPLETE;
		return 1;
	}
	return reject(s, L7_R_BAD_HEADER);
}

#define REP8(c) (0x0101010101010101ULL * (__u64)(c))

/* The 8 bytes at i (the buffer has slack past the scan limit). */
static __always_inline __u64 load8(const struct l7_scratch *sc, __u32 i)
{
	return *(const __u64 *)&sc->buf[i & SCAN_MASK];
}

/*
 * Word-at-a-time tests on 8 bytes loaded little-endian (the first byte is the
 * lowest). Each returns a mask with bit 7 set in the bytes that fail; the
 * lowest set bit is always exact (a borrow or carry only runs upward, from a
 * byte that is itself flagged), higher ones may not be, so only the first
 * failing byte is ever used (first8).
 */

/* Bytes outside [lo, 0x7e] (lo <= 0x80): below lo, or DEL and 8-bit bytes. */
static __always_inline __u64 out_of8(__u64 w, __u8 lo)
{
	return (((w - REP8(lo)) & ~w) | (w + REP8(0x01)) | w) & REP8(0x80);
}

/* Bytes equal to c. */
static __always_inline __u64 eq8(__u64 w, __u8 c)
{
	__u64 v = w ^ REP8(c);

	return (v - REP8(0x01)) & ~v & REP8(0x80);
}

/* How many bytes come before the first flagged one (8: none is). */
static __always_inline __u32 first8(__u64 m)
{
	/* The bytes below the lowest flag, and its own, get 0x01 each; the
	 * multiply sums them into the top byte. */
	if (!m)
		return 8;
	return (__u32)((((m & -m) - 1) & REP8(0x01)) * REP8(0x01) >> 56) - 1;
}

/* For bytes in [0x21, 0x7e]: every byte is a digit. */
static __always_inline int digits8(__u64 w)
{
	return !((((w - REP8('0')) & ~w) | (w + REP8(0x7f - '9'))) & REP8(0x80));
}

/* A mask of the first n bytes of a word (n <= 8). */
static __always_inline __u64 low_bytes(__u32 n)
{
	return n >= 8 ? ~0ULL : (1ULL << (n * 8)) - 1;
}

/* For bytes below 0x80, exact in every byte (no carry crosses a byte): bytes
 * at least lo (1 <= lo <= 0x80), at most hi (hi < 0x7f). */
static __always_inline __u64 ge8(__u64 w, __u8 lo)
{
	return (w + REP8(0x80 - lo)) & REP8(0x80);
}

static __always_inline __u64 le8(__u64 w, __u8 hi)
{
	return ~(w + REP8(0x7f - hi)) & REP8(0x80);
}

/* The first n bytes of w (n <= 8) that are not a letter, a digit or '-' (the
 * bytes of common header names; other tokens go byte by byte). */
static __always_inline __u64 name_out8(__u64 w, __u32 n)
{
	__u64 keep = low_bytes(n), x, y, dash, ok;

	w = (w & keep) | (REP8('a') & ~keep);
	if (w & REP8(0x80))
		return 1;
	y = w | REP8(0x20);
	x = w ^ REP8('-');
	dash = ~(x + REP8(0x7f)) & REP8(0x80);
	ok = (ge8(y, 'a') & le8(y, 'z')) | (ge8(w, '0') & le8(w, '9')) | dash;
	return ~ok & REP8(0x80);
}

/* For bytes below 0x80: w lower-cased (bit 5 added to 'A'-'Z'). */
static __always_inline __u64 lower8(__u64 w)
{
	__u64 upper = (w + REP8(0x80 - 'A')) & ~(w + REP8(0x80 - 'Z' - 1)) & REP8(0x80);

	return w | (upper >> 2);
}

/*
 * How many of the 8 bytes at i (all in the buffer) are taken in one step,
 * with the state scan_byte would leave after them; 0 to go byte by byte. The
 * first byte that needs scan_byte ends the step:
 *  - A header value's start: its visible bytes, not all digits, start it (vw
 *    their lower case); it is then not a number.
 *  - Later in a value that is not a number (cl_ok 0), past its first 8 bytes
 *    (vw): visible bytes; or, once whitespace inside it was followed by a
 *    visible byte (cl_ok_ws_free 0), all 8 bytes if they are visible or space
 *    and the last is visible. Only the value's end moves.
 *  - The target past its first byte: visible bytes but '?', '%', '\\' and
 *    '.' change nothing.
 *  - A header name of letters, digits and '-' (up to 15 bytes) with its
 *    colon, at the start of a line: one or two words instead of a step per
 *    byte; names with other token bytes, and longer ones, go byte by byte.
 *  - The request line's method with its space (a known method), and its
 *    version with the line's end ("HTTP/1.1\r\n", "HTTP/1.0\r\n"): one step
 *    each instead of 4 to 8 and 10, taken where they are whole.
 * Long values (tokens, cookies, user agents) and paths cost a step per 8
 * bytes instead of one per byte, short ones at most one try per value or per
 * byte that ends a step. Inlined: as a call of its own (a BPF call and return
 * per try) it made short headers slower. Its registers spill into scan_cb's
 * frame, which l7_fast's deepest call chain (l7_fast, fast_segment, judge,
 * scan_cb, header_line, req_cb) has room for only because fast_parse keeps
 * its own frame small.
 */
static __always_inline __u32 word_step(struct scan *s, const struct l7_scratch *sc, __u32 i)
{
	__u64 w, keep;
	__u32 n;

	if (s->st == ST_VALUE) {
		if (s->vstarted && (i - s->vstart < 8 || s->cl_ok))
			return 0;
		w = load8(sc, i);
		if (!s->vstarted) {
			n = first8(out_of8(w, 0x21));
			if (n == 0)
				return 0;
			keep = low_bytes(n);
			/* all digits: a number, whose value scan_byte computes */
			if (digits8((w & keep) | (REP8('0') & ~keep)))
				return 0;
			s->vstarted = 1;
			s->vstart = i;
			s->vw = lower8(w) & keep;
			s->cl_ok = 0;
		} else if (!s->vws) {
			n = first8(out_of8(w, 0x21));
			if (n == 0)
				return 0;
		} else if (s->cl_ok_ws_free || out_of8(w, 0x20) || (w >> 56) == ' ') {
			return 0;
		} else {
			n = 8;
		}
		s->vend = i + n;
		return n;
	}
	if (s->st == ST_TARGET && i != s->tstart) {
		w = load8(sc, i);
		return first8(out_of8(w, 0x21) | eq8(w, '?') | eq8(w, '%') | eq8(w, '\\') | eq8(w, '.'));
	}
	if (s->st == ST_LINE_START) {
		/* A header name of letters, digits and '-' up to 15 bytes with
		 * its colon: the name's words lower-cased, the value begins. */
		__u64 w1 = 0;

		w = load8(sc, i);
		n = first8(eq8(w, ':'));
		if (n == 8) {
			if (i + 16 > s->len || name_out8(w, 8))
				return 0;
			w1 = load8(sc, i + 8);
			n = first8(eq8(w1, ':'));
			if (n == 8 || name_out8(w1, n))
				return 0;
			w1 = lower8(w1 & low_bytes(n));
			w = lower8(w);
			n += 8;
		} else {
			if (n == 0 || name_out8(w, n))
				return 0;
			w = lower8(w & low_bytes(n));
		}
		s->nstart = i;
		s->nlen = n;
		s->w0 = w;
		s->w1 = w1;
		s->w2 = 0;
		value_begin(s);
		return n + 1;
	}
	if (s->st == ST_VERSION) {
		/* "HTTP/1.1\r\n" or "HTTP/1.0\r\n" whole: the line ends. */
		if (s->vlen || i + 10 > s->len)
			return 0;
		w = load8(sc, i);
		if ((w != L8('H', 'T', 'T', 'P', '/', '1', '.', '1') && w != L8('H', 'T', 'T', 'P', '/', '1', '.', '0')) ||
		    sc->buf[(i + 8) & SCAN_MASK] != '\r' || sc->buf[(i + 9) & SCAN_MASK] != '\n')
			return 0;
		s->version = C7('H', 'T', 'T', 'P', '/', '1', '.') << 8 | w >> 56;
		s->vlen = 8;
		s->st = ST_LINE_START;
		return 10;
	}
	if (s->st == ST_METHOD && i == 0) {
		/* A known method (3 to 7 upper-case letters) and its space. */
		__u64 m;
		__u32 bit;

		w = load8(sc, 0);
		n = first8(eq8(w, ' '));
		if (n < 3 || n > 7)
			return 0;
		/* known_method takes only the exact upper-case names. */
		keep = low_bytes(n);
		m = __builtin_bswap64(w & keep) >> (64 - n * 8);
		bit = known_method(m);
		if (!bit)
			return 0;
		s->method = m;
		s->mlen = n;
		s->mbit = bit;
		s->st = ST_TARGET;
		s->tstart = n + 1;
		return n + 1;
	}
	return 0;
}

/* bpf_loop callback: the next SCAN_RUN steps over the request line or header
 * block, from s->pos, a step being 8 bytes (word_step) or one; stops at the
 * end of what there is (done still SCAN_RUNNING: the block is incomplete). */
static int scan_cb(__u32 unused, struct scan_ctx *x)
{
	struct scan *s = x->s;
	const struct l7_scratch *sc = x->sc;
	__u32 k, i;

	if (!s || !sc)
		return 1;
	i = s->pos;
#pragma clang loop unroll(disable)
	for (k = 0; k < SCAN_RUN; k++) {
		if (i >= s->len)
			return 1;
		if (i + 8 <= s->len) {
			__u32 n = word_step(s, sc, i);

			if (n) {
				i += n;
				continue;
			}
		}
		if (scan_byte(s, sc, i, sc->buf[i & SCAN_MASK]))
			return 1;
		i++;
	}
	s->pos = i;
	return 0;
}

/* bpf_loop callback: the next SCAN_RUN bytes of the path, from s->pos, through
 * path_byte. Run once per request, after the scan, when the target may have
 * a dot segment and there are rules (path_check): the byte loop that scans every
 * request stays as short as it was (the machine inside it cost every request
 * 0.2-0.3 us, BenchmarkJudge). The machine's state stays in the map value:
 * on the stack, the verifier tracks its values through the 16 steps and
 * walks four times the instructions. */
static int path_cb(__u32 unused, struct scan_ctx *x)
{
	struct scan *s = x->s;
	const struct l7_scratch *sc = x->sc;
	__u32 k, i;

	if (!s || !sc)
		return 1;
	i = s->pos;
#pragma clang loop unroll(disable)
	for (k = 0; k < SCAN_RUN; k++) {
		if (i >= s->pend)
			return 1;
		path_byte(&s->dm, sc->buf[i & SCAN_MASK]);
		i++;
	}
	s->pos = i;
	return 0;
}

/* Runs the machine over the path (s->dm.found: it has a dot segment;
 * s->dm.slash: an escaped slash). A global function, verified once on its
 * own. */
__noinline int path_check(__u32 slot)
{
	struct scan *s = bpf_map_lookup_elem(&l7_scans, &slot);
	struct scan_ctx x = {};

	if (!s)
		return 0;
	x.s = s;
	x.sc = scratch(slot);
	if (!x.sc) {
		s->dm.found = 1; /* unknown: fail closed */
		return 0;
	}
	s->pos = s->tstart;
	if (s->pend > s->tstart && s->pend <= L7_SCAN_LIMIT)
		bpf_loop((s->pend - s->tstart + SCAN_RUN - 1) / SCAN_RUN, path_cb, &x, 0);
	/* the path ends (at '?' or the space before the version) */
	if (s->dm.pct)
		s->dm.seg = SEG_OTHER;
	if (s->dm.seg == SEG_DOT1 || s->dm.seg == SEG_DOT2)
		s->dm.found = 1;
	return 0;
}

/* bpf_loop callback: the next SCAN_RUN DFA transitions, from w->pos. */
static int walk_cb(__u32 unused, struct scan_ctx *x)
{
	struct scan *s = x->s;
	const struct l7_scratch *sc = x->sc;
	const struct l7_dfa *d = x->d;
	struct walk *w;
	__u32 k, idx, next;

	if (!s || !sc || !d)
		return 1;
	w = &s->w;
#pragma clang loop unroll(disable)
	for (k = 0; k < SCAN_RUN; k++) {
		/* past the end, or in the accepting sink (never state 0: the
		 * loop stops at a dead state) */
		if (w->pos >= w->end || w->state == w->sink)
			return 1;
		idx = w->base + w->state * w->ncls + d->classes[sc->buf[w->pos & SCAN_MASK]];
		next = dfa_cell(idx);
		if (next == 0 || next >= w->nstates) {
			w->state = 0; /* dead, or a corrupt table: no match */
			return 1;
		}
		w->state = next;
		w->pos++;
	}
	return 0;
}

/* Whole-value match of [start, start+len) against DFA id (0 = any value). */
static __noinline int dfa_match(__u32 id, __u32 start, __u32 len, __u32 slot)
{
	struct scan *s = bpf_map_lookup_elem(&l7_scans, &slot);
	struct scan_ctx x = {};
	struct l7_dfa *d;
	struct walk *wp;
	__u32 idx;

	if (id == 0)
		return 1;
	if (!s)
		return 0;
	wp = &s->w;
	d = bpf_map_lookup_elem(&l7_dfas, &id);
	if (!d || d->nstates == 0 || d->nclasses == 0 || d->start == 0 || d->start >= d->nstates)
		return 0;
	x.s = s;
	x.sc = scratch(slot);
	x.d = d;
	if (!x.sc)
		return 0;
	wp->base = d->base;
	wp->ncls = d->nclasses;
	wp->nstates = d->nstates;
	wp->state = d->start;
	wp->sink = d->sink;
	wp->pos = start;
	wp->end = start + len;
	if (len > L7_SCAN_LIMIT)
		return 0;
	if (len)
		bpf_loop((len + SCAN_RUN - 1) / SCAN_RUN, walk_cb, &x, 0);
	if (wp->state == 0)
		return 0;
	idx = wp->base + wp->nstates * wp->ncls + wp->state;
	return dfa_cell(idx) != 0;
}

/* bpf_loop callback: does rule idx allow the request? */
static int rule_cb(__u32 idx, __u32 *slotp)
{
	struct scan *s = scan_state(slotp);
	struct l7_ruleset *rs;
	struct l7_rule *r;
	__u64 mask, all;
	__u32 shift;

	if (!s)
		return 1;
	rs = &s->rs;
	if (idx >= rs->nrules || idx >= L7_MAX_RULES)
		return 1;
	r = &rs->rules[idx & (L7_MAX_RULES - 1)];
	if (r->nheaders > L7_MAX_HEADERS)
		return 0;
	shift = (idx & (L7_MAX_RULES - 1)) * L7_MAX_HEADERS;
	all = (1ULL << r->nheaders) - 1;
	/* headers with mismatch LOG are not required, only reported */
	mask = (all & ~(__u64)r->log_mask) << shift;
	if ((s->seen & mask) != mask)
		return 0;
	if (r->methods & L7_METHODS_SET) {
		if (!(r->methods & s->mbit))
			return 0;
	} else if (r->method_dfa && !dfa_match(r->method_dfa, 0, s->mlen, s->slot)) {
		return 0;
	}
	if (r->path_dfa && (s->dm.found || s->dm.slash)) {
		s->path_denied = 1;
		return 0;
	}
	/* DFA 0 is any value: no call (a BPF call and return each, and the
	 * callee's code out of the caches, for every rule without one). */
	if (r->path_dfa && !dfa_match(r->path_dfa, s->tstart, s->pend - s->tstart, s->slot))
		return 0;
	if (r->host_dfa && !dfa_match(r->host_dfa, s->hstart, s->hend - s->hstart, s->slot))
		return 0;
	s->matched = idx + 1;
	s->log_missing = (__u32)(all & r->log_mask & ~(s->seen >> shift));
	return 1;
}

struct judge_out {
	/* in */
	__u32 slot;
	__u32 len;
	__u32 endpoint_id;
	__u32 peer;
	__u32 port;
	__u32 direction;
	/* out */
	__u64 body_len;
	__u32 verdict;
	__u32 reason;
	__u32 hdr_len;
	__u32 rule;
	__u32 chunked;
	__u32 audit;       /* the rule set is in audit mode */
	__u32 log_missing; /* see l7_event */
	__u32 websocket;   /* the request asks to upgrade to WebSocket (Upgrade: websocket) */
};

/*
 * Judges the out->len bytes in scratch slot out->slot (len may exceed the
 * buffer: only L7_SCAN_LIMIT bytes are there) for (endpoint, peer, port). NEED_MORE means
 * the header block is incomplete and everything so far is well-formed.
 *
 * A global function: the verifier checks it once, on its own, rather than at
 * every call site (l7_stream calls it from a bpf_loop callback).
 */
__noinline int judge(struct judge_out *out)
{
	struct scan_ctx x = {};
	struct scan *sp;
	struct l7_ruleset *rs;
	__u32 slot, len;

	if (!out)
		return 0;
	slot = out->slot;
	len = out->len;
	sp = bpf_map_lookup_elem(&l7_scans, &slot);

	out->verdict = L7_DENY;
	out->reason = L7_R_NONE;
	out->hdr_len = 0;
	out->body_len = 0;
	out->rule = 0;
	out->chunked = 0;
	out->audit = 0;
	out->log_missing = 0;
	out->websocket = 0;
	out->reason = L7_R_BUSY;
	if (!sp)
		return 0;
	out->reason = L7_R_NONE;
	__builtin_memset(sp, 0, __builtin_offsetof(struct scan, rs));

	sp->slot = slot;
	sp->len = len > L7_SCAN_LIMIT ? L7_SCAN_LIMIT : len;
	sp->key.endpoint_id = out->endpoint_id;
	sp->key.peer_identity = out->peer;
	sp->key.port = out->port;
	sp->key.direction = out->direction;
	rs = bpf_map_lookup_elem(&l7_rulesets, &sp->key);
	if (!rs) {
		sp->key.peer_identity = 0;
		rs = bpf_map_lookup_elem(&l7_rulesets, &sp->key);
	}
	if (rs) {
		__u32 k, n = rs->nrules;

		sp->rs.nrules = n;
		sp->rs.flags = rs->flags;
#pragma clang loop unroll(disable)
		for (k = 0; k < L7_MAX_RULES; k++) {
			if (k >= n)
				break;
			sp->rs.rules[k] = rs->rules[k];
			sp->hdr_reqs |= sp->rs.rules[k].nheaders;
		}
		sp->have_rs = 1;
		out->audit = sp->rs.flags & L7_RS_AUDIT;
	}

	x.s = sp;
	x.sc = scratch(slot);
	if (!x.sc) {
		out->reason = L7_R_BUSY;
		return 0;
	}
	bpf_loop((sp->len + SCAN_RUN - 1) / SCAN_RUN, scan_cb, &x, 0);

	if (sp->done == SCAN_REJECT) {
		out->reason = sp->reason;
		return 0;
	}
	if (sp->done != SCAN_COMPLETE) {
		if (len >= L7_SCAN_LIMIT) {
			out->reason = L7_R_TOO_LONG;
			return 0;
		}
		out->verdict = L7_NEED_MORE;
		return 0;
	}
	if (sp->ncl && sp->nte) {
		out->reason = L7_R_TRANSFER_ENCODING; /* CL + TE: request smuggling */
		return 0;
	}
	out->hdr_len = sp->hdr_len;
	out->body_len = sp->content_length;
	out->chunked = sp->nte;
	out->websocket = sp->websocket;
	if (!sp->have_rs) {
		out->reason = L7_R_NO_RULESET;
		return 0;
	}
	if (sp->path_maybe)
		path_check(slot);
	/* As many calls as there are rules (a call past the last only
	 * returned). */
	bpf_loop(sp->rs.nrules < L7_MAX_RULES ? sp->rs.nrules : L7_MAX_RULES, rule_cb, &slot, 0);
	if (!sp->matched) {
		out->reason = L7_R_NO_RULE_MATCH;
		if (sp->path_denied)
			out->reason = sp->dm.found ? L7_R_DOT_SEGMENT : L7_R_ESCAPED_SLASH;
		return 0;
	}
	out->verdict = L7_ALLOW;
	out->reason = L7_R_ALLOWED;
	out->rule = sp->matched;
	out->log_missing = sp->log_missing;
	return 0;
}

/*
 * Take / give back a scratch slot on this CPU; slot L7_SCRATCH_SLOTS = busy.
 * Each slot has its own busy flag, taken with a compare-and-swap: programs run
 * with migration disabled but, in task context (sk_msg, a socket's backlog),
 * can be preempted, so a program may end while one that started after it
 * still runs. A depth counter would then hand that one's slot out again.
 */
static __always_inline __u32 slot_enter(void)
{
	__u32 zero = 0;
	struct l7_slots *b = bpf_map_lookup_elem(&l7_nesting, &zero);

	if (!b)
		return L7_SCRATCH_SLOTS;
	if (__sync_val_compare_and_swap(&b->busy[0], 0, 1) == 0)
		return 0;
	if (__sync_val_compare_and_swap(&b->busy[1], 0, 1) == 0)
		return 1;
	return L7_SCRATCH_SLOTS;
}

static __always_inline void slot_leave(__u32 slot)
{
	__u32 zero = 0;
	struct l7_slots *b = bpf_map_lookup_elem(&l7_nesting, &zero);

	if (b && slot < L7_SCRATCH_SLOTS)
		b->busy[slot & 1] = 0;
}

#endif

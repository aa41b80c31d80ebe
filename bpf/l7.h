//go:build ignore

/*
 * Map keys, values and constants shared by the L7 (HTTP/1.1) programs and
 * Go (internal/l7 mirrors them with bpf2go -type). Layouts have no implicit
 * padding so that Go and C agree byte for byte.
 */
#ifndef PORTCULLIS_L7_H
#define PORTCULLIS_L7_H

#include "include/l7_kernel.h"

/* Request line + header block (through the empty line) that is judged; a
 * block that does not end within this many bytes is denied. Power of two:
 * scratch buffer indexes are masked with L7_SCAN_LIMIT - 1. */
#define L7_SCAN_LIMIT 16384
#define L7_MAX_RULES 16        /* rules OR-ed per rule set */
#define L7_MAX_HEADERS 4       /* header requirements per rule */
#define L7_HEADER_NAME_MAX 64  /* bytes, lower-cased */
#define L7_HEADER_VALUE_MAX 192

enum l7_direction {
	L7_INGRESS = 0, /* server side: accepted sockets, sk_skb */
	L7_EGRESS = 1,  /* client side: connected sockets, sk_msg */
};

/* l7_ports: which sockets are judged. Ingress: (local address, local port);
 * egress: (local address, remote port). IPv4 as ::ffff:a.b.c.d. */
struct l7_port_key {
	__u8 addr[16];
	__u16 port; /* host byte order */
	__u16 direction;
};

struct l7_port_value {
	__u32 endpoint_id;
};

/* l7_ipcache: peer address -> identity, same layout as the L3/L4 ipcache. */
struct l7_ipcache_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct l7_ipcache_value {
	__u32 identity;
};

/* l7_rulesets key; peer_identity 0 is the wildcard looked up second. The
 * port is the server's: local for ingress, remote for egress. */
struct l7_ruleset_key {
	__u32 endpoint_id;
	__u32 peer_identity;
	__u16 port; /* host byte order */
	__u16 direction;
};

/* One HTTP rule: DFA ids (0 = any value) and header requirement ids. A
 * header whose bit is set in log_mask (headerMatches with mismatch: LOG) is
 * not required: its mismatch is reported in the request's event. methods,
 * when L7_METHODS_SET is in it, is the rule's method expression as the set of
 * the methods the scan accepts that it matches (bit L7_M_*): one test instead
 * of a DFA walk per rule and request; method_dfa is then 0. A rule set
 * written by an earlier agent (methods 0) still has its method DFA walked. */
struct l7_rule {
	__u32 method_dfa;
	__u32 path_dfa;
	__u32 host_dfa;
	__u32 nheaders;
	__u32 log_mask;
	__u32 methods;
	__u32 headers[L7_MAX_HEADERS];
};

/* The methods the scan accepts (known_method), as bits of l7_rule.methods;
 * the agent's list (l7.Methods) is in the same order. */
#define L7_METHODS_SET (1U << 31)
enum {
	L7_M_GET = 1 << 0,
	L7_M_HEAD = 1 << 1,
	L7_M_POST = 1 << 2,
	L7_M_PUT = 1 << 3,
	L7_M_DELETE = 1 << 4,
	L7_M_PATCH = 1 << 5,
	L7_M_OPTIONS = 1 << 6,
	L7_M_TRACE = 1 << 7,
	L7_M_CONNECT = 1 << 8,
};

/* Rule set flags. AUDIT: a request no rule allows (or a malformed one) is
 * forwarded and reported as audited instead of denied. */
#define L7_RS_AUDIT 1

struct l7_ruleset {
	__u32 nrules;
	__u32 flags;
	struct l7_rule rules[L7_MAX_RULES];
};

/* l7_dfas[id]: a DFA whose transitions live in l7_dfa_blocks:
 * next(s, c) = cell(base + s * nclasses + classes[c]), accept(s) =
 * cell(base + nstates * nclasses + s) != 0. State 0 is dead. */
struct l7_dfa {
	__u32 base;
	__u32 nstates;
	__u16 nclasses;
	__u16 start;
	/* An accepting state that every byte a judged value can hold (space,
	 * tab, 0x21-0x7e) leads back to (0: none, as in tables written before
	 * 2026-11-27, where this was padding): a walk that reaches it matches
	 * whatever follows, and stops there ("/api/.*"). */
	__u32 sink;
	__u8 classes[256];
};

/* l7_dfa_blocks[i / L7_CELLS_PER_BLOCK].cells[i % L7_CELLS_PER_BLOCK] is
 * cell i: a state number (states are u16, dfa.MaxTableStates) or an accept
 * flag. Packed 32 to a 64-byte block: an array's elements are 8-byte aligned,
 * so one u32 cell an element took 8 bytes, four times the memory. */
#define L7_CELLS_PER_BLOCK 32
#define L7_DFA_CELLS (1 << 20)
struct l7_cell_block {
	__u16 cells[L7_CELLS_PER_BLOCK];
};

/* l7_headers[id]: a required header, name lower-cased; value_len 0 means
 * presence only. name_w0 is the first 8 name bytes, little-endian, zero
 * padded: a cheap first comparison. */
struct l7_header {
	__u32 name_len;
	__u32 value_len;
	__u64 name_w0;
	__u8 name[L7_HEADER_NAME_MAX];
	__u8 value[L7_HEADER_VALUE_MAX];
};

enum l7_phase {
	L7_PHASE_HEADERS = 0,
	L7_PHASE_BODY = 1,       /* Content-Length body, body_remaining bytes left */
	L7_PHASE_CHUNK_SIZE = 2, /* expecting a chunk-size line */
	L7_PHASE_CHUNK_DATA = 3, /* chunk data, body_remaining bytes left */
	L7_PHASE_CHUNK_CRLF = 4, /* the CRLF after chunk data */
	L7_PHASE_CHUNK_END = 5,  /* the CRLF after the last chunk (no trailers) */
	L7_PHASE_PASSTHROUGH = 6, /* audit mode lost the framing: the rest passes unjudged */
};

/* l7_sock_state.flags */
#define L7_SF_ANSWER 1   /* the denied message is to be answered with a 403 */
#define L7_SF_ANSWERED 2 /* the 403 went out; the client was told to close */
/* On a client's connection state (l7_egress_state, direction L7_INGRESS):
 * the server is a local endpoint whose ingress rules are judged here, by the
 * client's sk_msg program, instead of at the server's socket. */
#define L7_SF_AT_SOURCE 4
/* Direct delivery: the bytes held in l7_held were delivered ahead of their
 * judgment (the segment they ended could not be cut; bpf/http.c, l7_stream). */
#define L7_SF_AHEAD 8
/* The connection's first request asked for a WebSocket upgrade and was
 * allowed: the guards look for the server's 101 at snd_mark (the server's
 * first byte on the server's side, the client's first received byte on the
 * client's), and switch the connection to pass-through if it is there. */
#define L7_SF_UPGRADE 16
/* A client connection judged at its socket whose snd_expect and snd_judged
 * are kept (made by this build or later): egress_in_step() and the guards
 * check it against TCP's stream. */
#define L7_SF_SEQ 32
/* The client's last verdict passed the end of a body (or of a chunk's data):
 * if TCP took less, the rest of the body is to come again. */
#define L7_SF_BODY_ENDED 64

/* A server's connection judged before TCP (l7_fast, Options.JudgeBeforeTCP):
 * its segments are judged at the pod's interfaces and the socket is in no
 * SOCKHASH with programs; cleared when the connection is handed to
 * l7_socks (l7_stream) for good. */
#define L7_SF_FAST 128
/* l7_fast is working on the connection (taken with an atomic or): a second
 * CPU does not judge the same connection's segments at the same time. */
#define L7_SF_FAST_BUSY 256
/* The guard dropped a data segment of the connection that l7_fast had not
 * stamped (an interface without l7_fast, NAT in the pod's namespace toward
 * the port: l7_fast never finds the connection). l7_reset hands it to its
 * socket; the agent reads that iterator when L7_R_FAST_UNSTAMPED moves. */
#define L7_SF_FAST_UNSTAMPED 512

/* l7_fast_conns[the connection as the server sees it]. */
struct l7_fast_conn {
	__u64 cookie;      /* the server socket's: the key of l7_state */
	__u64 stuck_since; /* bpf_ktime_get_ns() of the first hand-over refused because TCP is behind what was judged */
};

/* l7_state[socket cookie]: per-connection state, created by sock_ops. */
struct l7_sock_state {
	__u64 body_remaining;
	__u32 endpoint_id;
	__u32 peer_identity;
	__u16 port;
	__u8 phase;
	__u8 denied; /* sticky: every later byte of the connection is dropped */
	__u32 reason; /* why it was denied */
	__u32 requests; /* requests allowed so far */
	__u32 direction;
	__u32 snd_mark; /* server's write_seq when the last allowed request was passed */
	__u32 flags;    /* L7_SF_* */
	/* TCP sequence numbers. The layout up to here is that of earlier builds
	 * (pinned maps are adopted across agent upgrades): the fields below
	 * filled padding and only connections made since count on them
	 * (L7_SF_SEQ). */
	union {
		__u32 rcv_seq;    /* a server's socket, direct delivery: where the next received segment should start (rcv_nxt at first) */
		__u32 snd_expect; /* a client judged at its socket (l7_egress): write_seq once the bytes its last verdict passed are queued */
	};
	__u32 snd_judged; /* a client judged at its socket: no data byte may leave past this (the guards), the end of what was judged */
	__u64 denied_at;  /* bpf_ktime_get_ns() of the deny */
};

/* Bytes copied into an event; longer values are cut (the event keeps the
 * real length). */
#define L7_EV_METHOD_MAX 8
#define L7_EV_PATH_MAX 128
#define L7_EV_HOST_MAX 64
/* A request whose path and Host both fit in L7_EV_SHORT bytes is reported in
 * a short record: struct l7_event up to its path, then L7_EV_SHORT bytes of
 * path and L7_EV_SHORT bytes of Host (L7_EV_SHORT_SIZE bytes in all, 160
 * instead of 288; fewer cache lines of the ring written per request). The
 * reader tells the two by the record's length. */
#define L7_EV_SHORT 32

/* The buffer has L7_EV_PATH_MAX bytes of slack after the scan limit, so that
 * a fixed-size copy of a value that starts near the end stays inside it. */
struct l7_scratch {
	__u32 len;
	__u32 since; /* l7_held: when the bytes were first held (milliseconds of bpf_ktime_get_ns) */
	__u8 buf[L7_SCAN_LIMIT + L7_EV_PATH_MAX];
};

enum l7_event_verdict {
	L7_EV_ALLOWED = 1,
	L7_EV_DENIED = 2,
	L7_EV_AUDITED = 3, /* would be denied; forwarded (audit mode) */
};

/* l7_event.flags */
#define L7_EVF_FORBIDDEN 1 /* answered with 403 Forbidden */
#define L7_EVF_RESET 2     /* to be reset (RST) by the agent's l7_reset sweep */
#define L7_EVF_AT_SOURCE 4 /* ingress rules judged at the client's socket */

/* One judged request, in the l7_events ring buffer. Addresses as in
 * l7_port_key; local is the endpoint's side. */
struct l7_event {
	__u64 time_ns;    /* bpf_ktime_get_ns() at the decision */
	__u64 latency_ns; /* time spent deciding (scan and rules) */
	__u32 endpoint_id;
	__u32 peer_identity;
	__u8 local[16];
	__u8 remote[16];
	__u16 local_port;  /* host byte order */
	__u16 remote_port; /* host byte order */
	__u16 port;        /* the server's port */
	__u8 direction;
	__u8 verdict;      /* enum l7_event_verdict */
	__u32 reason;
	__u32 rule;        /* index + 1 of the rule that allowed, 0 for none */
	__u32 flags;       /* L7_EVF_* */
	__u32 log_missing; /* header slots of that rule with mismatch LOG that did not match */
	__u16 method_len;
	__u16 path_len;    /* real lengths; the copies below may be cut */
	__u16 host_len;
	__u16 pad;
	__u8 method[L7_EV_METHOD_MAX];
	__u8 path[L7_EV_PATH_MAX];
	__u8 host[L7_EV_HOST_MAX];
};

enum l7_decision {
	L7_NEED_MORE = 0,
	L7_ALLOW = 1,
	L7_DENY = 2,
};

/* Reasons: decisions and per-CPU counter indexes. */
enum l7_reason {
	L7_R_NONE = 0,
	L7_R_ALLOWED,          /* a rule matched */
	L7_R_NO_RULE_MATCH,    /* well-formed, no rule matched */
	L7_R_NO_RULESET,       /* no rule set for (endpoint, peer, port) */
	L7_R_TOO_LONG,         /* header block beyond L7_SCAN_LIMIT */
	L7_R_BAD_METHOD,       /* not an upper-case known method */
	L7_R_BAD_TARGET,       /* not origin-form, or bytes outside 0x21-0x7e */
	L7_R_BAD_VERSION,      /* not HTTP/1.0 or HTTP/1.1 */
	L7_R_BAD_HEADER,       /* obs-fold, bare CR/LF, bad name, control or non-ASCII byte */
	L7_R_DUP_CONTENT_LENGTH,
	L7_R_BAD_CONTENT_LENGTH,
	L7_R_TRANSFER_ENCODING, /* anything but one "chunked" on HTTP/1.1 without Content-Length */
	L7_R_DUP_HOST,
	L7_R_STICKY,           /* message on a connection already denied */
	L7_R_NO_STATE,         /* socket in the SOCKHASH without state */
	L7_R_BUSY,             /* scratch buffers of this CPU in use (nesting) */
	L7_R_STATE_FAILED,     /* sock_ops could not create the state */
	L7_R_INSERT_FAILED,    /* sock_ops could not insert into the SOCKHASH */
	L7_R_GUARD_DROP,       /* data on a judged port outside the SOCKHASH */
	L7_R_MSG_PASSED,       /* messages passed by the verdict program */
	L7_R_MSG_DROPPED,      /* messages dropped by the verdict program */
	L7_R_RESET,            /* denied connections reset by l7_reset */
	L7_R_BAD_CHUNK,        /* chunk framing other than strict size CRLF data CRLF */
	L7_R_AUDITED,          /* would have been denied; forwarded (audit mode) */
	L7_R_FORBIDDEN,        /* denied requests answered with 403 Forbidden */
	L7_R_EVENT_LOST,       /* events not written: ring buffer full */
	L7_R_HELD_TOO_LONG,    /* an incomplete header block held beyond l7_hold_max_ms (direct delivery) */
	L7_R_AHEAD,            /* segments passed with an incomplete piece ahead of its judgment (direct delivery: l7_stream) */
	L7_R_UPGRADED,         /* connections switched to pass-through by the server's 101 to a WebSocket upgrade */
	L7_R_DOT_SEGMENT,      /* well-formed, no rule matched: rules with a path do not match a path with a dot segment */
	L7_R_ESCAPED_SLASH,    /* ... do not match a path with a backslash, %2f or %5c */
	L7_R_OVERLAP,          /* received segments whose repeated front was cut off (direct delivery: l7_stream) */
	L7_R_URGENT,           /* urgent data (MSG_OOB) written on a connection judged at the client's socket: dropped, the connection denied */
	L7_R_DENIED_CONNS,     /* connections that became denied, for any reason (the agent's reset sweep follows it) */
	L7_R_FAST_OPEN,        /* client connections established with bytes already sent (TCP Fast Open) or a write waiting for them, which their sk_msg program never sees */
	L7_R_UNJUDGED_WRITE,   /* client connections judged at their socket that sent, or queued, bytes their sk_msg program never passed */
	L7_R_NO_ROOM,          /* client connections judged at their socket denied: a header block or chunk-size line written with too little room in the send buffer to be sent whole */
	L7_R_NO_MEMORY,        /* client connections judged at their socket denied: a header block or chunk-size line TCP's memory accounting could refuse to charge (mem_allows()) */
	L7_R_FAST_PASSED,      /* segments judged before TCP and passed (l7_fast) */
	L7_R_FAST_HANDED,      /* connections judged before TCP handed to the server's socket (l7_socks) */
	L7_R_FAST_WAIT,        /* segments dropped before TCP: the connection could not be handed over yet (TCP had bytes unread or not yet received), or another CPU was judging it; TCP sends them again */
	L7_R_FAST_LOST,        /* connections judged before TCP denied: TCP lost bytes that were judged, and their retransmission could not be judged in order */
	L7_R_FAST_UNSTAMPED,   /* data segments of connections judged before TCP that reached the guard without l7_fast's stamp (dropped; the connection is handed to its socket by l7_reset) */
	L7_R_MAX,
};

/* Slots of the counters map: more than there are reasons, so that a new
 * reason does not change the pinned map's layout. */
#define L7_R_SLOTS 64
_Static_assert(L7_R_MAX <= L7_R_SLOTS, "more reasons than counter slots");

/* Context of the l7_test_judge syscall program (BPF_PROG_TEST_RUN): the
 * request bytes are in l7_scratch[L7_TEST_SLOT] of every CPU. */
struct l7_test_ctx {
	__u32 endpoint_id;
	__u32 peer_identity;
	__u32 port;
	__u32 len;
	__u32 verdict;
	__u32 reason;
	__u32 hdr_len;
	__u32 rule; /* index + 1 of the rule that allowed */
	__u32 chunked;
	__u32 direction;
	__u64 body_len;
	__u32 log_missing;
	__u32 audit;
	__u32 websocket;
	__u32 pad;
};

#endif

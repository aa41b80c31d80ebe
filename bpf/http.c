//go:build ignore

/*
 * Portcullis L7: HTTP/1.1 ingress policy decided at the server's socket.
 *
 *   l7_sockops (sockops, on the endpoint's cgroup): an accepted TCP socket
 *     whose (local address, local port) is in l7_ports gets a state entry
 *     and goes into the l7_socks SOCKHASH (key: socket cookie).
 *   l7_parser (sk_skb/stream_parser): frames each request and judges its
 *     header block with the shared matcher (http_match.h); bodies
 *     (Content-Length or chunked) are streamed piece by piece, never
 *     buffered whole.
 *   l7_verdict (sk_skb/stream_verdict): answers a denied request with
 *     403 Forbidden when that cannot overtake an earlier response (the
 *     request is rewritten in place into a response of the same length and
 *     redirected to the socket's own egress), drops every other message of a
 *     denied connection (deny is sticky), passes the rest.
 *   l7_guard (cgroup_skb/ingress, same cgroup): drops data segments of a
 *     judged port whose socket is not in the SOCKHASH (insert failed, entry
 *     removed, MPTCP subflow, connection older than the attachment): no
 *     connection on a judged port is ever left unenforced.
 *   l7_reset (iter/tcp): resets (RST) every denied connection of the network
 *     namespace the iterator is read in, with bpf_sock_destroy: a denied
 *     client that could not get a 403 gets a reset instead of waiting for its
 *     timeout; one that got a 403 and did not close is reset after a grace; a
 *     client connection whose request egress rules denied is reset too.
 *   l7_egress (sk_msg, on l7_egress_socks): judges the requests a client
 *     endpoint writes: its egress rules, or at source the ingress rules of
 *     the local server it connects to (L7_CFG_AT_SOURCE; the server's socket
 *     then stays out of l7_socks and the guard checks the client's socket
 *     stays judged).
 *   Every judged request is reported in the l7_events ring buffer.
 *   l7_test_judge (syscall): the matcher on a buffer, for BPF_PROG_TEST_RUN
 *     (input in the test slot of l7_scratch, on every CPU).
 */

#include "l7.h"
#include "include/skb_bytes.h"
#include "http_match.h"

/* kfuncs (bpf_cast_to_kern_ctx) need a GPL-compatible license string. */
char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct l7_port_key);
	__type(value, struct l7_port_value);
	__uint(max_entries, 16384);
} l7_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct l7_ipcache_key);
	__type(value, struct l7_ipcache_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} l7_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64); /* socket cookie */
	__type(value, struct l7_sock_state);
	__uint(max_entries, 65536);
} l7_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, __u64); /* socket cookie */
	__type(value, __u64);
	__uint(max_entries, 65536);
} l7_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, __u64); /* socket cookie */
	__type(value, __u64);
	__uint(max_entries, 65536);
} l7_egress_socks SEC(".maps");

/* Client-side connections are keyed by their 4-tuple, not the cookie:
 * sk_msg programs cannot call bpf_get_socket_cookie on this kernel. */
struct l7_tuple {
	__u8 local[16];
	__u8 remote[16];
	__u16 local_port;  /* host byte order */
	__u16 remote_port; /* host byte order */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct l7_tuple);
	__type(value, struct l7_sock_state);
	__uint(max_entries, 65536);
} l7_egress_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} l7_events SEC(".maps");

/* l7_config[0], bits: L7_CFG_PASS delivers allowed messages with SK_PASS
 * instead of redirecting them to the socket's own ingress
 * (l7.Options.DeliverByPass); L7_CFG_AT_SOURCE judges the ingress rules of a
 * local server at its local clients' sockets (l7.Options.JudgeAtSource);
 * L7_CFG_BEFORE_TCP judges a server's requests at its pod's interfaces
 * (l7_fast) where the agent attached that program (l7.Options.JudgeBeforeTCP).
 * L7_CFG_INGRESS_PORTS / L7_CFG_EGRESS_PORTS: l7_ports may hold a key of that
 * direction. The agent sets a bit before it inserts the first such key and
 * clears it only once l7_ports holds none (Converge): without it the guards
 * pass a segment without looking l7_ports up, which would miss anyway; a node
 * without egress HTTP rules (the common case) saves the lookup on every
 * segment its pods send, one without any on every segment. */
#define L7_CFG_PASS 1
#define L7_CFG_AT_SOURCE 2
#define L7_CFG_BEFORE_TCP 4
#define L7_CFG_INGRESS_PORTS 8
#define L7_CFG_EGRESS_PORTS 16
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} l7_config SEC(".maps");

/* l7_upgrades[0]: connections with L7_SF_UPGRADE set. The guards look at a
 * segment's first bytes only while it is not 0. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} l7_upgrades SEC(".maps");

/* Arms (websocket) or disarms the guards' look for the server's answer to a
 * WebSocket upgrade request (L7_SF_UPGRADE). Only the connection's first
 * request may arm it: the server's answer then starts at its first byte, and
 * nothing a client sent earlier can stand there instead (a response body
 * that echoes "HTTP/1.1 101 ..." at the right place would otherwise open the
 * connection). The caller sets snd_mark to where that answer starts. Any
 * later request disarms it. */
static __always_inline void upgrade_set(struct l7_sock_state *st, __u32 websocket)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&l7_upgrades, &zero);

	if (websocket && !st->requests) {
		if (!(st->flags & L7_SF_UPGRADE) && n)
			__sync_fetch_and_add(n, 1);
		st->flags |= L7_SF_UPGRADE;
	} else if (st->flags & L7_SF_UPGRADE) {
		st->flags &= ~L7_SF_UPGRADE;
		if (n)
			__sync_fetch_and_add(n, -1);
	}
}

/* Connections whose server's ingress rules are judged at the client's socket:
 * key the connection's 4-tuple as the server sees it (local: the server),
 * value the client socket's cookie, in l7_egress_socks. Written by the
 * client's sock_ops once its socket is in l7_egress_socks; read by the
 * server's sock_ops (which then leaves its socket out of l7_socks) and by the
 * ingress guard (which lets the data through only while the client socket is
 * still in l7_egress_socks). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct l7_tuple);
	__type(value, __u64);
	__uint(max_entries, 65536);
} l7_at_source SEC(".maps");

/* Network namespaces (by cookie) whose clients may be judged at source: the
 * agent lists the pods in which no process can ever hold CAP_NET_RAW or
 * CAP_NET_ADMIN (their capability bounding sets lack both), so none can write
 * TCP segments past its socket. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u32);
	__uint(max_entries, 4096);
} l7_trusted_netns SEC(".maps");

/*
 * Direct delivery (l7_stream): the start of a header block or chunk-size line
 * that arrived without its end, held here (keyed by socket cookie) until the
 * rest arrives; the application has not seen it (unless L7_SF_AHEAD is set on
 * the connection: l7_stream). Same layout as a scratch
 * slot, which is where it is assembled. Entries are allocated on use: the
 * kernel takes 32 KiB for each (the element is a little over 16 KiB, and an
 * allocation that large is a power of two of pages). The bound caps what
 * clients holding header blocks open can make the kernel keep (128 MiB, as
 * 8,192 entries of the 8 KiB builds took): beyond it a hold fails and its
 * connection is denied. Named l7_pending before the scan limit was 16 KiB:
 * an agent that finds that pin copies its holds over (migrateHeld).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct l7_scratch);
} l7_held SEC(".maps");

/*
 * Judging before TCP (l7_fast, L7_CFG_BEFORE_TCP). A server's connection in
 * a network namespace listed here (by cookie; the agent lists one once
 * l7_fast is attached to every interface in it) is judged segment by segment
 * by l7_fast on its way in, before TCP; its socket goes into l7_fast_socks,
 * a SOCKHASH without programs (so that a reader blocked in recv is woken by
 * the SOCKHASH's own receive path if the connection is handed to l7_socks
 * later), and l7_fast_conns finds the connection's state from a segment's
 * addresses.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u32);
	__uint(max_entries, 4096);
} l7_fast_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, __u64); /* socket cookie */
	__type(value, __u64);
	__uint(max_entries, 65536);
} l7_fast_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct l7_tuple); /* as the server sees it */
	__type(value, struct l7_fast_conn);
	__uint(max_entries, 65536);
} l7_fast_conns SEC(".maps");

static __always_inline __u32 config(void)
{
	__u32 zero = 0, *c = bpf_map_lookup_elem(&l7_config, &zero);

	return c ? *c : 0;
}

static __always_inline void swap_tuple(struct l7_tuple *dst, const struct l7_tuple *t)
{
	__builtin_memcpy(dst->local, t->remote, 16);
	__builtin_memcpy(dst->remote, t->local, 16);
	dst->local_port = t->remote_port;
	dst->remote_port = t->local_port;
	dst->pad = 0;
}

/* The client socket judging this connection at source is still in
 * l7_egress_socks (key: the connection as the server sees it). */
static __always_inline int judged_at_source(const struct l7_tuple *server_view)
{
	struct bpf_sock *member;
	__u64 *cookie = bpf_map_lookup_elem(&l7_at_source, server_view);

	if (!cookie)
		return 0;
	member = bpf_map_lookup_elem(&l7_egress_socks, cookie);
	if (!member)
		return 0;
	bpf_sk_release(member);
	return 1;
}

#define BPF_F_INGRESS 1

/* Pending event bytes that wake the reader early (a quarter of the ring). */
#define EVENTS_WAKE_BYTES (256 * 1024)
#define L7_EV_SHORT_SIZE (__builtin_offsetof(struct l7_event, path) + 2 * L7_EV_SHORT)
/* An event's size in the ring: 8 bytes of record header, rounded up to 8. */
#define EVENT_RECORD(size) (((size) + 8 + 7) / 8 * 8)

/* Names the shared types in the object's BTF for bpf2go -type. */
struct l7_btf_anchor {
	struct l7_test_ctx test_ctx;
	struct l7_sock_state sock_state;
	struct l7_scratch scratch;
	enum l7_reason reason;
	enum l7_decision decision;
	enum l7_phase phase;
	enum l7_direction direction;
	struct l7_tuple tuple;
	struct l7_event event;
	enum l7_event_verdict event_verdict;
	struct sock_common sock_common;
	struct l7_fast_conn fast_conn;
};
struct l7_btf_anchor l7_btf_anchor SEC(".portcullis.btf_anchor");

#define IDENTITY_WORLD 2

/*
 * The strparser control block. The parser and verdict programs see the skb
 * from the start of the original segment: with pipelined requests the
 * current message starts at strp_msg(skb)->offset. Not UAPI, so read through
 * bpf_cast_to_kern_ctx with CO-RE relocations against the kernel's BTF.
 */
struct strp_msg {
	int full_len;
	int offset;
} __attribute__((preserve_access_index));

struct _strp_msg {
	struct strp_msg strp;
} __attribute__((preserve_access_index));

struct sk_skb_cb {
	struct _strp_msg strp;
} __attribute__((preserve_access_index));

struct sk_buff {
	char cb[48];
} __attribute__((preserve_access_index));

/* TCP's control block, in skb->cb of a received segment (direct delivery). */
struct tcp_skb_cb {
	__u32 seq;
} __attribute__((preserve_access_index));

static __always_inline int msg_offset(struct __sk_buff *skb)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	struct sk_skb_cb *cb = (struct sk_skb_cb *)kskb->cb;

	return cb->strp.strp.offset;
}

/* Length of the current message (verdict program: what the parser framed). */
static __always_inline int msg_len(struct __sk_buff *skb)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	struct sk_skb_cb *cb = (struct sk_skb_cb *)kskb->cb;

	return cb->strp.strp.full_len;
}

static __always_inline void addr_v4(__u8 *dst, __u32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

static __always_inline int addr_from(__u8 *dst, __u32 family, __u32 ip4, const __u32 *ip6)
{
	if (family == AF_INET) {
		addr_v4(dst, ip4);
		return 0;
	}
	if (family == AF_INET6) {
		__u32 w[4] = {ip6[0], ip6[1], ip6[2], ip6[3]};

		__builtin_memcpy(dst, w, 16);
		return 0;
	}
	return -1;
}

static __always_inline int ops_tuple(struct bpf_sock_ops *ops, struct l7_tuple *t)
{
	__u32 l6[4] = {ops->local_ip6[0], ops->local_ip6[1], ops->local_ip6[2], ops->local_ip6[3]};
	__u32 r6[4] = {ops->remote_ip6[0], ops->remote_ip6[1], ops->remote_ip6[2], ops->remote_ip6[3]};
	__u32 family = ops->family;

	if (addr_from(t->local, family, ops->local_ip4, l6) || addr_from(t->remote, family, ops->remote_ip4, r6))
		return -1;
	t->local_port = ops->local_port;
	t->remote_port = (__u16)bpf_htonl(ops->remote_port);
	return 0;
}

static __always_inline int skb_tuple(struct __sk_buff *skb, struct l7_tuple *t)
{
	__u32 family = skb->family;

	/* Each context field read on its own: the verifier refuses a load
	 * through a context pointer the compiler chose between two fields. */
	if (family == AF_INET) {
		__u32 l4 = skb->local_ip4, r4 = skb->remote_ip4;

		asm volatile("" : "+r"(l4), "+r"(r4));
		addr_v4(t->local, l4);
		addr_v4(t->remote, r4);
	} else if (family == AF_INET6) {
		__u32 l6[4] = {skb->local_ip6[0], skb->local_ip6[1], skb->local_ip6[2], skb->local_ip6[3]};
		__u32 r6[4] = {skb->remote_ip6[0], skb->remote_ip6[1], skb->remote_ip6[2], skb->remote_ip6[3]};

		__builtin_memcpy(t->local, l6, 16);
		__builtin_memcpy(t->remote, r6, 16);
	} else {
		return -1;
	}
	t->local_port = skb->local_port;
	t->remote_port = (__u16)bpf_htonl(skb->remote_port);
	return 0;
}

static __always_inline int msg_tuple(struct sk_msg_md *msg, struct l7_tuple *t)
{
	__u32 l6[4] = {msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2], msg->local_ip6[3]};
	__u32 r6[4] = {msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2], msg->remote_ip6[3]};
	__u32 family = msg->family;

	if (addr_from(t->local, family, msg->local_ip4, l6) || addr_from(t->remote, family, msg->remote_ip4, r6))
		return -1;
	t->local_port = msg->local_port;
	t->remote_port = (__u16)bpf_htonl(msg->remote_port);
	return 0;
}

/* The context's socket pointer (struct bpf_sock_ops.sk, see l7_kernel.h):
 * one 8-byte context load, which the verifier types as a socket or NULL. */
static __always_inline struct bpf_sock *ops_sk(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk;

	asm volatile("%[sk] = *(u64 *)(%[ops] + %[off])"
		     : [sk] "=r"(sk)
		     : [ops] "r"(ops), [off] "i"(__builtin_offsetof(struct bpf_sock_ops, sk)));
	return sk;
}

/* A client's connection, just established, already has bytes written, or a
 * write under way, that the sk_msg program cannot see: the application wrote
 * before the handshake ended. Written bytes (TCP Fast Open) are either queued
 * (write_seq past snd_nxt) or were sent in the SYN and not acknowledged with
 * it (snd_nxt past snd_una). */
static __always_inline int written_before_established(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk = ops_sk(ops);
	struct tcp_sock *tp;

	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	if (tp->write_seq != ops->snd_una)
		return 1;
	/* A sendmsg waits for this connection (sendto with MSG_FASTOPEN and no
	 * Fast Open cookie, or a blocking write during connect): it entered
	 * the kernel's plain TCP send before the socket could be in a SOCKHASH
	 * and writes from there once woken, past the sk_msg program. */
	return ((struct sock *)tp)->sk_write_pending != 0;
}

static __always_inline void set_denied(struct l7_sock_state *st, __u32 reason)
{
	if (!st->denied) {
		st->denied = 1;
		st->reason = reason;
		st->denied_at = bpf_ktime_get_ns();
		count(L7_R_DENIED_CONNS);
	}
	count(reason);
}

/* The segment that established the connection carries data: the first
 * request came with the ACK that completed the handshake (or in the SYN,
 * TCP Fast Open). It reached l7_fast before the connection had state, so it
 * was not judged there: such a connection is judged at its socket, whose
 * verdict program sees the segment once sock_ops returns. Read from the
 * segment's TCP header (skb_data to skb_data_end) against its length; a
 * header that cannot be read counts as data. */
static __always_inline int handshake_data(struct bpf_sock_ops *ops)
{
	__u8 *data, *end;

	asm volatile("%[p] = *(u64 *)(%[ops] + %[off])"
		     : [p] "=r"(data)
		     : [ops] "r"(ops), [off] "i"(__builtin_offsetof(struct bpf_sock_ops, skb_data)));
	asm volatile("%[p] = *(u64 *)(%[ops] + %[off])"
		     : [p] "=r"(end)
		     : [ops] "r"(ops), [off] "i"(__builtin_offsetof(struct bpf_sock_ops, skb_data_end)));
	if ((void *)(data + 13) > (void *)end)
		return 1;
	return ops->skb_len > (__u32)(data[12] >> 4) * 4;
}

/*
 * Puts a server's new connection (its state just written) in the judging
 * before TCP, when l7_fast sits on every interface of its network namespace
 * and the handshake brought no data: the socket goes into l7_fast_socks (no
 * programs) instead of l7_socks, and l7_fast_conns finds its state from a
 * segment's addresses. 0 when it cannot be: the caller puts the socket in
 * l7_socks as usual. Until L7_SF_FAST is set the guard drops the
 * connection's data (neither stamped by l7_fast nor in l7_socks): a segment
 * that races this is sent again by the client's TCP.
 */
static __always_inline int judge_before_tcp(struct bpf_sock_ops *ops, const struct l7_tuple *tk, __u64 cookie)
{
	struct l7_fast_conn fc = {.cookie = cookie};
	struct l7_sock_state *st;
	__u64 netns;

	if (!(config() & L7_CFG_BEFORE_TCP))
		return 0;
	netns = bpf_get_netns_cookie(ops);
	if (!bpf_map_lookup_elem(&l7_fast_netns, &netns) || handshake_data(ops))
		return 0;
	st = bpf_map_lookup_elem(&l7_state, &cookie);
	if (!st || bpf_map_update_elem(&l7_fast_conns, tk, &fc, BPF_ANY))
		return 0;
	if (bpf_sock_hash_update(ops, &l7_fast_socks, &cookie, BPF_NOEXIST)) {
		bpf_map_delete_elem(&l7_fast_conns, tk);
		return 0;
	}
	st->flags |= L7_SF_FAST;
	return 1;
}

SEC("sockops")
int l7_sockops(struct bpf_sock_ops *ops)
{
	struct l7_sock_state st = {};
	struct l7_ipcache_key ik = {};
	struct l7_port_key pk = {};
	struct l7_port_value *ep;
	struct l7_ipcache_value *peer;
	struct l7_tuple tk = {};
	__u32 op = ops->op, egress, at_source = 0;
	__u64 cookie;

	if (op == BPF_SOCK_OPS_STATE_CB) {
		if (ops->args[1] == BPF_TCP_CLOSE) {
			struct l7_sock_state *old;

			cookie = bpf_get_socket_cookie(ops);
			old = bpf_map_lookup_elem(&l7_state, &cookie);
			if (old)
				upgrade_set(old, 0);
			bpf_map_delete_elem(&l7_state, &cookie);
			bpf_map_delete_elem(&l7_held, &cookie);
			if (ops_tuple(ops, &tk) == 0) {
				struct l7_tuple sv;

				old = bpf_map_lookup_elem(&l7_egress_state, &tk);
				if (old)
					upgrade_set(old, 0);
				bpf_map_delete_elem(&l7_egress_state, &tk);
				bpf_map_delete_elem(&l7_fast_conns, &tk);
				swap_tuple(&sv, &tk);
				bpf_map_delete_elem(&l7_at_source, &sv);
			}
		}
		return 1;
	}
	if (op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	egress = op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB;

	{
		__u32 l6[4] = {ops->local_ip6[0], ops->local_ip6[1], ops->local_ip6[2], ops->local_ip6[3]};
		__u32 r6[4] = {ops->remote_ip6[0], ops->remote_ip6[1], ops->remote_ip6[2], ops->remote_ip6[3]};
		__u32 family = ops->family;

		if (addr_from(pk.addr, family, ops->local_ip4, l6))
			return 1;
		/* remote_port holds the big-endian port in its upper half. */
		pk.port = egress ? (__u16)bpf_htonl(ops->remote_port) : ops->local_port;
		pk.direction = egress;
		ep = bpf_map_lookup_elem(&l7_ports, &pk);
		ik.prefixlen = 128;
		if (!ep && egress && (config() & L7_CFG_AT_SOURCE)) {
			__u64 netns = bpf_get_netns_cookie(ops);

			if (!bpf_map_lookup_elem(&l7_trusted_netns, &netns))
				return 1; /* the server's socket judges it */
			/* A client without egress rules for this port, connecting
			 * to a local server whose port has ingress rules: judge
			 * them here, at the client's socket, where allowed
			 * requests cost no delivery hop. Peer: the client. */
			if (addr_from(pk.addr, family, ops->remote_ip4, r6))
				return 1;
			pk.direction = L7_INGRESS;
			ep = bpf_map_lookup_elem(&l7_ports, &pk);
			if (!ep)
				return 1;
			at_source = 1;
			addr_from(ik.addr, family, ops->local_ip4, l6);
		} else {
			if (!ep)
				return 1;
			addr_from(ik.addr, family, ops->remote_ip4, r6);
		}
	}
	peer = bpf_map_lookup_elem(&l7_ipcache, &ik);
	st.endpoint_id = ep->endpoint_id;
	st.peer_identity = peer ? peer->identity : IDENTITY_WORLD;
	st.port = pk.port;
	st.direction = at_source ? L7_INGRESS : egress;
	st.flags = at_source ? L7_SF_AT_SOURCE : 0;
	if (!egress) {
		/* Nothing has been received yet: the first data byte is
		 * rcv_nxt (with TCP Fast Open too, whose data is queued after
		 * this callback). */
		st.rcv_seq = ops->rcv_nxt;
	} else {
		/* Nothing passed yet (written_before_established below
		 * refuses a connection with bytes already written). */
		st.snd_expect = ops->snd_una;
		st.snd_judged = ops->snd_una;
		st.flags |= L7_SF_SEQ;
	}

	if (ops_tuple(ops, &tk))
		return 1;
	if (!egress) {
		/* The client's socket judges this connection (its sock_ops
		 * ran first: the server's side is established only by the
		 * client's ACK). sock_ops cannot hold a socket reference to
		 * check that socket's membership; the ingress guard checks it
		 * for every data segment. */
		if (bpf_map_lookup_elem(&l7_at_source, &tk))
			return 1;
	}
	cookie = bpf_get_socket_cookie(ops);
	if (egress && written_before_established(ops)) {
		/*
		 * Bytes were written before the connection was established:
		 * TCP Fast Open data (MSG_FASTOPEN, TCP_FASTOPEN_CONNECT),
		 * written before the socket could be in l7_egress_socks, so its
		 * sk_msg program never saw them. The egress guard dropped the
		 * SYN that carried them (the socket was no member): TCP sent a
		 * plain SYN and keeps them queued, to send now. Or a write
		 * waits for the connection in the plain TCP send, to write
		 * past the sk_msg program once woken. At source, the
		 * server's socket judges the connection instead; under egress
		 * rules the connection is denied and not inserted: the guard
		 * drops its data until the agent resets it.
		 */
		if (at_source) {
			count(L7_R_FAST_OPEN);
			return 1;
		}
		set_denied(&st, L7_R_FAST_OPEN);
		if (bpf_map_update_elem(&l7_egress_state, &tk, &st, BPF_ANY) == 0)
			bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	}
	if (egress) {
		if (bpf_map_update_elem(&l7_egress_state, &tk, &st, BPF_ANY)) {
			count(L7_R_STATE_FAILED);
			return 1;
		}
	} else if (bpf_map_update_elem(&l7_state, &cookie, &st, BPF_ANY)) {
		/* Not inserted either: the guards drop the connection's data. */
		count(L7_R_STATE_FAILED);
		return 1;
	}
	bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
	if (!egress && judge_before_tcp(ops, &tk, cookie))
		return 1;
	if (bpf_sock_hash_update(ops, egress ? (void *)&l7_egress_socks : (void *)&l7_socks, &cookie, BPF_NOEXIST)) {
		count(L7_R_INSERT_FAILED); /* the guards drop its data */
		if (at_source) /* the server's socket judges instead */
			bpf_map_delete_elem(&l7_egress_state, &tk);
		return 1;
	}
	if (at_source) {
		struct l7_tuple sv;

		swap_tuple(&sv, &tk);
		/* If this fails the server judges too (the connection is then
		 * judged twice, never not at all). */
		bpf_map_update_elem(&l7_at_source, &sv, &cookie, BPF_ANY);
	}
	return 1;
}

static __always_inline int deny_all(struct l7_sock_state *st, __u32 reason, int avail)
{
	set_denied(st, reason);
	return avail; /* the whole rest is one message, dropped by l7_verdict */
}

/* Copies max bytes of the scratch buffer at start into dst: the value's first
 * len bytes and whatever follows it in the header block (readers use the
 * event's length fields; the bytes after them are unspecified). The buffer
 * has L7_EV_PATH_MAX bytes of slack, so the fixed-size read never leaves it.
 * A fixed-size copy the compiler unrolls: bpf_probe_read_kernel, used
 * before, cost about 0.35 µs a call here (a third of l7_stream's time per
 * request). */
#define copy_value(dst, max, sc, start) __builtin_memcpy((dst), (sc)->buf + ((start) & SCAN_MASK), (max))

/* The fields before the path, the same in both record sizes. */
static __always_inline void event_head(struct l7_event *ev, const struct judge_out *out, const struct l7_sock_state *st,
				       const struct l7_tuple *t, __u8 verdict, __u32 flags, __u64 now, __u64 t0)
{
	ev->time_ns = now;
	ev->latency_ns = now - t0;
	ev->endpoint_id = st->endpoint_id;
	ev->peer_identity = st->peer_identity;
	__builtin_memcpy(ev->local, t->local, 16);
	__builtin_memcpy(ev->remote, t->remote, 16);
	ev->local_port = t->local_port;
	ev->remote_port = t->remote_port;
	ev->port = st->port;
	ev->direction = st->direction;
	ev->verdict = verdict;
	ev->reason = out->reason;
	ev->rule = out->rule;
	ev->flags = flags;
	ev->log_missing = out->log_missing;
	ev->pad = 0;
}

/* Reports one judged request; slot is the scratch slot judge() used (still
 * held). A request whose path and Host fit in L7_EV_SHORT bytes each takes a
 * short record (see l7.h): the ring is 1 MiB and each line of a record is
 * written cold; with the ring's header the short record touches three or
 * four lines, the whole one (288 bytes) five or six. */
static __always_inline void emit(__u32 slot, const struct judge_out *out, const struct l7_sock_state *st,
				 const struct l7_tuple *t, __u8 verdict, __u32 flags, __u64 t0)
{
	struct l7_event *ev;
	struct l7_scratch *sc;
	struct scan *s;
	__u64 now = bpf_ktime_get_ns(), avail, rec;
	__u32 plen = 0, hlen = 0, mlen = 0;

	s = bpf_map_lookup_elem(&l7_scans, &slot);
	sc = scratch(slot);
	if (s && sc) {
		mlen = s->mlen;
		if (s->pend > s->tstart)
			plen = s->pend - s->tstart;
		if (s->nhost && s->hend > s->hstart)
			hlen = s->hend - s->hstart;
	}
	if (plen <= L7_EV_SHORT && hlen <= L7_EV_SHORT) {
		ev = bpf_ringbuf_reserve(&l7_events, L7_EV_SHORT_SIZE, 0);
		if (!ev) {
			count(L7_R_EVENT_LOST);
			return;
		}
		rec = EVENT_RECORD(L7_EV_SHORT_SIZE);
		event_head(ev, out, st, t, verdict, flags, now, t0);
		if (s && sc) {
			copy_value(ev->method, L7_EV_METHOD_MAX, sc, 0);
			copy_value(ev->path, L7_EV_SHORT, sc, s->tstart);
			copy_value(ev->path + L7_EV_SHORT, L7_EV_SHORT, sc, s->hstart);
		} else {
			__builtin_memset(ev->method, 0, L7_EV_METHOD_MAX + 2 * L7_EV_SHORT);
		}
	} else {
		ev = bpf_ringbuf_reserve(&l7_events, sizeof(*ev), 0);
		if (!ev) {
			count(L7_R_EVENT_LOST);
			return;
		}
		rec = EVENT_RECORD(sizeof(*ev));
		event_head(ev, out, st, t, verdict, flags, now, t0);
		if (s && sc) {
			copy_value(ev->method, L7_EV_METHOD_MAX, sc, 0);
			copy_value(ev->path, L7_EV_PATH_MAX, sc, s->tstart);
			copy_value(ev->host, L7_EV_HOST_MAX, sc, s->hstart);
		} else {
			__builtin_memset(ev->method, 0, L7_EV_METHOD_MAX + L7_EV_PATH_MAX + L7_EV_HOST_MAX);
		}
	}
	ev->method_len = mlen;
	ev->path_len = plen;
	ev->host_len = hlen;
	/* Denies wake the reader at once (the agent resets what got no 403).
	 * Other events wait for the reader's next poll: one wake-up per request
	 * costs more than judging it. The event whose bytes cross a multiple of
	 * EVENTS_WAKE_BYTES of unread data wakes it early. Waking on every event
	 * past the mark instead, while the reader was slow or absent, cost an
	 * interrupt (irq_work) per event: 1.5 µs a request, half the program. */
	if (verdict == L7_EV_DENIED) {
		bpf_ringbuf_submit(ev, 0);
		return;
	}
	avail = bpf_ringbuf_query(&l7_events, BPF_RB_AVAIL_DATA);
	if (avail >= rec && (avail - rec) / EVENTS_WAKE_BYTES != avail / EVENTS_WAKE_BYTES)
		bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
	else
		bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

/* Body framing of a request whose header block passed. */
static __always_inline void frame_body(struct l7_sock_state *st, const struct judge_out *out)
{
	if (out->chunked) {
		st->phase = L7_PHASE_CHUNK_SIZE;
	} else if (out->body_len) {
		st->phase = L7_PHASE_BODY;
		st->body_remaining = out->body_len;
	}
}

/* Remembers where the server's output stood when a request was passed: a
 * later 403 is in order only once the server has written since then and the
 * client has acknowledged all of it. */
static __always_inline void mark_passed(struct __sk_buff *skb, struct l7_sock_state *st)
{
	struct bpf_sock *sk = skb->sk;
	struct tcp_sock *tp;

	st->requests++;
	if (!sk)
		return;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp)
		st->snd_mark = tp->write_seq;
}

/* The shortest 403 the verdict program writes; longer messages are padded
 * with optional whitespace before "close". */
#define FORBIDDEN_HEAD_LEN 56
#define FORBIDDEN_TAIL_LEN 22
#define FORBIDDEN_MIN (FORBIDDEN_HEAD_LEN + FORBIDDEN_TAIL_LEN)
static const char forbidden_head[FORBIDDEN_HEAD_LEN + 1] =
	"HTTP/1.1 403 Forbidden\r\nContent-Length: 13\r\nConnection: ";
static const char forbidden_tail[FORBIDDEN_TAIL_LEN + 1] = "close\r\n\r\nAccess denied";
static const char spaces[64] = "                                                                ";

/* A deny a 403 may answer (on either side): rules denied it (a malformed
 * request is reset instead) and its whole header block is in the n bytes at
 * hand. */
static __always_inline int answerable(const struct judge_out *out, __u32 n)
{
	if (out->reason != L7_R_NO_RULE_MATCH && out->reason != L7_R_NO_RULESET &&
	    out->reason != L7_R_DOT_SEGMENT && out->reason != L7_R_ESCAPED_SLASH)
		return 0;
	return out->hdr_len && out->hdr_len <= n;
}

/*
 * How many bytes of a request denied by policy become the message answered
 * with 403 Forbidden, or 0 when the connection is to be reset instead. A
 * 403 needs a message of at least FORBIDDEN_MIN bytes (it replaces the
 * message byte for byte), and must not overtake a response the server still
 * owes: it is written for the first request of a connection, or when the
 * server has written since the last request it was given and the client has
 * acknowledged everything (a client that waited for its answer). A
 * pipelining client is reset.
 */
static __always_inline int answer_in_order(struct __sk_buff *skb, const struct l7_sock_state *st)
{
	struct bpf_sock *sk;
	struct tcp_sock *tp;

	if (!st->requests)
		return 1;
	sk = skb->sk;
	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	return tp && tp->write_seq != st->snd_mark && tp->snd_una == tp->write_seq;
}

static __always_inline __u32 answer_len(struct __sk_buff *skb, const struct l7_sock_state *st,
					const struct judge_out *out, __u32 n, __s64 avail)
{
	if (!answerable(out, n) || !answer_in_order(skb, st))
		return 0;
	if (out->hdr_len >= FORBIDDEN_MIN)
		return out->hdr_len;
	if (avail >= FORBIDDEN_MIN)
		return FORBIDDEN_MIN; /* the rest is later messages, dropped */
	return 0;
}

/* Rewrites the len bytes at off into the 403 response (same length). */
static __always_inline int write_forbidden_at(struct __sk_buff *skb, int off, int len)
{
	__u32 pad, o, k;

	if (off < 0 || len < FORBIDDEN_MIN || len > L7_SCAN_LIMIT)
		return -1;
	pad = len - FORBIDDEN_MIN;
	if (bpf_skb_store_bytes(skb, off, forbidden_head, FORBIDDEN_HEAD_LEN, 0))
		return -1;
	o = off + FORBIDDEN_HEAD_LEN;
	for (k = 0; k < L7_SCAN_LIMIT / 64; k++) {
		if (pad < 64)
			break;
		if (bpf_skb_store_bytes(skb, o, spaces, 64, 0))
			return -1;
		o += 64;
		pad -= 64;
	}
	pad &= 63;
	if (pad) {
		if (bpf_skb_store_bytes(skb, o, spaces, pad, 0))
			return -1;
		o += pad;
	}
	if (bpf_skb_store_bytes(skb, o, forbidden_tail, FORBIDDEN_TAIL_LEN, 0))
		return -1;
	return 0;
}

/* Rewrites the current strparser message into the 403 response. */
static __always_inline int write_forbidden(struct __sk_buff *skb)
{
	return write_forbidden_at(skb, msg_offset(skb), msg_len(skb));
}

#define CHUNK_LINE_MAX 16 /* 8 hex digits + CRLF fit; power of two for masking */

/*
 * Frames the chunked body of an allowed request, strictly: size line = 1-8
 * hex digits and CRLF (no extensions, no whitespace), then exactly that many
 * bytes, then CRLF; the last chunk "0" CRLF is followed by CRLF (no trailers).
 * Anything else is denied: framing that could differ from the server's is
 * how a request hides inside a body. Each piece is its own message, so it
 * passes while the connection is allowed.
 *
 * line holds the first n (<= CHUNK_LINE_MAX) bytes at the current position.
 * Returns the length of the next piece of framing, 0 when more bytes are
 * needed, -1 to deny. Chunk data is not handled here (phase CHUNK_DATA is
 * streamed like a Content-Length body).
 *
 * A global function, verified once on its own: inlined, its sixteen steps of
 * branches made l7_stream's bpf_loop callback too complex for the verifier.
 */
struct chunk_line {
	__u8 b[CHUNK_LINE_MAX];
};

__noinline int chunk_step(const struct chunk_line *line, __u32 n, struct l7_sock_state *st)
{
	const __u8 *b;
	__u64 size = 0;
	__u32 k;

	if (!line || !st)
		return -1;
	b = line->b;
	if (n == 0)
		return 0;
	if (n > CHUNK_LINE_MAX)
		return -1;
	if (st->phase == L7_PHASE_CHUNK_CRLF || st->phase == L7_PHASE_CHUNK_END) {
		if (b[0] != '\r' || (n > 1 && b[1] != '\n'))
			return -1;
		if (n < 2)
			return 0;
		st->phase = st->phase == L7_PHASE_CHUNK_CRLF ? L7_PHASE_CHUNK_SIZE : L7_PHASE_HEADERS;
		return 2;
	}
	if (st->phase != L7_PHASE_CHUNK_SIZE)
		return -1;

	for (k = 0; k < CHUNK_LINE_MAX; k++) {
		__u8 c = b[k];

		if (k >= n)
			return 0; /* the line is not complete yet */
		int h = hex_value(c);

		if (h < 0) {
			if (c == '\r' && k > 0)
				break;
			return -1;
		}
		if (k >= 8)
			return -1;
		size = (size << 4) | h;
	}
	if (k + 1 >= CHUNK_LINE_MAX)
		return -1;
	if (k + 1 >= n)
		return 0; /* CR seen, LF not yet */
	if (b[(k + 1) & (CHUNK_LINE_MAX - 1)] != '\n')
		return -1;
	if (size == 0) {
		st->phase = L7_PHASE_CHUNK_END;
	} else {
		st->phase = L7_PHASE_CHUNK_DATA;
		st->body_remaining = size;
	}
	return k + 2;
}

static __always_inline int chunk_framing(struct __sk_buff *skb, struct l7_sock_state *st, __s64 off,
					 __s64 avail)
{
	struct chunk_line line = {};
	__u32 n = avail > CHUNK_LINE_MAX ? CHUNK_LINE_MAX : (__u32)avail;
	int r;

	if (n == 0)
		return 0;
	if (bpf_skb_load_bytes(skb, off, line.b, n))
		return deny_all(st, L7_R_BAD_CHUNK, avail);
	r = chunk_step(&line, n, st);
	if (r < 0)
		return deny_all(st, L7_R_BAD_CHUNK, avail);
	return r;
}

/* Takes up to avail bytes of the body or chunk data being streamed: returns
 * how many, and moves on to the next phase when it ends. */
static __always_inline __u64 body_take(struct l7_sock_state *st, __u64 avail)
{
	__u64 n = st->body_remaining;

	if (avail < n)
		n = avail;
	st->body_remaining -= n;
	if (st->body_remaining == 0)
		st->phase = st->phase == L7_PHASE_BODY ? L7_PHASE_HEADERS : L7_PHASE_CHUNK_CRLF;
	return n;
}

/* Copies up to L7_SCAN_LIMIT of the avail bytes at off into a scratch slot
 * and judges them for the connection. Returns the slot, held (the caller
 * reports and leaves it), or L7_SCRATCH_SLOTS when no slot could be had or
 * the copy failed (nothing held). */
static __always_inline __u32 judge_at(struct __sk_buff *skb, const struct l7_sock_state *st, __u32 off,
				      __u32 avail, struct judge_out *out)
{
	struct l7_scratch *sc;
	__u32 slot, n;

	slot = slot_enter();
	if (slot >= L7_SCRATCH_SLOTS)
		return L7_SCRATCH_SLOTS;
	sc = scratch(slot);
	n = avail > L7_SCAN_LIMIT ? L7_SCAN_LIMIT : avail;
	if (!sc || n == 0 || n > L7_SCAN_LIMIT || bpf_skb_load_bytes(skb, off, sc->buf, n)) {
		slot_leave(slot);
		return L7_SCRATCH_SLOTS;
	}
	out->slot = slot;
	out->len = avail;
	out->endpoint_id = st->endpoint_id;
	out->peer = st->peer_identity;
	out->port = st->port;
	judge(out);
	return slot;
}

SEC("sk_skb/stream_parser")
int l7_parser(struct __sk_buff *skb)
{
	struct judge_out out = {};
	struct l7_sock_state *st;
	struct l7_tuple tk = {};
	__s64 off, avail;
	__u64 cookie, t0;
	__u32 slot, n, msg;

	/* Never return a negative value: strparser treats it as an error and
	 * the socket wedges. 0 means "need more data". */
	off = msg_offset(skb);
	avail = (__s64)skb->len - off;
	if (off < 0 || avail <= 0)
		return 0;
	if (avail > 0x7fffffff)
		avail = 0x7fffffff;

	cookie = bpf_get_socket_cookie(skb);
	st = bpf_map_lookup_elem(&l7_state, &cookie);
	if (!st) {
		count(L7_R_NO_STATE);
		return avail; /* l7_verdict drops it: no state, no judgement */
	}
	if (st->denied)
		return deny_all(st, L7_R_STICKY, avail);

	switch (st->phase) {
	case L7_PHASE_HEADERS:
		break;
	case L7_PHASE_PASSTHROUGH:
		return avail;
	case L7_PHASE_BODY:
	case L7_PHASE_CHUNK_DATA:
		return body_take(st, avail);
	default:
		return chunk_framing(skb, st, off, avail);
	}

	t0 = bpf_ktime_get_ns();
	slot = judge_at(skb, st, off, avail, &out);
	if (slot >= L7_SCRATCH_SLOTS)
		return deny_all(st, L7_R_BUSY, avail);
	n = avail > L7_SCAN_LIMIT ? L7_SCAN_LIMIT : (__u32)avail;
	if (out.verdict == L7_NEED_MORE) {
		slot_leave(slot);
		return 0;
	}
	skb_tuple(skb, &tk);

	if (out.verdict == L7_ALLOW && out.hdr_len && out.hdr_len <= n) {
		emit(slot, &out, st, &tk, L7_EV_ALLOWED, 0, t0);
		slot_leave(slot);
		count(L7_R_ALLOWED);
		upgrade_set(st, out.websocket);
		mark_passed(skb, st); /* snd_mark: where the server's answer starts */
		frame_body(st, &out);
		return out.hdr_len;
	}
	if (out.verdict == L7_ALLOW || !out.reason)
		out.reason = L7_R_BAD_HEADER;
	if (out.audit) {
		/* Forward and report. A well-formed request keeps the framing;
		 * after a malformed one the rest of the connection passes. */
		emit(slot, &out, st, &tk, L7_EV_AUDITED, 0, t0);
		slot_leave(slot);
		count(L7_R_AUDITED);
		if (out.hdr_len && out.hdr_len <= n) {
			mark_passed(skb, st);
			frame_body(st, &out);
			return out.hdr_len;
		}
		st->phase = L7_PHASE_PASSTHROUGH;
		return avail;
	}
	msg = answer_len(skb, st, &out, n, avail);
	emit(slot, &out, st, &tk, L7_EV_DENIED, msg ? L7_EVF_FORBIDDEN : L7_EVF_RESET, t0);
	slot_leave(slot);
	set_denied(st, out.reason);
	if (msg) {
		st->flags |= L7_SF_ANSWER;
		return msg;
	}
	return avail;
}

SEC("sk_skb/stream_verdict")
int l7_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct l7_sock_state *st = bpf_map_lookup_elem(&l7_state, &cookie);

	if (st && !st->denied) {
		count(L7_R_MSG_PASSED);
		/* Redirecting the message to the socket's own ingress goes through
		 * the psock backlog. SK_PASS queues it to the application at once
		 * (faster), but this kernel's TCP read cursor can then run ahead of
		 * what the application has read and a later request is never
		 * parsed (bpf/README.md), so it is opt-in. */
		if (config() & L7_CFG_PASS)
			return SK_PASS;
		return bpf_sk_redirect_hash(skb, &l7_socks, &cookie, BPF_F_INGRESS);
	}
	if (st && (st->flags & L7_SF_ANSWER)) {
		/* The denied request itself: it becomes the 403, sent back on
		 * this socket. If that fails the connection is reset instead
		 * (l7_reset, once the grace is over). */
		st->flags &= ~L7_SF_ANSWER;
		if (write_forbidden(skb) == 0 && bpf_sk_redirect_hash(skb, &l7_socks, &cookie, 0) == SK_PASS) {
			st->flags |= L7_SF_ANSWERED;
			count(L7_R_FORBIDDEN);
			return SK_PASS;
		}
	}
	count(L7_R_MSG_DROPPED);
	return SK_DROP;
}

/*
 * Direct delivery: the verdict program alone, without the stream parser.
 * l7_stream sees each segment the socket receives, as TCP queued it, and
 * frames the requests in it itself (per-socket state, as the parser does):
 * header blocks are judged, bodies and chunks streamed. Allowed bytes are
 * handed to the application with SK_PASS at once. This avoids both the
 * parser's cursor bug and the backlog hop of redirect (bpf/README.md).
 *
 * A header block (or chunk-size line) that ends in a later segment is cut
 * off the segment and held in l7_held; the segment that completes it gets
 * it back in front (bpf_skb_change_head) and is judged whole. The held bytes
 * are not counted as read by TCP: a segment cut to nothing is dropped with
 * length 0, and the application's read of the completed one counts them.
 */
#define NSEC_PER_MSEC 1000000ULL
/* Longest hold of an incomplete header block, milliseconds (l7_reset); set at
 * load. Hold times are u32 milliseconds of bpf_ktime_get_ns, compared by
 * difference (wraps after 49 days, longer than any hold). */
const volatile __u32 l7_hold_max_ms = 10000;
#define L7_STREAM_PIECES 4096 /* pieces (header blocks, bodies, chunk lines) per segment */

enum {
	STREAM_MORE = 0,
	STREAM_DONE,   /* everything in the segment passes */
	STREAM_HOLD,   /* bytes from pos on are an incomplete piece */
	STREAM_RESET,  /* denied at pos: pass what is before it, reset */
	STREAM_ANSWER, /* denied at 0: the segment becomes the 403 */
};

struct stream_ctx {
	struct __sk_buff *skb;
	struct l7_sock_state *st;
	struct l7_tuple tk;
	__u32 pos;
	__u32 len;
	__u32 stop;
	__u32 answer; /* length of the 403 (STREAM_ANSWER) */
};

/* Whether a 403 for the request at the start of the segment is in order
 * (as answer_len); its length, or 0 to reset. */
static __always_inline __u32 stream_answer_len(struct __sk_buff *skb, const struct l7_sock_state *st,
					       const struct judge_out *out, __u32 n)
{
	if (!answerable(out, n) || !answer_in_order(skb, st))
		return 0;
	return out->hdr_len > FORBIDDEN_MIN ? out->hdr_len : FORBIDDEN_MIN;
}

/* One piece of the segment at c->pos (bpf_loop callback): 0 to go on, 1 to
 * stop with c->stop set. */
static long stream_piece(__u32 i, struct stream_ctx *c)
{
	struct __sk_buff *skb = c->skb;
	struct l7_sock_state *st = c->st;
	struct judge_out out = {};
	__u32 avail, n, slot;
	__u64 t0;

	if (c->pos >= c->len) {
		c->stop = STREAM_DONE;
		return 1;
	}
	avail = c->len - c->pos;
	switch (st->phase) {
	case L7_PHASE_HEADERS:
		break;
	case L7_PHASE_PASSTHROUGH:
		c->pos = c->len;
		c->stop = STREAM_DONE;
		return 1;
	case L7_PHASE_BODY:
	case L7_PHASE_CHUNK_DATA:
		c->pos += body_take(st, avail);
		return 0;
	default: {
		/* chunk_framing's step, with this program's own outcomes */
		struct chunk_line line = {};
		int r;

		n = avail > CHUNK_LINE_MAX ? CHUNK_LINE_MAX : avail;
		if (n == 0 || n > CHUNK_LINE_MAX || bpf_skb_load_bytes(skb, c->pos, line.b, n)) {
			set_denied(st, L7_R_BUSY);
			c->stop = STREAM_RESET;
			return 1;
		}
		r = chunk_step(&line, n, st);
		if (r < 0) {
			set_denied(st, L7_R_BAD_CHUNK);
			c->stop = STREAM_RESET;
			return 1;
		}
		if (r == 0) {
			c->stop = STREAM_HOLD;
			return 1;
		}
		c->pos += r;
		return 0;
	}
	}

	t0 = bpf_ktime_get_ns();
	slot = judge_at(skb, st, c->pos, avail, &out);
	if (slot >= L7_SCRATCH_SLOTS) {
		set_denied(st, L7_R_BUSY);
		c->stop = STREAM_RESET;
		return 1;
	}
	n = avail > L7_SCAN_LIMIT ? L7_SCAN_LIMIT : avail;
	if (out.verdict == L7_NEED_MORE) {
		slot_leave(slot);
		c->stop = STREAM_HOLD;
		return 1;
	}
	if (out.verdict == L7_ALLOW && out.hdr_len && out.hdr_len <= n) {
		emit(slot, &out, st, &c->tk, L7_EV_ALLOWED, 0, t0);
		slot_leave(slot);
		count(L7_R_ALLOWED);
		upgrade_set(st, out.websocket);
		mark_passed(skb, st); /* snd_mark: where the server's answer starts */
		frame_body(st, &out);
		c->pos += out.hdr_len;
		return 0;
	}
	if (out.verdict == L7_ALLOW || !out.reason)
		out.reason = L7_R_BAD_HEADER;
	if (out.audit) {
		emit(slot, &out, st, &c->tk, L7_EV_AUDITED, 0, t0);
		slot_leave(slot);
		count(L7_R_AUDITED);
		if (out.hdr_len && out.hdr_len <= n) {
			mark_passed(skb, st);
			frame_body(st, &out);
			c->pos += out.hdr_len;
			return 0;
		}
		st->phase = L7_PHASE_PASSTHROUGH;
		c->pos = c->len;
		c->stop = STREAM_DONE;
		return 1;
	}
	c->answer = c->pos == 0 ? stream_answer_len(skb, st, &out, n) : 0;
	emit(slot, &out, st, &c->tk, L7_EV_DENIED, c->answer ? L7_EVF_FORBIDDEN : L7_EVF_RESET, t0);
	slot_leave(slot);
	set_denied(st, out.reason);
	c->stop = c->answer ? STREAM_ANSWER : STREAM_RESET;
	return 1;
}

/* Where framing the segment stopped (stream_frame). */
struct stream_out {
	__u32 stop;
	__u32 pos;
	__u32 answer;
	__u32 len;
};

/*
 * Frames the segment's pieces from its start. A global function, verified
 * once: inlined, the bpf_loop callback was verified again for every state
 * l7_stream could be in at the call, past the verifier's budget.
 */
__noinline int stream_frame(struct __sk_buff *skb, struct l7_sock_state *st, struct stream_out *out)
{
	struct stream_ctx c = {};

	if (!skb || !st || !out)
		return -1;
	c.skb = skb;
	c.st = st;
	c.len = skb->len;
	skb_tuple(skb, &c.tk);
	bpf_loop(L7_STREAM_PIECES, stream_piece, &c, 0);
	out->stop = c.stop;
	out->pos = c.pos;
	out->answer = c.answer;
	out->len = c.len;
	return 0;
}

/* Keeps the len - pos bytes at pos in l7_held, held since since. */
__noinline int stream_hold(struct __sk_buff *skb, __u64 cookie, __u32 pos, __u32 len, __u32 since)
{
	struct l7_scratch *sc;
	__u32 rest = len - pos, slot;
	int err = -1;

	if (pos >= len || rest > L7_SCAN_LIMIT)
		return -1;
	slot = slot_enter();
	if (slot >= L7_SCRATCH_SLOTS)
		return -1;
	sc = scratch(slot);
	if (sc && rest > 0 && rest <= L7_SCAN_LIMIT && bpf_skb_load_bytes(skb, pos, sc->buf, rest) == 0) {
		sc->len = rest;
		sc->since = since;
		err = bpf_map_update_elem(&l7_held, &cookie, sc, BPF_ANY);
	}
	slot_leave(slot);
	return err;
}

#define STREAM_COPY 256
#define STREAM_PULL_MAX 4095 /* sk_skb's bpf_skb_adjust_room moves at most this much */
#define STREAM_KEEP_SMALL 64

/*
 * Cuts the segment to its first pos bytes. bpf_skb_change_tail refuses to cut
 * a received segment below a minimum it derives from the segment's stale
 * header and checksum offsets (17 bytes measured on a segment whose head was
 * grown; 0 is always refused), so a short keep is done from the front
 * instead: the bytes to keep are saved, the segment is pulled from the front
 * (bpf_skb_adjust_room) and they are written back. It keeps at most ~16 KiB
 * (bpf_skb_change_tail's limit): l7_stream passes ahead when it cannot cut.
 */
__noinline int stream_cut(struct __sk_buff *skb, __u32 pos)
{
	__u8 keep[STREAM_KEEP_SMALL] = {};
	__u32 k, left;

	if (!skb)
		return -1;
	if (pos >= skb->len)
		return 0;
	if (pos > STREAM_KEEP_SMALL)
		return bpf_skb_change_tail(skb, pos, 0) ? -1 : 0;
	if (pos && bpf_skb_load_bytes(skb, 0, keep, pos))
		return -1;
	for (k = 0; k < 64; k++) {
		if (skb->len <= pos)
			break;
		left = skb->len - pos;
		if (left > STREAM_PULL_MAX)
			left = STREAM_PULL_MAX;
		if (bpf_skb_adjust_room(skb, -(__s32)left, 0, 0))
			return -1;
	}
	if (skb->len != pos)
		return -1;
	if (pos && bpf_skb_store_bytes(skb, 0, keep, pos, 0))
		return -1;
	return 0;
}

/* Removes the first n (≤ L7_SCAN_LIMIT) bytes of the segment. */
static __always_inline int stream_trim_front(struct __sk_buff *skb, __u32 n)
{
	__u32 k, step;

	for (k = 0; k < L7_SCAN_LIMIT / STREAM_PULL_MAX + 1; k++) {
		if (n == 0)
			return 0;
		step = n > STREAM_PULL_MAX ? STREAM_PULL_MAX : n;
		if (bpf_skb_adjust_room(skb, -(__s32)step, 0, 0))
			return -1;
		n -= step;
	}
	return n ? -1 : 0;
}

/*
 * Makes the segment the bytes from ahead to keep: the first ahead bytes were
 * delivered with an earlier segment (L7_SF_AHEAD) and came back in front of
 * this one to be judged; the bytes from keep on are held. 0 when done; 1 when
 * only the front could be removed: the segment is then the bytes from ahead
 * to its end; -1 when neither.
 */
__noinline int stream_deliver(struct __sk_buff *skb, __u32 ahead, __u32 keep)
{
	__u32 len;

	if (!skb)
		return -1;
	len = skb->len;
	if (ahead > keep || keep > len || stream_trim_front(skb, ahead))
		return -1;
	if (stream_cut(skb, keep - ahead) == 0)
		return 0;
	return skb->len == len - ahead ? 1 : -1;
}

/* Puts the held bytes back in front of the segment. */
__noinline int stream_unhold(struct __sk_buff *skb, const struct l7_scratch *pend)
{
	__u32 p, o, k, rest;

	if (!skb || !pend)
		return -1;
	p = pend->len;
	if (p == 0 || p > L7_SCAN_LIMIT)
		return -1;
	if (bpf_skb_change_head(skb, p, 0))
		return -1;
	/* Whole pieces of constant size, then the rest: offsets the verifier
	 * knows exactly (a variable-size copy per step made it walk every
	 * length this loop could see). */
	for (k = 0; k < L7_SCAN_LIMIT / STREAM_COPY; k++) {
		o = k * STREAM_COPY;
		if (o + STREAM_COPY > p)
			break;
		if (bpf_skb_store_bytes(skb, o, pend->buf + o, STREAM_COPY, 0))
			return -1;
	}
	o = k * STREAM_COPY;
	if (o >= p)
		return 0;
	rest = p - o;
	if (rest == 0 || rest >= STREAM_COPY || o > L7_SCAN_LIMIT - STREAM_COPY)
		return -1;
	return bpf_skb_store_bytes(skb, o, pend->buf + o, rest, 0) ? -1 : 0;
}

#define STREAM_OVERLAP_STEPS 64 /* pulls of STREAM_PULL_MAX: up to ~256 KiB repeated */

/*
 * TCP queues a segment that starts before what it has already received
 * without trimming it: a retransmission that overlaps received bytes, or a
 * segment of the out-of-order queue that overlaps the one queued before it
 * (tcp_data_queue, tcp_ofo_queue). tcp_recvmsg skips the repeated front by
 * sequence number; tcp_read_skb, which hands segments to l7_stream, hands
 * over the whole segment, and SK_PASS would deliver it whole: the framing
 * and the application would both get the repeated bytes a second time (and
 * from the second copy, where TCP keeps the first). Cuts the repeated front
 * off, so that what is framed and delivered is exactly TCP's byte stream.
 * 0 when the segment starts where the previous one ended or was cut to;
 * 1 when it repeats nothing but bytes already received (it is then empty);
 * -1 when it cannot be made to (a gap, or the cut failed). The cuts run in
 * a bpf_loop callback: as a plain loop the verifier walked 690,000 more
 * instructions of l7_stream.
 */
struct pull_ctx {
	struct __sk_buff *skb;
	__u32 left; /* bytes still to remove from the front; stays non-zero if a pull fails */
};

static long pull_step(__u64 i, void *data)
{
	struct pull_ctx *pc = data;
	__u32 step = pc->left > STREAM_PULL_MAX ? STREAM_PULL_MAX : pc->left;

	if (step == 0 || bpf_skb_adjust_room(pc->skb, -(__s32)step, 0, 0))
		return 1;
	pc->left -= step;
	return 0;
}

static __always_inline int stream_in_sequence(struct __sk_buff *skb, struct l7_sock_state *st)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	struct tcp_skb_cb *tcb = (struct tcp_skb_cb *)kskb->cb;
	__u32 seq = tcb->seq, len = skb->len, over;

	over = st->rcv_seq - seq;
	if (over == 0) {
		st->rcv_seq = seq + len;
		return 0;
	}
	/* Ahead of what was received (a gap; TCP queues none): the framing
	 * cannot be trusted to be in step. */
	if ((__s32)over < 0)
		return -1;
	/* Nothing new but a FIN (a retransmission that TCP queues for its
	 * FIN alone): emptied, to be dropped as a segment cut to nothing is. */
	if (over > len)
		over = len;
	{
		struct pull_ctx pc = {.skb = skb, .left = over};

		bpf_loop(STREAM_OVERLAP_STEPS, pull_step, &pc, 0);
		if (pc.left)
			return -1;
	}
	if (over < len)
		st->rcv_seq = seq + len;
	count(L7_R_OVERLAP);
	return skb->len ? 0 : 1;
}

SEC("sk_skb/stream_verdict")
int l7_stream(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct l7_sock_state *st = bpf_map_lookup_elem(&l7_state, &cookie);
	struct stream_out c = {};
	struct l7_scratch *pend;
	__u32 since = 0; /* of the bytes given back, if any */
	__u32 ahead = 0; /* how many of them the application already has */
	int r;

	if (!st) {
		count(L7_R_NO_STATE);
		return SK_DROP;
	}
	if (st->denied) {
		count(L7_R_STICKY);
		count(L7_R_MSG_DROPPED);
		return SK_DROP;
	}
	if (skb->len == 0)
		return SK_PASS;
	r = stream_in_sequence(skb, st);
	if (r < 0) {
		set_denied(st, L7_R_BUSY);
		count(L7_R_MSG_DROPPED);
		return SK_DROP;
	}
	if (r > 0)
		return SK_DROP; /* emptied: TCP counts nothing as read */
	pend = bpf_map_lookup_elem(&l7_held, &cookie);
	if (pend) {
		int err = stream_unhold(skb, pend);

		since = pend->since;
		if (st->flags & L7_SF_AHEAD)
			ahead = pend->len;
		st->flags &= ~L7_SF_AHEAD;
		bpf_map_delete_elem(&l7_held, &cookie);
		if (err) {
			set_denied(st, L7_R_BUSY);
			count(L7_R_MSG_DROPPED);
			return SK_DROP;
		}
	} else if (st->flags & L7_SF_AHEAD) {
		/* The server has the start of a request that went ahead of
		 * its judgment, and it is no longer held (lost across an
		 * agent upgrade): what follows cannot be judged without it
		 * (the server reads on from that start). */
		set_denied(st, L7_R_BUSY);
		count(L7_R_MSG_DROPPED);
		return SK_DROP;
	}
	stream_frame(skb, st, &c);

	/* A request the application already has part of is not answered. */
	if (ahead && c.stop == STREAM_ANSWER)
		c.stop = STREAM_RESET;
	switch (c.stop) {
	case STREAM_DONE:
		if (stream_trim_front(skb, ahead)) {
			/* Dropping allowed bytes the connection goes on
			 * without would put the application's stream out of
			 * step with the framing: deny it. */
			set_denied(st, L7_R_BUSY);
			break;
		}
		count(L7_R_MSG_PASSED);
		return SK_PASS;
	case STREAM_HOLD:
		/* A piece held again from the start keeps its first hold time. */
		if (c.pos != 0 || !pend)
			since = bpf_ktime_get_ns() / NSEC_PER_MSEC;
		if (stream_hold(skb, cookie, c.pos, c.len, since) == 0) {
			/*
			 * Cut the held bytes off; a segment cut to nothing is
			 * dropped without being counted as read. When the
			 * kernel cannot cut (bpf_skb_change_tail keeps at most
			 * ~16 KiB), or the piece was already delivered ahead,
			 * the incomplete piece passes ahead of its judgment:
			 * everything the scan saw of it is well-formed, it is
			 * judged when complete, and a deny then resets.
			 */
			if (c.pos == 0 && ahead) /* still the piece that went ahead */
				r = stream_trim_front(skb, ahead) ? -1 : 1;
			else
				r = stream_deliver(skb, ahead, c.pos);
			if (r == 0 && c.pos == ahead)
				return SK_DROP;
			if (r >= 0) {
				if (r == 1) {
					st->flags |= L7_SF_AHEAD;
					count(L7_R_AHEAD);
				}
				count(L7_R_MSG_PASSED);
				return SK_PASS;
			}
			bpf_map_delete_elem(&l7_held, &cookie);
		}
		set_denied(st, L7_R_BUSY);
		break;
	case STREAM_ANSWER:
		/* The whole segment becomes the 403 when it can (padded), so
		 * that TCP counts exactly what arrived as read; a longer one
		 * is cut to the header block's length. */
		if (c.len >= FORBIDDEN_MIN && c.len <= L7_SCAN_LIMIT)
			c.answer = c.len;
		if (bpf_skb_change_tail(skb, c.answer, 0) == 0 && write_forbidden_at(skb, 0, c.answer) == 0 &&
		    bpf_sk_redirect_hash(skb, &l7_socks, &cookie, 0) == SK_PASS) {
			st->flags |= L7_SF_ANSWERED;
			count(L7_R_FORBIDDEN);
			return SK_PASS;
		}
		break;
	case STREAM_RESET:
		/* What was allowed before the denied request still passes. */
		if (c.pos > ahead && stream_deliver(skb, ahead, c.pos) == 0) {
			count(L7_R_MSG_PASSED);
			return SK_PASS;
		}
		break;
	default:
		/* More pieces in one segment than L7_STREAM_PIECES. */
		set_denied(st, L7_R_TOO_LONG);
		break;
	}
	count(L7_R_MSG_DROPPED);
	return SK_DROP;
}

/* The connection's 4-tuple as its socket sees it (local: this end). */
static __always_inline int sk_tuple(struct bpf_sock *sk, struct l7_tuple *t)
{
	__u32 s6[4] = {sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]};
	__u32 d6[4] = {sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3]};
	__u32 family = sk->family;

	if (addr_from(t->local, family, sk->src_ip4, s6) || addr_from(t->remote, family, sk->dst_ip4, d6))
		return -1;
	t->local_port = sk->src_port;
	t->remote_port = bpf_ntohs(sk->dst_port);
	return 0;
}

/* A cgroup_skb segment's TCP header: where it starts (th), where its data
 * starts (data), and its sequence number (seq, host order). */
struct tcp_at {
	__u32 th;
	__u32 data;
	__u32 seq;
};

/* The TCP header of a cgroup_skb segment: skb->data is at the network
 * header here. -1 when it cannot be told: a read fails, not TCP, or IPv6
 * extension headers. Two reads (skb_bytes), in place when the headers are
 * in the skb's linear part, as they are once TCP or IP built or pulled
 * them. */
static __always_inline int tcp_offsets(struct __sk_buff *skb, struct tcp_at *at)
{
	__u8 buf[16];
	const __u8 *b;
	__u32 iphl;

	b = skb_bytes(skb, 0, buf, 10);
	if (!b)
		return -1;
	if ((b[0] >> 4) == 4) {
		iphl = (b[0] & 0xf) * 4;
		if (b[9] != IPPROTO_TCP)
			return -1;
	} else {
		iphl = 40;
		if (b[6] != IPPROTO_TCP)
			return -1;
	}
	b = skb_bytes(skb, iphl, buf, 16);
	if (!b)
		return -1;
	at->th = iphl;
	at->data = iphl + (b[12] >> 4) * 4;
	at->seq = (__u32)b[4] << 24 | (__u32)b[5] << 16 | (__u32)b[6] << 8 | b[7];
	return 0;
}

/* The socket's TCP is in urgent mode: urgent data (MSG_OOB) was written and
 * is not yet acknowledged (tcp_urg_mode). */
static __always_inline int urgent_mode(struct bpf_sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	return tp && tp->snd_up != tp->snd_una;
}

/*
 * A client judged at its own socket (egress rules, or a server's rules judged
 * at source: the socket is in l7_egress_socks) wrote urgent data (MSG_OOB).
 * Its sk_msg program judged the urgent byte in place, but a server reading
 * with SO_OOBINLINE off (the default) takes that byte out of its stream: with
 * one urgent body byte per write the server reads the start of the next
 * request as body, and a request hidden in that request's header block as a
 * request. HTTP has no use for urgent data: the connection's data segments
 * are dropped from now on and the connection denied (reset by the agent's
 * next sweep). Checked first, before the port lookup: a connection judged at
 * source has no egress port entry.
 */
static __always_inline int urgent_refused(struct __sk_buff *skb, struct bpf_sock *sk)
{
	struct l7_sock_state *st = 0;
	struct l7_tuple t = {};
	struct bpf_sock *member;
	struct tcp_at at;
	__u64 cookie;

	if (tcp_offsets(skb, &at) == 0 && skb->len <= at.data)
		return 0; /* no data: handshake, ACK, FIN, RST */
	cookie = bpf_get_socket_cookie(skb);
	member = bpf_map_lookup_elem(&l7_egress_socks, &cookie);
	if (!member)
		return 0;
	bpf_sk_release(member);
	if (sk_tuple(sk, &t) == 0)
		st = bpf_map_lookup_elem(&l7_egress_state, &t);
	if (st)
		set_denied(st, L7_R_URGENT);
	else
		count(L7_R_URGENT);
	return 1;
}

/*
 * A data segment of a client connection judged at the client's socket (its
 * state in l7_egress_state, keyed by the client's view: the connection as
 * this socket sees it, or swapped at the server's end) must end within what
 * the client's sk_msg program judged (snd_judged, see egress_in_step()). One
 * that does not carries bytes sent past that program: it is dropped and the
 * connection denied (reset by the agent's next sweep). 1: pass.
 */
static __always_inline int judged_bytes(struct __sk_buff *skb, const struct l7_tuple *t, int server_end)
{
	struct l7_sock_state *st;
	struct l7_tuple c;
	struct tcp_at at;

	if (server_end) {
		swap_tuple(&c, t);
		st = bpf_map_lookup_elem(&l7_egress_state, &c);
	} else {
		st = bpf_map_lookup_elem(&l7_egress_state, t);
	}
	if (!st) {
		count(L7_R_GUARD_DROP);
		return 0;
	}
	if (!(st->flags & L7_SF_SEQ) || st->phase == L7_PHASE_PASSTHROUGH)
		return 1;
	/* Headers that cannot be read count as past it. */
	if (tcp_offsets(skb, &at) == 0 && (__s32)(at.seq + (skb->len - at.data) - st->snd_judged) <= 0)
		return 1;
	set_denied(st, L7_R_UNJUDGED_WRITE);
	count(L7_R_GUARD_DROP);
	return 0;
}

/*
 * The stamp l7_fast puts in skb->mark of a segment it judged and passed:
 * FAST_STAMP, FAST_STAMP_REQUEST when a request starts in it, and the low 30
 * bits of the sequence number after its last byte. The guard, which sees the
 * same skb just before TCP does, lets a connection judged before TCP have
 * only stamped data (and takes the stamp off): TCP then gets no byte l7_fast
 * did not judge, whatever path a segment took (an interface without l7_fast,
 * IP fragments reassembled after it, a segment it only passed on).
 */
#define FAST_STAMP 0x80000000u
#define FAST_STAMP_REQUEST 0x40000000u
#define FAST_STAMP_END 0x3fffffffu

/* 1 when the segment (its TCP header at) carries the stamp of l7_fast for
 * its own bytes; the stamp is then taken off. */
static __always_inline int fast_stamp_take(struct __sk_buff *skb, struct l7_sock_state *st, struct bpf_sock *sk,
					   const struct tcp_at *at)
{
	__u32 mark = skb->mark;

	if ((mark & FAST_STAMP) && ((at->seq + (skb->len - at->data)) & FAST_STAMP_END) == (mark & FAST_STAMP_END)) {
		if (mark & FAST_STAMP_REQUEST) {
			/* Where the server's answer to it starts (a later 403
			 * is in order once it was written and acknowledged:
			 * answer_in_order). */
			struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

			if (tp)
				st->snd_mark = tp->write_seq;
		}
		skb->mark = 0;
		return 1;
	}
	return 0;
}

static __always_inline int fast_stamped(struct __sk_buff *skb, struct l7_sock_state *st, struct bpf_sock *sk,
					const struct tcp_at *at)
{
	if (fast_stamp_take(skb, st, sk, at))
		return 1;
	if (!(st->flags & L7_SF_FAST_UNSTAMPED))
		__sync_fetch_and_or(&st->flags, L7_SF_FAST_UNSTAMPED);
	count(L7_R_FAST_UNSTAMPED);
	count(L7_R_GUARD_DROP);
	return 0;
}

/*
 * Drops data segments of a judged connection whose socket is not in its
 * SOCKHASH (failed insert, entry removed, MPTCP subflow, connection older
 * than the attachment), unless the connection is judged before TCP and the
 * segment carries l7_fast's stamp. Ingress: (local address, local port)
 * judged by l7_socks; egress: (local address, remote port) judged by
 * l7_egress_socks.
 */
static __always_inline int guard(struct __sk_buff *skb, __u32 egress)
{
	struct l7_port_key pk = {};
	struct bpf_sock *sk = skb->sk, *member;
	struct l7_sock_state *st;
	struct tcp_at at = {};
	__u32 family;
	__u64 cookie;
	int offsets;

	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;
	if (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_NEW_SYN_RECV)
		return 1;
	if (egress && urgent_mode(sk) && urgent_refused(skb, sk))
		return 0;
	if (!(config() & (egress ? L7_CFG_EGRESS_PORTS : L7_CFG_INGRESS_PORTS)))
		return 1; /* no port of this direction is judged: the lookup below would miss */
	/* Only segments that carry data matter; handshake, ACKs, FIN and RST
	 * pass so that a refused connection still closes. Headers that cannot
	 * be read (IPv6 extension headers) count as data. Told before any
	 * lookup: a segment without data costs two reads of its headers (in
	 * place: tcp_offsets), not a hash lookup, on every socket of the
	 * node. */
	offsets = tcp_offsets(skb, &at);
	if (offsets == 0 && skb->len <= at.data)
		return 1;
	if (!egress && offsets == 0 && (skb->mark & FAST_STAMP)) {
		/* A segment l7_fast passed: its stamp checked first, without
		 * the port lookup (a request judged before TCP costs one
		 * lookup less). Anything else goes the whole way below. */
		cookie = bpf_get_socket_cookie(skb);
		st = bpf_map_lookup_elem(&l7_state, &cookie);
		if (st && (st->flags & L7_SF_FAST) && fast_stamp_take(skb, st, sk, &at))
			return 1;
	}
	family = sk->family;
	{
		__u32 s6[4] = {sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]};

		if (addr_from(pk.addr, family, sk->src_ip4, s6))
			return 1;
	}
	pk.port = egress ? bpf_ntohs(sk->dst_port) : sk->src_port;
	pk.direction = egress;
	if (!bpf_map_lookup_elem(&l7_ports, &pk))
		return 1;
	cookie = bpf_get_socket_cookie(skb);
	if (!egress) {
		/* Judged before TCP: only what l7_fast stamped. Looked at
		 * before the SOCKHASH (one lookup less for each of such a
		 * connection's segments): l7_fast clears the flag after it
		 * put the socket in l7_socks, in the run that hands the
		 * connection over; a segment that comes past l7_fast in
		 * between is dropped here, and TCP sends it again. */
		st = bpf_map_lookup_elem(&l7_state, &cookie);
		if (st && (st->flags & L7_SF_FAST)) {
			if (offsets == 0)
				return fast_stamped(skb, st, sk, &at);
			count(L7_R_GUARD_DROP);
			return 0;
		}
	}
	member = bpf_map_lookup_elem(egress ? (void *)&l7_egress_socks : (void *)&l7_socks, &cookie);
	if (member) {
		struct l7_tuple t = {};

		bpf_sk_release(member);
		if (!egress)
			return 1;
		/* A client judged at its socket: only what it judged. */
		return sk_tuple(sk, &t) == 0 && judged_bytes(skb, &t, 0);
	}
	if (!egress) {
		struct l7_tuple t = {};

		/* Judged at the client's socket, as long as that socket is
		 * still in l7_egress_socks, and only what it judged. */
		if (sk_tuple(sk, &t) == 0 && judged_at_source(&t))
			return judged_bytes(skb, &t, 1);
	}
	count(L7_R_GUARD_DROP);
	return 0;
}

/*
 * A connection waiting for the answer to its WebSocket upgrade request
 * (L7_SF_UPGRADE): the segment that starts at snd_mark carries the first
 * bytes of the server's answer. "HTTP/1.1 101 " there switches the connection
 * to pass-through (it carries WebSocket frames from now on, not requests);
 * anything else there ends the wait and the connection stays judged. Egress:
 * the server's socket (l7_state); ingress: a client socket that judges its
 * own requests (l7_egress_state). The answer is seen here before either end
 * can act on it: on its way out of the server, or before the client's TCP
 * takes it.
 */
static __always_inline void upgrade_answer(struct __sk_buff *skb, __u32 egress)
{
	static const char switching[13] = "HTTP/1.1 101 ";
	struct bpf_sock *sk = skb->sk;
	struct l7_sock_state *st;
	struct tcp_at at;
	__u8 b[13];
	__u64 cookie;

	if (!sk)
		return;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return;
	if (egress) {
		cookie = bpf_get_socket_cookie(skb);
		st = bpf_map_lookup_elem(&l7_state, &cookie);
	} else {
		struct l7_tuple t = {};

		if (sk_tuple(sk, &t))
			return;
		st = bpf_map_lookup_elem(&l7_egress_state, &t);
	}
	if (!st || !(st->flags & L7_SF_UPGRADE))
		return;
	/* A segment without data (handshake, ACK, FIN, RST) is not the answer. */
	if (tcp_offsets(skb, &at) || skb->len <= at.data)
		return;
	if (at.seq != st->snd_mark)
		return; /* not the answer's start: a later segment that came first, or a retransmission */
	if (skb->len >= at.data + sizeof(b) && bpf_skb_load_bytes(skb, at.data, b, sizeof(b)) == 0) {
		__u32 same = 1;

#pragma unroll
		for (int i = 0; i < (int)sizeof(b); i++)
			same &= b[i] == (__u8)switching[i];
		if (same) {
			st->phase = L7_PHASE_PASSTHROUGH;
			count(L7_R_UPGRADED);
		}
	}
	upgrade_set(st, 0);
}

static __always_inline int upgrades_pending(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&l7_upgrades, &zero);

	return n && (__s64)*n > 0; /* below zero after a recount raced a disarm (repairUpgrades) */
}

SEC("cgroup_skb/ingress")
int l7_guard(struct __sk_buff *skb)
{
	if (upgrades_pending())
		upgrade_answer(skb, L7_INGRESS);
	return guard(skb, L7_INGRESS);
}

SEC("cgroup_skb/egress")
int l7_guard_egress(struct __sk_buff *skb)
{
	if (upgrades_pending())
		upgrade_answer(skb, L7_EGRESS);
	return guard(skb, L7_EGRESS);
}

/*
 * Judging before TCP (l7_fast, tcx ingress on every interface of a server's
 * network namespace; L7_CFG_BEFORE_TCP). A connection sock_ops put in it
 * (L7_SF_FAST) is judged segment by segment as the segments come in, before
 * TCP: a segment that starts where the last one passed ended and holds the
 * rest of a Content-Length body and/or one whole header block whose rules
 * allow it (with its body, or the start of it) is passed with a stamp the
 * guard checks (FAST_STAMP), the state moved on, the request reported. The
 * socket is in no SOCKHASH with programs: none of the SOCKHASH receive
 * path's cost. Anything else (a header block in pieces, a denied request,
 * pipelined requests, chunked bodies, a WebSocket upgrade, a retransmission,
 * urgent data) hands the connection to its socket for good (l7_socks,
 * l7_stream: the same framing state, rcv_seq where the segment should
 * start), which judges the segment as direct delivery does. The hand-over
 * happens only when TCP has received exactly what was passed and the
 * application has read all of it (rcv_nxt = rcv_seq = copied_seq): the
 * verdict program then starts from the byte l7_fast stopped at. Otherwise
 * the segment is dropped and TCP sends it again. TCP drops a segment l7_fast
 * passed only on error (checksum, memory): its bytes are then never passed
 * again (a second version of them could be framed otherwise), and a
 * connection whose TCP stays behind what was passed for FAST_STUCK_NS is
 * denied (L7_R_FAST_LOST) and reset by the agent.
 */
#define ETH_HLEN 14
#define TCPF_SYN 0x02
#define TCPF_URG 0x20
#define FAST_STUCK_NS (2ULL * 1000000000ULL)

struct fast_seg {
	struct l7_tuple tk;         /* the connection as the server sees it */
	/* the segment's addresses, for bpf_sk_lookup_tcp; 8-byte aligned
	 * for skb_addrs6 */
	struct bpf_sock_tuple sock __attribute__((aligned(8)));
	__u32 sock_len;
	__u32 seq;
	__u32 off; /* where its data starts (from the Ethernet header) */
	__u32 len; /* data bytes, by the IP header's length */
	__u32 flags;
};

/* 0 when the frame is a TCP segment over Ethernet, IPv4 (not a fragment) or
 * IPv6 (no extension headers); anything else is passed on unjudged, and the
 * guard keeps its data from a connection judged before TCP. */
static __always_inline int fast_parse(struct __sk_buff *skb, struct fast_seg *p)
{
	__u32 l4, l3len, doff;
	const __u8 *tcp, *ip;
	__u8 buf[20];

	if (skb->protocol == bpf_htons(0x0800)) {
		__u32 a;

		ip = skb_bytes(skb, ETH_HLEN, buf, 20);
		if (!ip)
			return -1;
		if ((ip[0] >> 4) != 4 || (ip[0] & 0xf) < 5 || ip[9] != IPPROTO_TCP)
			return -1;
		if ((ip[6] & 0x3f) | ip[7])
			return -1; /* a fragment: TCP gets it reassembled, without the stamp */
		l4 = ETH_HLEN + (ip[0] & 0xf) * 4;
		l3len = ((__u32)ip[2] << 8 | ip[3]) - (ip[0] & 0xf) * 4;
		__builtin_memcpy(&a, ip + 12, 4);
		p->sock.ipv4.saddr = a;
		addr_v4(p->tk.remote, a);
		__builtin_memcpy(&a, ip + 16, 4);
		p->sock.ipv4.daddr = a;
		addr_v4(p->tk.local, a);
		p->sock_len = sizeof(p->sock.ipv4);
	} else if (skb->protocol == bpf_htons(0x86dd)) {
		/* The fixed header's first 8 bytes, then its two addresses
		 * straight into the tuple (saddr and daddr are adjacent): a
		 * 40-byte copy on the stack took the frame that judge's deepest
		 * calls need (the verifier's 512 bytes for the whole chain). */
		ip = skb_bytes(skb, ETH_HLEN, buf, 8);
		if (!ip)
			return -1;
		if ((ip[0] >> 4) != 6 || ip[6] != IPPROTO_TCP)
			return -1;
		l4 = ETH_HLEN + 40;
		l3len = (__u32)ip[4] << 8 | ip[5];
		if (skb_addrs6(skb, ETH_HLEN + 8, p->sock.ipv6.saddr))
			return -1;
		__builtin_memcpy(p->tk.remote, p->sock.ipv6.saddr, 16);
		__builtin_memcpy(p->tk.local, p->sock.ipv6.daddr, 16);
		p->sock_len = sizeof(p->sock.ipv6);
	} else {
		return -1;
	}
	tcp = skb_bytes(skb, l4, buf, 20);
	if (!tcp)
		return -1;
	doff = (tcp[12] >> 4) * 4;
	if (doff < 20 || l3len < doff || l3len > 0xffff)
		return -1;
	if (p->sock_len == sizeof(p->sock.ipv4)) {
		__builtin_memcpy(&p->sock.ipv4.sport, tcp, 2);
		__builtin_memcpy(&p->sock.ipv4.dport, tcp + 2, 2);
	} else {
		__builtin_memcpy(&p->sock.ipv6.sport, tcp, 2);
		__builtin_memcpy(&p->sock.ipv6.dport, tcp + 2, 2);
	}
	p->tk.remote_port = (__u16)tcp[0] << 8 | tcp[1];
	p->tk.local_port = (__u16)tcp[2] << 8 | tcp[3];
	p->seq = (__u32)tcp[4] << 24 | (__u32)tcp[5] << 16 | (__u32)tcp[6] << 8 | tcp[7];
	p->flags = tcp[13];
	p->off = l4 + doff;
	p->len = l3len - doff;
	return 0;
}

/*
 * Frames and judges the segment's data from the connection's state: the rest
 * of a body, then at most one header block, whole, allowed, with its body or
 * the start of it, and nothing after. On success the state moves past the
 * segment and the request (if any) is reported: 1, or 2 when a request
 * starts in it. -1: the segment is not one l7_fast passes (nothing changed,
 * nothing reported).
 */
static __always_inline int fast_frame(struct __sk_buff *skb, struct l7_sock_state *st, const struct fast_seg *p)
{
	struct judge_out out = {};
	__u64 rem = st->body_remaining, take;
	__u32 phase = st->phase, pos = 0, len = p->len, slot;
	__u64 t0;

	if (phase == L7_PHASE_BODY) {
		take = rem < len ? rem : len;
		pos = take;
		rem -= take;
		if (rem == 0)
			phase = L7_PHASE_HEADERS;
	} else if (phase != L7_PHASE_HEADERS) {
		return -1;
	}
	if (pos == len) {
		st->phase = phase;
		st->body_remaining = rem;
		st->rcv_seq = p->seq + len;
		return 1;
	}
	if (phase != L7_PHASE_HEADERS)
		return -1;
	t0 = bpf_ktime_get_ns();
	slot = judge_at(skb, st, p->off + pos, len - pos, &out);
	if (slot >= L7_SCRATCH_SLOTS)
		return -1;
	if (out.verdict != L7_ALLOW || !out.hdr_len || out.hdr_len > len - pos || out.chunked || out.websocket) {
		slot_leave(slot);
		return -1;
	}
	pos += out.hdr_len;
	rem = out.body_len;
	take = rem < len - pos ? rem : len - pos;
	pos += take;
	rem -= take;
	if (pos != len) {
		/* Another request in the same segment (pipelined): the
		 * socket frames them, one verdict each. */
		slot_leave(slot);
		return -1;
	}
	emit(slot, &out, st, &p->tk, L7_EV_ALLOWED, 0, t0);
	slot_leave(slot);
	count(L7_R_ALLOWED);
	st->requests++;
	st->phase = rem ? L7_PHASE_BODY : L7_PHASE_HEADERS;
	st->body_remaining = rem;
	st->rcv_seq = p->seq + len;
	return 2;
}

/* Hands the connection to its socket (l7_socks) if TCP holds exactly what
 * was passed and the application has read it all; the segment then goes on
 * to TCP unstamped, to be judged by l7_stream. Otherwise the segment is
 * dropped. */
static __always_inline int fast_hand_over(struct __sk_buff *skb, struct l7_sock_state *st, struct l7_fast_conn *fc,
					  struct fast_seg *p)
{
	struct bpf_sock *sk;
	struct tcp_sock *tp;
	int handed = 0;

	if (p->sock_len == sizeof(p->sock.ipv4))
		sk = bpf_sk_lookup_tcp(skb, &p->sock, sizeof(p->sock.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_tcp(skb, &p->sock, sizeof(p->sock.ipv6), BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		count(L7_R_FAST_WAIT);
		return TCX_DROP;
	}
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		__u32 rcv_nxt = tp->rcv_nxt;

		if (rcv_nxt != st->rcv_seq) {
			/* Bytes passed that TCP has not received: still on
			 * their way (another CPU, the socket's backlog), or
			 * dropped by TCP. */
			__u64 now = bpf_ktime_get_ns();

			if (!fc->stuck_since)
				fc->stuck_since = now;
			else if (now - fc->stuck_since > FAST_STUCK_NS)
				set_denied(st, L7_R_FAST_LOST);
		} else if (tp->copied_seq == rcv_nxt) {
			if (bpf_map_update_elem(&l7_socks, &fc->cookie, sk, BPF_NOEXIST) == 0)
				handed = 1;
			else
				set_denied(st, L7_R_INSERT_FAILED);
		}
	}
	bpf_sk_release(sk);
	if (!handed) {
		count(L7_R_FAST_WAIT);
		return TCX_DROP;
	}
	__sync_fetch_and_and(&st->flags, ~L7_SF_FAST);
	fc->stuck_since = 0;
	count(L7_R_FAST_HANDED);
	return TCX_NEXT;
}

/* One data segment of a connection judged before TCP (l7_fast holds it:
 * L7_SF_FAST_BUSY). Inlined in l7_fast, its only caller, since 2026-11-27: a
 * global function cost a BPF call per segment (about 10 ns here, "What a
 * call costs here" in bpf/README.md), and the verifier walks about as many
 * instructions either way (l7_fast: 110,869 then, 111,380 now). */
static __always_inline int fast_segment(struct __sk_buff *skb, struct l7_sock_state *st, struct l7_fast_conn *fc,
					struct fast_seg *p)
{
	int r;

	if (p->seq == st->rcv_seq && !(p->flags & (TCPF_SYN | TCPF_URG))) {
		r = fast_frame(skb, st, p);
		if (r > 0) {
			skb->mark = FAST_STAMP | (r == 2 ? FAST_STAMP_REQUEST : 0) | ((p->seq + p->len) & FAST_STAMP_END);
			fc->stuck_since = 0;
			count(L7_R_FAST_PASSED);
			return TCX_NEXT;
		}
	}
	return fast_hand_over(skb, st, fc, p);
}

SEC("tcx/ingress")
int l7_fast(struct __sk_buff *skb)
{
	struct fast_seg p = {};
	struct l7_fast_conn *fc;
	struct l7_sock_state *st;
	__u32 old;
	int r;

	/* Handshake, ACKs, FIN and RST without data go on (before the lookups:
	 * a download's ACKs cost only the parse); so does everything of a
	 * connection handed to its socket. */
	if (fast_parse(skb, &p) || p.len == 0)
		return TCX_NEXT;
	fc = bpf_map_lookup_elem(&l7_fast_conns, &p.tk);
	if (!fc)
		return TCX_NEXT;
	st = bpf_map_lookup_elem(&l7_state, &fc->cookie);
	if (!st || !(st->flags & L7_SF_FAST))
		return TCX_NEXT;
	if (st->denied) {
		count(L7_R_STICKY);
		return TCX_DROP;
	}
	old = __sync_fetch_and_or(&st->flags, L7_SF_FAST_BUSY);
	if (old & L7_SF_FAST_BUSY) {
		count(L7_R_FAST_WAIT);
		return TCX_DROP;
	}
	r = TCX_NEXT;
	if (old & L7_SF_FAST)
		r = fast_segment(skb, st, fc, &p);
	__sync_fetch_and_and(&st->flags, ~L7_SF_FAST_BUSY);
	return r;
}

static __always_inline void swap_in_place(struct l7_tuple *t)
{
	__u64 a0 = *(__u64 *)&t->local[0], a1 = *(__u64 *)&t->local[8];
	__u16 p = t->local_port;

	__builtin_memcpy(t->local, t->remote, 16);
	*(__u64 *)&t->remote[0] = a0;
	*(__u64 *)&t->remote[8] = a1;
	t->local_port = t->remote_port;
	t->remote_port = p;
}

/* At source: remembers how much the server had sent when a request was
 * passed (the client socket's rcv_nxt); a later 403 is in order only once
 * more has arrived and the application has read all of it. */
static __always_inline void mark_answered_to(struct sk_msg_md *msg, struct l7_sock_state *st)
{
	struct bpf_sock *sk;
	struct tcp_sock *tp;

	if (!(st->flags & L7_SF_AT_SOURCE))
		return;
	sk = msg->sk;
	if (!sk)
		return;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp)
		st->snd_mark = tp->rcv_nxt;
}

/* The client's side of upgrade_set: the server's answer to the connection's
 * first request starts at the client's rcv_nxt when it is sent. */
static __always_inline void upgrade_set_client(struct sk_msg_md *msg, struct l7_sock_state *st, __u32 websocket)
{
	struct bpf_sock *sk;
	struct tcp_sock *tp;

	if (websocket && !st->requests) {
		sk = msg->sk;
		tp = sk ? bpf_skc_to_tcp_sock(sk) : 0;
		if (!tp)
			websocket = 0;
		else
			st->snd_mark = tp->rcv_nxt;
	}
	upgrade_set(st, websocket);
}

/* Whether a request denied at source can be answered with 403 without
 * overtaking a response: rules denied it (not malformed), its header block is
 * in this message, and it is the connection's first request or the client
 * has read everything the server sent since the last request was passed. */
static __always_inline __u32 forbidden_at_source_ok(struct sk_msg_md *msg, const struct l7_sock_state *st,
						    const struct judge_out *out, __u32 n)
{
	struct bpf_sock *sk;
	struct tcp_sock *tp;

	if (!answerable(out, n))
		return 0;
	if (!st->requests)
		return 1;
	sk = msg->sk;
	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || tp->rcv_nxt == st->snd_mark || tp->copied_seq != tp->rcv_nxt)
		return 0;
	return 1;
}

/* Turns the denied header block (the first hdr_len bytes of the message)
 * into the 403 response, exactly FORBIDDEN_MIN bytes (shortened or grown to
 * that), and redirects it to the client socket's own receive queue. t: the
 * connection as the server sees it (the key of l7_at_source, whose value is
 * this socket's cookie). SK_PASS when the client will read the 403. */
static __always_inline int answer_at_source(struct sk_msg_md *msg, const struct l7_tuple *t, __u32 hdr_len)
{
	__u64 *cookie = bpf_map_lookup_elem(&l7_at_source, t);
	void *data, *data_end;

	if (!cookie || hdr_len > L7_SCAN_LIMIT)
		return SK_DROP;
	if (hdr_len > FORBIDDEN_MIN) {
		if (bpf_msg_pop_data(msg, FORBIDDEN_HEAD_LEN, hdr_len - FORBIDDEN_MIN, 0))
			return SK_DROP;
	} else if (hdr_len < FORBIDDEN_MIN) {
		if (bpf_msg_push_data(msg, hdr_len, FORBIDDEN_MIN - hdr_len, 0))
			return SK_DROP;
	}
	if (bpf_msg_pull_data(msg, 0, FORBIDDEN_MIN, 0))
		return SK_DROP;
	data = msg->data;
	data_end = msg->data_end;
	if (data + FORBIDDEN_MIN > data_end)
		return SK_DROP;
	__builtin_memcpy(data, forbidden_head, FORBIDDEN_HEAD_LEN);
	__builtin_memcpy(data + FORBIDDEN_HEAD_LEN, forbidden_tail, FORBIDDEN_TAIL_LEN);
	bpf_msg_apply_bytes(msg, FORBIDDEN_MIN);
	return bpf_msg_redirect_hash(msg, &l7_egress_socks, cookie, BPF_F_INGRESS);
}

/* The end of what a client's TCP has queued to send (write_seq), and the
 * room its send buffer has left for more. */
struct write_seq {
	__u32 seq;
	__u32 ok;
	struct tcp_sock *tp;
};

/* What a buffer of the write queue costs beyond its bytes (its truesize: the
 * sk_buff and a head of MAX_TCP_HEADER; 830-900 bytes measured here, by the
 * send buffer at which TCP stops taking a block of one-segment buffers), with
 * margin. */
#define SEND_BUF_COST 1280

static __always_inline struct write_seq sk_write_seq(struct bpf_sock *sk)
{
	struct write_seq ws = {};
	struct tcp_sock *tp;

	if (!sk)
		return ws;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return ws;
	ws.seq = tp->write_seq;
	ws.tp = tp;
	ws.ok = 1;
	return ws;
}

/*
 * The most bytes TCP puts in one buffer of its write queue
 * (tcp_xmit_size_goal): gso_segs segments of mss_cache, as of the last write,
 * bounded by the route's segmentation size (one segment without segmentation
 * offload). Before the first write gso_segs is 0: worked out as the kernel
 * will, from the route's size, half the peer's largest window and the route's
 * segment limit.
 */
static __always_inline __u32 send_buf_size(struct tcp_sock *tp)
{
	struct sock *s = (struct sock *)tp;
	__u32 mss = tp->mss_cache, segs = tp->gso_segs, goal;

	if (mss < 64)
		mss = 64;
	if (!segs) {
		__u32 size = s->sk_gso_max_size, cut = tp->max_window;

		if (cut > 536)
			cut >>= 1;
		if (cut && size > cut)
			size = cut;
		segs = size / mss;
		if (segs > s->sk_gso_max_segs)
			segs = s->sk_gso_max_segs;
	}
	if (segs < 1)
		segs = 1;
	goal = mss * segs;
	if (s->sk_gso_max_size && goal > s->sk_gso_max_size)
		goal = s->sk_gso_max_size > mss ? s->sk_gso_max_size : mss;
	return goal;
}

/* Pages of margin on the node's TCP memory count: what other CPUs hold back
 * from it (sysctl_mem_pcpu_rsv, 256 pages each by default). */
#define TCP_MEM_MARGIN 1024
/* Sockets of margin on the node's count of TCP sockets (a per-CPU counter,
 * read as the kernel reads it, without the CPUs' pending parts). */
#define TCP_SOCKETS_MARGIN 256

/*
 * Whether TCP can charge need more bytes to this socket without a charge
 * failing, which makes it stop short with room in the send buffer. As
 * __sk_mem_raise_allocated decides:
 * - the node's TCP memory (tcp_memory_allocated, in pages): below tcp_mem[1]
 *   it is not under pressure and every charge succeeds. Under pressure (or
 *   once the charges could take it there) a charge succeeds while the total
 *   stays under tcp_mem[2] and the socket uses less than an even share of it
 *   (tcp_mem[2] > sockets x the socket's pages), so an ordinary socket goes on
 *   while one holding much memory is refused;
 * - a cgroup v1 memory cgroup that charges its sockets to its TCP counter
 *   (tcpmem_active): that counter and its ancestors must have the pages.
 * On cgroup v2 a socket charges the cgroup's memory, where a charge over the
 * limit reclaims and then calls the OOM killer before it fails: not counted
 * here (a cgroup commonly sits at its limit with reclaimable cache).
 */
static __always_inline int mem_allows(struct tcp_sock *tp, __u32 need)
{
	struct sock *s = (struct sock *)tp;
	__s64 pages = need / 4096 + 2;
	struct page_counter *pc = 0;
	struct mem_cgroup *memcg;
	struct proto *p;
	__u32 i;

	if (!tp)
		return 0;
	p = s->__sk_common.skc_prot;
	if (p) {
		struct atomic64_l7 *allocated = p->memory_allocated;
		struct percpu_counter_l7 *sockets = p->sockets_allocated;
		unsigned long *pressure = p->memory_pressure, pr = 0;
		long *limits = p->sysctl_mem, l1 = 0, l2 = 0, a = 0;
		__s64 n = 0;

		if (!allocated || !limits || bpf_probe_read_kernel(&l1, sizeof(l1), limits + 1) ||
		    bpf_probe_read_kernel(&l2, sizeof(l2), limits + 2) ||
		    bpf_probe_read_kernel(&a, sizeof(a), &allocated->counter))
			return 0;
		if (pressure && bpf_probe_read_kernel(&pr, sizeof(pr), pressure))
			return 0;
		if (pr || a + pages + TCP_MEM_MARGIN > l1) {
			/* The even share, with the socket's memory once the
			 * bytes are charged. */
			__s64 mine = (__s64)s->sk_wmem_queued + s->sk_backlog.rmem_alloc.counter + s->sk_forward_alloc +
				     need;

			if (a + pages + TCP_MEM_MARGIN > l2 || !sockets ||
			    bpf_probe_read_kernel(&n, sizeof(n), &sockets->count))
				return 0;
			if (mine < 0)
				mine = 0;
			if ((n + TCP_SOCKETS_MARGIN) * ((mine + 4095) / 4096) >= l2)
				return 0;
		}
	}
	memcg = s->sk_memcg;
	if (memcg && __builtin_preserve_field_info(memcg->tcpmem_active, 2 /* BPF_FIELD_EXISTS */) &&
	    memcg->tcpmem_active)
		pc = &memcg->tcpmem;
	for (i = 0; i < 8 && pc; i++) {
		if ((__s64)(pc->max - (unsigned long)pc->usage.counter) < pages)
			return 0;
		pc = pc->parent;
	}
	return 1;
}

/*
 * Whether TCP will take n bytes of framing (a header block, a chunk-size
 * line) whole. If it took them in part, tcp_bpf_send_verdict would keep this
 * verdict and send the client's next write in the rest of their place,
 * unseen: whatever the client writes there instead, sent in sequence, so not
 * caught by egress_in_step(). TCP waits for room before each new buffer of
 * its write queue, and takes one while the queue is under the send buffer:
 * the room must hold the bytes and what each buffer they take costs. A
 * route without segmentation offload (an IPsec tunnel, or a small
 * gso_max_size) puts them in buffers of one segment: a 7 KiB block takes
 * five or six.
 */
static __always_inline int send_room_for(struct l7_sock_state *st, const struct write_seq *ws, __u32 n)
{
	struct tcp_sock *tp = ws->tp;
	struct sock *s = (struct sock *)tp;
	__u32 need;
	__s32 lowat;

	if (!tp) {
		set_denied(st, L7_R_NO_ROOM);
		return 0;
	}
	need = n + (n / send_buf_size(tp) + 2) * SEND_BUF_COST;
	/* TCP also waits once TCP_NOTSENT_LOWAT bytes are queued and unsent. */
	lowat = tp->notsent_lowat ? (__s32)(tp->notsent_lowat - (tp->write_seq - tp->snd_nxt)) : (__s32)n;
	if (s->sk_sndbuf - s->sk_wmem_queued < (__s32)need || lowat < (__s32)n) {
		set_denied(st, L7_R_NO_ROOM);
		return 0;
	}
	if (!mem_allows(tp, need)) {
		set_denied(st, L7_R_NO_MEMORY);
		return 0;
	}
	return 1;
}

/*
 * Where the client's TCP stream stands against this program's framing: the
 * kernel can send bytes no run of this program saw. After a push that stops
 * short (a full send buffer on a non-blocking socket, a signal)
 * tcp_bpf_send_verdict frees the rest of the message but keeps the verdict:
 * the application's next write goes out under it, up to its apply size, or
 * whole without one. And a write that entered plain tcp_sendmsg before the
 * socket was in l7_egress_socks writes past this program. Body bytes are
 * content the framing only counts: bytes sent under a body's verdict are
 * taken off the body (or given back to it when fewer went than passed).
 * Anything else out of step denies the connection, and the guards drop
 * every data byte past snd_judged. 0: in step.
 */
static __always_inline int egress_in_step(struct l7_sock_state *st, __u32 ws)
{
	__s32 d = (__s32)(ws - st->snd_expect);
	__u32 ended = st->flags & L7_SF_BODY_ENDED;
	__s64 rem;

	if (!(st->flags & L7_SF_SEQ) || st->phase == L7_PHASE_PASSTHROUGH)
		return 0;
	st->flags &= ~L7_SF_BODY_ENDED;
	if (d == 0)
		return 0;
	if (d < 0 && ended) {
		/* The push that ended the body stopped short and the client
		 * wrote less of the rest than was freed: the body goes on. */
		st->phase = st->phase == L7_PHASE_HEADERS ? L7_PHASE_BODY : L7_PHASE_CHUNK_DATA;
		st->body_remaining = 0;
	}
	if (st->phase != L7_PHASE_BODY && st->phase != L7_PHASE_CHUNK_DATA)
		return -1;
	rem = (__s64)st->body_remaining - d;
	if (rem < 0)
		return -1;
	st->body_remaining = rem;
	st->snd_expect = ws;
	if (rem == 0)
		st->phase = st->phase == L7_PHASE_BODY ? L7_PHASE_HEADERS : L7_PHASE_CHUNK_CRLF;
	return 0;
}

/* Bodies longer than this are let ahead of their framing in steps. */
#define EGRESS_BODY_AHEAD (1U << 30)

/*
 * The verdict passes the message's first n bytes (all of it when n is its
 * size: no apply size, so that a push that stops short leaves no apply size
 * behind to send later writes under this verdict). Records where TCP's stream
 * will stand and how far data may leave: the end of the body when one
 * follows (its bytes are only counted), else the end of the passed bytes.
 */
static __always_inline int pass_egress(struct sk_msg_md *msg, struct l7_sock_state *st, __u32 ws, __u32 n, __u32 size)
{
	if (n < size)
		bpf_msg_apply_bytes(msg, n);
	st->snd_expect = ws + n;
	st->snd_judged = ws + n;
	if (st->phase == L7_PHASE_BODY || st->phase == L7_PHASE_CHUNK_DATA)
		st->snd_judged += st->body_remaining < EGRESS_BODY_AHEAD ? (__u32)st->body_remaining : EGRESS_BODY_AHEAD;
	count(L7_R_MSG_PASSED);
	return SK_PASS;
}

/*
 * Client side: judges each request the endpoint writes, against its egress
 * rules, or, at source (L7_SF_AT_SOURCE), against the ingress rules of the
 * local server it talks to. A request denied by egress rules fails the
 * writer's send with EACCES; one denied at source is answered with 403 when
 * in order (the write succeeds and the client reads the 403), else fails
 * like an egress deny and the connection is reset. Either way the connection
 * stays denied. An incomplete header block is corked until more is written;
 * an allowed block is released alone (apply_bytes), so that a body or a
 * pipelined request in the same write is judged on its own. Each run first
 * checks that TCP's stream is where the last verdict left it
 * (egress_in_step()).
 */
SEC("sk_msg")
int l7_egress(struct sk_msg_md *msg)
{
	struct judge_out out = {};
	struct l7_sock_state *st = 0;
	struct l7_tuple tk = {};
	struct l7_scratch *sc;
	__u32 size = msg->size, n, slot, at_source;
	struct write_seq ws;
	void *data, *data_end;
	__u64 t0;

	if (msg_tuple(msg, &tk) == 0)
		st = bpf_map_lookup_elem(&l7_egress_state, &tk);
	if (!st) {
		count(L7_R_NO_STATE);
		return SK_DROP;
	}
	/*
	 * The kernel keeps the message's cork and apply sizes from the
	 * program's previous run on it (sk_psock_msg_verdict copies them to
	 * the psock after every run and never clears them): a header block
	 * corked in one write and completed by the next, which also carries
	 * a short body or request, had that rest corked again by the stale
	 * size once the header block was sent, and it waited for bytes the
	 * client would never write. Each run sets its own.
	 */
	bpf_msg_cork_bytes(msg, 0);
	bpf_msg_apply_bytes(msg, 0);
	if (st->denied) {
		count(L7_R_STICKY);
		/* After a 403 answered at source the client's later bytes (the
		 * rest of the write that carried the denied header block, a
		 * body) are discarded and its writes succeed, as when the
		 * server's socket answers and drops them: the client goes on to
		 * read the 403 instead of failing on EACCES. The agent resets
		 * the connection after the answer's grace. */
		if ((st->flags & (L7_SF_AT_SOURCE | L7_SF_ANSWERED)) == (L7_SF_AT_SOURCE | L7_SF_ANSWERED) &&
		    size && bpf_msg_pop_data(msg, 0, size, 0) == 0)
			return SK_PASS;
		return SK_DROP;
	}
	ws = sk_write_seq(msg->sk);
	if (!ws.ok)
		goto deny_busy;
	if (egress_in_step(st, ws.seq)) {
		set_denied(st, L7_R_UNJUDGED_WRITE);
		return SK_DROP;
	}
	at_source = st->flags & L7_SF_AT_SOURCE;
	if (at_source)
		swap_in_place(&tk); /* the server's view, as its events and l7_at_source have it */
	if (size == 0 || st->phase == L7_PHASE_PASSTHROUGH)
		return SK_PASS;
	if (st->phase == L7_PHASE_BODY || st->phase == L7_PHASE_CHUNK_DATA) {
		n = body_take(st, size);
		if (st->phase != L7_PHASE_BODY && st->phase != L7_PHASE_CHUNK_DATA)
			st->flags |= L7_SF_BODY_ENDED;
		return pass_egress(msg, st, ws.seq, n, size);
	}
	if (st->phase != L7_PHASE_HEADERS) {
		struct chunk_line line = {};
		int r;

		n = size > CHUNK_LINE_MAX ? CHUNK_LINE_MAX : size;
		if (bpf_msg_pull_data(msg, 0, n, 0))
			goto deny_busy;
		data = msg->data;
		data_end = msg->data_end;
		if (data + n > data_end || n == 0 || n > CHUNK_LINE_MAX || bpf_probe_read_kernel(line.b, n, data))
			goto deny_busy;
		r = chunk_step(&line, n, st);
		if (r < 0) {
			set_denied(st, L7_R_BAD_CHUNK);
			return SK_DROP;
		}
		if (r == 0) {
			bpf_msg_cork_bytes(msg, size + 1);
			return SK_PASS;
		}
		if (!send_room_for(st, &ws, r))
			return SK_DROP;
		return pass_egress(msg, st, ws.seq, r, size);
	}

	t0 = bpf_ktime_get_ns();
	n = size > L7_SCAN_LIMIT ? L7_SCAN_LIMIT : size;
	if (bpf_msg_pull_data(msg, 0, n, 0))
		goto deny_busy;
	data = msg->data;
	data_end = msg->data_end;
	if (data + n > data_end)
		goto deny_busy;
	slot = slot_enter();
	if (slot >= L7_SCRATCH_SLOTS)
		goto deny_busy;
	sc = scratch(slot);
	if (!sc || n == 0 || n > L7_SCAN_LIMIT || bpf_probe_read_kernel(sc->buf, n, data)) {
		slot_leave(slot);
		goto deny_busy;
	}
	out.slot = slot;
	out.len = size;
	out.endpoint_id = st->endpoint_id;
	out.peer = st->peer_identity;
	out.port = st->port;
	out.direction = st->direction;
	judge(&out);
	if (out.verdict == L7_NEED_MORE) {
		slot_leave(slot);
		/* Run again once at least one more byte is written. */
		bpf_msg_cork_bytes(msg, size + 1);
		return SK_PASS;
	}
	if (out.verdict == L7_ALLOW && out.hdr_len && out.hdr_len <= n) {
		if (!send_room_for(st, &ws, out.hdr_len)) {
			out.reason = st->reason;
			emit(slot, &out, st, &tk, L7_EV_DENIED, at_source ? L7_EVF_AT_SOURCE | L7_EVF_RESET : 0, t0);
			slot_leave(slot);
			count(L7_R_MSG_DROPPED);
			return SK_DROP;
		}
		emit(slot, &out, st, &tk, L7_EV_ALLOWED, at_source ? L7_EVF_AT_SOURCE : 0, t0);
		slot_leave(slot);
		count(L7_R_ALLOWED);
		mark_answered_to(msg, st);
		upgrade_set_client(msg, st, out.websocket);
		st->requests++;
		frame_body(st, &out);
		return pass_egress(msg, st, ws.seq, out.hdr_len, size);
	}
	if (out.verdict == L7_ALLOW || !out.reason)
		out.reason = L7_R_BAD_HEADER;
	if (out.audit) {
		emit(slot, &out, st, &tk, L7_EV_AUDITED, at_source ? L7_EVF_AT_SOURCE : 0, t0);
		slot_leave(slot);
		count(L7_R_AUDITED);
		if (out.hdr_len && out.hdr_len <= n) {
			mark_answered_to(msg, st);
			st->requests++;
			frame_body(st, &out);
			return pass_egress(msg, st, ws.seq, out.hdr_len, size);
		}
		st->phase = L7_PHASE_PASSTHROUGH;
		return pass_egress(msg, st, ws.seq, size, size);
	}
	if (at_source) {
		/* The server's ingress rules denied it: the client gets the
		 * 403 the server's socket would have sent, or a reset. */
		__u32 answer = forbidden_at_source_ok(msg, st, &out, n);

		emit(slot, &out, st, &tk, L7_EV_DENIED,
		     L7_EVF_AT_SOURCE | (answer ? L7_EVF_FORBIDDEN : L7_EVF_RESET), t0);
		slot_leave(slot);
		set_denied(st, out.reason);
		if (answer && answer_at_source(msg, &tk, out.hdr_len) == SK_PASS) {
			st->flags |= L7_SF_ANSWERED;
			count(L7_R_FORBIDDEN);
			return SK_PASS;
		}
		count(L7_R_MSG_DROPPED);
		return SK_DROP;
	}
	emit(slot, &out, st, &tk, L7_EV_DENIED, 0, t0);
	slot_leave(slot);
	set_denied(st, out.reason);
	count(L7_R_MSG_DROPPED);
	return SK_DROP;

deny_busy:
	set_denied(st, L7_R_BUSY);
	return SK_DROP;
}

/* The state of a client connection (keyed by its 4-tuple, see l7_egress),
 * or NULL. */
static __always_inline struct l7_sock_state *egress_state_of(struct sock_common *sk)
{
	struct l7_tuple t = {};
	unsigned short family = 0;
	__u16 dport = 0, num = 0;
	__u32 a = 0;

	if (bpf_probe_read_kernel(&family, sizeof(family), &sk->skc_family))
		return 0;
	if (family == AF_INET) {
		if (bpf_probe_read_kernel(&a, sizeof(a), &sk->skc_rcv_saddr))
			return 0;
		addr_v4(t.local, a);
		if (bpf_probe_read_kernel(&a, sizeof(a), &sk->skc_daddr))
			return 0;
		addr_v4(t.remote, a);
	} else if (family == AF_INET6) {
		if (bpf_probe_read_kernel(t.local, 16, &sk->skc_v6_rcv_saddr) ||
		    bpf_probe_read_kernel(t.remote, 16, &sk->skc_v6_daddr))
			return 0;
	} else {
		return 0;
	}
	if (bpf_probe_read_kernel(&num, sizeof(num), &sk->skc_num) ||
	    bpf_probe_read_kernel(&dport, sizeof(dport), &sk->skc_dport))
		return 0;
	t.local_port = num;
	t.remote_port = bpf_ntohs(dport);
	return bpf_map_lookup_elem(&l7_egress_state, &t);
}

/* How long a client that got a 403 (with Connection: close) has to close
 * before its connection is reset. */
#define ANSWER_GRACE_NS (2ULL * 1000000000ULL)

/*
 * Resets denied connections: at once when the client got no 403 (a reset
 * cannot be mistaken for an answer), after ANSWER_GRACE_NS when it did (an
 * early reset could destroy the 403 before the client read it).
 * bpf_sock_destroy is only callable from socket iterators, so user space
 * reads this iterator (per network namespace) after denies.
 */
/*
 * A connection judged before TCP whose segments reached the guard without
 * l7_fast's stamp (L7_SF_FAST_UNSTAMPED: they come past l7_fast, which never
 * finds the connection) is handed to its socket from here, as l7_fast would
 * hand it: the connection held (L7_SF_FAST_BUSY) first, then only once TCP
 * holds exactly what was passed and the application has read it. The
 * client's TCP sends the dropped segment again, to the verdict program.
 */
static __always_inline void hand_over_unstamped(struct sock_common *sk, struct l7_sock_state *st, __u64 cookie)
{
	struct tcp_sock *tp;
	__u32 old;

	old = __sync_fetch_and_or(&st->flags, L7_SF_FAST_BUSY);
	if (old & L7_SF_FAST_BUSY)
		return;
	tp = bpf_skc_to_tcp_sock(sk);
	if ((old & L7_SF_FAST) && tp && tp->rcv_nxt == st->rcv_seq && tp->copied_seq == st->rcv_seq &&
	    bpf_map_update_elem(&l7_socks, &cookie, sk, BPF_NOEXIST) == 0) {
		__sync_fetch_and_and(&st->flags, ~(L7_SF_FAST | L7_SF_FAST_UNSTAMPED));
		count(L7_R_FAST_HANDED);
	}
	__sync_fetch_and_and(&st->flags, ~L7_SF_FAST_BUSY);
}

SEC("iter/tcp")
int l7_reset(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	struct l7_sock_state *st;
	__u64 cookie;

	if (!sk)
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	st = bpf_map_lookup_elem(&l7_state, &cookie);
	if (st && (st->flags & L7_SF_FAST_UNSTAMPED) && !st->denied) {
		hand_over_unstamped(sk, st, cookie);
		return 0;
	}
	if (!st)
		st = egress_state_of(sk);
	if (!st)
		return 0;
	if (!st->denied) {
		/* Direct delivery: bytes held too long (a client sending its
		 * header block slowly) are denied. While they are held TCP
		 * counts them as unread, so a level-triggered poller sees the
		 * socket readable; this bounds that. */
		struct l7_scratch *pend = bpf_map_lookup_elem(&l7_held, &cookie);

		if (!pend || (__u32)(bpf_ktime_get_ns() / NSEC_PER_MSEC) - pend->since < l7_hold_max_ms)
			return 0;
		set_denied(st, L7_R_HELD_TOO_LONG);
	}
	if ((st->flags & (L7_SF_ANSWER | L7_SF_ANSWERED)) && bpf_ktime_get_ns() - st->denied_at < ANSWER_GRACE_NS)
		return 0;
	if (!bpf_sock_destroy(sk))
		count(L7_R_RESET);
	return 0;
}

/*
 * Resets every client connection of the network namespace the iterator is
 * read in that is judged at source: the agent reads it in a pod's namespace
 * that lost its trust (a process there can hold CAP_NET_RAW or
 * CAP_NET_ADMIN) and kept it lost, so that no connection stays judged where
 * segments could be written past the socket.
 */
SEC("iter/tcp")
int l7_reset_at_source(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	struct l7_sock_state *st;

	if (!sk)
		return 0;
	st = egress_state_of(sk);
	if (!st || !(st->flags & L7_SF_AT_SOURCE))
		return 0;
	if (!bpf_sock_destroy(sk))
		count(L7_R_RESET);
	return 0;
}

SEC("syscall")
int l7_test_judge(struct l7_test_ctx *ctx)
{
	struct judge_out out = {};

	out.slot = L7_TEST_SLOT;
	out.len = ctx->len;
	out.endpoint_id = ctx->endpoint_id;
	out.peer = ctx->peer_identity;
	out.port = ctx->port;
	out.direction = ctx->direction;
	judge(&out);
	ctx->verdict = out.verdict;
	ctx->reason = out.reason;
	ctx->hdr_len = out.hdr_len;
	ctx->rule = out.rule;
	ctx->chunked = out.chunked;
	ctx->body_len = out.body_len;
	ctx->log_missing = out.log_missing;
	ctx->audit = out.audit;
	ctx->websocket = out.websocket;
	return 0;
}

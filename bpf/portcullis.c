//go:build ignore

/*
 * Portcullis L3/L4 dataplane: a tcx program pair for the host-side end of a
 * pod's veth pair.
 *
 * Directions. A veth pair is a pipe: what the pod transmits on its eth0 is
 * received by the host-side peer, so it runs through the host-side tcx
 * INGRESS hook; what the host transmits into the host-side peer comes out of
 * the pod's eth0, so it runs through the host-side tcx EGRESS hook. Hence:
 *
 *   tcx/ingress on the host-side veth = the pod's EGRESS   (pe_from_pod)
 *   tcx/egress  on the host-side veth = the pod's INGRESS  (pe_to_pod)
 *
 * Verdicts. Anything we do not drop returns TCX_NEXT rather than TCX_PASS, so
 * programs attached after ours (the agent attaches at the head of the chain)
 * still run; a drop is final.
 */

#include "portcullis.h"

char __license[] SEC("license") = "Apache-2.0";

/* Sizes are defaults: the Go loader sets max_entries from its options. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* LPM tries must not be preallocated */
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* ifindex of the host-side veth */
	__type(value, struct endpoint_info);
	__uint(max_entries, 4096);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 131072);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, 131072);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct counter_key);
	__type(value, struct counter_value);
	__uint(max_entries, 16384);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} flows SEC(".maps");

/*
 * bpf2go mirrors only types present in the object's BTF. Enums used for their
 * constants alone are not, so this never-read variable names them all. It sits
 * in a section of its own that the loader ignores, so unlike the usual
 * "unused global" trick it does not create a .bss map.
 */
struct btf_anchor {
	struct flow_event flow_event;
	enum reason reason;
	enum verdict verdict;
	enum direction direction;
	enum policy_action policy_action;
	enum policy_flags policy_flags;
	enum endpoint_flags endpoint_flags;
	enum ct_flags ct_flags;
	enum flow_flags flow_flags;
	enum identity_reserved identity_reserved;
};
struct btf_anchor btf_anchor SEC(".portcullis.btf_anchor");

#define NSEC_PER_SEC 1000000000ULL
/*
 * Entry lifetimes (since the last packet). There is no user-space GC: the LRU
 * evicts under pressure and an expired entry is simply judged anew.
 */
#define CT_LIFETIME_TCP (21600ULL * NSEC_PER_SEC)   /* 6 h, as Cilium */
#define CT_LIFETIME_CLOSING (10ULL * NSEC_PER_SEC)  /* both sides sent FIN */
#define CT_LIFETIME_OTHER (60ULL * NSEC_PER_SEC)    /* UDP, ICMP, others */
/* last_seen is rewritten at most once a second: a store per packet would
 * bounce the entry's cache line between CPUs on busy flows. */
#define CT_REFRESH_NS NSEC_PER_SEC

/* Longest IPv6 extension header chain we walk; longer chains are dropped
 * when the direction is enforced (the verifier needs a bound, and a chain
 * this long is not seen in legitimate pod traffic). */
#define MAX_IPV6_EXT 6

enum parse_result {
	PARSE_OK = 0,
	PARSE_NEIGHBOR,    /* ARP or ICMPv6 neighbour discovery */
	PARSE_UNSUPPORTED, /* other ethertype, or extension chain too long */
	PARSE_MALFORMED,
};

struct packet {
	/* 8-byte aligned for skb_addrs6 */
	__u8 saddr[16] __attribute__((aligned(8)));
	__u8 daddr[16];
	__u16 sport; /* host byte order; ICMP echo: the identifier */
	__u16 dport;
	__u32 l4_off;
	__u8 proto;
	__u8 ipv6;
	__u8 tcp_flags;
	__u8 fragment;   /* non-first fragment: no L4 header */
	__u8 icmp_error; /* ICMP error carrying the packet that caused it */
};

/* The verdict on one packet and what a flow event reports about it. */
struct decision {
	__u32 policy_id;
	__u32 ifindex;
	__u32 endpoint_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u8 direction;
	__u8 reason;
	__u8 verdict;
	__u8 l7;
};

/*
 * Helpers called from several places are real BPF-to-BPF calls, not inlined:
 * each inlined copy gets its own stack slots and the whole program must fit
 * in 512 bytes of stack; the verifier also checks a called function once per
 * call site state rather than once per copy.
 */
#define __noinline __attribute__((noinline))

static __always_inline void addr_from_v4(__u8 *dst, __be32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

static __always_inline int addr_is_v4_mapped(const __u8 *a)
{
	__u64 hi;
	__u32 mid;

	__builtin_memcpy(&hi, a, 8);
	__builtin_memcpy(&mid, a + 8, 4);
	return hi == 0 && mid == bpf_htonl(0x0000ffff);
}

/* Lexicographic (network order) comparison for conntrack normalisation,
 * in two 64-bit words: a byte loop unrolls into enough spills to blow the
 * 512-byte stack once inlined twice. */
static __always_inline int addr_cmp(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	a0 = __builtin_bswap64(a0);
	b0 = __builtin_bswap64(b0);
	if (a0 != b0)
		return a0 < b0 ? -1 : 1;
	a1 = __builtin_bswap64(a1);
	b1 = __builtin_bswap64(b1);
	if (a1 != b1)
		return a1 < b1 ? -1 : 1;
	return 0;
}

static __always_inline int is_icmp(__u8 proto)
{
	return proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
}

/*
 * Reads the start of the L4 header. The fixed headers are read with
 * skb_bytes(): in place when the skb's linear part holds them, through
 * bpf_skb_load_bytes otherwise (veth with GRO can hand over paged data), and
 * always through it past SKB_BYTES_OFF_MAX (long IPv6 extension headers).
 * The IPv6 extension headers themselves, a rare path, are read with the
 * helper.
 */
static __always_inline int parse_l4(struct __sk_buff *skb, struct packet *p)
{
	if (p->fragment)
		return PARSE_OK;

	switch (p->proto) {
	case IPPROTO_TCP: {
		__u8 buf[14];
		const __u8 *th = skb_bytes(skb, p->l4_off, buf, sizeof(buf));

		if (!th)
			return PARSE_MALFORMED;
		p->sport = (th[0] << 8) | th[1];
		p->dport = (th[2] << 8) | th[3];
		p->tcp_flags = th[13];
		return PARSE_OK;
	}
	case IPPROTO_UDP: {
		__u8 buf[4];
		const __u8 *uh = skb_bytes(skb, p->l4_off, buf, sizeof(buf));

		if (!uh)
			return PARSE_MALFORMED;
		p->sport = (uh[0] << 8) | uh[1];
		p->dport = (uh[2] << 8) | uh[3];
		return PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 buf[8], type;
		const __u8 *ih = skb_bytes(skb, p->l4_off, buf, sizeof(buf));

		if (!ih)
			return PARSE_MALFORMED;
		type = ih[0];
		if (p->proto == IPPROTO_ICMP) {
			/* echo reply 0, echo request 8: the identifier pairs them */
			if (type == 0 || type == 8)
				p->sport = p->dport = (ih[4] << 8) | ih[5];
			/* unreachable, time exceeded, parameter problem */
			else if (type == 3 || type == 11 || type == 12)
				p->icmp_error = 1;
		} else {
			if (type == 128 || type == 129)
				p->sport = p->dport = (ih[4] << 8) | ih[5];
			else if (type >= 1 && type <= 4)
				p->icmp_error = 1;
			/* RS, RA, NS, NA, redirect: without them IPv6 itself stops working */
			else if (type >= 133 && type <= 137)
				return PARSE_NEIGHBOR;
		}
		return PARSE_OK;
	}
	default:
		/* Other protocols are judged by protocol only (port 0). */
		return PARSE_OK;
	}
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 off, struct packet *p)
{
	struct iphdr buf;
	const struct iphdr *ip = (const struct iphdr *)skb_bytes(skb, off, &buf, sizeof(buf));
	__u32 ihl;

	if (!ip)
		return PARSE_MALFORMED;
	ihl = ip->ihl_version & 0x0f;
	if ((ip->ihl_version >> 4) != 4 || ihl < 5)
		return PARSE_MALFORMED;
	addr_from_v4(p->saddr, ip->saddr);
	addr_from_v4(p->daddr, ip->daddr);
	p->proto = ip->protocol;
	p->l4_off = off + ihl * 4;
	if (bpf_ntohs(ip->frag_off) & IP_OFFSET)
		p->fragment = 1;
	return PARSE_OK;
}

/*
 * Skips hop-by-hop, routing, destination options, fragment and AH headers,
 * at most MAX_IPV6_EXT of them. ESP and "no next header" end the walk and are
 * judged as protocols 50 and 59; anything else is taken as the L4 protocol.
 */
static __always_inline int parse_ipv6(struct __sk_buff *skb, __u32 off, struct packet *p)
{
	__u8 buf[8]; /* version/class/flow, payload length, next header, hop limit */
	const __u8 *fixed = skb_bytes(skb, off, buf, sizeof(buf));
	__u8 nh;

	if (!fixed)
		return PARSE_MALFORMED;
	if ((fixed[0] >> 4) != 6)
		return PARSE_MALFORMED;
	nh = fixed[6];
	/* saddr and daddr are adjacent in the packet summary too */
	if (skb_addrs6(skb, off + 8, p->saddr))
		return PARSE_MALFORMED;
	/* A v4-mapped address in a real IPv6 header would borrow the identity
	 * of the IPv4 address in the shared IP cache. */
	if (addr_is_v4_mapped(p->saddr) || addr_is_v4_mapped(p->daddr))
		return PARSE_MALFORMED;
	p->ipv6 = 1;
	off += 40;

#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT; i++) {
		__u8 eh[4];

		if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING && nh != IPPROTO_DSTOPTS &&
		    nh != IPPROTO_FRAGMENT && nh != IPPROTO_AH)
			break;
		if (bpf_skb_load_bytes(skb, off, eh, sizeof(eh)) < 0)
			return PARSE_MALFORMED;
		if (nh == IPPROTO_FRAGMENT) {
			/* offset is the top 13 bits of bytes 2-3 */
			if (((eh[2] << 8) | eh[3]) & 0xfff8)
				p->fragment = 1;
			off += 8;
		} else if (nh == IPPROTO_AH) {
			off += ((__u32)eh[1] + 2) * 4;
		} else {
			off += ((__u32)eh[1] + 1) * 8;
		}
		nh = eh[0];
		if (p->fragment)
			break;
	}
	if (!p->fragment && (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
			     nh == IPPROTO_FRAGMENT || nh == IPPROTO_AH))
		return PARSE_UNSUPPORTED;
	p->proto = nh;
	p->l4_off = off;
	return PARSE_OK;
}

static __noinline int parse(struct __sk_buff *skb, struct packet *p)
{
	__be16 buf, proto;
	const __u8 *eth = skb_bytes(skb, 12, &buf, sizeof(buf));
	int rc;

	if (!eth)
		return PARSE_MALFORMED;
	__builtin_memcpy(&proto, eth, sizeof(proto));
	if (proto == bpf_htons(ETH_P_IP))
		rc = parse_ipv4(skb, ETH_HLEN, p);
	else if (proto == bpf_htons(ETH_P_IPV6))
		rc = parse_ipv6(skb, ETH_HLEN, p);
	else if (proto == bpf_htons(ETH_P_ARP))
		return PARSE_NEIGHBOR;
	else
		/* VLAN tags, PPPoE, ...: IP inside them would pass unjudged. */
		return PARSE_UNSUPPORTED;
	if (rc != PARSE_OK)
		return rc;
	return parse_l4(skb, p);
}

/* Builds the normalised key; returns 1 when the packet's source is side a. */
static __always_inline int ct_key_build(struct ct_key *k, const struct packet *p, __u32 endpoint_id)
{
	int c = addr_cmp(p->saddr, p->daddr);
	int src_is_a = c < 0 || (c == 0 && p->sport <= p->dport);

	if (src_is_a) {
		__builtin_memcpy(k->addr_a, p->saddr, 16);
		__builtin_memcpy(k->addr_b, p->daddr, 16);
		k->port_a = p->sport;
		k->port_b = p->dport;
	} else {
		__builtin_memcpy(k->addr_a, p->daddr, 16);
		__builtin_memcpy(k->addr_b, p->saddr, 16);
		k->port_a = p->dport;
		k->port_b = p->sport;
	}
	k->endpoint_id = endpoint_id;
	k->proto = p->proto;
	return src_is_a;
}

static __always_inline int ct_expired(const struct ct_value *ct, __u8 proto, __u64 now)
{
	__u64 life = CT_LIFETIME_OTHER;

	if (proto == IPPROTO_TCP)
		life = (ct->flags & CT_F_FIN_A) && (ct->flags & CT_F_FIN_B) ? CT_LIFETIME_CLOSING
									 : CT_LIFETIME_TCP;
	return now - ct->last_seen_ns > life;
}

static __noinline void count(__u32 policy_id, __u8 reason, __u8 dir, __u64 bytes)
{
	struct counter_key k = {.policy_id = policy_id, .reason = reason, .direction = dir};
	struct counter_value *v = bpf_map_lookup_elem(&counters, &k);

	/* Per-CPU value, and tc runs with migration disabled: no atomics needed. */
	if (v) {
		v->packets++;
		v->bytes += bytes;
		return;
	}
	struct counter_value init = {.packets = 1, .bytes = bytes};
	bpf_map_update_elem(&counters, &k, &init, BPF_NOEXIST);
}

/*
 * Six lookups from most to least specific; the first hit is the answer. This
 * is only "deny wins" because the loader (internal/datapath.Resolve) stores,
 * for every allow entry that overlaps a deny entry, a deny at their
 * intersection, which is always at a level looked up earlier than both.
 */
static __always_inline struct policy_value *policy_lookup(__u32 endpoint_id, __u8 dir, __u32 identity,
							   __u8 proto, __u16 dport)
{
	struct policy_key k = {.endpoint_id = endpoint_id, .direction = dir};
	struct policy_value *v;

	k.peer_identity = identity;
	k.proto = proto;
	if (dport) {
		k.dport = dport; /* (identity, proto, port) */
		v = bpf_map_lookup_elem(&policy, &k);
		if (v)
			return v;
		k.dport = 0;
	}
	v = bpf_map_lookup_elem(&policy, &k); /* (identity, proto, *) */
	if (v)
		return v;
	k.proto = 0;
	v = bpf_map_lookup_elem(&policy, &k); /* (identity, *, *) */
	if (v)
		return v;

	k.peer_identity = IDENTITY_ANY;
	k.proto = proto;
	if (dport) {
		k.dport = dport; /* (*, proto, port) */
		v = bpf_map_lookup_elem(&policy, &k);
		if (v)
			return v;
		k.dport = 0;
	}
	v = bpf_map_lookup_elem(&policy, &k); /* (*, proto, *) */
	if (v)
		return v;
	k.proto = 0;
	return bpf_map_lookup_elem(&policy, &k); /* (*, *, *) */
}

static __always_inline __u32 identity_of(const __u8 *addr)
{
	struct ipcache_key k = {.prefixlen = 128};
	struct ipcache_value *v;
	enum identity_reserved id;

	__builtin_memcpy(k.addr, addr, 16);
	v = bpf_map_lookup_elem(&ipcache, &k);
	/* 0 is the policy wildcard, never a peer's identity */
	id = !v || v->identity == IDENTITY_ANY ? IDENTITY_WORLD : v->identity;
	return id;
}

/*
 * An ICMP error (unreachable, too big, time exceeded, parameter problem)
 * quotes the header of the packet that caused it. If that packet belongs to
 * a tracked connection of this endpoint, the error is part of it: dropping it
 * would break path MTU discovery and fast failure under default deny.
 */
static __noinline int icmp_error_related(struct __sk_buff *skb, const struct packet *outer,
					 __u32 endpoint_id)
{
	struct packet in = {};
	struct ct_key k = {};
	__u32 off = outer->l4_off + 8;
	__u8 hdr[8];

	if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
		return 0;
	if (outer->ipv6) {
		if (bpf_skb_load_bytes(skb, off + 8, in.saddr, 16) < 0 ||
		    bpf_skb_load_bytes(skb, off + 24, in.daddr, 16) < 0)
			return 0;
		in.proto = hdr[6]; /* quoted extension headers are not walked */
		off += 40;
	} else {
		__be32 addrs[2];

		if ((hdr[0] & 0x0f) < 5)
			return 0;
		if (bpf_skb_load_bytes(skb, off + 12, addrs, sizeof(addrs)) < 0)
			return 0;
		addr_from_v4(in.saddr, addrs[0]);
		addr_from_v4(in.daddr, addrs[1]);
		in.proto = 0;
		if (bpf_skb_load_bytes(skb, off + 9, &in.proto, 1) < 0)
			return 0;
		off += (hdr[0] & 0x0f) * 4;
	}
	if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
		return 0;
	if (in.proto == IPPROTO_TCP || in.proto == IPPROTO_UDP) {
		in.sport = (hdr[0] << 8) | hdr[1];
		in.dport = (hdr[2] << 8) | hdr[3];
	} else if (is_icmp(in.proto)) {
		in.sport = in.dport = (hdr[4] << 8) | hdr[5];
	}
	ct_key_build(&k, &in, endpoint_id);
	return bpf_map_lookup_elem(&conntrack, &k) != 0;
}

static __noinline void emit_flow(const struct packet *p, const struct decision *d)
{
	struct flow_event *e = bpf_ringbuf_reserve(&flows, sizeof(*e), 0);

	if (!e) {
		count(0, REASON_EVENT_LOST, d->direction, 0);
		return;
	}
	e->timestamp_ns = bpf_ktime_get_ns();
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->endpoint_id = d->endpoint_id;
	e->src_identity = d->src_identity;
	e->dst_identity = d->dst_identity;
	e->policy_id = d->policy_id;
	e->ifindex = d->ifindex;
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->direction = d->direction;
	e->verdict = d->verdict;
	e->reason = d->reason;
	enum flow_flags ff = (p->ipv6 ? FLOW_F_IPV6 : 0) | (d->l7 ? FLOW_F_L7 : 0) | (p->fragment ? FLOW_F_FRAGMENT : 0);
	e->flags = ff;
	e->_pad[0] = e->_pad[1] = e->_pad[2] = 0;
	bpf_ringbuf_submit(e, 0);
}

/* Updates an established entry; returns 1 when the entry must be removed. */
static __always_inline int ct_refresh(struct ct_value *ct, const struct packet *p, int src_is_a, __u64 now)
{
	if (now - ct->last_seen_ns > CT_REFRESH_NS)
		ct->last_seen_ns = now;
	if (p->proto != IPPROTO_TCP)
		return 0;
	/* RST ends the connection at once: the next SYN on this tuple is judged
	 * anew even if it arrives before the LRU evicts anything. */
	if (p->tcp_flags & TCP_FLAG_RST)
		return 1;
	if (p->tcp_flags & TCP_FLAG_FIN) {
		enum ct_flags fin = src_is_a ? CT_F_FIN_A : CT_F_FIN_B;

		if (!(ct->flags & fin))
			ct->flags |= fin;
	}
	return 0;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	struct packet p = {};
	struct ct_key ck = {};
	struct decision d = {};
	struct ct_value *ct;
	__u32 ep_id, ep_identity, peer_identity;
	int enforced, audit_default, denies, src_is_a, syn, rc;
	__u64 now;

	/* Not an endpoint we manage (or not yet): stay out of the way. */
	if (!ep)
		return TCX_NEXT;
	ep_id = ep->endpoint_id;
	ep_identity = ep->identity;
	d.ifindex = ifindex;
	d.endpoint_id = ep_id;
	d.direction = dir;
	enforced = ep->flags & (dir == DIR_INGRESS ? EP_F_INGRESS_ENFORCED : EP_F_EGRESS_ENFORCED);
	audit_default = ep->flags & (dir == DIR_INGRESS ? EP_F_INGRESS_AUDIT : EP_F_EGRESS_AUDIT);
	denies = ep->flags & (dir == DIR_INGRESS ? EP_F_INGRESS_DENIES : EP_F_EGRESS_DENIES);

	rc = parse(skb, &p);
	if (rc == PARSE_NEIGHBOR) {
		count(0, REASON_NEIGHBOR, dir, skb->len);
		return TCX_NEXT;
	}
	if (rc != PARSE_OK) {
		d.reason = rc == PARSE_MALFORMED ? REASON_MALFORMED : REASON_UNSUPPORTED;
		/* With deny entries, a packet we cannot judge could be one they deny:
		 * fail closed even when the direction is not in default deny. */
		if (!enforced && !denies) {
			count(0, REASON_NOT_ENFORCED, dir, skb->len);
			return TCX_NEXT;
		}
		d.verdict = audit_default ? VERDICT_AUDITED : VERDICT_DROPPED;
		count(0, d.reason, dir, skb->len);
		emit_flow(&p, &d);
		return d.verdict == VERDICT_DROPPED ? TCX_DROP : TCX_NEXT;
	}

	src_is_a = ct_key_build(&ck, &p, ep_id);
	now = bpf_ktime_get_ns();
	/* A bare SYN always opens a new connection, even on a tuple we know:
	 * that is how a reused port, or a policy change, gets judged again. */
	syn = p.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	ct = bpf_map_lookup_elem(&conntrack, &ck);
	if (ct && !syn && !ct_expired(ct, p.proto, now)) {
		__u32 pid = ct->policy_id;

		if (ct_refresh(ct, &p, src_is_a, now))
			bpf_map_delete_elem(&conntrack, &ck);
		count(pid, REASON_ESTABLISHED, dir, skb->len);
		return TCX_NEXT;
	}
	if (p.icmp_error && icmp_error_related(skb, &p, ep_id)) {
		count(0, REASON_ESTABLISHED, dir, skb->len);
		return TCX_NEXT;
	}

	peer_identity = identity_of(dir == DIR_EGRESS ? p.daddr : p.saddr);
	d.src_identity = dir == DIR_EGRESS ? ep_identity : peer_identity;
	d.dst_identity = dir == DIR_EGRESS ? peer_identity : ep_identity;

	if (!enforced && !denies) {
		d.reason = REASON_NOT_ENFORCED;
		d.verdict = VERDICT_FORWARDED;
	} else {
		/* Deny entries apply whether or not the direction is in default
		 * deny; only the miss differs. */
		struct policy_value *v = policy_lookup(ep_id, dir, peer_identity, p.proto, p.dport);

		if (v && v->action == POLICY_ALLOW) {
			d.policy_id = v->policy_id;
			d.reason = REASON_ALLOWED;
			d.verdict = VERDICT_FORWARDED;
			d.l7 = (v->flags & POLICY_F_L7) != 0;
		} else if (v) {
			/* any action other than allow is a deny: fail closed */
			d.policy_id = v->policy_id;
			if (v->flags & POLICY_F_AUDIT) {
				d.reason = REASON_AUDITED;
				d.verdict = VERDICT_AUDITED;
			} else {
				d.reason = REASON_DENIED;
				d.verdict = VERDICT_DROPPED;
			}
		} else if (!enforced) {
			d.reason = REASON_NOT_ENFORCED;
			d.verdict = VERDICT_FORWARDED;
		} else if (audit_default) {
			d.reason = REASON_AUDITED;
			d.verdict = VERDICT_AUDITED;
		} else {
			d.reason = REASON_NO_POLICY;
			d.verdict = VERDICT_DROPPED;
		}
	}

	if (d.verdict == VERDICT_DROPPED) {
		/* A stale entry (expired, or re-judged SYN) must not outlive the deny. */
		if (ct)
			bpf_map_delete_elem(&conntrack, &ck);
	} else if (!p.fragment && !(p.proto == IPPROTO_TCP && (p.tcp_flags & TCP_FLAG_RST)) &&
		   !(p.icmp_error)) {
		struct ct_value nv = {
			.created_ns = now,
			.last_seen_ns = now,
			.policy_id = d.policy_id,
			.direction = dir,
			.flags = (src_is_a ? CT_F_ORIG_IS_A : 0) | (d.verdict == VERDICT_AUDITED ? CT_F_AUDITED : 0) |
				 (d.l7 ? CT_F_L7 : 0),
			.reason = d.reason,
		};
		bpf_map_update_elem(&conntrack, &ck, &nv, BPF_ANY);
	}

	count(d.policy_id, d.reason, dir, skb->len);
	emit_flow(&p, &d);
	return d.verdict == VERDICT_DROPPED ? TCX_DROP : TCX_NEXT;
}

/* tcx ingress of the host-side veth: packets the pod sends (pod egress). */
SEC("tcx/ingress")
int pe_from_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

/* tcx egress of the host-side veth: packets delivered to the pod (pod ingress). */
SEC("tcx/egress")
int pe_to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

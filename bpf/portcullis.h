//go:build ignore

/*
 * Map keys, values and events shared between the BPF programs and the Go
 * package internal/datapath (bpf2go generates Go mirrors of every struct and
 * enum here with -type). Layouts are explicit and padding is named so that
 * the Go mirrors and the kernel agree byte for byte, and so that hashing of
 * keys never sees uninitialised padding.
 */
#ifndef PORTCULLIS_H
#define PORTCULLIS_H

#include "include/kernel.h"
#include "include/skb_bytes.h"

/* Reserved security identities (Cilium's numbers). */
enum identity_reserved {
	IDENTITY_ANY = 0, /* wildcard in policy keys; never an endpoint's identity */
	IDENTITY_HOST = 1,
	IDENTITY_WORLD = 2, /* any address the IP cache does not know */
};

/* Direction from the pod's point of view. */
enum direction {
	DIR_INGRESS = 0, /* towards the pod: tcx EGRESS hook of the host-side veth */
	DIR_EGRESS = 1,  /* from the pod: tcx INGRESS hook of the host-side veth */
};

/*
 * IP cache: LPM trie. Addresses are always 16 bytes; IPv4 is stored as the
 * IPv4-mapped IPv6 address ::ffff:a.b.c.d so one trie serves both families
 * (an IPv4 /24 is prefixlen 96+24). Packets that carry an IPv4-mapped address
 * inside a real IPv6 header are dropped, so a v6 packet cannot borrow the
 * identity of a v4 address.
 */
struct ipcache_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
};

/* Endpoint map: host-side ifindex -> endpoint. */
enum endpoint_flags {
	EP_F_INGRESS_ENFORCED = 1 << 0,
	EP_F_EGRESS_ENFORCED = 1 << 1,
	/* Default deny (no matching entry) in this direction only audits. */
	EP_F_INGRESS_AUDIT = 1 << 2,
	EP_F_EGRESS_AUDIT = 1 << 3,
	/* The direction has deny entries: they apply even when the direction is
	 * not in default deny (enableDefaultDeny: false, or deny-only policies). */
	EP_F_INGRESS_DENIES = 1 << 4,
	EP_F_EGRESS_DENIES = 1 << 5,
};

struct endpoint_info {
	__u32 endpoint_id;
	__u32 identity;
	__u32 flags;
};

/*
 * Policy map: hash. A zero field is a wildcard (identity 0 = any identity,
 * proto 0 = any protocol, dport 0 = any port); port ranges are expanded into
 * one entry per port by the loader. dport is in host byte order.
 */
struct policy_key {
	__u32 endpoint_id;
	__u32 peer_identity;
	__u16 dport;
	__u8 proto;
	__u8 direction;
};

enum policy_action {
	POLICY_ALLOW = 1,
	POLICY_DENY = 2,
};

enum policy_flags {
	POLICY_F_AUDIT = 1 << 0, /* a deny here only audits: count, report, forward */
	POLICY_F_L7 = 1 << 1,    /* reserved for HTTP rules: allow at L4 for now */
};

struct policy_value {
	__u8 action;
	__u8 flags;
	__u16 _pad;
	__u32 policy_id;
};

/*
 * Conntrack: LRU hash keyed by the normalised 5-tuple plus the endpoint.
 * Normalised: the (address, port) pair that compares lower is side "a", so a
 * packet and its reply find the same entry. The endpoint id is part of the
 * key because two local pods talking to each other are judged twice (the
 * sender's egress and the receiver's ingress): a shared entry would let the
 * first verdict stand in for the second.
 */
struct ct_key {
	__u8 addr_a[16];
	__u8 addr_b[16];
	__u32 endpoint_id;
	__u16 port_a;
	__u16 port_b;
	__u8 proto;
	__u8 _pad[3];
};

enum ct_flags {
	CT_F_ORIG_IS_A = 1 << 0, /* the first packet was sent by side a */
	CT_F_AUDITED = 1 << 1,   /* admitted only because of audit mode */
	CT_F_FIN_A = 1 << 2,
	CT_F_FIN_B = 1 << 3,
	CT_F_L7 = 1 << 4,
};

struct ct_value {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u32 policy_id;
	__u8 direction; /* pod direction of the first packet */
	__u8 flags;
	__u8 reason;    /* enum reason of the verdict that created the entry */
	__u8 _pad;
};

/* Why a packet got its verdict; counters and flow events carry it. */
enum reason {
	REASON_ALLOWED = 1,      /* new connection allowed by a policy entry */
	REASON_DENIED = 2,       /* dropped by a deny entry */
	REASON_AUDITED = 3,      /* would have been dropped; forwarded (audit mode) */
	REASON_NO_POLICY = 4,    /* dropped: direction enforced and nothing matched */
	REASON_ESTABLISHED = 5,  /* conntrack hit (reply, established, related ICMP error) */
	REASON_NOT_ENFORCED = 6, /* direction not enforced for this endpoint */
	REASON_MALFORMED = 7,    /* truncated or contradictory headers */
	REASON_UNSUPPORTED = 8,  /* neither IPv4, IPv6 nor ARP; or too many IPv6 extension headers */
	REASON_NEIGHBOR = 9,     /* ARP and ICMPv6 neighbour discovery, always passed */
	REASON_EVENT_LOST = 10,  /* ring buffer full: a flow event was not reported */
};

enum verdict {
	VERDICT_FORWARDED = 1,
	VERDICT_DROPPED = 2,
	VERDICT_AUDITED = 3, /* would-be drop, forwarded */
};

struct counter_key {
	__u32 policy_id;
	__u8 reason;
	__u8 direction;
	__u16 _pad;
};

struct counter_value {
	__u64 packets;
	__u64 bytes;
};

enum flow_flags {
	FLOW_F_IPV6 = 1 << 0,
	FLOW_F_L7 = 1 << 1,     /* allowed by an entry reserved for L7 rules */
	FLOW_F_FRAGMENT = 1 << 2, /* non-first fragment: no ports */
};

/* Ring buffer record: one per new connection judged and per dropped packet. */
struct flow_event {
	__u64 timestamp_ns; /* CLOCK_MONOTONIC */
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 endpoint_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 policy_id;
	__u32 ifindex;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 direction;
	__u8 verdict;
	__u8 reason;
	__u8 flags;
	__u8 _pad[3];
};

#endif

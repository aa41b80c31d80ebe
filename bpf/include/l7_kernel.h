//go:build ignore

/*
 * Minimal hand-written kernel definitions for the L7 (HTTP) programs in
 * http.c. Like kernel.h it keeps to stable UAPI (struct layouts by offset,
 * helper and map-type numbers), so the object builds from clang-14 alone.
 * It is a separate header because the L7 programs need the whole __sk_buff
 * (up to ->sk), struct bpf_sock and struct bpf_sock_ops, which kernel.h does
 * not declare, and the two objects must stay independent.
 *
 * The only non-UAPI kernel layout used (the strparser control block in
 * skb->cb) is read with CO-RE relocations against the running kernel's BTF,
 * see http.c.
 */
#ifndef PORTCULLIS_L7_KERNEL_H
#define PORTCULLIS_L7_KERNEL_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;

#define __bpf_md_ptr(type, name) \
	union {                  \
		type name;       \
		__u64 : 64;      \
	} __attribute__((aligned(8)))

/* UAPI struct bpf_sock (include/uapi/linux/bpf.h). */
struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port; /* host byte order */
	__be16 dst_port;
	__u16 : 16;
	__u32 dst_ip4;
	__u32 dst_ip6[4];
	__u32 state;
	__s32 rx_queue_mapping;
};

/* UAPI struct __sk_buff, up to ->sk (offset 168). */
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
	__u32 tc_index;
	__u32 cb[5];
	__u32 hash;
	__u32 tc_classid;
	__u32 data;
	__u32 data_end;
	__u32 napi_id;
	__u32 family;
	__u32 remote_ip4;
	__u32 local_ip4;
	__u32 remote_ip6[4];
	__u32 local_ip6[4];
	__u32 remote_port;
	__u32 local_port;
	__u32 data_meta;
	__bpf_md_ptr(void *, flow_keys);
	__u64 tstamp;
	__u32 wire_len;
	__u32 gso_segs;
	__bpf_md_ptr(struct bpf_sock *, sk);
};

/* UAPI struct bpf_sock_ops, prefix up to local_port (offset 68). */
struct bpf_sock_ops {
	__u32 op;
	__u32 args[4];
	__u32 family;
	__u32 remote_ip4; /* network byte order */
	__u32 local_ip4;  /* network byte order */
	__u32 remote_ip6[4];
	__u32 local_ip6[4];
	__u32 remote_port; /* network byte order */
	__u32 local_port;  /* host byte order */
	__u32 is_fullsock;
	__u32 snd_cwnd;
	__u32 srtt_us;
	__u32 bpf_sock_ops_cb_flags;
	__u32 state;
	__u32 rtt_min;
	__u32 snd_ssthresh;
	__u32 rcv_nxt;
	__u32 snd_nxt;
	__u32 snd_una;
	__u32 mss_cache;
	__u32 ecn_flags;
	__u32 rate_delivered;
	__u32 rate_interval_us;
	__u32 packets_out;
	__u32 retrans_out;
	__u32 total_retrans;
	__u32 segs_in;
	__u32 data_segs_in;
	__u32 segs_out;
	__u32 data_segs_out;
	__u32 lost_out;
	__u32 sacked_out;
	__u32 sk_txhash;
	/* The UAPI's __u64 bytes_received and bytes_acked, and the socket
	 * pointer (8 bytes), declared as pairs of __u32: with 8-byte members
	 * the struct is 8-byte aligned and clang merges two adjacent 4-byte
	 * context loads (the address arrays) into one 8-byte load the
	 * verifier refuses. The pointer is read with one 8-byte load
	 * (ops_sk() in http.c). */
	__u32 bytes_received[2];
	__u32 bytes_acked[2];
	__u32 sk[2];
	/* The segment of the callback (established callbacks: the one that
	 * completed the handshake, the SYN with TCP Fast Open): skb_data to
	 * skb_data_end is its TCP header, skb_len the whole segment. The
	 * pointers are read with one 8-byte load each (handshake_data() in
	 * http.c). */
	__u32 skb_data[2];
	__u32 skb_data_end[2];
	__u32 skb_len;
	__u32 skb_tcp_flags;
};

/* UAPI struct sk_msg_md. */
struct sk_msg_md {
	__bpf_md_ptr(void *, data);
	__bpf_md_ptr(void *, data_end);
	__u32 family;
	__u32 remote_ip4;
	__u32 local_ip4;
	__u32 remote_ip6[4];
	__u32 local_ip6[4];
	__u32 remote_port; /* network byte order */
	__u32 local_port;  /* host byte order */
	__u32 size;        /* total size of the message */
	__bpf_md_ptr(struct bpf_sock *, sk);
};

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* Map types and flags. */
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LPM_TRIE 11
#define BPF_MAP_TYPE_SOCKHASH 18
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_F_NO_PREALLOC 1
#define BPF_F_MMAPABLE (1U << 10)
#define BPF_ANY 0
#define BPF_NOEXIST 1

/* sock_ops (enum bpf_sock_ops_cb, BPF_SOCK_OPS_*_FLAG, BPF_TCP_*). */
#define BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB 4
#define BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB 5
#define BPF_SOCK_OPS_STATE_CB 10
#define BPF_SOCK_OPS_STATE_CB_FLAG (1 << 2)
#define BPF_TCP_CLOSE 7
#define BPF_TCP_LISTEN 10
#define BPF_TCP_NEW_SYN_RECV 12

/* sk_skb verdicts (enum sk_action). */
#define SK_DROP 0
#define SK_PASS 1

/* Helpers, by their stable UAPI numbers. */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static long (*bpf_skb_load_bytes)(const void *skb, __u32 offset, void *to, __u32 len) = (void *)26;
static __u64 (*bpf_get_socket_cookie)(void *ctx) = (void *)46;
static long (*bpf_msg_apply_bytes)(struct sk_msg_md *msg, __u32 bytes) = (void *)61;
static long (*bpf_msg_cork_bytes)(struct sk_msg_md *msg, __u32 bytes) = (void *)62;
static long (*bpf_msg_pull_data)(struct sk_msg_md *msg, __u32 start, __u32 end, __u64 flags) = (void *)63;
static __u64 (*bpf_get_netns_cookie)(void *ctx) = (void *)122;
static long (*bpf_msg_redirect_hash)(struct sk_msg_md *msg, void *map, void *key, __u64 flags) = (void *)71;
static long (*bpf_msg_push_data)(struct sk_msg_md *msg, __u32 start, __u32 len, __u64 flags) = (void *)90;
static long (*bpf_msg_pop_data)(struct sk_msg_md *msg, __u32 start, __u32 len, __u64 flags) = (void *)91;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)113;
static long (*bpf_sock_ops_cb_flags_set)(struct bpf_sock_ops *ops, int flags) = (void *)59;
static long (*bpf_sock_hash_update)(struct bpf_sock_ops *ops, void *map, void *key, __u64 flags) = (void *)70;
static long (*bpf_sk_release)(void *sk) = (void *)86;
static struct bpf_sock *(*bpf_sk_fullsock)(struct bpf_sock *sk) = (void *)95;
static long (*bpf_loop)(__u32 nr_loops, void *callback_fn, void *callback_ctx, __u64 flags) = (void *)181;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static long (*bpf_skb_store_bytes)(void *skb, __u32 offset, const void *from, __u32 len, __u64 flags) = (void *)9;
static long (*bpf_skb_change_tail)(struct __sk_buff *skb, __u32 len, __u64 flags) = (void *)38;
static long (*bpf_skb_change_head)(struct __sk_buff *skb, __u32 len, __u64 flags) = (void *)43;
static long (*bpf_skb_adjust_room)(struct __sk_buff *skb, __s32 len_diff, __u32 mode, __u64 flags) = (void *)50;
static long (*bpf_sk_redirect_hash)(struct __sk_buff *skb, void *map, void *key, __u64 flags) = (void *)72;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static void (*bpf_ringbuf_discard)(void *data, __u64 flags) = (void *)133;
static __u64 (*bpf_ringbuf_query)(void *ringbuf, __u64 flags) = (void *)134;
#define BPF_RB_NO_WAKEUP 1
#define BPF_RB_FORCE_WAKEUP 2
#define BPF_RB_AVAIL_DATA 0

/* The TCP sequence numbers the 403 paths compare (write_seq: end of what the
 * application wrote; snd_una: first byte not acknowledged; on the client's
 * socket, rcv_nxt and copied_seq), and the egress guard (snd_up). Not UAPI: read
 * through bpf_skc_to_tcp_sock with CO-RE relocations against the kernel's
 * BTF, like the strparser control block in http.c. */
struct tcp_sock {
	__u32 snd_una;
	__u32 snd_nxt;
	__u32 notsent_lowat; /* TCP_NOTSENT_LOWAT, 0: the sysctl's */
	__u32 snd_up;     /* urgent pointer: not snd_una while in urgent mode (MSG_OOB) */
	__u32 write_seq;
	__u32 rcv_nxt;    /* next byte expected from the peer */
	__u32 copied_seq; /* first byte the application has not read */
	__u16 gso_segs;   /* segments in one buffer of the write queue (tcp_xmit_size_goal), 0 before the first write */
	__u32 mss_cache;
	__u32 max_window; /* the peer's largest window so far */
} __attribute__((preserve_access_index));
static struct tcp_sock *(*bpf_skc_to_tcp_sock)(void *sk) = (void *)137;

/* tc: the socket a segment is for (the judging before TCP, l7_fast). */
struct bpf_sock_tuple {
	union {
		struct {
			__u32 saddr;
			__u32 daddr;
			__u16 sport;
			__u16 dport;
		} ipv4;
		struct {
			__u32 saddr[4];
			__u32 daddr[4];
			__u16 sport;
			__u16 dport;
		} ipv6;
	};
};
static struct bpf_sock *(*bpf_sk_lookup_tcp)(void *ctx, struct bpf_sock_tuple *tuple, __u32 tuple_size, __u64 netns,
					     __u64 flags) = (void *)84;
#define BPF_F_CURRENT_NETNS (-1L)
#define TCX_NEXT (-1)
#define TCX_DROP 2

/* kfuncs, resolved by name against the kernel's BTF at load time. */
#define __ksym __attribute__((section(".ksyms")))
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
/* Passed to kfuncs, and read (CO-RE, the kernel nests the address and port
 * pairs in anonymous unions) by l7_reset to find a client connection's
 * 4-tuple. It must reach the object's BTF as a struct, not a forward
 * declaration, which cilium/ebpf refuses to match with the kernel's struct:
 * http.c names it in its BTF anchor. */
struct in6_addr {
	__u8 bytes[16];
};

struct proto;
struct sock_common {
	__u32 skc_daddr;     /* network byte order */
	__u32 skc_rcv_saddr; /* network byte order */
	__u16 skc_dport;     /* network byte order */
	__u16 skc_num;       /* host byte order */
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	struct proto *skc_prot;
} __attribute__((preserve_access_index));
extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* TCP's memory accounting, read by the client side's room check (CO-RE):
 * the node's (struct proto: tcp_memory_allocated against tcp_mem, the
 * pressure flag) and the memory cgroup's (its page counters up the
 * hierarchy; cgroup v1's TCP counter when that is what charges). */
struct atomic64_l7 {
	__s64 counter;
};
struct page_counter {
	struct atomic64_l7 usage; /* pages */
	unsigned long max;
	struct page_counter *parent;
} __attribute__((preserve_access_index));
struct mem_cgroup {
	struct page_counter tcpmem; /* cgroup v1 only (CONFIG_MEMCG_V1) */
	_Bool tcpmem_active;        /* cgroup v1: memory.kmem.tcp.limit_in_bytes was set: sockets charge tcpmem */
} __attribute__((preserve_access_index));
struct percpu_counter_l7 {
	__s64 count; /* without the CPUs' pending parts */
};
struct atomic_l7 {
	int counter;
};
struct proto {
	struct atomic64_l7 *memory_allocated; /* pages */
	struct percpu_counter_l7 *sockets_allocated;
	unsigned long *memory_pressure;
	long *sysctl_mem; /* tcp_mem: pages, [0] low, [1] pressure, [2] hard limit */
} __attribute__((preserve_access_index));

/* The generic socket at the start of every tcp_sock (read through the
 * tcp_sock pointer; the verifier finds the field by its offset). */
struct sock {
	struct sock_common __sk_common;
	int sk_write_pending; /* writers waiting in sendmsg for the connection */
	int sk_wmem_queued;   /* bytes in the write queue (truesize) */
	int sk_forward_alloc; /* bytes charged ahead of use */
	struct {
		struct atomic_l7 rmem_alloc; /* bytes received and not read */
	} sk_backlog;
	int sk_sndbuf;
	unsigned int sk_gso_max_size; /* the route's segmentation size, 0 without segmentation offload */
	__u16 sk_gso_max_segs;
	struct mem_cgroup *sk_memcg; /* the memory cgroup the socket charges, or NULL */
} __attribute__((preserve_access_index));


/* Context of iter/tcp programs (struct bpf_iter__tcp); the verifier checks
 * these accesses against the kernel's own definition. */
struct bpf_iter_meta;
struct bpf_iter__tcp {
	__bpf_md_ptr(struct bpf_iter_meta *, meta);
	__bpf_md_ptr(struct sock_common *, sk_common);
	__u32 uid;
};

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
#define __always_inline inline __attribute__((always_inline))
#define __noinline __attribute__((noinline))

#define bpf_ntohs(x) __builtin_bswap16(x)
#define bpf_htonl(x) __builtin_bswap32(x)
#define bpf_htons(x) __builtin_bswap16(x)

#endif

//go:build ignore

/*
 * skb_bytes(): header bytes without a helper call where the skb allows it.
 * Shared by portcullis.c and http.c; include it after the header that
 * declares struct __sk_buff and bpf_skb_load_bytes (kernel.h, l7_kernel.h).
 */
#ifndef PORTCULLIS_SKB_BYTES_H
#define PORTCULLIS_SKB_BYTES_H

/* Offsets skb_bytes() reads in place; past it, always the helper. */
#define SKB_BYTES_OFF_MAX 256

/*
 * The n bytes at off from skb->data (the Ethernet header in tc and tcx, the
 * network header in cgroup_skb): read in place when the skb's linear part
 * holds them, else copied into buf by bpf_skb_load_bytes (paged data, as
 * veth with GRO can hand over); NULL when neither can. n must be a constant.
 * In place costs no helper call: on the machine the project measures on, a
 * call of bpf_skb_load_bytes costs about 30 ns, the in-place read 1 to 2
 * (bpf/README.md, "What a call costs here").
 */
static __always_inline const __u8 *skb_bytes(struct __sk_buff *skb, __u32 off, void *buf, __u32 n)
{
	const __u8 *data = (const __u8 *)(long)skb->data;
	const __u8 *end = (const __u8 *)(long)skb->data_end;
	const __u8 *p;

	if (off < SKB_BYTES_OFF_MAX) {
		p = data + off;
		if (p + n <= end)
			return p;
	}
	if (bpf_skb_load_bytes(skb, off, buf, n))
		return 0;
	return buf;
}

/*
 * The 32 bytes at off (an IPv6 header's two addresses, adjacent) into dst,
 * which must be 8-byte aligned (the verifier refuses a misaligned stack
 * access): read in place and copied in 8-byte words, or copied there by the
 * helper (the same words are then copied onto themselves). 0, or -1 when
 * neither can. Straight into the caller's summary: a 40-byte header copy on
 * the stack is what the 512-byte limit cannot afford.
 */
static __always_inline int skb_addrs6(struct __sk_buff *skb, __u32 off, void *dst)
{
	const __u64 *w = (const __u64 *)skb_bytes(skb, off, dst, 32);
	__u64 *to = (__u64 *)dst;

	if (!w)
		return -1;
#pragma unroll
	for (int i = 0; i < 4; i++)
		to[i] = w[i];
	return 0;
}

#endif

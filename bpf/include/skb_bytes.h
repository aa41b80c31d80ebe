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

#endif

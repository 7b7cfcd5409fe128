/* A program the verifier rejects only after 160 instructions: its log is ~10 KB. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("socket")
int rejected(struct __sk_buff *skb)
{
	volatile __u64 a[32] = {};
	__u64 s = 0;

#pragma unroll
	for (int i = 0; i < 32; i++)
		s += a[i] * (i + 3);
	return *(volatile int *)s;	/* a number used as a pointer: rejected at the end */
}

// SPDX-License-Identifier: GPL-2.0
/* Passive observer of a running kdamond for bench/damon_compare.py: one record per DAMON
 * region at every aggregation (the damon_aggregated tracepoint, via tp_btf so tracefs is not
 * needed). It changes nothing in DAMON: it only copies what the tracepoint reports.
 * Built by bench/damon_compare.py with the same flags as bpf/build.sh. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define NREC (1 << 17)

struct rec {
	__u64 start;
	__u64 end;
	__u64 ns;
	__u32 nr_accesses;
	__u32 age;
	__u32 target_id;
	__u32 nr_regions;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, NREC);
	__type(key, __u32);
	__type(value, struct rec);
} recs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} count SEC(".maps");

SEC("tp_btf/damon_aggregated")
int BPF_PROG(on_aggregated, unsigned int target_id, struct damon_region *r, unsigned int nr_regions)
{
	__u32 zero = 0;
	__u64 *c = bpf_map_lookup_elem(&count, &zero);
	if (!c)
		return 0;
	__u64 i = __sync_fetch_and_add(c, 1);
	__u32 k = i & (NREC - 1);
	struct rec *out = bpf_map_lookup_elem(&recs, &k);
	if (!out)
		return 0;
	out->start = BPF_CORE_READ(r, ar.start);
	out->end = BPF_CORE_READ(r, ar.end);
	out->nr_accesses = BPF_CORE_READ(r, nr_accesses);
	out->age = BPF_CORE_READ(r, age);
	out->ns = bpf_ktime_get_ns();
	out->target_id = target_id;
	out->nr_regions = nr_regions;
	return 0;
}

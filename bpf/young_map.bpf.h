/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The maps and the recording step shared by the sources that learn about young pages from
 * the kernel's own aging (mglru_fexit.bpf.c, mglru_hook.bpf.c). One hash entry per young
 * page of a followed process: the hash is the aggregate (a page seen young twice in an
 * interval is one entry), and Python drains it with one batch syscall per harvest instead
 * of reading one event per page.
 */
#ifndef PAGEHEAT_YOUNG_MAP_BPF_H
#define PAGEHEAT_YOUNG_MAP_BPF_H

#include "young.h"

#define PAGE_SHIFT	12

/* tgid -> 1 for each followed process; written by Python. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} targets SEC(".maps");

/*
 * (tgid, vpn) -> YOUNG_* bits. Sized by Python before load; not preallocated, so its memory
 * follows the number of young pages, not the worst case.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct young_key);
	__type(value, __u32);
} young SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct young_stats);
} stats SEC(".maps");

/*
 * Userspace checks its copy of enum young_flag against the object's BTF at load; clang emits
 * an enum's BTF only where some type uses it: this constant, never read, is that use.
 */
const volatile struct {
	enum young_flag young_flag;
} young_btf_anchor = {};

static __always_inline struct young_stats *get_stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

/* The followed process that owns mm, or 0. */
static __always_inline __u32 target_of(struct mm_struct *mm)
{
	/* mm->owner is the thread-group leader (CONFIG_MEMCG); NULL while an mm is torn down. */
	__u32 tgid = BPF_CORE_READ(mm, owner, tgid);

	return tgid && bpf_map_lookup_elem(&targets, &tgid) ? tgid : 0;
}

/* The page at addr of mm was young: remember it if mm belongs to a followed process. */
static __always_inline void record_young(struct young_stats *st, struct mm_struct *mm,
					 unsigned long addr, __u32 flag)
{
	struct young_key key = {};
	__u32 *v, value = flag;
	__u32 tgid = target_of(mm);

	if (!tgid)
		return;
	__sync_fetch_and_add(&st->target_young, 1);
	key.tgid = tgid;
	key.vpn = addr >> PAGE_SHIFT;
	v = bpf_map_lookup_elem(&young, &key);
	if (v) {
		/* A plain store: a lost race between the two flags still leaves the page young. */
		*v |= flag;
		return;
	}
	if (bpf_map_update_elem(&young, &key, &value, BPF_NOEXIST)) {
		v = bpf_map_lookup_elem(&young, &key);	/* EEXIST: another CPU inserted it */
		if (v)
			*v |= flag;
		else
			__sync_fetch_and_add(&st->dropped, 1);
	}
}

#endif

// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * mglru-fexit: record which pages the kernel itself finds young.
 *
 * MGLRU's page-table walk (walk_pte_range, walk_pmd_range_locked), its rmap look-around
 * (lru_gen_look_around) and classic rmap reclaim all clear Accessed bits through
 * ptep_test_and_clear_young / pmdp_test_and_clear_young, which x86 keeps out of line. MGLRU
 * only calls them for PTEs it already saw young, so a return of 1 is "accessed since the
 * last time the kernel looked" and no call is "not accessed". We hook their exits, keep
 * only the target processes' mms, and set one hash entry per young page: the hash is the
 * aggregate (a page seen young twice in an interval is one entry), and Python drains it
 * with one batch syscall per harvest instead of reading one event per page.
 *
 * x86-64 only: _PAGE_PSE below is the x86 leaf bit.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "mglru_fexit.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define PAGE_SHIFT	12
#define _PAGE_PSE	(1ULL << 7)

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
	__type(value, struct fexit_stats);
} stats SEC(".maps");

static __always_inline struct fexit_stats *get_stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

static __always_inline void record(struct fexit_stats *st, struct vm_area_struct *vma,
				   unsigned long addr, __u32 flag)
{
	struct young_key key = {};
	__u32 *v, value = flag;
	/* mm->owner is the thread-group leader (CONFIG_MEMCG); NULL while an mm is torn down. */
	__u32 tgid = BPF_CORE_READ(vma, vm_mm, owner, tgid);

	if (!tgid || !bpf_map_lookup_elem(&targets, &tgid))
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

/* A PTE-level young test returned ret: count it, and record the page if it was young. */
static __always_inline void on_pte_young(struct vm_area_struct *vma, unsigned long addr, int ret,
					 bool count_pte)
{
	struct fexit_stats *st = get_stats();

	if (!st)
		return;
	__sync_fetch_and_add(&st->calls, 1);
	if (ret != 1)
		return;
	__sync_fetch_and_add(&st->young, 1);
	if (count_pte)
		__sync_fetch_and_add(&st->pte_young, 1);
	record(st, vma, addr, YOUNG_PTE);
}

SEC("fexit/ptep_test_and_clear_young")
int BPF_PROG(on_pte, struct vm_area_struct *vma, unsigned long addr, pte_t *ptep, int ret)
{
	on_pte_young(vma, addr, ret, true);
	return 0;
}

/*
 * x86's ptep_clear_flush_young (rmap reclaim without MGLRU's look-around) may have its call
 * to ptep_test_and_clear_young inlined; hooking it too loses nothing, the hash deduplicates.
 */
SEC("fexit/ptep_clear_flush_young")
int BPF_PROG(on_pte_flush, struct vm_area_struct *vma, unsigned long addr, pte_t *ptep, int ret)
{
	on_pte_young(vma, addr, ret, false);
	return 0;
}

SEC("fexit/pmdp_test_and_clear_young")
int BPF_PROG(on_pmd, struct vm_area_struct *vma, unsigned long addr, pmd_t *pmdp, int ret)
{
	struct fexit_stats *st = get_stats();
	__u64 pmd = 0;

	if (!st)
		return 0;
	__sync_fetch_and_add(&st->calls, 1);
	if (ret != 1)
		return 0;
	__sync_fetch_and_add(&st->young, 1);
	/*
	 * With ARCH_HAS_NONLEAF_PMD_YOUNG (x86), MGLRU also ages the Accessed bit of PMDs that
	 * point to PTE tables; that says nothing about any one page, so only huge leaves count.
	 */
	if (bpf_probe_read_kernel(&pmd, sizeof(pmd), pmdp) || !(pmd & _PAGE_PSE)) {
		__sync_fetch_and_add(&st->pmd_nonleaf, 1);
		return 0;
	}
	__sync_fetch_and_add(&st->pmd_young, 1);
	record(st, vma, addr & ~((1UL << 21) - 1), YOUNG_PMD);
	return 0;
}

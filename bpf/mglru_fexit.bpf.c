// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * mglru-fexit: record which pages the kernel itself finds young.
 *
 * MGLRU's page-table walk (walk_pte_range, walk_pmd_range_locked), its rmap look-around
 * (lru_gen_look_around) and classic rmap reclaim all clear Accessed bits through
 * ptep_test_and_clear_young / pmdp_test_and_clear_young, which x86 keeps out of line. MGLRU
 * only calls them for PTEs it already saw young, so a return of 1 is "accessed since the
 * last time the kernel looked" and no call is "not accessed". We hook their exits, keep
 * only the target processes' mms, and record each young page (young_map.bpf.h).
 *
 * x86-64 only: _PAGE_PSE below is the x86 leaf bit.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "young_map.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define _PAGE_PSE	(1ULL << 7)

/* A PTE-level young test returned ret: count it, and record the page if it was young. */
static __always_inline void on_pte_young(struct vm_area_struct *vma, unsigned long addr, int ret,
					 bool count_pte)
{
	struct young_stats *st = get_stats();

	if (!st)
		return;
	__sync_fetch_and_add(&st->calls, 1);
	if (ret != 1)
		return;
	__sync_fetch_and_add(&st->young, 1);
	if (count_pte)
		__sync_fetch_and_add(&st->pte_young, 1);
	record_young(st, vma->vm_mm, addr, YOUNG_PTE);
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
	struct young_stats *st = get_stats();
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
	record_young(st, vma->vm_mm, addr & ~((1UL << 21) - 1), YOUNG_PMD);
	return 0;
}

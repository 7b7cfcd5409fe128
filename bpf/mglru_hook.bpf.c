// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * mglru-hook: the young pages MGLRU reports through the tracepoints of pageheat's kernel
 * series (kernel-patch/), and the aging started and filtered by BPF.
 *
 * - tp_btf/mglru_{pte,pmd,look_around}_young_tp fire once per young leaf entry the aging's
 *   page-table walk or the eviction's rmap look-around found, with the mm, address, pfn,
 *   node, size and anon flag: no fexit on a generic arch helper, no guessing which caller
 *   ran it, and no non-leaf PMD noise.
 * - run_aging (BPF_PROG_TYPE_SYSCALL, run by Python through BPF_PROG_TEST_RUN) calls the
 *   series' bpf_lru_gen_run_aging() kfunc: no debugfs.
 * - skip_mm (fmod_ret on bpf_lru_gen_skip_mm) limits the walk of *our* aging to the
 *   followed processes. The kernel's own aging (kswapd, direct reclaim) is never filtered:
 *   the filter applies only while the thread group that called run_aging is walking.
 *
 * All three need kernel-patch/'s series (CONFIG_LRU_GEN_BPF_HARVEST); Python checks the
 * kernel's BTF for them before loading, so a stock kernel gets one clear line instead.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "young_map.bpf.h"
#include "mglru_hook.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

extern int bpf_lru_gen_run_aging(__u64 cgroup_id, int nid, bool can_swap,
				 bool force_scan) __ksym;

/* tgid of the process whose run_aging is walking with the filter on, else 0. */
__u32 filtering_tgid;

/* One young entry: count it (kind: which tracepoint's counter), record it if followed. */
static __always_inline int on_young(struct young_stats *st, __u64 *kind, struct mm_struct *mm,
				    unsigned long addr, __u32 flag)
{
	__sync_fetch_and_add(&st->calls, 1);
	__sync_fetch_and_add(&st->young, 1);
	__sync_fetch_and_add(kind, 1);
	record_young(st, mm, addr, flag);
	return 0;
}

SEC("tp_btf/mglru_pte_young_tp")
int BPF_PROG(pte_young, struct mm_struct *mm, unsigned long addr, unsigned long pfn, int nid,
	     unsigned int nr_pages, bool anon, unsigned long seq)
{
	struct young_stats *st = get_stats();

	return st ? on_young(st, &st->pte_young, mm, addr, YOUNG_PTE) : 0;
}

SEC("tp_btf/mglru_pmd_young_tp")
int BPF_PROG(pmd_young, struct mm_struct *mm, unsigned long addr, unsigned long pfn, int nid,
	     unsigned int nr_pages, bool anon, unsigned long seq)
{
	struct young_stats *st = get_stats();

	/* addr is PMD aligned; the entry maps the whole THP (nr_pages = 512) */
	return st ? on_young(st, &st->pmd_young, mm, addr, YOUNG_PMD) : 0;
}

SEC("tp_btf/mglru_look_around_young_tp")
int BPF_PROG(look_around_young, struct mm_struct *mm, unsigned long addr, unsigned long pfn,
	     int nid, unsigned int nr_pages, bool anon, unsigned long seq)
{
	struct young_stats *st = get_stats();

	return st ? on_young(st, &st->look_around, mm, addr, YOUNG_PTE) : 0;
}

SEC("fmod_ret/bpf_lru_gen_skip_mm")
int BPF_PROG(skip_mm, struct mm_struct *mm, int ret)
{
	struct young_stats *st;
	__u32 tgid = filtering_tgid;

	if (!tgid || bpf_get_current_pid_tgid() >> 32 != tgid)
		return ret;	/* not our aging: the kernel's decision stands */
	st = get_stats();
	if (target_of(mm)) {
		if (st)
			__sync_fetch_and_add(&st->mm_walked, 1);
		return ret;
	}
	if (st)
		__sync_fetch_and_add(&st->mm_skipped, 1);
	return 1;
}

SEC("syscall")
int run_aging(struct aging_args *args)
{
	/* One aging thread per daemon, so a plain store is enough. */
	filtering_tgid = args->filter ? bpf_get_current_pid_tgid() >> 32 : 0;
	args->ret = bpf_lru_gen_run_aging(args->cgroup_id, args->nid, args->can_swap, true);
	filtering_tgid = 0;
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/* Counts the accessed bits the multi-gen LRU harvests for one process. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "harvest.h"

char LICENSE[] SEC("license") = "GPL";

const volatile pid_t target_tgid;	/* 0: every process */
struct harvest_counts counts;

extern int bpf_lru_gen_run_aging(__u64 cgroup_id, int nid, bool can_swap,
				 bool force_scan) __ksym;

static bool is_target(struct mm_struct *mm)
{
	/* BPF_CORE_READ, not mm->owner: raw_tp arguments are untyped */
	return !target_tgid || BPF_CORE_READ(mm, owner, tgid) == target_tgid;
}

static void count(__u64 *counter, struct mm_struct *mm, unsigned int nr_pages,
		  unsigned long seq)
{
	if (!is_target(mm)) {
		__sync_fetch_and_add(&counts.other, 1);
		return;
	}
	__sync_fetch_and_add(counter, 1);
	__sync_fetch_and_add(&counts.pages, nr_pages);
	counts.last_seq = seq;
}

SEC("tp_btf/mglru_pte_young_tp")
int BPF_PROG(pte_young, struct mm_struct *mm, unsigned long addr,
	     unsigned long pfn, int nid, unsigned int nr_pages, bool anon,
	     unsigned long seq)
{
	count(&counts.pte, mm, nr_pages, seq);
	return 0;
}

/* raw_tp needs no BPF trampoline; it must count what pte_young counts */
SEC("raw_tp/mglru_pte_young_tp")
int BPF_PROG(pte_young_raw, struct mm_struct *mm)
{
	if (is_target(mm))
		__sync_fetch_and_add(&counts.pte_raw, 1);
	return 0;
}

SEC("tp_btf/mglru_pmd_young_tp")
int BPF_PROG(pmd_young, struct mm_struct *mm, unsigned long addr,
	     unsigned long pfn, int nid, unsigned int nr_pages, bool anon,
	     unsigned long seq)
{
	count(&counts.pmd, mm, nr_pages, seq);
	return 0;
}

SEC("tp_btf/mglru_look_around_young_tp")
int BPF_PROG(look_around_young, struct mm_struct *mm, unsigned long addr,
	     unsigned long pfn, int nid, unsigned int nr_pages, bool anon,
	     unsigned long seq)
{
	count(&counts.look_around, mm, nr_pages, seq);
	return 0;
}

/* The aging walks only the target process. */
SEC("fmod_ret/bpf_lru_gen_skip_mm")
int BPF_PROG(skip_mm, struct mm_struct *mm, int ret)
{
	if (is_target(mm)) {
		__sync_fetch_and_add(&counts.walked, 1);
		return 0;
	}
	__sync_fetch_and_add(&counts.skipped, 1);
	return 1;
}

SEC("syscall")
int run_aging(struct aging_args *args)
{
	args->ret = bpf_lru_gen_run_aging(args->cgroup_id, args->nid,
					  args->can_swap, args->force_scan);
	return 0;
}

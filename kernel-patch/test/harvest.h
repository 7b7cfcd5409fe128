/* SPDX-License-Identifier: GPL-2.0 */
/* Shared by harvest.bpf.c and harvest.c. */
#ifndef HARVEST_H
#define HARVEST_H

/* Counters of the target process, read by user space after each round. */
struct harvest_counts {
	__u64 pte;		/* mglru_pte_young_tp events (tp_btf) */
	__u64 pte_raw;		/* the same, counted by a raw_tp program */
	__u64 pmd;		/* mglru_pmd_young_tp events */
	__u64 look_around;	/* mglru_look_around_young_tp events */
	__u64 pages;		/* sum of nr_pages over all events */
	__u64 other;		/* events of other processes */
	__u64 walked;		/* bpf_lru_gen_skip_mm() returned 0 */
	__u64 skipped;		/* bpf_lru_gen_skip_mm() returned 1 */
	__u64 last_seq;		/* seq of the last event */
};

/* Context of the BPF_PROG_TYPE_SYSCALL program. */
struct aging_args {
	__u64 cgroup_id;
	int nid;
	int can_swap;
	int force_scan;
	int ret;		/* out: bpf_lru_gen_run_aging() */
};

#endif

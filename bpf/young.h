/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Records and codes shared by the young-page sources (mglru_fexit.bpf.c, mglru_hook.bpf.c)
 * and exporter/sources/mglru.py. The Python side describes each struct once (a numpy dtype)
 * and each enum once (an IntFlag) and checks them against the object's BTF at every load,
 * field by field and value by value (pageheat.kernel.libbpf.Btf).
 */
#ifndef PAGEHEAT_YOUNG_H
#define PAGEHEAT_YOUNG_H

/* young.value bits: which hook saw the page young (both can, after a THP split). */
enum young_flag {
	YOUNG_PTE = 1U << 0,	/* a 4 KiB PTE: key.vpn is the page */
	YOUNG_PMD = 1U << 1,	/* a PMD-mapped THP: key.vpn is its first page, 512 pages */
};

/* Key of the "young" hash: one entry per (target, page) per harvest interval. */
struct young_key {
	__u32 tgid;
	__u32 pad;
	__u64 vpn;	/* virtual address >> 12 */
};

/* The one-element "stats" array: counters written by BPF, read (and never reset) by Python. */
struct young_stats {
	__u64 calls;		/* hook calls, any mm */
	__u64 young;		/* calls that found a young entry, any mm */
	__u64 target_young;	/* young entries of a target's mm */
	__u64 pte_young;
	__u64 pmd_young;	/* leaf (huge) PMDs */
	__u64 pmd_nonleaf;	/* non-leaf PMD Accessed bits (x86 ages them too): ignored */
	__u64 dropped;		/* "young" was full: a young page lost */
	__u64 look_around;	/* young entries found by the eviction's rmap look-around */
	__u64 mm_walked;	/* mglru-hook: mm_structs our own aging walked */
	__u64 mm_skipped;	/* mglru-hook: mm_structs our own aging skipped (not a target) */
};

#endif

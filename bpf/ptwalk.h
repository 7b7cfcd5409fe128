/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Records and codes shared between ptwalk.bpf.c and exporter/sources/pagetable.py. The Python
 * side describes each struct once (a numpy dtype) and each enum once (an IntEnum/IntFlag),
 * and checks them field by field and value by value against the object's BTF at every load
 * (pageheat.kernel.libbpf.Btf): a change here without a change there is one clear error,
 * never misread memory. The enums are in BTF because ptwalk_btf_anchor (ptwalk.bpf.c) uses
 * them.
 */
#ifndef PAGEHEAT_PTWALK_H
#define PAGEHEAT_PTWALK_H

/* vma_rec.kind: what the whole VMA is. */
enum vma_kind {
	VMA_ANON = 0,
	VMA_FILE = 1,
	VMA_SHMEM = 2,
	VMA_HEAP = 3,
	VMA_STACK = 4,
	VMA_OTHER = 5,	/* hugetlb, PFN/IO maps, the vDSO: only counted (vma_rec.unmonitored) */
};

/* vma_rec.flags bits */
enum vma_flag {
	VMA_F_SHARED = 1U << 0,
	VMA_F_SKIPPED = 1U << 1,	/* kind OTHER: its pages are not reported */
	/* Why a VMA is skipped: clear_refs cannot age it (hugetlb: fs/proc/task_mmu.c's
	 * clear_refs_walk_ops has no hugetlb_entry; VM_PFNMAP: clear_refs_test_walk skips it). */
	VMA_F_HUGETLB = 1U << 2,
	VMA_F_PFNMAP = 1U << 3,		/* VM_PFNMAP or VM_IO: device memory, no struct page */
	VMA_F_VDSO = 1U << 4,
	VMA_F_NOACCESS = 1U << 5,	/* no VM_READ, VM_WRITE or VM_EXEC: "---" in maps */
	VMA_F_ANON_VMA = 1U << 6,	/* has an anon_vma: may hold anonymous pages */
};

/* table_rec.flags bits */
enum table_flag {
	TABLE_F_HUGE = 1U << 0,		/* a PMD-mapped THP: 512 pages, one Accessed bit */
};

/* What find_base returns (its BPF_PROG_TEST_RUN retval). */
enum find_base_result {
	FIND_BASE_OK = 0,
	FIND_BASE_NO_STATE = 1,		/* the state map lookup failed */
	FIND_BASE_NOT_FOUND = 2,	/* no candidate base led to the planted pattern */
};

struct vma_rec {
	__u64 start;
	__u64 end;
	__u32 kind;
	__u32 flags;
	__u64 unmonitored;	/* skipped VMAs: mapped 4 KiB pages, counted but not reported */
	/*
	 * What /proc/PID/maps names the VMA by, besides its bounds: its struct file, else its
	 * anon_vma_name (PR_SET_VMA_ANON_NAME), else 0. Userspace only compares it, to re-read
	 * maps when a VMA was replaced in place (MAP_FIXED, a rename); it never leaves pagetable.py.
	 */
	__u64 ident;
};

/*
 * One PTE table (or one huge PMD) clipped to one VMA. Bit i of each bitmap is the page at
 * addr + i * 4096. A table that two VMAs share is reported once per VMA, each copy masked to
 * its own VMA, so every page is reported exactly once.
 */
struct table_rec {
	__u64 addr;		/* 2 MiB aligned virtual address */
	__u64 pmd;		/* raw PMD entry: the PFN of a huge page */
	__u32 vma;		/* index into the vmas array */
	__u32 flags;
	__u64 present[8];
	__u64 accessed[8];
	__u64 written[8];	/* in a private file/shmem VMA: an anon COW copy (RW, Dirty or PageAnon) */
};

/*
 * The one-element "state" array: what changes after load. Settings fixed at load are
 * const volatile globals in ptwalk.bpf.c instead (.rodata, set before load).
 */
struct ptwalk_state {
	/* found by find_base, read by scan */
	__u64 direct_map_base;	/* page_offset_base */
	__u32 target_tgid;	/* per scan, written by userspace */
	__u32 pgtable_levels;	/* 4 or 5 */
	/* find_base input/output */
	__u64 probe_vaddr;
	__u64 probe_pfn;
	__u64 probe_pattern;
	__u64 probe_tries;
	__u64 vmemmap_base;	/* struct page array, found by find_base; 0 if not found */
	__u64 vmemmap_lo;	/* where find_base starts looking for it */
	__u64 vmemmap_steps;	/* how many 1 GiB steps it may look */
	__u64 huge_zero_pfn;	/* kernels that do not mark the huge zero PMD special: its PFN */
	__u64 huge_probe_vaddr;	/* find_base: a read-only THP-eligible page of ours */
	/* per-scan counters, reset by userspace before each scan */
	__u64 n_vmas;
	__u64 n_tables;
	__u64 dropped_vmas;
	__u64 dropped_tables;
	__u64 read_errors;
	__u64 skipped_huge_pud;
	__u64 dup_vmas;
	__u64 young_flag_hits;	/* idle PTEs and PMDs counted as accessed for PG_young */
	__u64 young_flag_shared;	/* PG_young not counted: the folio may be mapped more than once */
	__u64 special_ptes;	/* zero page and PFN-mapped PTEs in walked VMAs: not the process's */
	__u64 special_pmds;	/* huge zero page (and special huge PMDs) in walked VMAs */
	__u64 step_limit_vmas;	/* VMAs whose walk ran out of steps before their end */
	__u64 anon_cow_checks;	/* private file/shmem PTEs whose struct page was asked PageAnon */
	__u64 last_mm;
	__u64 last_vm_end;
};

#endif

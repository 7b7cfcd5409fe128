// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * ptwalk: read a process's page-table Accessed bits from a task_vma iterator.
 *
 * Userspace ages the pages by writing 1 to /proc/PID/clear_refs; each scan then reports,
 * per PTE table (or huge PMD) and clipped to its VMA, which pages are present and which were
 * accessed since that aging. Results go to mmap-able arrays that Python reads as numpy views:
 * nothing is written to the iterator's seq_file, so no VMA is too large to report.
 *
 * x86-64 only: entry bits and the 4/5-level layout below are the x86 ones.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "ptwalk.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define PAGE_SHIFT	12
#define PMD_SHIFT	21
#define PUD_SHIFT	30
#define P4D_SHIFT	39
#define PGD5_SHIFT	48
#define PTRS		512

#define _PAGE_PRESENT	(1ULL << 0)
#define _PAGE_RW	(1ULL << 1)
#define _PAGE_ACCESSED	(1ULL << 5)
#define _PAGE_DIRTY	(1ULL << 6)
#define _PAGE_PSE	(1ULL << 7)
#define _PAGE_PROTNONE	(1ULL << 8)	/* NUMA-hinting PROT_NONE: still a present page */
/* Bits 12..51: the next table's or the page's physical frame. */
#define PHYS_MASK	0x000ffffffffff000ULL

#define VM_SHARED	0x00000008UL
#define VM_PFNMAP	0x00000400UL
#define VM_IO		0x00004000UL
#define VM_HUGETLB	0x00400000UL
#define TMPFS_MAGIC	0x01021994

/* bpf_loop's own limit (BPF_MAX_LOOPS): 16 TiB of populated PMD slots per VMA. */
#define MAX_PMD_STEPS	(1U << 23)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ptwalk_state);
} state SEC(".maps");

/* Sized by userspace before load (bpf_map__set_max_entries). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vma_rec);
} vmas SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct table_rec);
} tables SEC(".maps");

/* Whole PTE tables, slot for slot with "tables"; only filled when copy_raw is set. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64[PTRS]);
} raw SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64[PTRS]);
} scratch SEC(".maps");

static __always_inline struct ptwalk_state *get_state(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&state, &zero);
}

/* Entry idx of the table at physical address phys, through the direct map. */
static __always_inline int read_entry(struct ptwalk_state *st, __u64 phys, __u64 idx, __u64 *out)
{
	return bpf_probe_read_kernel(out, sizeof(*out),
				     (void *)(st->direct_map_base + (phys & PHYS_MASK) + idx * 8));
}

/*
 * Walk from the PGD (a direct-map pointer) down to the PMD entry for addr. Returns 0 with *pmd
 * set, or 1 with *next set to the first address worth looking at after an empty upper level.
 */
static __always_inline int lookup_pmd(struct ptwalk_state *st, __u64 pgd, __u64 addr,
				      __u64 *pmd, __u64 *next)
{
	__u64 e = 0;

	if (st->pgtable_levels == 5) {
		if (bpf_probe_read_kernel(&e, 8, (void *)(pgd + ((addr >> PGD5_SHIFT) & 511) * 8)))
			goto fault;
		if (!(e & _PAGE_PRESENT)) {
			*next = (addr | ((1ULL << PGD5_SHIFT) - 1)) + 1;
			return 1;
		}
		if (read_entry(st, e, (addr >> P4D_SHIFT) & 511, &e))
			goto fault;
	} else if (bpf_probe_read_kernel(&e, 8, (void *)(pgd + ((addr >> P4D_SHIFT) & 511) * 8))) {
		goto fault;
	}
	if (!(e & _PAGE_PRESENT)) {
		*next = (addr | ((1ULL << P4D_SHIFT) - 1)) + 1;
		return 1;
	}
	if (read_entry(st, e, (addr >> PUD_SHIFT) & 511, &e))
		goto fault;
	if (!(e & _PAGE_PRESENT) || (e & _PAGE_PSE)) {
		/* 1 GiB pages exist only in hugetlb VMAs, which are not walked. */
		if (e & _PAGE_PSE)
			st->skipped_huge_pud++;
		*next = (addr | ((1ULL << PUD_SHIFT) - 1)) + 1;
		return 1;
	}
	if (read_entry(st, e, (addr >> PMD_SHIFT) & 511, pmd))
		goto fault;
	return 0;
fault:
	st->read_errors++;
	*next = (addr | ((1ULL << PMD_SHIFT) - 1)) + 1;
	return 1;
}

/* Bits [lo, hi) of word k of a 512-bit bitmap. */
static __always_inline __u64 range_mask(__u32 lo, __u32 hi, int k)
{
	int a = (int)lo - 64 * k, b = (int)hi - 64 * k;
	__u64 m;

	if (a < 0)
		a = 0;
	if (b > 64)
		b = 64;
	if (b <= a)
		return 0;
	m = b == 64 ? ~0ULL : (1ULL << b) - 1;
	return m & ~((1ULL << a) - 1);
}

struct walk_ctx {
	__u64 pgd;
	__u64 addr;
	__u64 vm_start;
	__u64 vm_end;
	__u32 vma_idx;
};

struct bits_ctx {
	__u64 *pt;
	struct table_rec *rec;
	struct ptwalk_state *st;
	__u32 lo, hi;
	__u64 any;
};

/*
 * Was the folio of this PTE/PMD marked young by someone who cleared its Accessed bit?
 * DAMON (damon_ptep_mkold) and idle page tracking clear Accessed bits of pages they sample
 * and keep the information in PG_young; clear_refs clears PG_young too, so "Accessed bit or
 * PG_young" means "accessed since our last aging" even while DAMON runs. PG_young exists on
 * 64-bit kernels with CONFIG_PAGE_IDLE_FLAG (selected by DAMON and IDLE_PAGE_TRACKING).
 * The flag is per folio: for a PTE-mapped page of a large folio it does not say which page
 * was used, so only single-page folios (and whole PMD-mapped THPs, whole_folio) count.
 */
/*
 * page->flags became a memdesc_flags_t struct in 6.18 ("mm: introduce memdesc_flags_t");
 * before it was an unsigned long. Same place, different type: one flavor each, so the
 * relocation that does not match this kernel is never used.
 */
struct page___memdesc {
	memdesc_flags_t flags;
} __attribute__((preserve_access_index));

struct page___ulong {
	unsigned long flags;
} __attribute__((preserve_access_index));

static __always_inline int folio_young(struct ptwalk_state *st, __u64 entry, int whole_folio)
{
	__u64 w[2] = {}, page, flags = 0;
	__u32 off_flags = bpf_core_field_exists(struct page___memdesc, flags) ?
			  bpf_core_field_offset(struct page___memdesc, flags) :
			  bpf_core_field_offset(struct page___ulong, flags);
	__u32 off_head = bpf_core_field_offset(struct page, compound_head);

	if (!bpf_core_enum_value_exists(enum pageflags, PG_young) || off_flags > 8 || off_head > 8)
		return 0;
	page = st->vmemmap_base + ((entry & PHYS_MASK) >> PAGE_SHIFT) * bpf_core_type_size(struct page);
	if (bpf_probe_read_kernel(w, sizeof(w), (void *)page))
		return 0;
	flags = w[off_flags / 8 & 1];
	/* A tail page's compound_head is its head page's address plus one. */
	if (w[off_head / 8 & 1] & 1)
		return 0;
	if (!whole_folio && (flags >> bpf_core_enum_value(enum pageflags, PG_head)) & 1)
		return 0;
	return (flags >> bpf_core_enum_value(enum pageflags, PG_young)) & 1;
}

struct young_ctx {
	__u64 *pt;
	struct ptwalk_state *st;
	__u64 word;
	__u64 maybe;	/* present, Accessed bit clear: worth a look at PG_young */
	__u64 young;
};

static long young_bit(__u64 b, struct young_ctx *y)
{
	if (b >= 64 || y->word >= 8 || !y->pt || !y->st || !(y->maybe >> b))
		return 1;
	if (((y->maybe >> b) & 1) && folio_young(y->st, y->pt[y->word * 64 + b], 0)) {
		y->young |= 1ULL << b;
		y->st->young_flag_hits++;
	}
	return 0;
}

/* Word k (entries 64k..64k+63) of a PTE table into the record's bitmaps. */
static long table_word(__u64 k, struct bits_ctx *c)
{
	__u64 p = 0, a = 0, wr = 0, m;
	int b;

	if (k >= 8 || !c->pt || !c->rec)
		return 1;
	m = range_mask(c->lo, c->hi, k);
	for (b = 0; b < 64; b++) {
		__u64 e = c->pt[k * 64 + b];

		/* Branch-free, so the verifier walks this loop once, not once per path. */
		p |= ((e | (e >> 8)) & 1) << b;			/* PRESENT | PROTNONE */
		a |= ((e >> 5) & 1) << b;			/* ACCESSED */
		wr |= (((e >> 1) | (e >> 6)) & 1) << b;		/* RW | DIRTY */
	}
	p &= m;
	if (c->st && c->st->check_young && c->st->vmemmap_base && (p & ~a)) {
		struct young_ctx y = { .pt = c->pt, .st = c->st, .word = k, .maybe = p & ~a };

		bpf_loop(64, young_bit, &y, 0);
		a |= y.young;
	}
	c->rec->present[k] = p;
	c->rec->accessed[k] = a & p;
	c->rec->written[k] = wr & p;
	c->any |= p;
	return 0;
}

static long walk_pmd_slot(__u64 i, struct walk_ctx *w)
{
	struct ptwalk_state *st = get_state();
	__u64 addr = w->addr, table_addr, pmd = 0, next = 0;
	__u32 lo, hi, slot, zero = 0;
	struct table_rec *rec;
	__u64 *pt;
	int k;

	if (!st || addr >= w->vm_end)
		return 1;
	table_addr = addr & ~((1ULL << PMD_SHIFT) - 1);
	w->addr = table_addr + (1ULL << PMD_SHIFT);
	if (lookup_pmd(st, w->pgd, addr, &pmd, &next)) {
		w->addr = next;
		return 0;
	}
	if (!(pmd & (_PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_PSE)))
		return 0;

	lo = (w->vm_start > table_addr ? w->vm_start - table_addr : 0) >> PAGE_SHIFT;
	hi = (w->vm_end - table_addr >= (1ULL << PMD_SHIFT) ? (1ULL << PMD_SHIFT)
							    : w->vm_end - table_addr) >> PAGE_SHIFT;

	slot = st->n_tables;
	if (slot >= st->max_tables) {
		st->dropped_tables++;
		return 0;
	}
	rec = bpf_map_lookup_elem(&tables, &slot);
	if (!rec)
		return 1;

	if (pmd & _PAGE_PSE) {
		/* A PMD-mapped THP: one Accessed bit for all 512 pages. */
		int young = (pmd & _PAGE_ACCESSED) ||
			    (st->check_young && st->vmemmap_base && folio_young(st, pmd, 1));

		for (k = 0; k < 8; k++) {
			__u64 m = range_mask(lo, hi, k);

			rec->present[k] = m;
			rec->accessed[k] = young ? m : 0;
			rec->written[k] = (pmd & (_PAGE_RW | _PAGE_DIRTY)) ? m : 0;
		}
		rec->flags = TABLE_F_HUGE;
	} else {
		struct bits_ctx b = { .rec = rec, .st = st, .lo = lo, .hi = hi };
		__u64 table = st->direct_map_base + (pmd & PHYS_MASK);

		b.pt = bpf_map_lookup_elem(&scratch, &zero);
		if (!b.pt)
			return 1;
		if (bpf_probe_read_kernel(b.pt, PTRS * 8, (void *)table)) {
			st->read_errors++;
			return 0;
		}
		/* Raw entries hold the PFNs, which only multi-node machines need. */
		if (st->copy_raw && slot < st->max_raw) {
			pt = bpf_map_lookup_elem(&raw, &slot);
			if (pt)
				bpf_probe_read_kernel(pt, PTRS * 8, (void *)table);
		}
		bpf_loop(8, table_word, &b, 0);
		if (!b.any)
			return 0;	/* nothing resident in this VMA's part of the table */
		rec->flags = 0;
	}
	rec->addr = table_addr;
	rec->pmd = pmd;
	rec->vma = w->vma_idx;
	st->n_tables = slot + 1;
	return 0;
}

static __always_inline __u32 classify(struct vm_area_struct *vma, __u64 vm_flags, __u32 *flags)
{
	struct mm_struct *mm = BPF_CORE_READ(vma, vm_mm);
	struct file *file = BPF_CORE_READ(vma, vm_file);
	__u64 start = BPF_CORE_READ(vma, vm_start), end = BPF_CORE_READ(vma, vm_end);
	__u64 stack;

	if (vm_flags & VM_SHARED)
		*flags |= VMA_F_SHARED;
	if (vm_flags & (VM_HUGETLB | VM_PFNMAP | VM_IO) ||
	    start == (__u64)BPF_CORE_READ(mm, context.vdso)) {
		*flags |= VMA_F_SKIPPED;
		return VMA_OTHER;
	}
	if (file) {
		/* shmem, tmpfs, memfd, SysV shm and shared anonymous memory all live on tmpfs. */
		if (BPF_CORE_READ(file, f_inode, i_sb, s_magic) == TMPFS_MAGIC)
			return VMA_SHMEM;
		return VMA_FILE;
	}
	if (start <= BPF_CORE_READ(mm, brk) && end >= BPF_CORE_READ(mm, start_brk))
		return VMA_HEAP;
	stack = BPF_CORE_READ(mm, start_stack);
	if (start <= stack && stack < end)
		return VMA_STACK;
	return VMA_ANON;
}

SEC("iter/task_vma")
int scan(struct bpf_iter__task_vma *ctx)
{
	struct vm_area_struct *vma = ctx->vma;
	struct task_struct *task = ctx->task;
	struct ptwalk_state *st = get_state();
	struct walk_ctx w = {};
	struct vma_rec *rec;
	struct mm_struct *mm;
	__u32 slot, flags = 0;

	if (!st || !task || !vma || task->tgid != st->target_tgid)
		return 0;
	mm = vma->vm_mm;
	w.vm_start = vma->vm_start;
	w.vm_end = vma->vm_end;
	/* Threads share the mm: report each VMA once even if two threads are visited. */
	if ((__u64)mm == st->last_mm && w.vm_start < st->last_vm_end) {
		st->dup_vmas++;
		return 0;
	}
	st->last_mm = (__u64)mm;
	st->last_vm_end = w.vm_end;

	slot = st->n_vmas;
	if (slot >= st->max_vmas) {
		st->dropped_vmas++;
		return 0;
	}
	rec = bpf_map_lookup_elem(&vmas, &slot);
	if (!rec)
		return 0;
	rec->start = w.vm_start;
	rec->end = w.vm_end;
	rec->kind = classify(vma, BPF_CORE_READ(vma, vm_flags), &flags);
	rec->flags = flags;
	st->n_vmas = slot + 1;
	if (flags & VMA_F_SKIPPED)
		return 0;

	w.pgd = (__u64)BPF_CORE_READ(mm, pgd);
	w.addr = w.vm_start;
	w.vma_idx = slot;
	bpf_loop(MAX_PMD_STEPS, walk_pmd_slot, &w, 0);
	return 0;
}

/*
 * Find page_offset_base (KASLR-randomised, absent from BTF and kallsyms on some kernels).
 * Userspace plants a random pattern in a locked page of its own and tells us its PFN; the
 * direct map is 1 GiB aligned and lies below our own PGD's direct-map address, so the pattern
 * appears at exactly one candidate. Then translate the page's user address through our own
 * page tables with 4 and with 5 levels: the depth that lands on the same PFN is the real one.
 * Run with BPF_PROG_TEST_RUN, in the caller's context.
 */
struct probe_ctx {
	__u64 top;
};

static long try_base(__u64 i, struct probe_ctx *c)
{
	struct ptwalk_state *st = get_state();
	__u64 cand, v = 0;

	if (!st)
		return 1;
	cand = c->top - (i << PUD_SHIFT);
	st->probe_tries++;
	if (!bpf_probe_read_kernel(&v, 8, (void *)(cand + (st->probe_pfn << PAGE_SHIFT))) &&
	    v == st->probe_pattern) {
		st->direct_map_base = cand;
		return 1;
	}
	return 0;
}

static __always_inline int translates(struct ptwalk_state *st, __u64 pgd, __u64 vaddr, __u32 levels)
{
	__u64 pmd = 0, next = 0, pte = 0;

	st->pgtable_levels = levels;
	if (lookup_pmd(st, pgd, vaddr, &pmd, &next) || !(pmd & _PAGE_PRESENT) || (pmd & _PAGE_PSE))
		return 0;
	if (read_entry(st, pmd, (vaddr >> PAGE_SHIFT) & 511, &pte))
		return 0;
	return ((pte & PHYS_MASK) >> PAGE_SHIFT) == st->probe_pfn;
}

struct vma_probe {
	__u64 expected_mapping;
};

static long probe_vma_cb(struct task_struct *task, struct vm_area_struct *vma, struct vma_probe *v)
{
	struct anon_vma *av = BPF_CORE_READ(vma, anon_vma);

	/* What page->mapping holds for a page of this VMA: anon_vma | PAGE_MAPPING_ANON, or the file's. */
	v->expected_mapping = av ? (__u64)av | 1 : (__u64)BPF_CORE_READ(vma, vm_file, f_mapping);
	return 0;
}

struct vmemmap_ctx {
	__u64 expected_mapping;
	__u64 page_off;		/* probe_pfn * sizeof(struct page) + offsetof(mapping) */
};

static long try_vmemmap(__u64 i, struct vmemmap_ctx *c)
{
	struct ptwalk_state *st = get_state();
	__u64 cand, v = 0;

	if (!st)
		return 1;
	cand = st->vmemmap_lo + (i << PUD_SHIFT);
	if (!bpf_probe_read_kernel(&v, 8, (void *)(cand + c->page_off)) && v == c->expected_mapping) {
		st->vmemmap_base = cand;
		return 1;
	}
	return 0;
}

/* struct page array: 1 GiB aligned like the direct map; our probe page's mapping identifies it. */
static __always_inline void find_vmemmap(struct task_struct *t, struct ptwalk_state *st)
{
	struct vma_probe v = {};
	struct vmemmap_ctx c = {};

	st->vmemmap_base = 0;
	if (bpf_find_vma(t, st->probe_vaddr, probe_vma_cb, &v, 0) || !v.expected_mapping)
		return;
	c.expected_mapping = v.expected_mapping;
	c.page_off = st->probe_pfn * bpf_core_type_size(struct page) +
		     bpf_core_field_offset(struct page, mapping);
	bpf_loop(st->vmemmap_steps, try_vmemmap, &c, 0);
}

SEC("raw_tp")
int find_base(void *ctx)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct ptwalk_state *st = get_state();
	struct probe_ctx c;
	__u64 pgd;

	if (!st)
		return 1;
	pgd = (__u64)BPF_CORE_READ(t, mm, pgd);
	c.top = pgd & ~((1ULL << PUD_SHIFT) - 1);
	st->direct_map_base = 0;
	st->probe_tries = 0;
	bpf_loop(st->probe_max_gib, try_base, &c, 0);
	if (!st->direct_map_base)
		return 2;
	if (!translates(st, pgd, st->probe_vaddr, 4) && !translates(st, pgd, st->probe_vaddr, 5)) {
		st->pgtable_levels = 0;
		return 3;
	}
	find_vmemmap(t, st);
	return 0;
}

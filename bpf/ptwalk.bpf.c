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
#define _PAGE_SPECIAL	(1ULL << 9)	/* pte_mkspecial(): vm_normal_page() returns NULL */
/* Bits 12..51: the next table's or the page's physical frame. */
#define PHYS_MASK	0x000ffffffffff000ULL

#define VM_READ		0x00000001UL
#define VM_WRITE	0x00000002UL
#define VM_EXEC		0x00000004UL
#define VM_SHARED	0x00000008UL
#define VM_PFNMAP	0x00000400UL
#define VM_IO		0x00004000UL
#define VM_HUGETLB	0x00400000UL
#define TMPFS_MAGIC	0x01021994

/*
 * bpf_loop's own limit (BPF_MAX_LOOPS), chained MAX_WALK_LOOPS times per VMA: 2^25 populated
 * PMD slots (64 TiB of THPs, or 128 GiB of PTE tables) plus loaded 1 GiB regions. A VMA that
 * needs more is counted in step_limit_vmas, never cut silently.
 */
#define MAX_STEPS	(1U << 23)
#define MAX_WALK_LOOPS	4

/*
 * Settings fixed at load, the libbpf-tools way: .rodata, written by userspace between open
 * and load (exporter/sources/pagetable.py). The verifier knows their values, so a path that a
 * setting turns off is not walked at all.
 */
const volatile __u32 max_vmas = 0;	/* max_entries of "vmas" */
const volatile __u32 max_tables = 0;	/* max_entries of "tables" */
const volatile __u32 max_raw = 0;	/* max_entries of "raw" */
const volatile __u32 copy_raw = 0;	/* copy whole PTE tables into "raw" (PFNs: NUMA, shared frames) */
const volatile __u32 check_young = 0;	/* count PG_young (see table_word) as accessed */
const volatile __u32 direct_page_read = 0;	/* kernel has bpf_rdonly_cast: see young_candidates */
const volatile __u64 probe_max_gib = 0;	/* find_base: 1 GiB candidates to try below our PGD */

/*
 * Userspace checks its copies of these enums against this object's BTF at load. clang emits
 * an enum's BTF only where some type uses it: this constant, never read, is that use.
 */
const volatile struct {
	enum vma_kind vma_kind;
	enum vma_flag vma_flag;
	enum table_flag table_flag;
	enum find_base_result find_base_result;
} ptwalk_btf_anchor = {};

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

/* The walk's current PMD table: which of its 512 entries map something (see load_region). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64[8]);
} pmd_map SEC(".maps");

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
 * Walk from the PGD (a direct-map pointer) down to the PUD entry for addr. Returns 0 with *pud
 * set to a present entry (a PMD table, or a 1 GiB leaf when PSE is set), or 1 with *next set
 * to the first address worth looking at after an empty upper level.
 */
static __always_inline int lookup_pud(struct ptwalk_state *st, __u64 pgd, __u64 addr,
				      __u64 *pud, __u64 *next)
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
	if (!(e & _PAGE_PRESENT)) {
		*next = (addr | ((1ULL << PUD_SHIFT) - 1)) + 1;
		return 1;
	}
	*pud = e;
	return 0;
fault:
	st->read_errors++;
	*next = (addr | ((1ULL << PUD_SHIFT) - 1)) + 1;
	return 1;
}

/* The PMD entry for addr (find_base's translation). 0 with *pmd set, or 1. */
static __always_inline int lookup_pmd(struct ptwalk_state *st, __u64 pgd, __u64 addr, __u64 *pmd)
{
	__u64 pud = 0, next = 0;

	if (lookup_pud(st, pgd, addr, &pud, &next) || (pud & _PAGE_PSE))
		return 1;
	return read_entry(st, pud, (addr >> PMD_SHIFT) & 511, pmd) ? 1 : 0;
}

/*
 * x clamped to [0, 64], for |x| < 2^30, without a branch. The empty asm hides the sign masks
 * from clang, which would otherwise turn this back into compare-and-branch min/max.
 */
static __always_inline __s32 clamp64(__s32 x)
{
	__s32 neg = x >> 31, over;

	asm volatile("" : "+r"(neg));
	x &= ~neg;				/* max(x, 0) */
	over = (x - 64) >> 31;
	asm volatile("" : "+r"(over));
	return 64 + ((x - 64) & over);		/* min(x, 64) */
}

/* Bits [0, x) set, x in [0, 64]. */
static __always_inline __u64 low_bits(__s32 x)
{
	return ((1ULL << (x & 63)) - 1) | -(__u64)(x >> 6);
}

/*
 * Bits [lo, hi) of word k of a 512-bit bitmap. Branch-free: it runs inside loops, and every
 * branch there would multiply the paths the verifier walks.
 */
static __always_inline __u64 range_mask(__u32 lo, __u32 hi, int k)
{
	return low_bits(clamp64((__s32)hi - 64 * k)) & ~low_bits(clamp64((__s32)lo - 64 * k));
}

struct bits_ctx {
	__u64 *pt;
	struct table_rec *rec;
	struct ptwalk_state *st;
	__u32 lo, hi;
	__u64 any;
	__u32 count_only;	/* only count mapped entries into count (skipped VMAs) */
	__u64 count;
};

/*
 * Was the folio of this PTE/PMD marked young by someone who cleared its Accessed bit?
 * DAMON (damon_ptep_mkold) and idle page tracking clear Accessed bits of pages they sample
 * and keep the information in PG_young; clear_refs clears PG_young too, so "Accessed bit or
 * PG_young" means "accessed since our last aging" even while DAMON runs. PG_young exists on
 * 64-bit kernels with CONFIG_PAGE_IDLE_FLAG (selected by DAMON and IDLE_PAGE_TRACKING).
 *
 * The flag is per folio, not per mapping, so it only speaks for us where the folio has no
 * other mapping:
 * - DAMON's rmap walk (damon_folio_mkold, mm/damon/ops-common.c) sets PG_young when *any*
 *   mapping's PTE was young. A libc page another process uses would look accessed by ours,
 *   so a folio mapped more than once (by anyone, us included) is not counted; neither is a
 *   PMD-mapped THP where the kernel has no _large_mapcount. young_flag_shared says how many
 *   were left out. Their Accessed bits, when set, still count: those are ours alone.
 * - For a PTE-mapped page of a large folio it does not say which page was used, so only
 *   single-page folios (and whole PMD-mapped THPs, whole_folio) count.
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

/*
 * A large folio's mapcount in one value (minus one, like page->_mapcount) since 6.10
 * ("mm: track mapcount of large folios in single value"). Older kernels kept it in
 * _entire_mapcount plus _nr_pages_mapped; there a PMD-mapped folio's PG_young is not used.
 */
struct folio___large_mapcount {
	atomic_t _large_mapcount;
} __attribute__((preserve_access_index));

/* Address of the struct page of a PTE's or PMD's frame, in the array find_base found. */
static __always_inline __u64 struct_page_of(struct ptwalk_state *st, __u64 entry)
{
	return st->vmemmap_base + ((entry & PHYS_MASK) >> PAGE_SHIFT) * bpf_core_type_size(struct page);
}

static __always_inline int folio_young(struct ptwalk_state *st, __u64 entry, int whole_folio)
{
	__u64 w[2] = {}, page, flags = 0;
	__u32 off_flags = bpf_core_field_exists(struct page___memdesc, flags) ?
			  bpf_core_field_offset(struct page___memdesc, flags) :
			  bpf_core_field_offset(struct page___ulong, flags);
	__u32 off_head = bpf_core_field_offset(struct page, compound_head);
	__u64 off_map;
	__s32 mapcount;

	if (!bpf_core_enum_value_exists(enum pageflags, PG_young) || off_flags > 8 || off_head > 8)
		return 0;
	page = struct_page_of(st, entry);
	if (bpf_probe_read_kernel(w, sizeof(w), (void *)page))
		return 0;
	flags = w[off_flags / 8 & 1];
	/* A tail page's compound_head is its head page's address plus one. */
	if (w[off_head / 8 & 1] & 1)
		return 0;
	if (!((flags >> bpf_core_enum_value(enum pageflags, PG_young)) & 1))
		return 0;
	/* Most idle pages stop above; the mapcount is read only for the young ones. */
	if ((flags >> bpf_core_enum_value(enum pageflags, PG_head)) & 1) {
		if (!whole_folio)
			return 0;
		if (!bpf_core_field_exists(struct folio___large_mapcount, _large_mapcount)) {
			st->young_flag_shared++;	/* cannot tell: counted as if shared */
			return 0;
		}
		off_map = bpf_core_field_offset(struct folio___large_mapcount, _large_mapcount);
	} else {
		off_map = bpf_core_field_offset(struct page, _mapcount);
	}
	if (bpf_probe_read_kernel(&mapcount, sizeof(mapcount), (void *)(page + off_map)))
		return 0;
	/* Both count mappings minus one: 0 is "mapped once", by the entry we are reading. */
	if (mapcount != 0) {
		st->young_flag_shared++;
		return 0;
	}
	return 1;
}

/* Index of the lowest set bit of m (m != 0), branch-free: BPF has no count-trailing-zeros. */
static __always_inline __u32 lowest_bit(__u64 m)
{
	return __builtin_popcountll((m & -m) - 1);
}

/*
 * bpf_rdonly_cast (6.2, "bpf: Add a kfunc for generic type cast") turns an address into a
 * read-only struct page pointer; the verifier replaces the call by a register move and
 * the loads through it become exception-table loads (PROBE_MEM), with no helper call. Weak:
 * older kernels run the probe_read path, and the verifier drops this one (direct_page_read 0).
 */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id__k) __ksym __weak;

/*
 * Of the 64 entries of word k, those in maybe whose struct page has PG_young set: a superset
 * of what folio_young accepts (it reads the same flags word), for it to decide. One plain
 * load per entry, in a straight loop, so the CPU overlaps the cache misses on struct page
 * that dominate this check; a helper call per page (bpf_probe_read_kernel) left it ~40 ns
 * per idle page. Branch-free: an entry outside maybe reads the struct page of the lowest
 * one in maybe instead.
 */
static __always_inline __u64 young_candidates_of(struct bits_ctx *c, __u64 k, __u64 maybe,
						   int memdesc)
{
	__u64 size = bpf_core_type_size(struct page), base = c->st->vmemmap_base, cand = 0;
	__u64 pick = c->pt[(k * 64 + lowest_bit(maybe)) & (PTRS - 1)] & PHYS_MASK;
	__u32 young = bpf_core_enum_value(enum pageflags, PG_young);
	int b;

	for (b = 0; b < 64; b++) {
		__u64 e = c->pt[k * 64 + b] & PHYS_MASK;
		__u64 in = (maybe >> b) & 1;
		__u64 frame = (e * in + pick * (1 - in)) >> PAGE_SHIFT;
		void *pg = bpf_rdonly_cast((void *)(base + frame * size),
					   bpf_core_type_id_kernel(struct page));
		__u64 flags = memdesc ? ((struct page___memdesc *)pg)->flags.f :
					((struct page___ulong *)pg)->flags;

		cand |= (in & (flags >> young) & 1) << b;
	}
	return cand;
}

/*
 * page->flags' two types, chosen once, outside the loop: a branch inside it made clang close
 * the loop with a fall-through into its head, which the 6.1 verifier rejects in check_cfg
 * ("back-edge from insn").
 */
static __always_inline __u64 young_candidates(struct bits_ctx *c, __u64 k, __u64 maybe)
{
	/* No PG_young (no CONFIG_PAGE_IDLE_FLAG): nothing to read, as in folio_young. */
	if (!bpf_core_enum_value_exists(enum pageflags, PG_young))
		return 0;
	if (bpf_core_field_exists(struct page___memdesc, flags))
		return young_candidates_of(c, k, maybe, 1);
	return young_candidates_of(c, k, maybe, 0);
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

/*
 * Is the page of this present PTE anonymous (PageAnon: folio->mapping has PAGE_MAPPING_ANON,
 * KSM pages included)? What smaps counts as Anonymous. In a private file mapping that is a
 * copy-on-write copy even when its PTE no longer says it was written: fork() and mprotect()
 * write-protect it (RELRO in every dynamically linked process), and since 6.6 x86 moves Dirty
 * to the software _PAGE_SAVED_DIRTY bit when it does (pte_wrprotect, "x86/mm: Start actually
 * marking _PAGE_SAVED_DIRTY"); KSM and a swap-in map it clean.
 */
static __always_inline int page_anon(struct ptwalk_state *st, __u64 entry)
{
	__u32 off_head = bpf_core_field_offset(struct page, compound_head);
	__u32 off_mapping = bpf_core_field_offset(struct page, mapping);
	__u64 page, head = 0, mapping = 0;

	page = struct_page_of(st, entry);
	if (bpf_probe_read_kernel(&head, sizeof(head), (void *)(page + off_head)))
		return 0;
	/* A tail page's compound_head is its head page's address plus one: the folio's mapping. */
	if (head & 1)
		page = head - 1;
	if (bpf_probe_read_kernel(&mapping, sizeof(mapping), (void *)(page + off_mapping)))
		return 0;
	return mapping & 1;	/* PAGE_MAPPING_ANON */
}

struct anon_ctx {
	__u64 *pt;
	struct ptwalk_state *st;
	__u64 word;
	__u64 maybe;	/* mapped, neither writable nor dirty, in a private file/shmem VMA */
	__u64 anon;
};

static long anon_bit(__u64 b, struct anon_ctx *x)
{
	__u64 e;

	if (b >= 64 || x->word >= 8 || !x->pt || !x->st || !(x->maybe >> b))
		return 1;
	e = x->pt[x->word * 64 + b];
	/* PRESENT only: a PROTNONE entry's PFN is stored inverted (L1TF), and it is rare here. */
	if (((x->maybe >> b) & 1) && (e & 1) && page_anon(x->st, e))
		x->anon |= 1ULL << b;
	return 0;
}

/* Word k (entries 64k..64k+63) of a PTE table into the record's bitmaps. */
static long table_word(__u64 k, struct bits_ctx *c)
{
	__u64 p = 0, a = 0, wr = 0, sp = 0, m;
	int b;

	if (k >= 8 || !c->pt || (!c->rec && !c->count_only))
		return 1;
	m = range_mask(c->lo, c->hi, k);
	for (b = 0; b < 64; b++) {
		__u64 e = c->pt[k * 64 + b];
		__u64 mapped = (e | (e >> 8)) & 1;		/* PRESENT | PROTNONE */

		/* Branch-free, so the verifier walks this loop once, not once per path. */
		p |= mapped << b;
		sp |= (mapped & (e >> 9)) << b;			/* SPECIAL */
		a |= ((e >> 5) & 1) << b;			/* ACCESSED */
		wr |= (((e >> 1) | (e >> 6)) & 1) << b;		/* RW | DIRTY */
	}
	p &= m;
	sp &= m;
	if (c->count_only) {
		/* A skipped VMA: every mapped entry counts, special (PFN-mapped) or not. */
		c->count += __builtin_popcountll(p);
		return 0;
	}
	/*
	 * A special PTE maps no page of the process's own: the shared zero page (read-only
	 * anonymous memory never written), PFNs in VM_MIXEDMAP mappings. vm_normal_page() returns
	 * NULL for it, so smaps leaves it out of Rss, and clear_refs never ages it
	 * (clear_refs_pte_range skips !page), so its Accessed bit would read 1 forever.
	 */
	if (sp && c->st)
		c->st->special_ptes += __builtin_popcountll(sp);
	p &= ~sp;
	if (!c->rec)
		return 1;
	if (c->st && check_young && c->st->vmemmap_base && (p & ~a)) {
		struct young_ctx y = { .pt = c->pt, .st = c->st, .word = k, .maybe = p & ~a };

		if (direct_page_read)
			y.maybe = young_candidates(c, k, y.maybe);
		if (y.maybe)
			bpf_loop(64, young_bit, &y, 0);
		a |= y.young;
	}
	c->rec->present[k] = p;
	c->rec->accessed[k] = a & p;
	c->rec->written[k] = wr & p;
	c->any |= p;
	return 0;
}


/*
 * One VMA's walk. The PMD table of the current 1 GiB region is read once, whole, into a bitmap
 * of the entries that map something, so an empty 2 MiB slot costs no step: each bpf_loop step
 * either loads a region (or skips an empty upper level) or visits one populated PMD slot. A
 * sparse 24 TiB reservation then takes two steps per touched GiB instead of 512.
 */
struct walk_ctx {
	__u64 pgd;
	__u64 addr;
	__u64 vm_start;
	__u64 vm_end;
	__u32 vma_idx;
	__u32 count_only;	/* a skipped VMA: only count its mapped pages into count */
	__u64 region;		/* 1 GiB region whose PMD table is in pmd_map/pmd_table, or 1 */
	__u64 pmd_table;	/* physical address of that PMD table (its map: pmd_map) */
	__u64 count;
};

/* Pages [lo, hi) of the 2 MiB slot at table_addr that lie inside the VMA. */
static __always_inline void clip(struct walk_ctx *w, __u64 table_addr, __u32 *lo, __u32 *hi)
{
	*lo = (w->vm_start > table_addr ? w->vm_start - table_addr : 0) >> PAGE_SHIFT;
	*hi = (w->vm_end - table_addr >= (1ULL << PMD_SHIFT) ? (1ULL << PMD_SHIFT)
							     : w->vm_end - table_addr) >> PAGE_SHIFT;
}

struct region_ctx {
	__u64 *t;
	__u64 *map;
};

/* Word k of the loaded PMD table's map of entries that map something. */
static long region_word(__u64 k, struct region_ctx *r)
{
	__u64 m = 0;
	int b;

	if (k >= 8 || !r->t || !r->map)
		return 1;
	for (b = 0; b < 64; b++) {
		__u64 e = r->t[k * 64 + b];

		/* PRESENT | PSE | PROTNONE: x86 pmd_present(), a splitting THP included. */
		m |= ((e | (e >> 7) | (e >> 8)) & 1) << b;
	}
	r->map[k & 7] = m;
	return 0;
}

/* Load the PMD table of addr's 1 GiB region. 0: loaded; 1: w->addr moved past an empty part. */
static __noinline int load_region(struct ptwalk_state *st, struct walk_ctx *w)
{
	__u64 region = w->addr & ~((1ULL << PUD_SHIFT) - 1), pud = 0, next = 0, *t;
	__u32 zero = 0;

	if (lookup_pud(st, w->pgd, w->addr, &pud, &next)) {
		w->addr = next;
		return 1;
	}
	if (pud & _PAGE_PSE) {
		/* A 1 GiB page: only hugetlb (and PFN maps) have them, and those VMAs are counted. */
		__u64 lo = w->vm_start > region ? w->vm_start : region;
		__u64 hi = w->vm_end - region > (1ULL << PUD_SHIFT) ? region + (1ULL << PUD_SHIFT)
								      : w->vm_end;

		if (w->count_only)
			w->count += (hi - lo) >> PAGE_SHIFT;
		else
			st->skipped_huge_pud++;
		w->addr = region + (1ULL << PUD_SHIFT);
		return 1;
	}
	t = bpf_map_lookup_elem(&scratch, &zero);
	if (!t)
		return 1;
	if (bpf_probe_read_kernel(t, PTRS * 8, (void *)(st->direct_map_base + (pud & PHYS_MASK)))) {
		st->read_errors++;
		w->addr = region + (1ULL << PUD_SHIFT);
		return 1;
	}
	{
		struct region_ctx r = { .t = t, .map = bpf_map_lookup_elem(&pmd_map, &zero) };

		if (!r.map)
			return 1;
		bpf_loop(8, region_word, &r, 0);
	}
	w->region = region;
	w->pmd_table = pud & PHYS_MASK;
	return 0;
}

/* Bits of 1 << x where x != 0, branch-free: (x | -x) has its top bit set iff x != 0. */
static __always_inline __u64 nonzero(__u64 x)
{
	return (x | -x) >> 63;
}

/* The first populated slot of the cached region at or after w->addr, below the VMA's end. */
static __noinline int next_slot(struct walk_ctx *w, __u32 *slot)
{
	__u64 rest = w->vm_end - w->region, words = 0, m, *map;
	__u32 lo = (w->addr - w->region) >> PMD_SHIFT;
	__u32 hi = rest >= (1ULL << PUD_SHIFT) ? PTRS : (rest + (1ULL << PMD_SHIFT) - 1) >> PMD_SHIFT;
	__u32 k, zero = 0;

	map = bpf_map_lookup_elem(&pmd_map, &zero);
	if (!map)
		return 1;
	/* Which words hold a candidate, then the first candidate of the first such word: no
	 * branch per word, so the verifier does not multiply paths. */
#pragma clang loop unroll(full)
	for (k = 0; k < 8; k++)
		words |= nonzero(map[k] & range_mask(lo, hi, k)) << k;
	if (!words)
		return 1;
	k = lowest_bit(words) & 7;
	m = map[k] & range_mask(lo, hi, k);
	*slot = k * 64 + lowest_bit(m);
	return 0;
}

/* A huge PMD (THP, huge zero page, or hugetlb/PFN maps when counting) into a record. */
static __noinline int huge_slot(struct ptwalk_state *st, struct table_rec *rec, __u64 pmd,
				__u32 lo, __u32 hi)
{
	int k;

	if (!st || !rec)
		return 1;

	/*
	 * The huge zero page: mapped on a read fault of a THP-eligible range never written. Like
	 * the 4 KiB zero page it is nobody's memory and clear_refs never ages it. Since 6.17 its
	 * PMD is special ("mm/huge_memory: mark PMD mappings of the huge zero folio special");
	 * before that, find_base tells us its PFN.
	 */
	if ((pmd & _PAGE_SPECIAL) ||
	    (st->huge_zero_pfn && ((pmd & PHYS_MASK) >> PAGE_SHIFT) == st->huge_zero_pfn)) {
		st->special_pmds++;
		return 1;
	}
	{
		/* A PMD-mapped THP: one Accessed bit for all 512 pages. */
		int young = (pmd & _PAGE_ACCESSED) ||
			    (check_young && st->vmemmap_base && folio_young(st, pmd, 1));

		if (young && !(pmd & _PAGE_ACCESSED))
			st->young_flag_hits++;

		for (k = 0; k < 8; k++) {
			__u64 m = range_mask(lo, hi, k);

			rec->present[k] = m;
			rec->accessed[k] = young ? m : 0;
			rec->written[k] = (pmd & (_PAGE_RW | _PAGE_DIRTY)) ? m : 0;
		}
	}
	rec->flags = TABLE_F_HUGE;
	return 0;
}

static long walk_step(__u64 i, struct walk_ctx *w)
{
	struct ptwalk_state *st = get_state();
	struct bits_ctx b = {};
	struct table_rec *rec = NULL;
	__u64 table_addr, table, pmd = 0;
	__u32 lo, hi, slot = 0, zero = 0;
	__u64 *pt;

	if (!st || w->addr >= w->vm_end)
		return 1;
	/* A step loads a region or visits a slot, never both: fewer paths for the verifier. */
	if ((w->addr & ~((1ULL << PUD_SHIFT) - 1)) != w->region) {
		load_region(st, w);
		return 0;
	}
	if (next_slot(w, &slot)) {
		w->addr = w->region + (1ULL << PUD_SHIFT);
		return 0;
	}
	table_addr = w->region + ((__u64)(slot & 511) << PMD_SHIFT);
	w->addr = table_addr + (1ULL << PMD_SHIFT);
	if (read_entry(st, w->pmd_table, slot & 511, &pmd)) {
		st->read_errors++;
		return 0;
	}
	if (!(pmd & (_PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_PSE)))
		return 0;	/* zapped since the region was loaded */
	clip(w, table_addr, &lo, &hi);
	if (w->count_only && (pmd & _PAGE_PSE)) {
		w->count += hi > lo ? hi - lo : 0;
		return 0;
	}

	if (!w->count_only) {
		slot = st->n_tables;
		if (slot >= max_tables) {
			st->dropped_tables++;
			return 0;
		}
		rec = bpf_map_lookup_elem(&tables, &slot);
		if (!rec)
			return 1;
		if (pmd & _PAGE_PSE) {
			if (huge_slot(st, rec, pmd, lo, hi))
				return 0;
			goto record;
		}
	}
	b.rec = rec;
	b.st = st;
	b.lo = lo;
	b.hi = hi;
	b.count_only = w->count_only;
	table = st->direct_map_base + (pmd & PHYS_MASK);
	b.pt = bpf_map_lookup_elem(&scratch, &zero);
	if (!b.pt)
		return 1;
	if (bpf_probe_read_kernel(b.pt, PTRS * 8, (void *)table)) {
		st->read_errors++;
		return 0;
	}
	/*
	 * Raw entries hold the PFNs (NUMA nodes, the cgroup aggregates' shared frames): copied
	 * from the same snapshot the bitmaps come from, not read from the live table again, so a
	 * PTE zapped in between cannot give a present page a stale frame.
	 */
	if (rec && copy_raw && slot < max_raw) {
		pt = bpf_map_lookup_elem(&raw, &slot);
		if (pt)
			bpf_probe_read_kernel(pt, PTRS * 8, b.pt);
	}
	bpf_loop(8, table_word, &b, 0);
	if (!rec) {
		w->count += b.count;
		return 0;
	}
	if (!b.any)
		return 0;	/* nothing resident in this VMA's part of the table */
	rec->flags = 0;
record:
	rec->addr = table_addr;
	rec->pmd = pmd;
	rec->vma = w->vma_idx;
	st->n_tables = slot + 1;
	return 0;
}

static long walk_chunk(__u64 i, struct walk_ctx *w)
{
	if (w->addr >= w->vm_end)
		return 1;
	bpf_loop(MAX_STEPS, walk_step, w, 0);
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
	if (!(vm_flags & (VM_READ | VM_WRITE | VM_EXEC)))
		*flags |= VMA_F_NOACCESS;
	if (vm_flags & VM_HUGETLB)
		*flags |= VMA_F_SKIPPED | VMA_F_HUGETLB;
	else if (vm_flags & (VM_PFNMAP | VM_IO))
		*flags |= VMA_F_SKIPPED | VMA_F_PFNMAP;
	else if (start == (__u64)BPF_CORE_READ(mm, context.vdso))
		*flags |= VMA_F_SKIPPED | VMA_F_VDSO;
	if (*flags & VMA_F_SKIPPED)
		return VMA_OTHER;
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

/* vma->anon_name exists with CONFIG_ANON_VMA_NAME only (not in every vmlinux.h). */
struct vm_area_struct___named {
	struct anon_vma_name *anon_name;
} __attribute__((preserve_access_index));

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
	if (slot >= max_vmas) {
		st->dropped_vmas++;
		return 0;
	}
	rec = bpf_map_lookup_elem(&vmas, &slot);
	if (!rec)
		return 0;
	rec->start = w.vm_start;
	rec->end = w.vm_end;
	rec->kind = classify(vma, BPF_CORE_READ(vma, vm_flags), &flags);
	/* Branch-free: a private file VMA without an anon_vma has no COW copies (anon_pass). */
	flags |= (__u32)!!BPF_CORE_READ(vma, anon_vma) * VMA_F_ANON_VMA;
	rec->flags = flags;
	rec->unmonitored = 0;
	rec->ident = (__u64)BPF_CORE_READ(vma, vm_file);
	if (!rec->ident && bpf_core_field_exists(((struct vm_area_struct___named *)vma)->anon_name))
		rec->ident = (__u64)BPF_CORE_READ((struct vm_area_struct___named *)vma, anon_name);
	st->n_vmas = slot + 1;

	w.pgd = (__u64)BPF_CORE_READ(mm, pgd);
	w.addr = w.vm_start;
	w.vma_idx = slot;
	w.region = 1;	/* no region loaded: region addresses are 1 GiB aligned */
	w.count_only = !!(flags & VMA_F_SKIPPED);
	/*
	 * bpf_loop stops at BPF_MAX_LOOPS (2^23) steps: chain calls from an outer bpf_loop (one
	 * call site, verified once, unlike an unrolled chain), then count what is left.
	 */
	bpf_loop(MAX_WALK_LOOPS, walk_chunk, &w, 0);
	if (w.addr < w.vm_end)
		st->step_limit_vmas++;
	rec->unmonitored = w.count;
	return 0;
}

/*
 * Find page_offset_base (KASLR-randomised, absent from BTF and kallsyms on some kernels) without
 * any privilege beyond loading this program: no PFN from /proc/self/pagemap (that needs
 * CAP_SYS_ADMIN). Userspace plants a random pattern in a page of its own. The direct map is
 * 1 GiB aligned and lies below our own PGD's direct-map address; for each candidate base,
 * translate the page's user address through our own page tables (4 and 5 levels), reading
 * each table through the candidate: only the real base and depth lead to a frame that holds
 * the pattern. That frame is the page's PFN (find_vmemmap needs it). Run with
 * BPF_PROG_TEST_RUN, in the caller's context.
 */
struct probe_ctx {
	__u64 top;
	__u64 pgd;
};

/* The frame vaddr maps to with the current direct_map_base and depth, or 0. *huge: by a PMD. */
static __always_inline __u64 translate(struct ptwalk_state *st, __u64 pgd, __u64 vaddr,
				       __u32 levels, int *huge, __u64 *pmd_out)
{
	__u64 pmd = 0, pte = 0;

	st->pgtable_levels = levels;
	if (lookup_pmd(st, pgd, vaddr, &pmd) || !(pmd & _PAGE_PRESENT))
		return 0;
	*pmd_out = pmd;
	if (pmd & _PAGE_PSE) {
		*huge = 1;
		return ((pmd & PHYS_MASK) >> PAGE_SHIFT) + ((vaddr >> PAGE_SHIFT) & 511);
	}
	if (read_entry(st, pmd, (vaddr >> PAGE_SHIFT) & 511, &pte) || !(pte & _PAGE_PRESENT))
		return 0;
	return (pte & PHYS_MASK) >> PAGE_SHIFT;
}

static long try_base(__u64 i, struct probe_ctx *c)
{
	struct ptwalk_state *st = get_state();
	__u64 cand, pfn, pmd = 0, v = 0;
	__u32 levels;
	int huge = 0;

	if (!st)
		return 1;
	cand = c->top - (i << PUD_SHIFT);
	st->probe_tries++;
	st->direct_map_base = cand;
	for (levels = 4; levels <= 5; levels++) {
		pfn = translate(st, c->pgd, st->probe_vaddr, levels, &huge, &pmd);
		if (pfn && !huge &&
		    !bpf_probe_read_kernel(&v, 8, (void *)(cand + (pfn << PAGE_SHIFT))) &&
		    v == st->probe_pattern) {
			st->probe_pfn = pfn;
			return 1;
		}
	}
	st->direct_map_base = 0;
	st->pgtable_levels = 0;
	return 0;
}

/*
 * Kernels before 6.17 do not mark the huge zero page's PMD special: learn its frame from a
 * THP-eligible page of ours that was only read. A read-only huge PMD there is the huge zero
 * page (our mm keeps its reference, so the frame stays while we run).
 */
static __always_inline void find_huge_zero(struct ptwalk_state *st, __u64 pgd)
{
	__u64 pfn, pmd = 0;
	int huge = 0;

	st->huge_zero_pfn = 0;
	if (!st->huge_probe_vaddr)
		return;
	pfn = translate(st, pgd, st->huge_probe_vaddr, st->pgtable_levels, &huge, &pmd);
	if (pfn && huge && !(pmd & _PAGE_RW))
		st->huge_zero_pfn = (pmd & PHYS_MASK) >> PAGE_SHIFT;
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

	if (!st)
		return FIND_BASE_NO_STATE;
	c.pgd = (__u64)BPF_CORE_READ(t, mm, pgd);
	c.top = c.pgd & ~((1ULL << PUD_SHIFT) - 1);
	st->direct_map_base = 0;
	st->probe_tries = 0;
	st->probe_pfn = 0;
	bpf_loop(probe_max_gib, try_base, &c, 0);
	if (!st->direct_map_base)
		return FIND_BASE_NOT_FOUND;
	find_huge_zero(st, c.pgd);
	find_vmemmap(t, st);
	return FIND_BASE_OK;
}

/*
 * The anon_pass program: after a scan, "written" gains the anonymous copies of private
 * file/shmem VMAs that neither RW nor Dirty shows (page_anon). A program of its own, run by
 * userspace with BPF_PROG_TEST_RUN right after the scan: inside the walk the extra branch
 * took the scan past the verifier's 1M-instruction limit. It reads each such table again
 * through the direct map; a table freed in between reads as whatever the page holds then,
 * which can only retype a page of that table, never add or drop one.
 */
struct anon_pass_ctx {
	struct ptwalk_state *st;
	struct table_rec *rec;
	__u64 *pt;
};

static long anon_word(__u64 k, struct anon_pass_ctx *c)
{
	struct anon_ctx x = {};

	if (k >= 8 || !c->rec || !c->st || !c->pt)
		return 1;
	x.maybe = c->rec->present[k] & ~c->rec->written[k];
	if (!x.maybe)
		return 0;
	x.pt = c->pt;
	x.st = c->st;
	x.word = k;
	bpf_loop(64, anon_bit, &x, 0);
	c->rec->written[k] |= x.anon;
	c->st->anon_cow_checks += __builtin_popcountll(x.maybe);
	return 0;
}

static long anon_table(__u64 i, struct anon_pass_ctx *c)
{
	__u32 slot = i, zero = 0, v;
	struct vma_rec *vr;

	if (!c->st)
		return 1;
	c->rec = bpf_map_lookup_elem(&tables, &slot);
	if (!c->rec || (c->rec->flags & TABLE_F_HUGE))
		return 0;
	v = c->rec->vma;
	vr = bpf_map_lookup_elem(&vmas, &v);
	if (!vr || (vr->kind != VMA_FILE && vr->kind != VMA_SHMEM) ||
	    (vr->flags & (VMA_F_SHARED | VMA_F_ANON_VMA)) != VMA_F_ANON_VMA)
		return 0;
	c->pt = bpf_map_lookup_elem(&scratch, &zero);
	if (!c->pt)
		return 1;
	if (bpf_probe_read_kernel(c->pt, PTRS * 8,
				  (void *)(c->st->direct_map_base + (c->rec->pmd & PHYS_MASK))))
		return 0;
	bpf_loop(8, anon_word, c, 0);
	return 0;
}

SEC("raw_tp")
int anon_pass(void *ctx)
{
	struct anon_pass_ctx c = { .st = get_state() };

	if (!c.st || !c.st->vmemmap_base || !c.st->direct_map_base)
		return 0;
	bpf_loop(c.st->n_tables, anon_table, &c, 0);
	return 0;
}

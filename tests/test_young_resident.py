"""The mglru sources' resident set, through the code they share with ptwalk: the read-only
page-table scan (ptwalk.PageTableScan) joined with the young pages MGLRU reports. MGLRU
cannot run on this host; the resident-set path can, on real processes."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("backing", ["anon", "file", "shmem"])
def test_resident_set_equals_ptwalk_scan(ptwalk_ok, workload, backing: str, tmp_path) -> None:
    """Same pages, types, nodes, THP and VMAs as ptwalk's own harvest of the same process;
    accessed exactly where the young records say (PTE and whole-PMD records)."""
    from pageheat.sources.base import PageType
    from pageheat.sources.mglru import _YOUNG_PMD, _YOUNG_PTE, _YOUNG_REC, resident
    from pageheat.sources.pagetable import PageTableScan
    from pageheat.sources.ptwalk import PtwalkSource

    t = workload("--size", "16MiB", "--backing", backing, "--dir", str(tmp_path))
    src, scan = PtwalkSource(), PageTableScan(check_young=False)
    try:
        src.attach(t.pid)
        scan.attach(t.pid)
        h = src.cycle(t.pid)
        base = t.start >> 12
        hot = [base + int(i) for i in t.hot[:10]]
        gone = 0x10  # never mapped: young but not resident
        pmd = base & ~511  # a PMD record: 512 pages from its first vpn
        young = [np.array([(t.pid, v, _YOUNG_PTE) for v in [*hot, gone]], dtype=_YOUNG_REC),
                 np.array([(t.pid, pmd, _YOUNG_PMD)], dtype=_YOUNG_REC)]
        pages, vmas, extra = resident(scan, t.pid, young)
    finally:
        src.close()
        scan.close()
    lo, hi = np.uint64(t.start >> 12), np.uint64((t.start + t.size) >> 12)
    a = (h.pages.vpn >= lo) & (h.pages.vpn < hi)
    b = (pages.vpn >= lo) & (pages.vpn < hi)
    assert int(b.sum()) == t.size >> 12  # the workload populated its whole region
    for field in ("vpn", "type", "node", "thp", "vma"):
        assert np.array_equal(getattr(h.pages, field)[a], getattr(pages, field)[b]), field
    assert np.array_equal(h.vmas.start, vmas.start) and h.vmas.names == vmas.names
    assert set(pages.type[b].tolist()) == {PageType[backing.upper()]}
    named, resident_vpns = {*hot, gone, *range(pmd, pmd + 512)}, set(pages.vpn.tolist())
    assert set(pages.vpn[pages.accessed].tolist()) == named & resident_vpns
    assert extra.counters["young_pages"] == len(named) and extra.counters["young_huge"] == 1
    assert extra.counters["young_not_resident"] == len(named - resident_vpns) > 0


def test_scan_does_not_age(ptwalk_ok, workload) -> None:
    """The scan never clears Accessed bits (the mglru sources leave that to MGLRU): pages
    populated before attaching stay accessed scan after scan, where ptwalk's aging clears
    them. Where a DAMON kdamond runs, PG_young is consulted (the default), so that the bits
    DAMON clears cannot hide them."""
    from pageheat.sources.pagetable import PageTableScan

    t = workload("--size", "16MiB", "--hot", "0", "--warm", "0")
    scan = PageTableScan()
    try:
        scan.attach(t.pid)
        lo, hi = np.uint64(t.start >> 12), np.uint64((t.start + t.size) >> 12)
        seen = []
        for _ in range(3):
            pages, _, _ = scan.harvest(t.pid)
            region = (pages.vpn >= lo) & (pages.vpn < hi)
            seen.append(int(pages.accessed[region].sum()))
    finally:
        scan.close()
    assert seen == [t.size >> 12] * 3

"""The page-table scan gives back the BPF buffers a large target needed once it is detached
(issue 13, goal 6), and the targets left keep being scanned exactly as before."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from pageheat.kernel import procfs
from pageheat.sources.base import TargetGone
from pageheat.sources.pagetable import PageTableScan, _Capacity, _grow

# Many small mappings, alternating protections so that none merge: each costs the walk a
# vma record and a table record (see PageTableScan.attach).
MANY_MAPPINGS = """
import mmap, sys
keep = []
for i in range(20000):
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ if i % 2 else mmap.PROT_READ | mmap.PROT_WRITE)
    if i % 2 == 0:
        m[0] = 1
    keep.append(m)
print("ready", flush=True)
sys.stdin.read()
"""


def start_many_mappings() -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", MANY_MAPPINGS], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def start_sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "600"])


def resident_pages(scan: PageTableScan, pid: int) -> int:
    pages, _, _ = scan.harvest(pid)
    return len(pages)


def test_detach_of_a_large_target_shrinks_the_buffers(ptwalk_ok) -> None:
    small, gone, big = start_sleeper(), start_sleeper(), start_many_mappings()
    scan = PageTableScan(check_young=False)
    try:
        initial = scan._cap
        scan.attach(small.pid)
        scan.attach(gone.pid)
        before = resident_pages(scan, small.pid)
        assert before > 0
        scan.attach(big.pid)
        n_maps = len(procfs.read_maps(big.pid))
        assert n_maps > 20000
        grown = scan._cap
        assert grown.tables >= 4 * initial.tables and grown.vmas >= n_maps
        assert resident_pages(scan, big.pid) >= 10000  # every written mapping's page

        gone.kill()
        gone.wait(10)  # reaped: its iterator link cannot be made again at the reload
        big.kill()
        big.wait(10)
        scan.detach(big.pid)

        left = max(t.need.tables for t in scan._targets.values())
        assert scan._cap == _grow(_Capacity(), _Capacity(
            max(t.need.vmas for t in scan._targets.values()), left))
        assert scan._obj is not None
        assert scan._obj.max_entries("tables") == scan._cap.tables < grown.tables // 4
        assert resident_pages(scan, small.pid) == before  # the small target, scanned as before
        with pytest.raises(TargetGone):
            scan.harvest(gone.pid)  # went during the reload: gone, not an error
        scan.detach(gone.pid)
    finally:
        for p in (small, gone, big):
            p.kill()
            p.wait(10)
        scan.close()


def test_small_targets_coming_and_going_do_not_reload(ptwalk_ok) -> None:
    """A reload costs a BPF load: only a target 4x larger than any left is worth one."""
    procs = [start_sleeper() for _ in range(3)]
    scan = PageTableScan(check_young=False)
    try:
        obj = scan._obj
        for p in procs:
            scan.attach(p.pid)
        for p in procs[1:]:
            scan.detach(p.pid)
        assert scan._obj is obj  # never reloaded
        assert resident_pages(scan, procs[0].pid) > 0
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
        scan.close()


DENSE = """
import sys
buf = bytearray(32 << 20)
for i in range(0, len(buf), 4096):
    buf[i] = 1
print("ready", flush=True)
sys.stdin.read()
"""


def test_lazy_pages_read_the_map_in_place_until_the_next_scan(ptwalk_ok) -> None:
    """serve's lazy harvest keeps the scan's table records where the BPF map has them (no
    copy): read before the next scan, even across a reload of the maps (another target that
    needs bigger buffers), they are the pages an eager harvest finds; read after the next
    scan, they raise instead of giving another scan's bits."""
    from pageheat.sources.base import SourceError
    from pageheat.sources.pagetable import TablePages

    dense = subprocess.Popen([sys.executable, "-c", DENSE], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert dense.stdout is not None and dense.stdout.readline().strip() == "ready"
    big = start_many_mappings()
    scan = PageTableScan(check_young=False)
    try:
        scan.attach(dense.pid)
        lazy, _, _ = scan.harvest(dense.pid, lazy=True)
        assert isinstance(lazy, TablePages) and not lazy._table_records.flags.owndata
        before = scan._cap
        scan.attach(big.pid)  # grows the maps: a reload while ``lazy`` holds a view of the old
        assert scan._cap.vmas > 20000 > before.vmas
        parts = list(lazy.chunks(4096))
        vpn = np.concatenate([part.vpn for part in parts])
        accessed, blocks = lazy.count_accessed(), lazy.blocks(6)
        assert accessed == sum(int(np.count_nonzero(part.accessed)) for part in parts)
        eager, _, _ = scan.harvest(dense.pid)  # the process sleeps: the same resident pages
        assert np.array_equal(vpn, eager.vpn) and len(vpn) >= (32 << 20) // 4096
        assert np.array_equal(blocks, np.unique(eager.vpn >> np.uint64(6)))
        # Accessed bits of a sleeping process are not set between the two scans, but a kdamond
        # (DAMON: these machines may run one) clears those it samples: fewer, never more.
        assert int(np.count_nonzero(eager.accessed)) <= accessed
        with pytest.raises(SourceError, match="after the source scanned again"):
            lazy.count_accessed()
        with pytest.raises(SourceError):
            next(lazy.chunks(4096))
        with pytest.raises(SourceError):
            lazy.blocks(6)
        assert len(scan.harvest(big.pid, lazy=True)[0]) >= 10000
    finally:
        scan.close()
        for p in (dense, big):
            p.kill()
            p.wait()

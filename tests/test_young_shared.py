"""PG_young on pages another process uses: DAMON's physical-address monitoring clears the
Accessed bits of every mapping of a page it samples and sets the page's PG_young if any of
them was young (damon_folio_mkold, mm/damon/ops-common.c). ptwalk consults PG_young where
DAMON runs; on a page mapped by several processes the flag does not say which one used it,
so ptwalk must not credit the page to the process it walks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import need_kernel, stop_process

pytestmark = pytest.mark.kernel

DAMON = Path("/sys/kernel/mm/damon/admin/kdamonds")
SIZE = 64 << 20
HARVESTS = 8

# Parent and child share SIZE bytes of shared anonymous memory: the parent writes it once,
# then sleeps; the child reads every page of it again and again.
_PAIR = r"""
import ctypes, mmap, os, sys, time
m = mmap.mmap(-1, int(sys.argv[1]), mmap.MAP_SHARED)
for off in range(0, len(m), 4096):
    m[off] = 1
child = os.fork()
if child == 0:
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: never outlive the parent
    view = memoryview(m)[::4096]
    while True:
        sum(view)
start = ctypes.addressof(ctypes.c_char.from_buffer(m))
print(child, hex(start), flush=True)
time.sleep(3600)
"""


def _frames(pid: int, start: int, size: int) -> np.ndarray:
    """PFNs of the present pages of [start, start + size) in pid (pagemap, root)."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek((start >> 12) * 8)
        entries = np.frombuffer(f.read((size >> 12) * 8), dtype="<u8")
    present = (entries >> np.uint64(63)) & np.uint64(1) == 1
    return entries[present] & np.uint64((1 << 55) - 1)


@pytest.fixture
def shared_pair() -> Iterator[tuple[int, int, int]]:
    """(parent pid, child pid, region start) of the pair above."""
    proc = subprocess.Popen([sys.executable, "-c", _PAIR, str(SIZE)], stdout=subprocess.PIPE, text=True)
    fields: list[str] = []
    try:
        fields = (proc.stdout.readline() if proc.stdout else "").split()
        assert len(fields) == 2, f"the pair did not start (exit {proc.poll()})"
        yield proc.pid, int(fields[0]), int(fields[1], 16)
    finally:
        if len(fields) == 2:
            os.kill(int(fields[0]), signal.SIGKILL)
        stop_process(proc)


def _write(path: Path, value: object) -> None:
    path.write_text(f"{value}\n")


@contextlib.contextmanager
def own_kdamond(start: int, end: int) -> Iterator[None]:
    """A DAMON kdamond monitoring the physical addresses [start, end), sampling every 1 ms
    in at least 200 regions,
    through the sysfs interface (Documentation/admin-guide/mm/damon/usage.rst); stopped and
    removed on exit. DAMON runs one set of kdamonds: raises OSError (EBUSY) while another
    one runs."""
    from pageheat.kernel import procfs

    ctx = DAMON / "0" / "contexts" / "0"
    _write(DAMON / "nr_kdamonds", 1)
    try:
        _write(DAMON / "0" / "contexts" / "nr_contexts", 1)
        _write(ctx / "operations", "paddr")
        intervals = ctx / "monitoring_attrs" / "intervals"
        _write(intervals / "sample_us", 1000)
        _write(intervals / "aggr_us", 20000)
        _write(intervals / "update_us", 1000000)
        # One page per region is sampled each time: many regions, many samples.
        _write(ctx / "monitoring_attrs" / "nr_regions" / "min", 200)
        _write(ctx / "targets" / "nr_targets", 1)
        _write(ctx / "targets" / "0" / "regions" / "nr_regions", 1)
        _write(ctx / "targets" / "0" / "regions" / "0" / "start", start)
        _write(ctx / "targets" / "0" / "regions" / "0" / "end", end)
        _write(DAMON / "0" / "state", "on")
        assert procfs.damon_running(), "DAMON sysfs state is on, but no kdamond thread runs"
        yield
    finally:
        state = DAMON / "0" / "state"
        if state.exists() and state.read_text().strip() == "on":
            _write(state, "off")
        _write(DAMON / "nr_kdamonds", 0)


@pytest.fixture
def kdamond_over(shared_pair) -> Iterator[str]:
    """A DAMON physical-address kdamond that samples the pair's frames: the platform's own,
    or, where none runs, one started here over the span of those frames. Yields which."""
    from pageheat.kernel import procfs

    if procfs.damon_running():
        ops = list(DAMON.glob("*/contexts/*/operations"))
        if not ops or any(p.read_text().strip() != "paddr" for p in ops):
            need_kernel("a kdamond runs whose monitoring is not physical-address (paddr): "
                        "its bits cannot be relied on, and DAMON runs one set of kdamonds")
        yield "the platform's kdamond"
        return
    if not (DAMON / "nr_kdamonds").exists():
        need_kernel("no DAMON sysfs interface (CONFIG_DAMON_SYSFS, CONFIG_DAMON_PADDR)")
    parent, _, start = shared_pair
    pfns = _frames(parent, start, SIZE)
    assert len(pfns) == SIZE >> 12, "the shared region is not all resident"
    with own_kdamond(int(pfns.min()) << 12, (int(pfns.max()) + 1) << 12):
        yield "a kdamond of this test"


def test_pg_young_of_a_shared_page_is_not_credited(ptwalk_ok, shared_pair, kdamond_over) -> None:
    """The parent never touches the region after writing it; its child reads it all the
    time. DAMON moves the child's Accessed bits into PG_young on pages the parent maps too:
    none of them may look accessed by the parent, and young_flag_shared counts them."""
    from pageheat.sources.ptwalk import PtwalkSource

    parent, child, start = shared_pair
    lo, hi = np.uint64(start >> 12), np.uint64((start + SIZE) >> 12)
    src = PtwalkSource(check_young=True)
    accessed, declined = [], 0
    try:
        if not src.young_flag_usable:
            need_kernel("PG_young cannot be read: the struct page array was not found "
                        "(5-level paging is not searched)")
        src.attach(parent)
        src.cycle(parent)  # closes the interval in which the parent wrote the region
        for _ in range(HARVESTS):
            time.sleep(0.5)
            h = src.cycle(parent)
            region = (h.pages.vpn >= lo) & (h.pages.vpn < hi)
            assert int(region.sum()) == SIZE >> 12
            accessed.append(int(h.pages.accessed[region].sum()))
            declined += h.counters["young_flag_shared"]
    finally:
        src.close()
    assert accessed == [0] * HARVESTS, accessed
    # Without this the test would pass where DAMON never sampled the region.
    assert declined > 0, f"{kdamond_over} marked none of the shared pages young in {HARVESTS} harvests"

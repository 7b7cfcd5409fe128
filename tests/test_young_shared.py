"""PG_young on pages another process uses: DAMON's physical-address monitoring clears the
Accessed bits of every mapping of a page it samples and sets the page's PG_young if any of
them was young (damon_folio_mkold, mm/damon/ops-common.c). ptwalk consults PG_young where
DAMON runs; on a page mapped more than once the flag does not say which mapping was used,
so ptwalk must not credit the page to the process it walks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, need_kernel, stop_process
from fleet_helpers import frames_in

pytestmark = pytest.mark.kernel

DAMON = Path("/sys/kernel/mm/damon/admin/kdamonds")
SOURCE = ROOT / "tests" / "c" / "shared_pair.c"
MIB = 64
PAGES = MIB << 8  # 4 KiB pages per region
HARVESTS = 8


@dataclass(frozen=True)
class Pair:
    parent: int
    child: int
    shared: int  # address of the region both map; the child reads it all the time
    own: int  # address of the parent's own region; the parent reads it every 100 ms


@pytest.fixture
def shared_pair(tmp_path: Path) -> Iterator[Pair]:
    """tests/c/shared_pair.c, running."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is not installed (apt-get install gcc)")
    exe = tmp_path / "shared_pair"
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", str(exe), str(SOURCE)], check=True)
    proc = subprocess.Popen([str(exe), str(MIB)], stdout=subprocess.PIPE, text=True)
    fields: list[str] = []
    try:
        fields = (proc.stdout.readline() if proc.stdout else "").split()
        assert len(fields) == 3, f"the pair did not start (exit {proc.poll()})"
        yield Pair(proc.pid, int(fields[0]), int(fields[1], 16), int(fields[2], 16))
    finally:
        if len(fields) == 3:
            os.kill(int(fields[0]), signal.SIGKILL)
        stop_process(proc)


def _write(path: Path, value: object) -> None:
    path.write_text(f"{value}\n")


@contextlib.contextmanager
def own_kdamond(start: int, end: int) -> Iterator[None]:
    """A DAMON kdamond monitoring the physical addresses [start, end), sampling every 1 ms in
    at least 200 regions, through the sysfs interface
    (Documentation/admin-guide/mm/damon/usage.rst); stopped and removed on exit. DAMON runs
    one set of kdamonds: raises OSError (EBUSY) while another one runs."""
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
def kdamond_over(shared_pair: Pair) -> Iterator[str]:
    """A DAMON physical-address kdamond that samples the pair's frames: the platform's own,
    or, where DAMON has no kdamond at all, one started here over the span of those frames.
    Yields which."""
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
    if (DAMON / "nr_kdamonds").read_text().strip() != "0":
        need_kernel("DAMON holds a stopped configuration of someone else's: left alone")
    pfns = np.concatenate([frames_in(shared_pair.parent, shared_pair.shared, MIB << 20),
                           frames_in(shared_pair.parent, shared_pair.own, MIB << 20)])
    assert len(pfns) == 2 * PAGES, "the pair's regions are not all resident"
    with own_kdamond(int(pfns.min()) << 12, (int(pfns.max()) + 1) << 12):
        yield "a kdamond of this test"


def test_pg_young_of_a_shared_page_is_not_credited(ptwalk_ok, shared_pair: Pair,
                                                    kdamond_over: str) -> None:
    """The parent never touches the shared region after writing it; its child reads it all
    the time. DAMON moves the child's Accessed bits into PG_young on pages the parent maps
    too: none of them may look accessed by the parent, and young_flag_shared counts them
    (many more while the child runs than while it is stopped: the region's, not libc's).
    The parent's own region, which it reads every 100 ms, is accessed in every interval,
    page for page, DAMON or not (its PG_young still counts)."""
    from pageheat.sources.ptwalk import PtwalkSource

    pair = shared_pair
    regions = {name: (np.uint64(start >> 12), np.uint64((start >> 12) + PAGES))
               for name, start in (("shared", pair.shared), ("own", pair.own))}
    src = PtwalkSource(check_young=True)
    declined = {"stopped": 0, "running": 0}
    accessed: dict[str, list[int]] = {"shared": [], "own": []}
    hits = 0
    try:
        if not src.young_flag_usable:
            need_kernel("PG_young cannot be read: the struct page array was not found "
                        "(5-level paging is not searched)")
        os.kill(pair.child, signal.SIGSTOP)
        # The child's Accessed bits from before it stopped would feed PG_young until DAMON
        # had sampled every page: clear them, so that while it is stopped nothing does.
        Path(f"/proc/{pair.child}/clear_refs").write_text("1\n")
        src.attach(pair.parent)
        for phase in ("stopped", "running"):
            if phase == "running":
                os.kill(pair.child, signal.SIGCONT)
            src.cycle(pair.parent)  # closes an interval that began in the other phase
            for _ in range(HARVESTS // 2 if phase == "stopped" else HARVESTS):
                time.sleep(0.5)
                h = src.cycle(pair.parent)
                for name, (lo, hi) in regions.items():
                    region = (h.pages.vpn >= lo) & (h.pages.vpn < hi)
                    assert int(region.sum()) == PAGES, name
                    accessed[name].append(int(h.pages.accessed[region].sum()))
                declined[phase] += h.counters["young_flag_shared"]
                hits += h.counters["young_flag_hits"]
    finally:
        src.close()
    assert accessed["shared"] == [0] * len(accessed["shared"]), accessed
    assert accessed["own"] == [PAGES] * len(accessed["own"]), (accessed, hits)
    # Without this the test would pass where DAMON never sampled the shared region. (Here,
    # 2026-11-30: 1-9 declined while the child was stopped, 107-150 while it ran.)
    assert declined["running"] > 2 * declined["stopped"] + 8, \
        f"{kdamond_over} hardly marked the shared region young while the child ran: {declined}"



def _accessed_by_table(src, pid: int) -> tuple[dict[int, tuple[bytes, bytes]], int]:
    """One scan, no aging: {PTE table address: (present, accessed-or-PG_young bitmaps)} and
    how many idle entries PG_young made accessed."""
    _, tables, _, counters = src._scan(pid)
    bitmaps = {int(t["addr"]): (t["present"].tobytes(), t["accessed"].tobytes()) for t in tables}
    return bitmaps, counters["young_flag_hits"]


def _reclaim_scanned() -> int:
    """Pages reclaim has scanned since boot (/proc/vmstat pgscan_*)."""
    return sum(int(line.split()[1]) for line in Path("/proc/vmstat").read_text().splitlines()
               if line.startswith("pgscan_"))


def _subset(a: bytes, b: bytes) -> bool:
    x, y = np.frombuffer(a, dtype=np.uint64), np.frombuffer(b, dtype=np.uint64)
    return bool(np.all((x & ~y) == 0))


def test_direct_page_read_agrees_with_probe_read(ptwalk_ok, shared_pair: Pair,
                                                 kdamond_over: str, monkeypatch) -> None:
    """PG_young read by plain loads (bpf_rdonly_cast, young_candidates) and by
    bpf_probe_read_kernel (the pre-6.2 path) give the same pages. Between two agings the set
    of pages that are accessed or PG_young only grows (DAMON sets PG_young; clear_refs, and
    reclaim's folio_referenced, clear it), so three scans, direct, probe, direct, must nest
    page for page in a round without reclaim; and DAMON, sampling the region the parent read
    before it was stopped, must have made some of them count."""
    from pageheat.sources import pagetable
    from pageheat.sources.ptwalk import PtwalkSource

    pair = shared_pair
    direct = PtwalkSource(check_young=True)
    monkeypatch.setattr(pagetable, "direct_page_read", lambda: False)
    probe = PtwalkSource(check_young=True)
    hits: list[tuple[int, int, int]] = []
    reclaimed = 0  # rounds in which reclaim ran: not compared
    try:
        if not direct.young_flag_usable:
            need_kernel("PG_young cannot be read: the struct page array was not found "
                        "(5-level paging is not searched)")
        if not direct.young_flag_direct:
            need_kernel("no bpf_rdonly_cast (Linux < 6.2): only the probe-read path exists")
        assert not probe.young_flag_direct
        direct.attach(pair.parent)
        probe.attach_scanner(pair.parent)  # it only scans: the test ages the parent itself
        while len(hits) < 3 and reclaimed < 3:
            # The parent reads its own region a few times, then stops: from then on only DAMON
            # clears those Accessed bits, and each one it clears becomes a PG_young page.
            scanned = _reclaim_scanned()
            Path(f"/proc/{pair.parent}/clear_refs").write_text("1\n")
            os.kill(pair.parent, signal.SIGCONT)
            time.sleep(0.35)
            os.kill(pair.parent, signal.SIGSTOP)
            time.sleep(2.0)
            (first, h1), (middle, h2), (last, h3) = (
                _accessed_by_table(s, pair.parent) for s in (direct, probe, direct))
            if _reclaim_scanned() != scanned:
                reclaimed += 1
                continue
            hits.append((h1, h2, h3))
            assert first.keys() == middle.keys() == last.keys()
            for addr, (present, accessed) in middle.items():
                assert first[addr][0] == present == last[addr][0], hex(addr)
                assert _subset(first[addr][1], accessed), hex(addr)
                assert _subset(accessed, last[addr][1]), hex(addr)
    finally:
        os.kill(pair.parent, signal.SIGCONT)
        direct.close()
        probe.close()
    assert len(hits) == 3, f"reclaim ran during {reclaimed} rounds: the host is short of memory"
    assert all(h1 <= h2 <= h3 for h1, h2, h3 in hits), hits
    # (Here, 2026-11-30, with the platform's kdamond: 29-34 per scan, the same in all three.)
    assert sum(h[0] for h in hits) > 0, f"{kdamond_over} set PG_young on none of the pages: {hits}"

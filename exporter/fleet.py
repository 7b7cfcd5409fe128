"""Per-cgroup aggregates: the followed processes' views summed by the cgroup they are in.

The collector calls ``by_cgroup`` at scrape time with the latest per-process views and the
processes' identities; nothing here is kept between scrapes, so a cgroup's numbers exist
exactly while at least one of its processes has a view (pid churn inside a cgroup keeps its
series, and they vanish at the first scrape after its last process is gone).

Shared pages: a page mapped by several followed processes is counted once per process that
maps it (the sum of the processes' views). Counting it once per cgroup needs each page's
frame number, which only the ptwalk source reads, and only when NUMA needs it (see
sources/ptwalk.py ``copy_raw``); that is not done yet (README, "Per-cgroup aggregates").
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .aggregate import IDLE_BOUNDS, TargetView
from .identity import Identity

PAGE_BYTES = 4096  # every per-process count is in base pages (a THP counts as its 512 pages)
N_IDLE = len(IDLE_BOUNDS)


@dataclass
class CgroupTotals:
    """One cgroup's sums over its followed processes that have a view.

    idle: (node, type index) -> int64[len(IDLE_BOUNDS)] pages per idle-age bucket (not
    cumulative; never-accessed pages in the last, +Inf). idle_seconds: (node, type index) ->
    summed idle age, seconds, of pages accessed at least once. pids: the processes summed.
    """

    cgroup: str
    idle: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    idle_seconds: dict[tuple[int, int], float] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)

    @property
    def resident_pages(self) -> int:
        return int(sum(int(a.sum()) for a in self.idle.values()))

    def resident(self) -> dict[tuple[int, int], int]:
        """(node, type index) -> resident pages."""
        return {c: int(a.sum()) for c, a in self.idle.items()}

    def working_set_pages(self, window: float) -> int:
        """Pages seen accessed within the last ``window`` seconds (idle age <= window), as of
        each process's latest harvest. ``window`` must be a finite bound of IDLE_BOUNDS: the
        idle histogram's bucket ``le=window`` counts exactly the pages with age <= window
        (aggregate.py buckets with searchsorted side="left"). Raises ValueError otherwise."""
        if not math.isfinite(window) or window not in IDLE_BOUNDS:
            raise ValueError(f"working-set window {window}s is not an idle-age bound")
        upto = IDLE_BOUNDS.index(window) + 1
        return int(sum(int(a[:upto].sum()) for a in self.idle.values()))

    def series_count(self, n_windows: int, promoted: bool = False) -> int:
        """Series the collector exports for this cgroup (keep in step with collector.py)."""
        n = len(self.idle)
        return n + n * (N_IDLE + 2) + n_windows + (N_IDLE if promoted else 0)


def by_cgroup(views: Iterable[TargetView], identities: Mapping[int, Identity]) -> list[CgroupTotals]:
    """Sum the views by cgroup, largest resident first. Views of processes without an
    identity, or whose cgroup is unknown (""), are in no cgroup's numbers."""
    out: dict[str, CgroupTotals] = {}
    for v in views:
        ident = identities.get(v.pid)
        if ident is None or not ident.cgroup:
            continue
        t = out.setdefault(ident.cgroup, CgroupTotals(ident.cgroup))
        t.pids.append(v.pid)
        for row, combo in enumerate(v.combos):
            prev = t.idle.get(combo)
            row_idle = v.idle[row].astype(np.int64)
            t.idle[combo] = row_idle if prev is None else prev + row_idle
            t.idle_seconds[combo] = t.idle_seconds.get(combo, 0.0) + float(v.idle_seconds[row])
    return sorted(out.values(), key=lambda t: (-t.resident_pages, t.cgroup))


class PromotedLedger:
    """Keeps each cgroup's promotion counter monotonic while its processes come and go.

    A process's promotion count is a counter that lives and dies with the process; summed
    over a cgroup's current processes it would drop when one exits, which rate() takes for a
    counter reset (a spike). So the counts of processes that are gone are kept in the cgroup's
    ``retired`` total for as long as the cgroup has series; when the cgroup goes, so does its
    total. A pid whose count went down is a new process that reuses the pid.
    Thread-safe: scrapes may run concurrently."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[int, tuple[str, np.ndarray]] = {}  # pid -> (cgroup, its latest counts)
        self._retired: dict[str, np.ndarray] = {}  # cgroup -> counts of its exited processes

    def totals(self, views: Iterable[TargetView], identities: Mapping[int, Identity],
               cgroups: Iterable[str]) -> dict[str, np.ndarray]:
        """cgroup -> uint64[len(IDLE_BOUNDS)] pages promoted, by bucket (not cumulative over
        le), for every cgroup in ``cgroups`` whose views carry promotion counts."""
        now: dict[int, tuple[str, np.ndarray]] = {}
        for v in views:
            ident, promoted = identities.get(v.pid), getattr(v, "promoted", None)
            if ident is not None and ident.cgroup and promoted is not None:
                now[v.pid] = (ident.cgroup, np.asarray(promoted, dtype=np.uint64).sum(axis=0))
        live = set(cgroups)
        with self._lock:
            for pid, (cg, counts) in self._last.items():
                cur = now.get(pid)
                gone = cur is None or cur[0] != cg or bool((cur[1] < counts).any())
                if gone and cg in live:
                    self._retired[cg] = self._retired.get(cg, np.zeros(N_IDLE, np.uint64)) + counts
            self._retired = {cg: c for cg, c in self._retired.items() if cg in live}
            self._last = now
            out = {cg: c.copy() for cg, c in self._retired.items()}
            for cg, counts in now.values():
                out[cg] = out.get(cg, np.zeros(N_IDLE, np.uint64)) + counts
        return out

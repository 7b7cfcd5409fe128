"""Per-cgroup aggregates: the followed processes' views summed by the cgroup they are in.

The collector calls ``by_cgroup`` at scrape time with the latest per-process views and the
processes' identities; only caches are kept between scrapes (FrameDedupe's sorted frames,
PromotedLedger's counts of exited processes), so a cgroup's numbers exist exactly while at
least one of its processes has a view (pid churn inside a cgroup keeps its series, and they
vanish at the first scrape after its last process is gone).

Shared pages: with frame numbers (ptwalk reads them when cgroups are targeted, Pages.pfn),
the daemon keeps each process's ``PageFrames`` beside its view, and a cgroup whose processes
all have them counts each physical page once, with its most recent access among the
processes that map it (the smallest idle age). Without them (mglru sources), or while one of
the cgroup's processes has none, the cgroup's numbers are the sum of its processes' views: a
shared page counts once per process that maps it. Across cgroups a page counts in each cgroup
that maps it (README, "Shared pages").
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from pageheat.model.aggregate import IDLE_BOUNDS, N_TYPES, TargetState, TargetView
from pageheat.model.identity import Identity
from pageheat.sources.base import Harvest

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
    deduplicated: bool = False  # each physical page counted once (every process had frames)
    # reason -> mapped 4 KiB pages its processes cannot monitor (pageheat_unmonitored_pages'
    # reasons), summed over the processes: these pages have no frame numbers, so a page two
    # of them map counts twice. Only nonzero reasons.
    unmonitored: dict[str, int] = field(default_factory=dict)

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


_BOUNDS = np.array(IDLE_BOUNDS)


@dataclass(frozen=True)
class PageFrames:
    """One process's resident pages as of its latest harvest, by physical frame.

    pfn: uint64 frame numbers; combo: int32 node * N_TYPES + type; age: float32 seconds since
    last seen accessed at that harvest, NaN for never (float32: 0.06 s resolution at a week,
    finer than any aging interval). Same length, page order of the harvest. 16 bytes a page.
    """

    pfn: np.ndarray
    combo: np.ndarray
    age: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.pfn.nbytes + self.combo.nbytes + self.age.nbytes)


def frames(state: TargetState, h: Harvest) -> PageFrames | None:
    """The harvest's pages by frame, with their idle ages from the aggregator's state right
    after it took ``h``; None when the source read no frame numbers."""
    p = h.pages
    if p.pfn is None:
        return None
    combo = p.node.astype(np.int32) * N_TYPES + p.type.astype(np.int32)
    return PageFrames(p.pfn, combo, state.idle_ages(p.vpn, h.time).astype(np.float32))


def _once_per_frame(fs: list[PageFrames]) -> tuple[dict[tuple[int, int], np.ndarray],
                                                    dict[tuple[int, int], float]]:
    """The idle histogram of the pages in ``fs`` counting each frame once: with the smallest
    idle age any of the processes saw for it (the most recent access), in the combo of that
    mapping. Returns (idle, idle_seconds) keyed like CgroupTotals'. O(n log n) in the pages
    (a sort): about 0.4 s for a million pages on the development VM, so it is cached
    (FrameDedupe)."""
    pfn = np.concatenate([f.pfn for f in fs])
    age = np.concatenate([f.age for f in fs]).astype(np.float64)
    combo = np.concatenate([f.combo for f in fs])
    order = np.lexsort((np.nan_to_num(age, nan=np.inf), pfn))  # by pfn, then youngest first
    first = np.ones(len(order), dtype=bool)
    first[1:] = pfn[order][1:] != pfn[order][:-1]
    keep = order[first]
    age, combo = age[keep], combo[keep]
    never = np.isnan(age)
    bucket = np.where(never, N_IDLE - 1, np.searchsorted(_BOUNDS, np.nan_to_num(age), side="left"))
    keys, cidx = np.unique(combo, return_inverse=True)
    hist = np.bincount(cidx * N_IDLE + bucket, minlength=len(keys) * N_IDLE).reshape(len(keys), N_IDLE)
    secs = np.bincount(cidx[~never], weights=age[~never], minlength=len(keys))
    idle: dict[tuple[int, int], np.ndarray] = {}
    idle_seconds: dict[tuple[int, int], float] = {}
    for i, k in enumerate(keys):
        c = (int(k) // N_TYPES, int(k) % N_TYPES)
        idle[c] = hist[i].astype(np.int64)
        idle_seconds[c] = float(secs[i])
    return idle, idle_seconds


class FrameDedupe:
    """Each cgroup's once-per-frame idle histogram, computed once per set of its processes'
    PageFrames and reused until one of them changes.

    The daemon replaces a process's PageFrames at each of its harvests and never mutates one,
    so the tuple of a cgroup's PageFrames objects (compared by identity) says whether its
    pages changed. One exposition per generation and content type (http.py) calls
    ``by_cgroup``: without the cache every encoding (text, OpenMetrics, each scrape after
    any harvest) sorted every cgroup's pages again; with it a cgroup is sorted once after
    one of its processes was harvested, and not at all while none was. Why not in the
    harvest thread: there a cgroup of k processes would be sorted at each of their k
    harvests, k times per aging period, where a scrape sorts it at most once per scrape.
    Thread-safe: concurrent encodings wait for one computation and share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[PageFrames, ...], tuple[dict, dict]]] = {}
        self.computed = 0  # cgroups sorted so far (tests and benchmarks read it)

    def totals(self, wanted: Mapping[str, list[PageFrames]]) -> dict[str, tuple[dict, dict]]:
        """cgroup -> (idle, idle_seconds) as ``_once_per_frame`` returns them, for each cgroup
        in ``wanted`` (its processes' PageFrames); cgroups not in ``wanted`` are forgotten."""
        with self._lock:
            cache = {}
            for cg, fs in wanted.items():
                key = tuple(fs)
                hit = self._cache.get(cg)
                if hit is not None and len(hit[0]) == len(key) and all(
                        a is b for a, b in zip(hit[0], key, strict=True)):
                    cache[cg] = hit
                else:
                    cache[cg] = (key, _once_per_frame(fs))
                    self.computed += 1
            self._cache = cache
            return {cg: (dict(v[1][0]), dict(v[1][1])) for cg, v in cache.items()}


def by_cgroup(views: Iterable[TargetView], identities: Mapping[int, Identity],
              page_frames: Mapping[int, PageFrames] | None = None,
              unmonitored: Mapping[int, Mapping[str, int]] | None = None,
              dedupe: FrameDedupe | None = None) -> list[CgroupTotals]:
    """Sum the views by cgroup, largest resident first; a cgroup whose every process has
    ``page_frames`` counts each physical page once (see the module docstring), through
    ``dedupe``'s cache when given. ``unmonitored``: pid -> {reason: pages} (Stats.unmonitored's
    counts), summed into each cgroup's ``unmonitored`` for every process with a view, whether
    or not it has per-process series. Views of processes without an identity, or whose
    cgroup is unknown (""), are in no cgroup."""
    out: dict[str, CgroupTotals] = {}
    page_frames = page_frames or {}
    unmonitored = unmonitored or {}
    members: dict[str, list[int]] = {}
    for v in views:
        ident = identities.get(v.pid)
        if ident is None or not ident.cgroup:
            continue
        t = out.setdefault(ident.cgroup, CgroupTotals(ident.cgroup))
        members.setdefault(ident.cgroup, []).append(v.pid)
        t.pids.append(v.pid)
        for row, combo in enumerate(v.combos):
            prev = t.idle.get(combo)
            row_idle = v.idle[row].astype(np.int64)
            t.idle[combo] = row_idle if prev is None else prev + row_idle
            t.idle_seconds[combo] = t.idle_seconds.get(combo, 0.0) + float(v.idle_seconds[row])
        for reason, n in unmonitored.get(v.pid, {}).items():
            if n:
                t.unmonitored[reason] = t.unmonitored.get(reason, 0) + int(n)
    wanted: dict[str, list[PageFrames]] = {}
    for cg, pids in members.items():
        fs = [page_frames.get(pid) for pid in pids]
        if all(f is not None for f in fs):
            wanted[cg] = fs  # type: ignore[assignment]
    deduped = (dedupe.totals(wanted) if dedupe is not None
               else {cg: _once_per_frame(fs) for cg, fs in wanted.items()})
    for cg, (idle, idle_seconds) in deduped.items():
        out[cg].idle, out[cg].idle_seconds, out[cg].deduplicated = idle, idle_seconds, True
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

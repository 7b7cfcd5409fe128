"""Per-target page state, address bins and the summaries the collector exports.

The aggregator owns everything derived from harvests: per-page history (when each page was
last seen accessed, how often, since when it is known), the target's address bins, and
cumulative per-bin access counts. After each harvest it publishes an immutable
``TargetView``; the collector only formats views, so a scrape never waits for a harvest.
All per-page work is numpy.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .sources.base import PAGE_TYPE_NAMES, Harvest, Pages, VmaKind, Vmas

# le bounds of pageheat_idle_pages, in seconds; never-accessed pages count only in +Inf.
IDLE_BOUNDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf)
N_TYPES = len(PAGE_TYPE_NAMES)

# Re-bin when the mapped size changes by more than this factor, or when more than this
# fraction of resident pages lies outside the current bins.
REBIN_SIZE_FACTOR = 2.0
REBIN_OUTSIDE_FRACTION = 0.10

# Harvest.counters keys of the MGLRU generation histogram (mglru-fexit, mglru-hook; see
# lrugen.histogram): pages of the target's memcg per node, age rank (0 youngest) and type.
_LRU_GEN_KEY = re.compile(r"lru_gen_node(\d+)_gen(\d+)_(anon|file)")


def mapping_label(name: str) -> str:
    """Short, address-free name of a mapping: a file's basename, [heap], [stack] or anon."""
    if not name:
        return "anon"
    if name.startswith("["):
        return name
    return os.path.basename(name.removesuffix(" (deleted)")) or name


@dataclass(frozen=True)
class Bins:
    """Address bins over the target's mapped pages, with unmapped gaps squeezed out.

    edges: uint64 vpn boundaries, N + 1 of them; bin i is [edges[i], edges[i+1]).
    labels: the main mapping name(s) of each bin. bytes: mapped bytes inside each bin.
    """

    edges: np.ndarray
    labels: tuple[str, ...]
    bytes: np.ndarray
    mapped_pages: int

    @property
    def n(self) -> int:
        return len(self.edges) - 1

    def of(self, vpn: np.ndarray) -> np.ndarray:
        """Bin of each page; pages outside the bins go to the nearest end bin."""
        b = np.searchsorted(self.edges, vpn, side="right").astype(np.int64) - 1
        return np.clip(b, 0, self.n - 1)

    def outside(self, vpn: np.ndarray) -> int:
        return int(np.count_nonzero((vpn < self.edges[0]) | (vpn >= self.edges[-1])))


def _binned_vmas(vmas: Vmas) -> np.ndarray:
    """Indices of the mappings that take part in binning: not kernel-special, not PROT_NONE."""
    keep = (vmas.kind != VmaKind.OTHER) & vmas.accessible
    return np.flatnonzero(keep)


def make_bins(vmas: Vmas, n: int) -> Bins:
    """Split the mapped pages into ``n`` equal parts, squeezing out the gaps between mappings."""
    sel = _binned_vmas(vmas)
    if len(sel) == 0:
        sel = np.arange(len(vmas))
    start = vmas.start[sel] >> np.uint64(12)
    end = vmas.end[sel] >> np.uint64(12)
    size = (end - start).astype(np.int64)
    cum = np.concatenate(([0], np.cumsum(size)))
    total = int(cum[-1])
    if total == 0:
        edges = np.arange(n + 1, dtype=np.uint64)
        return Bins(edges, ("",) * n, np.zeros(n, dtype=np.int64), 0)
    # Compressed offset of each edge -> the mapping it falls in -> a real vpn.
    off = (np.arange(n + 1, dtype=np.int64) * total) // n
    j = np.clip(np.searchsorted(cum, off, side="right") - 1, 0, len(sel) - 1)
    edges = start[j] + (off - cum[j]).astype(np.uint64)
    edges[-1] = end[-1]
    edges = np.maximum.accumulate(edges)
    bin_bytes = np.diff(off) * 4096
    labels = _bin_labels(vmas, sel, edges)
    return Bins(edges, labels, bin_bytes, total)


def _bin_labels(vmas: Vmas, sel: np.ndarray, edges: np.ndarray) -> tuple[str, ...]:
    """The one or two mappings covering most of each bin (per-VMA work, not per page)."""
    n = len(edges) - 1
    weights: list[Counter[str]] = [Counter() for _ in range(n)]
    for i in sel:
        lo, hi = int(vmas.start[i]) >> 12, int(vmas.end[i]) >> 12
        first = max(int(np.searchsorted(edges, lo, side="right")) - 1, 0)
        last = min(int(np.searchsorted(edges, hi, side="left")), n)
        name = mapping_label(vmas.names[i])
        for b in range(first, last):
            overlap = min(hi, int(edges[b + 1])) - max(lo, int(edges[b]))
            if overlap > 0:
                weights[b][name] += overlap
    return tuple(",".join(k for k, _ in w.most_common(2)) for w in weights)


@dataclass(frozen=True)
class GenerationPages:
    """Pages in one MGLRU generation of the target's memory cgroup on one node: the kernel's
    view of the whole memcg (every process charged to it), not of the target alone."""

    node: int
    type: str  # anon | file
    generation: int  # age rank, 0 = youngest
    pages: int


def lru_generations(counters: dict[str, int]) -> tuple[GenerationPages, ...]:
    """The generation histogram in a harvest's counters, sorted; empty for sources without one."""
    out = []
    for key, value in counters.items():
        if m := _LRU_GEN_KEY.fullmatch(key):
            out.append(GenerationPages(int(m[1]), m[3], int(m[2]), int(value)))
    return tuple(sorted(out, key=lambda g: (g.node, g.type, g.generation)))


@dataclass(frozen=True)
class TargetView:
    """What the collector exports for one target, as of its latest harvest.

    Per-(node, type) arrays are keyed by ``combos``: a list of (node, type index) pairs;
    row k of each 2-D array belongs to combos[k].
    """

    pid: int
    comm: str
    time: float
    combos: tuple[tuple[int, int], ...]
    bins: Bins
    rebins: int
    accessed_cum: np.ndarray  # uint64 [combo, bin]: pages seen accessed, summed over harvests
    resident: np.ndarray  # int64 [combo, bin]
    idle: np.ndarray  # int64 [combo, len(IDLE_BOUNDS)], not cumulative
    idle_seconds: np.ndarray  # float64 [combo]: summed idle age of pages accessed at least once
    never_accessed: dict[str, int]  # mapping label -> pages never seen accessed
    harvests: int
    interval: float  # effective aging interval, seconds
    wss_pages: int  # pages accessed in the latest interval
    resident_pages: int
    cold_pages: int  # pages idle for longer than the cold threshold, or never accessed
    extra: dict[str, float] = field(default_factory=dict)
    lru_gen: tuple[GenerationPages, ...] = ()  # the latest harvest's; () when it carried none
    period: float = 0.0  # achieved seconds between the last two harvests; 0 after the first

    def series_count(self, max_never_mappings: int) -> int:
        """Series this view produces (keep in step with collector.py)."""
        n_combo, n_bins = self.accessed_cum.shape
        return (
            n_combo * (n_bins + 3)  # accessed histogram: buckets incl. +Inf, _sum, _count
            + int(np.count_nonzero(self.resident))  # resident per bin (zeros omitted)
            + n_combo * (len(IDLE_BOUNDS) + 2)  # idle gauge histogram
            + min(len(self.never_accessed), max_never_mappings + 1)
            + n_bins  # address_bin_info
            + 6  # per-target gauges
            + int(self.period > 0)  # aging_period_seconds
            + len(self.lru_gen)  # lru_gen_pages
        )


class TargetState:
    """Everything pageheat remembers about one process between harvests."""

    def __init__(self, pid: int, comm: str, n_bins: int, cold_after: float) -> None:
        self.pid = pid
        self.comm = comm
        self.n_bins = n_bins
        self.cold_after = cold_after
        self.vpn = np.zeros(0, dtype=np.uint64)
        self.last_access = np.zeros(0, dtype=np.float64)  # monotonic time; NaN = never
        self.times_accessed = np.zeros(0, dtype=np.uint32)
        self.first_seen = np.zeros(0, dtype=np.float64)
        self.bins: Bins | None = None
        self.rebins = 0
        self.harvests = 0
        self.last_time: float | None = None  # of the previous harvest
        self.accessed_cum: dict[tuple[int, int], np.ndarray] = {}

    def update(self, h: Harvest, interval: float) -> TargetView:
        p = h.pages
        self._merge_history(p, h.time)
        if self.bins is None or self._layout_changed(h.vmas, p):
            if self.bins is not None:
                self.rebins += 1
            self.bins = make_bins(h.vmas, self.n_bins)
        self.harvests += 1
        bins = self.bins
        b = bins.of(p.vpn)

        combo_key = p.node.astype(np.int64) * N_TYPES + p.type
        keys, combo_idx = np.unique(combo_key, return_inverse=True)
        for k in self.accessed_cum:  # keep combos seen before, so counters never vanish
            if k[0] * N_TYPES + k[1] not in keys:
                keys = np.append(keys, k[0] * N_TYPES + k[1])
        combos = tuple((int(k // N_TYPES), int(k % N_TYPES)) for k in keys)
        nc, nb = len(combos), bins.n

        flat = combo_idx * nb + b
        accessed_now = np.bincount(flat[p.accessed], minlength=nc * nb).reshape(nc, nb)
        resident = np.bincount(flat, minlength=nc * nb).reshape(nc, nb)
        cum = np.zeros((nc, nb), dtype=np.uint64)
        for i, c in enumerate(combos):
            prev = self.accessed_cum.get(c)
            self.accessed_cum[c] = (prev if prev is not None else 0) + accessed_now[i].astype(np.uint64)
            cum[i] = self.accessed_cum[c]

        age = h.time - self.last_access
        never = np.isnan(age)
        bucket = np.where(never, len(IDLE_BOUNDS) - 1,
                          np.searchsorted(np.array(IDLE_BOUNDS), np.nan_to_num(age), side="left"))
        nbk = len(IDLE_BOUNDS)
        idle = np.bincount(combo_idx * nbk + bucket, minlength=nc * nbk).reshape(nc, nbk)
        idle_seconds = np.bincount(combo_idx[~never], weights=age[~never], minlength=nc)

        never_by_vma = np.bincount(p.vma[never], minlength=len(h.vmas))
        never_accessed: Counter[str] = Counter()
        for i in np.flatnonzero(never_by_vma):
            never_accessed[mapping_label(h.vmas.names[i])] += int(never_by_vma[i])

        cold = int(np.count_nonzero(never | (age > self.cold_after)))
        period = h.time - self.last_time if self.last_time is not None else 0.0
        self.last_time = h.time
        return TargetView(
            pid=self.pid, comm=self.comm, time=h.time, combos=combos, bins=bins,
            rebins=self.rebins, accessed_cum=cum, resident=resident, idle=idle, idle_seconds=idle_seconds,
            never_accessed=dict(never_accessed), harvests=self.harvests, interval=interval,
            wss_pages=int(np.count_nonzero(p.accessed)), resident_pages=len(p),
            cold_pages=cold, lru_gen=lru_generations(h.counters), period=period,
        )

    def _merge_history(self, p: Pages, now: float) -> None:
        """Carry each page's history over to the new resident set; new pages start fresh."""
        n = len(p.vpn)
        if n == len(self.vpn) and np.array_equal(p.vpn, self.vpn):
            last, count, first = self.last_access, self.times_accessed, self.first_seen
        elif len(self.vpn) == 0:
            last, count, first = np.full(n, np.nan), np.zeros(n, np.uint32), np.full(n, now)
        else:
            idx = np.minimum(np.searchsorted(self.vpn, p.vpn), len(self.vpn) - 1)
            known = self.vpn[idx] == p.vpn
            last = np.where(known, self.last_access[idx], np.nan)
            count = np.where(known, self.times_accessed[idx], 0).astype(np.uint32)
            first = np.where(known, self.first_seen[idx], now)
        last[p.accessed] = now
        count[p.accessed] += 1
        self.vpn, self.last_access, self.times_accessed, self.first_seen = p.vpn, last, count, first

    def _layout_changed(self, vmas: Vmas, p: Pages) -> bool:
        assert self.bins is not None
        sel = _binned_vmas(vmas)
        mapped = int(((vmas.end[sel] - vmas.start[sel]) >> np.uint64(12)).sum())
        old = max(self.bins.mapped_pages, 1)
        if not (1 / REBIN_SIZE_FACTOR <= mapped / old <= REBIN_SIZE_FACTOR):
            return True
        return self.bins.outside(p.vpn) > REBIN_OUTSIDE_FRACTION * max(len(p), 1)

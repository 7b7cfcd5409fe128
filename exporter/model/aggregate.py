"""Per-target page state, address bins and the summaries the collector exports.

The aggregator owns everything derived from harvests: per-page history (the aging epoch at
which each resident page was last seen accessed: 2 bytes per page, see ``PageHistory``), the
target's address bins, and cumulative per-bin access and promotion counts. After each harvest
it publishes an immutable ``TargetView``; the collector only formats views, so a scrape never
waits for a harvest. All per-page work is numpy, in chunks of ``CHUNK`` pages so that the
transient arrays stay small beside the state whatever the target's size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from pageheat.sources.base import (
    PAGE_TYPE_NAMES,
    Harvest,
    LruGenerations,
    PageChunk,
    PageSet,
    VmaKind,
    Vmas,
    exec_between,
)

# le bounds of pageheat_idle_pages, in seconds; never-accessed pages count only in +Inf.
IDLE_BOUNDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf)
N_TYPES = len(PAGE_TYPE_NAMES)

# Re-bin when the mapped size changes by more than this factor, or when more than this
# fraction of resident pages lies outside the mappings the current bins were made from.
REBIN_SIZE_FACTOR = 2.0
REBIN_OUTSIDE_FRACTION = 0.10

# Per-page history: one uint16 per page, in blocks of 2**BLOCK_SHIFT pages (64 pages, 256 KiB)
# keyed by vpn >> BLOCK_SHIFT, so no vpn is stored per page. Small blocks bound the waste of
# sparse layouts (a lone resident page costs one 128-byte block, 1/32 of the page table the
# kernel itself keeps for it) while dense memory costs 2 + 8/64 bytes per page.
BLOCK_SHIFT = 6
BLOCK = 1 << BLOCK_SHIFT
ABSENT = 0  # epoch value: not resident at the latest harvest
NEVER = 1  # resident, never seen accessed since it became resident
FIRST_EPOCH = 2
MAX_EPOCH = np.iinfo(np.uint16).max
# PageHistory.times starts this long (8 bytes an epoch) and doubles as epochs are handed out:
# a target followed for an hour at 1 s needs 4 K epochs, not all 64 K (512 KiB) at once.
TIMES_INITIAL = 64
# Pages per numpy pass: bounds the per-page transients, which glibc keeps in serve's heap
# between harvests; each pass also costs tens of microseconds of numpy calls whatever its size.
# Side by side (bench/harvest.py, 2026-12-01 06:10, serve CPU per cycle at 1 / 4 / 16 GiB):
# 15.0 / 48.0 / 184.5 ms at 1 << 14, 15.0 / 45.5 / 180.5 at 1 << 15, 15.0 / 48.0 / 178.5 at
# 1 << 16; VmHWM 63 / 63 / 71 MiB for all three, but at 1 << 16 the 4 GiB one was 0.8 MiB
# over issue 13's budget (61 / 63 / 72 MiB) and the others under it. Runs of full tables
# (pagetable._FullTables) decode a few bytes per page, so 32 Ki pages cost no more memory
# than 16 Ki did before them.
CHUNK = 1 << 15
# _add_counts counts by runs where there are at least RUN_MIN values in runs of RUN_FACTOR on
# average (measured, values in runs: 1,024 take 4 us by bincount and 8 by runs, 4,096 take
# 13 and 10; even at about 3,000).
RUN_FACTOR = 8
RUN_MIN = 3072
BY_EPOCH_MAX = 1 << 18  # (node, type) combos x epochs in use: counted per epoch up to this (2 MiB)


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
    ranges: uint64 [M, 2] vpn [start, end) of the mappings binned, in address order: a page
    that lands outside them later (a mapping moved into a gap, an exec) is in no bin's
    share, only in the bin whose span holds the gap.
    """

    edges: np.ndarray
    labels: tuple[str, ...]
    bytes: np.ndarray
    mapped_pages: int
    ranges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.uint64))

    @property
    def n(self) -> int:
        return len(self.edges) - 1

    def of(self, vpn: np.ndarray) -> np.ndarray:
        """Bin of each page; pages outside the bins go to the nearest end bin."""
        b = np.searchsorted(self.edges, vpn, side="right").astype(np.int64) - 1
        return np.clip(b, 0, self.n - 1)

    def outside(self, vpn: np.ndarray) -> int:
        """How many of the sorted uint64 ``vpn`` lie outside the bins (two binary searches)."""
        below = int(np.searchsorted(vpn, self.edges[0], side="left"))
        return below + len(vpn) - int(np.searchsorted(vpn, self.edges[-1], side="left"))


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
    return Bins(edges, labels, bin_bytes, total, np.stack([start, end], axis=1))


def uncovered_pages(ranges: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """int64 pages of each [start, end) (uint64 vpn arrays) that no range of ``ranges``
    (uint64 [M, 2] vpn [start, end), sorted, disjoint: Bins.ranges) covers. Per range, not
    per page: a search per bound."""
    size = (end - start).astype(np.int64)
    if not len(ranges):
        return size
    lo, hi = ranges[:, 0].astype(np.int64), ranges[:, 1].astype(np.int64)
    below = np.concatenate(([0], np.cumsum(hi - lo)))  # pages of the ranges before range i

    def covered_below(x: np.ndarray) -> np.ndarray:  # pages of the ranges below each vpn x
        x = x.astype(np.int64)
        i = np.searchsorted(lo, x, side="right") - 1
        j = np.maximum(i, 0)
        return np.where(i >= 0, below[j] + np.clip(x - lo[j], 0, hi[j] - lo[j]), 0)

    return size - (covered_below(end) - covered_below(start))


def _bin_labels(vmas: Vmas, sel: np.ndarray, edges: np.ndarray) -> tuple[str, ...]:
    """The one or two mappings covering most of each bin: labels by pages covered, ties in
    address order of their first mapping in the bin. numpy over (mapping, bin) pairs, about
    one per mapping plus one per bin; Python only per label and per bin."""
    n = len(edges) - 1
    index: dict[str, int] = {}
    label = np.fromiter((index.setdefault(mapping_label(vmas.names[i]), len(index)) for i in sel),
                        dtype=np.int64, count=len(sel))
    names = list(index)
    e = edges.astype(np.int64)
    lo = (vmas.start[sel] >> np.uint64(12)).astype(np.int64)
    hi = (vmas.end[sel] >> np.uint64(12)).astype(np.int64)
    first = np.maximum(np.searchsorted(e, lo, side="right") - 1, 0)
    last = np.minimum(np.searchsorted(e, hi, side="left"), n)
    count = np.maximum(last - first, 0)
    # One row per (mapping, bin) it may overlap, in mapping (address) order then bin order.
    m = np.repeat(np.arange(len(sel)), count)
    b = first[m] + np.arange(len(m)) - np.repeat(np.cumsum(count) - count, count)
    overlap = np.minimum(hi[m], e[b + 1]) - np.maximum(lo[m], e[b])
    keep = overlap > 0
    b, lab, overlap = b[keep], label[m[keep]], overlap[keep]
    pair = np.arange(len(b))
    # Sum per (bin, label); a stable sort keeps each group's earliest pair first.
    key = b * max(len(names), 1) + lab
    order = np.argsort(key, kind="stable")
    key, pair, overlap = key[order], pair[order], overlap[order]
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))) if len(key) else key
    weight = np.add.reduceat(overlap, starts) if len(key) else overlap
    gbin, glab, gfirst = b[order][starts], lab[order][starts], pair[starts]
    # Per bin: heaviest first, ties by the earliest pair (Counter.most_common's order).
    rank = np.lexsort((gfirst, -weight, gbin))
    rb = gbin[rank]
    run_start = np.flatnonzero(np.concatenate(([True], rb[1:] != rb[:-1]))) if len(rb) else rb
    place = np.arange(len(rb)) - np.repeat(run_start, np.diff(run_start, append=len(rb)))
    top = rank[place < 2]  # the two heaviest of each bin, in order
    out: list[list[str]] = [[] for _ in range(n)]
    for bb, g in zip(gbin[top].tolist(), glab[top].tolist(), strict=True):
        out[bb].append(names[g])
    return tuple(",".join(x) for x in out)


@dataclass(frozen=True)
class GenerationPages:
    """Pages in one MGLRU generation of the target's memory cgroup on one node: the kernel's
    view of the whole memcg (every process charged to it), not of the target alone."""

    node: int
    type: str  # anon | file
    generation: int  # age rank, 0 = youngest
    pages: int


def lru_generations(hist: LruGenerations | None) -> tuple[GenerationPages, ...]:
    """A harvest's generation histogram (Harvest.lru_gen; a few rows per node), one entry per
    node, type and age rank, sorted; empty for sources without one."""
    if hist is None:
        return ()
    out = [GenerationPages(node, kind, rank, pages)
           for node, rank, anon, file in zip(hist.node.tolist(), hist.rank.tolist(),
                                             hist.anon.tolist(), hist.file.tolist(), strict=True)
           for kind, pages in (("anon", anon), ("file", file))]
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
    # uint64 [combo, len(IDLE_BOUNDS)], summed over harvests, not cumulative over le: pages found
    # accessed that were resident at the previous harvest, by the idle age they had there (the
    # pageheat_idle_pages bucket they left; never-accessed pages in the last, +Inf). None: not
    # exported (views built by hand in tests).
    promoted: np.ndarray | None = None
    promoted_seconds: np.ndarray | None = None  # float64 [combo]: their summed idle ages, seconds


class PageHistory:
    """When each resident page of one target was last seen accessed, as a uint16 aging epoch.

    ``epochs`` is uint16 [len(keys), BLOCK]: row r holds the pages vpn in
    [keys[r] << BLOCK_SHIFT, (keys[r] + 1) << BLOCK_SHIFT); keys is sorted uint64, one per block
    with a page resident at the latest harvest. Values: ABSENT (not resident), NEVER (resident,
    not seen accessed since it became resident) or an epoch >= FIRST_EPOCH; ``times[e]`` is the
    monotonic time of the harvest that epoch e stands for (NaN for ABSENT, NEVER and epochs not
    handed out yet), float64 of at least ``next`` entries, grown as epochs are handed out. Idle
    ages always come from ``times``: with stretched intervals epochs are not evenly spaced.

    Epochs are handed out in time order. When they run out (MAX_EPOCH harvests: 18 hours at
    1 s), ``_compact`` renumbers the epochs still in use and merges those older than
    ``horizon`` (past the largest finite idle bound and cold_after, so their bucket and their
    coldness cannot change) into one, at their page-weighted mean time: that keeps the sum of
    their idle ages while they stay together; once some of them are accessed again or leave,
    the idle and promotion second sums (histogram _sum) of pages idle past the horizon are
    approximate. Bucket counts stay exact.
    """

    def __init__(self, horizon: float, max_epoch: int = MAX_EPOCH) -> None:
        if not FIRST_EPOCH < max_epoch <= MAX_EPOCH:
            raise ValueError(f"max_epoch must be in ({FIRST_EPOCH}, {MAX_EPOCH}]")
        self.horizon = horizon
        self.max_epoch = max_epoch
        self.keys = np.zeros(0, dtype=np.uint64)
        self.epochs = np.zeros((0, BLOCK), dtype=np.uint16)
        self.times = np.full(min(TIMES_INITIAL, max_epoch + 1), np.nan)
        self.next = FIRST_EPOCH
        self.compactions = 0
        self.overflows = 0  # compactions that had to merge epochs inside the horizon

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.epochs.nbytes + self.times.nbytes

    def begin(self, now: float, prev: float | None) -> int:
        """The epoch for a harvest at ``now`` (renumbering the old ones if they ran out);
        ``prev``: the time of the previous harvest, None for the first."""
        if self.next > self.max_epoch:
            self._compact(prev if prev is not None else now)
        e = self.next
        if e >= len(self.times):  # doubled, up to max_epoch + 1 entries (512 KiB)
            grown = np.full(min(2 * len(self.times), self.max_epoch + 1), np.nan)
            grown[:len(self.times)] = self.times
            self.times = grown
        self.next += 1
        self.times[e] = now
        return e

    def _compact(self, prev: float) -> None:
        """Merge the epochs already past the horizon at the previous harvest, so that the idle
        ages promotions are binned by (at the previous harvest) keep their bucket too."""
        counts = np.bincount(self.epochs.ravel(), minlength=self.max_epoch + 1)
        live = np.flatnonzero(counts[FIRST_EPOCH:]) + FIRST_EPOCH  # in time order
        old = live[prev - self.times[live] > self.horizon]
        young = live[len(old):]
        room = self.max_epoch - FIRST_EPOCH  # leave one epoch free for the caller
        if len(young) + (len(old) > 0) > room:
            # Only with more than max_epoch harvests inside the horizon (aging below the
            # 100 ms minimum): merge the oldest young ones too; their buckets may be off.
            cut = len(young) + 1 - room
            self.overflows += 1
            old, young = live[:len(old) + cut], young[cut:]
        groups = ([old] if len(old) else []) + [young[i:i + 1] for i in range(len(young))]
        lut = np.zeros(self.max_epoch + 1, dtype=np.uint16)
        lut[NEVER] = NEVER
        times = np.full(len(self.times), np.nan)
        for new, g in enumerate(groups, start=FIRST_EPOCH):  # per epoch, not per page
            lut[g] = new
            times[new] = float(np.average(self.times[g], weights=counts[g]))
        np.take(lut, self.epochs, out=self.epochs)
        self.times = times
        self.next = FIRST_EPOCH + len(groups)
        self.compactions += 1

    def rows(self, vpn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row and offset of each page in ``epochs``; found: bool, its block is known."""
        blk = vpn >> np.uint64(BLOCK_SHIFT)
        row = np.minimum(np.searchsorted(self.keys, blk), max(len(self.keys) - 1, 0))
        found = self.keys[row] == blk if len(self.keys) else np.zeros(len(vpn), dtype=bool)
        off = (vpn & np.uint64(BLOCK - 1)).astype(np.intp)
        return row, off, found

    def lookup(self, vpn: np.ndarray) -> np.ndarray:
        """uint16 epoch value of each page (ABSENT for pages in unknown blocks)."""
        row, off, found = self.rows(vpn)
        if not len(self.keys):
            return np.zeros(len(vpn), dtype=np.uint16)
        return np.where(found, self.epochs[row, off], ABSENT).astype(np.uint16)

    def relayout(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The blocks of a new resident set (sorted unique uint64 ``keys``, vpn >> BLOCK_SHIFT:
        PageSet.blocks); the previous epochs array and, per new block, its intp row there (-1:
        new block), None where the blocks are the same as before. ``epochs`` becomes all ABSENT
        over the new blocks, so pages that left the resident set lose their history; except
        where the blocks are the same as before (the steady state), where ``epochs`` is kept
        and returned as the previous array itself:
        the caller then reads each page's value before it writes it, and writes ABSENT over
        the pages that left (TargetState.update). That halves the history's peak: a second
        array of the whole target per harvest, 2.1 bytes per page, is not made."""
        old_keys, old = self.keys, self.epochs
        if len(keys) == len(old_keys) and np.array_equal(keys, old_keys):
            return old, None  # not arange(len(keys)): 8 bytes per block, 0.5 MiB at 16 GiB
        if len(old_keys):
            idx = np.minimum(np.searchsorted(old_keys, keys), len(old_keys) - 1)
            old_row = np.where(old_keys[idx] == keys, idx, -1)
        else:
            old_row = np.full(len(keys), -1, dtype=np.intp)
        self.keys = keys
        self.epochs = np.zeros((len(keys), BLOCK), dtype=np.uint16)
        return old, old_row


def _sorted_bins(bins: Bins, vpn: np.ndarray) -> np.ndarray:
    """``bins.of(vpn)`` for sorted ``vpn``: a search per bin edge instead of one per page."""
    cuts = np.searchsorted(vpn, bins.edges, side="left")  # pages below each edge
    b = np.repeat(np.arange(-1, bins.n + 1), np.diff(cuts, prepend=0, append=len(vpn)))
    return np.clip(b, 0, bins.n - 1, out=b)


def _sorted_bin_counts(bins: Bins, vpn: np.ndarray) -> np.ndarray:
    """``np.bincount(_sorted_bins(bins, vpn), minlength=bins.n)`` for sorted ``vpn``, from the
    bin edges' positions alone: int64 [bins.n], no per-page array."""
    return _counts_between(np.searchsorted(vpn, bins.edges, side="left"), len(vpn))


def _run_bin_counts(bins: Bins, first: int, n: int, at: np.ndarray | None = None) -> np.ndarray:
    """``_sorted_bin_counts`` of the pages of one contiguous run, vpn ``first`` to
    ``first + n - 1``, without their vpn: all of them (``at`` None), or those at the sorted
    intp offsets ``at`` into the run. int64 [bins.n]."""
    rel = bins.edges.astype(np.int64) - first  # vpn are below 2**52: no overflow
    if at is None:  # pages below each edge: rel, clipped to [0, n] (np.clip's wrapper: 3 us)
        return _counts_between(np.minimum(np.maximum(rel, 0, out=rel), n, out=rel), n)
    return _counts_between(np.searchsorted(at, rel, side="left"), len(at))


def _counts_between(cuts: np.ndarray, total: int) -> np.ndarray:
    """Per-bin counts of ``total`` sorted pages from ``cuts``, the pages below each bin edge;
    the pages below the first edge count in the first bin, those at or above the last in
    the last. int64 [len(cuts) - 1]. (Not np.diff with prepend and append: its wrapper costs
    10 us, and this runs for every chunk.)"""
    out = (cuts[1:] - cuts[:-1]).astype(np.int64, copy=False)
    out[0] += cuts[0]
    out[-1] += total - cuts[-1]
    return out


def _chunk_key(part: PageChunk, node_lo: int, node_hi: int, lut: np.ndarray | None) -> int | np.ndarray:
    """The (node, type) slot of each page of ``part`` (TargetState.update), or one int when
    all its pages share one: a chunk of one mapping, the usual case. intp array otherwise."""
    lo, hi, type_lo, type_hi = part.node_type_range()  # a source's chunk may know it per table
    if lo == hi and type_lo == type_hi:
        k = (lo + 1) * N_TYPES + type_lo
        return k if lut is None else int(lut[k])
    node = node_lo if node_lo == node_hi else (lo if lo == hi else None)
    key = part.type.astype(np.intp)
    key += (node + 1) * N_TYPES if node is not None else (part.node.astype(np.intp) + 1) * N_TYPES
    return key if lut is None else lut[key]


def _add_counts(out: np.ndarray, x: np.ndarray) -> None:
    """``out += np.bincount(x, minlength=len(out))`` (out: int64, x: non-negative integers
    below len(out)), counting each run of equal values once where values come in long runs:
    a page's epoch, bin or idle bucket mostly equals its neighbour's (whole mappings idle since
    one harvest, or accessed at one). bincount adds one to a counter per value, and over a run
    each addition waits for the previous one: 5.9 ns a page when all are equal against 1.3 ns
    for varied values (16,384 uint16 values, numpy 2.4, the development VM)."""
    if len(x) < RUN_MIN:  # finding the runs costs ~8 us: more than a short bincount
        out += np.bincount(x, minlength=len(out))
        return
    change = x[1:] != x[:-1]
    if int(np.count_nonzero(change)) * RUN_FACTOR >= len(x):  # short runs: plain bincount is faster
        out += np.bincount(x, minlength=len(out))
        return
    starts = np.flatnonzero(change)
    starts += 1  # where each run but the first begins
    starts = np.concatenate(([0], starts))
    lengths = np.empty_like(starts)  # (not np.diff with append: a 7 us wrapper)
    np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
    lengths[-1] = len(x) - starts[-1]
    np.add.at(out, x[starts], lengths)


def _add_per_run(out: np.ndarray, index: np.ndarray, flag: np.ndarray) -> None:
    """``out += np.bincount(index[flag], minlength=len(out))`` for a non-decreasing ``index``
    (pages in address order, their mapping's index): a sum per run of equal indices, without
    gathering the flagged pages. out: int64; index: integer; flag: bool, as long as index."""
    if not len(index):
        return
    lo, hi = int(index[0]), int(index[-1])
    if (hi - lo + 1) * 8 > len(index):  # short runs (many small mappings): a search per run costs more
        out += np.bincount(index[flag], minlength=len(out))
        return
    starts = np.searchsorted(index, np.arange(lo, hi + 1))
    sums = np.add.reduceat(flag.view(np.uint8), starts, dtype=np.int64)
    # reduceat gives the element at a start for an empty run (the next start is the same).
    sums[np.diff(starts, append=len(index)) == 0] = 0
    out[lo:hi + 1] += sums


class TargetState:
    """Everything pageheat remembers about one process between harvests."""

    def __init__(self, pid: int, comm: str, n_bins: int, cold_after: float,
                 max_epoch: int = MAX_EPOCH) -> None:
        self.pid = pid
        self.comm = comm
        self.n_bins = n_bins
        self.cold_after = cold_after
        self.max_epoch = max_epoch
        self.history = self._new_history()
        self.address_space: int | None = None  # Harvest.address_space of the last harvest
        self.bins: Bins | None = None
        self.rebins = 0
        self.harvests = 0
        self.last_time: float | None = None  # of the previous harvest
        self.accessed_cum: dict[tuple[int, int], np.ndarray] = {}
        self.promoted_cum: dict[tuple[int, int], np.ndarray] = {}
        self.promoted_seconds_cum: dict[tuple[int, int], float] = {}
        self._names: list[str] | None = None  # the mapping names _label_of was made for
        self._label_of = np.zeros(0, dtype=np.intp)
        self._label_names: list[str] = []

    def _new_history(self) -> PageHistory:
        # Epochs older than both the largest finite idle bound and cold_after may be merged.
        return PageHistory(max(IDLE_BOUNDS[-2], self.cold_after), self.max_epoch)

    def _labels(self, names: list[str]) -> tuple[np.ndarray, list[str]]:
        """intp label index of each mapping, and the labels (``mapping_label``). Per mapping
        Python work only when the names changed (the list compares in C otherwise)."""
        if names is not self._names and names != self._names:
            index: dict[str, int] = {}
            self._label_of = np.fromiter((index.setdefault(mapping_label(n), len(index)) for n in names),
                                         dtype=np.intp, count=len(names))
            self._label_names = list(index)
            self._names = list(names)
        return self._label_of, self._label_names

    def idle_ages(self, vpn: np.ndarray, now: float) -> np.ndarray:
        """float64 seconds from each page's last seen access to ``now``; NaN for pages never
        seen accessed or not resident at the latest harvest. vpn: uint64."""
        return now - self.history.times[self.history.lookup(vpn)]

    def update(self, h: Harvest, interval: float) -> TargetView:
        p = h.pages
        now = h.time
        if exec_between(self.address_space, h.address_space):
            # An exec: a new program in the same process. Its pages are new (never seen
            # accessed, whatever address they share with the old program's), and its layout
            # gets new bins. The cumulative counters go on: it is the same process.
            self.history = self._new_history()
            if self.bins is not None:
                self.rebins += 1
                self.bins = None
        if h.address_space is not None:
            self.address_space = h.address_space
        if self.bins is None or self._layout_changed(h.vmas, p):
            if self.bins is not None:
                self.rebins += 1
            self.bins = make_bins(h.vmas, self.n_bins)
        self.harvests += 1
        bins = self.bins
        hist = self.history
        epoch = hist.begin(now, self.last_time)
        old, old_row = hist.relayout(p.blocks(BLOCK_SHIFT, CHUNK))

        # Per-epoch tables (not per page): idle age now and at the previous harvest, their
        # buckets, and whether the age makes a page cold; each page looks its epoch up there.
        m = hist.next  # epochs in use are below it
        nbk = len(IDLE_BOUNDS)
        bounds = np.array(IDLE_BOUNDS)
        times = hist.times[:m]
        known = ~np.isnan(times)
        age_now = np.where(known, now - times, 0.0)
        bucket_now = np.where(known, np.searchsorted(bounds, age_now, side="left"), nbk - 1).astype(np.intp)
        cold_epoch = ~known | (age_now > self.cold_after)
        cold_epoch[ABSENT] = False
        code_now = bucket_now * 2 + cold_epoch  # bucket and coldness in one lookup
        prev_time = self.last_time if self.last_time is not None else now
        age_prev = np.where(known, prev_time - times, 0.0)
        bucket_prev = np.where(known, np.searchsorted(bounds, age_prev, side="left"), nbk - 1).astype(np.intp)

        # The (node, type) combos present, as keys (node + 1) * N_TYPES + type, in key order;
        # pages are counted by their index there (node ids can be large and sparse).
        node_lo, node_hi, type_lo, type_hi = p.node_type_range() if len(p) else (0, 0, 0, 0)
        kmax = (node_hi + 2) * N_TYPES if len(p) else N_TYPES
        uniform = len(p) and node_lo == node_hi and type_lo == type_hi
        lut = None
        if uniform:  # one (node, type) for the whole harvest (the usual case): no per-page keys
            slot_key = np.array([(node_lo + 1) * N_TYPES + type_lo])
        elif kmax <= 8 * N_TYPES:  # a few nodes: one slot per possible key
            slot_key = np.arange(kmax)
        else:  # large node ids: one slot per key present (an extra pass to find them)
            seen = np.zeros(kmax, dtype=np.int64)
            for part in p.chunks(CHUNK):
                seen += np.bincount((part.node.astype(np.intp) + 1) * N_TYPES + part.type, minlength=kmax)
            slot_key = np.flatnonzero(seen)
            lut = np.full(kmax, -1, dtype=np.intp)
            lut[slot_key] = np.arange(len(slot_key))
        nk, nb = max(len(slot_key), 1), bins.n
        acc_now = np.zeros(nk * nb, dtype=np.int64)
        resident = np.zeros(nk * nb, dtype=np.int64)
        idle_cold = np.zeros(nk * nbk * 2, dtype=np.int64)  # [combo, bucket, cold]
        idle_seconds = np.zeros(nk)
        # Pages per (combo, epoch value), from which the idle histogram, coldness and idle
        # seconds come per epoch: one pass over the pages instead of one per statistic. Only
        # while that table is small (a few combos, epochs not yet renumbered); else per page.
        per_epoch = nk * m <= BY_EPOCH_MAX
        by_epoch = np.zeros(nk * m if per_epoch else 0, dtype=np.int64)
        promoted = np.zeros(nk * nbk, dtype=np.int64)
        promoted_seconds = np.zeros(nk)
        never_by_vma = np.zeros(len(h.vmas), dtype=np.int64)
        old_flat, new_flat = old.reshape(-1), hist.epochs.reshape(-1)
        # In place (the blocks are the same: relayout kept the array): pages come in vpn order,
        # so their slots only go up; each chunk reads its pages' values first, then writes
        # ABSENT from the end of the previous chunk's slots to the start of its own (pages that
        # left) and its values.
        in_place = old_row is None
        cursor = 0  # in place: slots below it are this harvest's
        for part in p.chunks(CHUNK):
            n_part = len(part)
            if not n_part:
                continue
            accessed = part.accessed
            first, last = part.span()
            row0 = int(np.searchsorted(hist.keys, np.uint64(first >> BLOCK_SHIFT)))
            off0 = first & (BLOCK - 1)
            # Contiguous pages (dense memory, the usual case) have contiguous slots: their
            # blocks are consecutive rows, so the gathers and the scatter are slices, and
            # nothing needs the chunk's vpn (a source may not have decoded them).
            window = None
            if last - first == n_part - 1:
                window = slice(row0 * BLOCK + off0, row0 * BLOCK + off0 + n_part)
            if window is not None and in_place:
                # The chunk's slots still hold its pages' previous values: the accessed pages'
                # are read, then the slots are updated where they are (no copy of the chunk).
                val = new_flat[window]
                was = val[accessed]
                new_flat[cursor:window.start] = ABSENT
                cursor = window.stop
                np.maximum(val, np.uint16(NEVER), out=val)  # ABSENT (0) becomes NEVER (1)
                val[accessed] = epoch
            else:
                if window is not None and len(old):
                    orow = old_row[row0:row0 + (off0 + n_part + BLOCK - 1) // BLOCK]
                    prev = old[np.maximum(orow, 0)]
                    prev[orow < 0] = ABSENT
                    prev = prev.reshape(-1)[off0:off0 + n_part]
                elif window is not None:
                    prev = np.zeros(n_part, dtype=np.uint16)
                else:
                    # Row of each page: pages are sorted, so rows only step up where the block changes.
                    vpn = part.vpn
                    blk = vpn >> np.uint64(BLOCK_SHIFT)
                    starts = np.flatnonzero(blk[1:] != blk[:-1]) + 1
                    row = np.repeat(np.arange(row0, row0 + len(starts) + 1),
                                    np.diff(starts, prepend=0, append=n_part))
                    idx = row * BLOCK + (vpn & np.uint64(BLOCK - 1)).astype(np.intp)
                    if in_place:
                        prev = old_flat[idx]
                    elif len(old):
                        orow = old_row[row]
                        prev = old_flat[np.maximum(orow, 0) * BLOCK + (idx & (BLOCK - 1))]
                        prev[orow < 0] = ABSENT
                    else:
                        prev = np.zeros(n_part, dtype=np.uint16)
                was = prev[accessed]
                val = np.maximum(prev, np.uint16(NEVER))  # ABSENT (0) becomes NEVER (1)
                val[accessed] = epoch
                if window is not None:
                    new_flat[window] = val
                else:
                    if in_place:  # prev is a copy (fancy indexing): the span can be cleared first
                        new_flat[cursor:int(idx[-1]) + 1] = ABSENT
                        cursor = int(idx[-1]) + 1
                    new_flat[idx] = val

            key = 0 if uniform else _chunk_key(part, node_lo, node_hi, lut)
            never_counted = False
            if isinstance(key, int):
                # One combo in the chunk: its slices of the counts, and the resident pages per
                # bin from where the bin edges fall in the sorted vpn, not a bin per page.
                if window is not None:
                    resident[key * nb:(key + 1) * nb] += _run_bin_counts(bins, first, n_part)
                    acc_now[key * nb:(key + 1) * nb] += _run_bin_counts(
                        bins, first, n_part, np.flatnonzero(accessed))
                else:
                    resident[key * nb:(key + 1) * nb] += _sorted_bin_counts(bins, part.vpn)
                    acc_now[key * nb:(key + 1) * nb] += _sorted_bin_counts(bins, part.vpn[accessed])
                if per_epoch:
                    per_value = by_epoch[key * m:(key + 1) * m]
                    never_before = int(per_value[NEVER])
                    _add_counts(per_value, val)
                    if part.vma[0] == part.vma[-1]:  # one mapping: its never-accessed pages too
                        never_by_vma[part.vma[0]] += int(per_value[NEVER]) - never_before
                        never_counted = True
                else:
                    _add_counts(idle_cold[key * 2 * nbk:(key + 1) * 2 * nbk], code_now[val])
                    idle_seconds[key] += float(age_now[val].sum())
            else:
                flat = _sorted_bins(bins, part.vpn)
                flat += key * nb
                _add_counts(acc_now, flat[accessed])
                _add_counts(resident, flat)
                if per_epoch:
                    _add_counts(by_epoch, key * m + val)
                else:
                    _add_counts(idle_cold, code_now[val] + key * (2 * nbk))
                    idle_seconds += np.bincount(key, weights=age_now[val], minlength=nk)
            if not never_counted:
                _add_per_run(never_by_vma, part.vma, val == NEVER)
            # Promotions: accessed now, resident at the previous harvest (was != ABSENT).
            back = was != ABSENT
            was = was[back]
            if isinstance(key, np.ndarray):
                pkey = key[accessed][back]
                _add_counts(promoted, bucket_prev[was] + pkey * nbk)
                promoted_seconds += np.bincount(pkey, weights=age_prev[was], minlength=nk)
            else:
                _add_counts(promoted[key * nbk:(key + 1) * nbk], bucket_prev[was])
                promoted_seconds[key] += float(age_prev[was].sum())

        if in_place:
            new_flat[cursor:] = ABSENT
        if per_epoch:
            by_epoch = by_epoch.reshape(nk, m)
            for k in np.flatnonzero(by_epoch.any(axis=1)):  # per combo and epoch, not per page
                idle_cold[k * nbk * 2:(k + 1) * nbk * 2] = np.bincount(
                    code_now, weights=by_epoch[k], minlength=nbk * 2).astype(np.int64)
            idle_seconds = by_epoch @ age_now
        idle_cold = idle_cold.reshape(nk, nbk, 2)
        idle = idle_cold.sum(axis=2).reshape(-1)
        cold = int(idle_cold[:, :, 1].sum())
        present = np.flatnonzero(resident.reshape(nk, nb).sum(axis=1))  # slots, in key order
        keys = [int(slot_key[k]) - N_TYPES for k in present]  # back to node * N_TYPES + type
        for c in self.accessed_cum:  # keep combos seen before, so counters never vanish
            if c[0] * N_TYPES + c[1] not in keys:
                keys.append(c[0] * N_TYPES + c[1])
        combos = tuple((k // N_TYPES, k % N_TYPES) for k in keys)
        nc = len(combos)
        cum = np.zeros((nc, nb), dtype=np.uint64)
        res = np.zeros((nc, nb), dtype=np.int64)
        idl = np.zeros((nc, nbk), dtype=np.int64)
        idl_s = np.zeros(nc)
        prom = np.zeros((nc, nbk), dtype=np.uint64)
        prom_s = np.zeros(nc)
        for i, c in enumerate(combos):
            if i < len(present):  # present combos first, then those only in the counters
                k = int(present[i])
                a = acc_now[k * nb:(k + 1) * nb].astype(np.uint64)
                res[i] = resident[k * nb:(k + 1) * nb]
                idl[i] = idle[k * nbk:(k + 1) * nbk]
                idl_s[i] = idle_seconds[k]
                pr, pr_s = promoted[k * nbk:(k + 1) * nbk].astype(np.uint64), float(promoted_seconds[k])
            else:
                a, pr, pr_s = np.zeros(nb, np.uint64), np.zeros(nbk, np.uint64), 0.0
            prev_cum = self.accessed_cum.get(c)
            self.accessed_cum[c] = (prev_cum if prev_cum is not None else 0) + a
            cum[i] = self.accessed_cum[c]
            prev_prom = self.promoted_cum.get(c)
            self.promoted_cum[c] = (prev_prom if prev_prom is not None else 0) + pr
            prom[i] = self.promoted_cum[c]
            self.promoted_seconds_cum[c] = self.promoted_seconds_cum.get(c, 0.0) + pr_s
            prom_s[i] = self.promoted_seconds_cum[c]

        label_of, labels = self._labels(h.vmas.names)
        never_by_label = np.bincount(label_of, weights=never_by_vma, minlength=len(labels))
        never_accessed = {labels[i]: int(never_by_label[i]) for i in np.flatnonzero(never_by_label)}

        period = now - self.last_time if self.last_time is not None else 0.0
        self.last_time = now
        return TargetView(
            pid=self.pid, comm=self.comm, time=now, combos=combos, bins=bins,
            rebins=self.rebins, accessed_cum=cum, resident=res, idle=idl, idle_seconds=idl_s,
            never_accessed=dict(never_accessed), harvests=self.harvests, interval=interval,
            wss_pages=p.count_accessed(), resident_pages=len(p),
            cold_pages=cold, lru_gen=lru_generations(h.lru_gen), period=period,
            promoted=prom, promoted_seconds=prom_s,
        )

    def _layout_changed(self, vmas: Vmas, p: PageSet) -> bool:
        assert self.bins is not None
        edges = self.bins.edges
        if needs_rebin(self.bins, vmas, p.count_outside(int(edges[0]), int(edges[-1])), len(p)):
            return True
        # Inside the bins' span but outside what was binned: a mapping that moved into a gap
        # between the old ones, or an exec's new layout. Per mapping: the share of its span
        # that is new, times its resident pages (exact unless a mapping is partly new).
        if not len(self.bins.ranges):  # bins made without them (no mapped pages then)
            return False
        sel = _binned_vmas(vmas)
        start, end = vmas.start[sel] >> np.uint64(12), vmas.end[sel] >> np.uint64(12)
        ranges = self.bins.ranges
        if len(sel) == len(ranges) and np.array_equal(start, ranges[:, 0]) and np.array_equal(
                end, ranges[:, 1]):
            return False  # the layout the bins were made from (the usual case): 0.1 ms less
        new = uncovered_pages(ranges, start, end)
        if not new.any():
            return False
        resident = p.per_vma(len(vmas))[0][sel]
        moved = float((resident * new / np.maximum(end - start, 1).astype(np.int64)).sum())
        return moved > REBIN_OUTSIDE_FRACTION * max(len(p), 1)


def needs_rebin(bins: Bins, vmas: Vmas, outside: int, n_pages: int) -> bool:
    """Whether ``bins`` no longer fit the layout: the mapped size of the binned mappings in
    ``vmas`` changed by more than REBIN_SIZE_FACTOR, or more than REBIN_OUTSIDE_FRACTION of
    the ``n_pages`` resident pages lie outside them (``outside`` of them: Bins.outside, or
    PageSet.count_outside; top's zoom counts only its own)."""
    sel = _binned_vmas(vmas)
    mapped = int(((vmas.end[sel] - vmas.start[sel]) >> np.uint64(12)).sum())
    old = max(bins.mapped_pages, 1)
    if not (1 / REBIN_SIZE_FACTOR <= mapped / old <= REBIN_SIZE_FACTOR):
        return True
    return outside > REBIN_OUTSIDE_FRACTION * max(n_pages, 1)

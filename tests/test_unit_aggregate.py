"""Unit tests for exporter/model/aggregate.py: address bins, per-page history and the summaries of a view.

Expectations come from slow, page-by-page reference computations written here, never from the
numpy code under test.
"""

from __future__ import annotations

import bisect
from collections import Counter

import numpy as np
import pytest
from pageheat.model import aggregate
from pageheat.model.aggregate import (
    IDLE_BOUNDS,
    N_TYPES,
    REBIN_OUTSIDE_FRACTION,
    Bins,
    TargetState,
    make_bins,
    mapping_label,
)
from pageheat.sources.base import Harvest, Pages, VmaKind, Vmas

PAGE = 4096


def vmas_of(*specs: tuple) -> Vmas:
    """specs: (start_vpn, n_pages, name[, kind[, accessible]])."""
    start, end, kind, acc, names = [], [], [], [], []
    for s in specs:
        vpn, n, name = s[0], s[1], s[2]
        start.append(vpn * PAGE)
        end.append((vpn + n) * PAGE)
        kind.append(s[3] if len(s) > 3 else (VmaKind.FILE if name.startswith("/") else VmaKind.ANON))
        acc.append(s[4] if len(s) > 4 else True)
        names.append(name)
    return Vmas(np.array(start, np.uint64), np.array(end, np.uint64), np.array(kind, np.uint8),
                np.array(acc, bool), names)


def vma_index(vmas: Vmas, vpn: int) -> int:
    for i in range(len(vmas)):
        if int(vmas.start[i]) // PAGE <= vpn < int(vmas.end[i]) // PAGE:
            return i
    raise AssertionError(f"vpn {vpn:#x} in no mapping")


def pages_of(vmas: Vmas, vpns, accessed, node=None, ptype=None) -> Pages:
    vpns = list(vpns)
    order = sorted(range(len(vpns)), key=lambda i: vpns[i])
    n = len(vpns)
    node = [0] * n if node is None else list(node)
    ptype = [0] * n if ptype is None else list(ptype)
    accessed = list(accessed)
    return Pages(
        vpn=np.array([vpns[i] for i in order], np.uint64),
        accessed=np.array([bool(accessed[i]) for i in order], bool),
        node=np.array([node[i] for i in order], np.int16),
        type=np.array([ptype[i] for i in order], np.uint8),
        thp=np.zeros(n, bool),
        vma=np.array([vma_index(vmas, vpns[i]) for i in order], np.int32),
    )


def harvest(vmas: Vmas, pages: Pages, t: float) -> Harvest:
    return Harvest(pid=42, time=t, pages=pages, vmas=vmas, harvest_seconds=0.0, aging_seconds=0.0)


def mapped_vpns(vmas: Vmas) -> list[int]:
    """Every page of the mappings that take part in binning, in address order (slow reference)."""
    out = []
    for i in range(len(vmas)):
        if vmas.kind[i] == VmaKind.OTHER or not vmas.accessible[i]:
            continue
        out.extend(range(int(vmas.start[i]) // PAGE, int(vmas.end[i]) // PAGE))
    return out


def ref_bin(edges: list[int], vpn: int) -> int:
    n = len(edges) - 1
    return min(max(bisect.bisect_right(edges, vpn) - 1, 0), n - 1)


def ref_idle_bucket(age: float | None) -> int:
    if age is None:
        return len(IDLE_BOUNDS) - 1
    for i, bound in enumerate(IDLE_BOUNDS):
        if age <= bound:
            return i
    raise AssertionError("IDLE_BOUNDS ends with inf")


# --- mapping_label ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "label"), [
    ("", "anon"),
    ("[heap]", "[heap]"),
    ("[stack]", "[stack]"),
    ("/usr/lib/x86_64-linux-gnu/libc.so.6", "libc.so.6"),
    ("/tmp/data file.bin (deleted)", "data file.bin"),
    ("/memfd:pageheat-workload (deleted)", "memfd:pageheat-workload"),
])
def test_mapping_label_is_short_and_address_free(name: str, label: str) -> None:
    assert mapping_label(name) == label


# --- make_bins / Bins ---------------------------------------------------------------------------


def test_make_bins_splits_mapped_pages_into_equal_parts_squeezing_gaps() -> None:
    vmas = vmas_of((0x10000, 100, "/bin/a"), (0x20000, 37, ""), (0x7f000, 63, "[stack]", VmaKind.STACK))
    n = 8
    bins = make_bins(vmas, n)
    mapped = mapped_vpns(vmas)
    total = len(mapped)
    assert bins.n == n and bins.mapped_pages == total
    # Edge i is the vpn of the (i * total // n)-th mapped page; the last edge is the end of the mapping.
    expected = [mapped[i * total // n] for i in range(n)] + [int(vmas.end[-1]) // PAGE]
    assert [int(e) for e in bins.edges] == expected
    counts = Counter(ref_bin(expected, v) for v in mapped)
    per_bin = [counts[i] for i in range(n)]
    assert set(per_bin) <= {total // n, -(-total // n)}
    assert [int(b) for b in bins.bytes] == [c * PAGE for c in per_bin]
    assert int(bins.bytes.sum()) == total * PAGE


def test_make_bins_leaves_out_prot_none_and_special_mappings() -> None:
    vmas = vmas_of((0x1000, 50, "/bin/a"), (0x2000, 1000, "", VmaKind.ANON, False),
                   (0x4000, 30, "[heap]", VmaKind.HEAP), (0x9000, 2, "[vvar]", VmaKind.OTHER))
    bins = make_bins(vmas, 4)
    assert bins.mapped_pages == 80
    assert int(bins.edges[0]) == 0x1000 and int(bins.edges[-1]) == 0x4000 + 30
    assert int(bins.bytes.sum()) == 80 * PAGE
    assert all("anon" not in lab and "[vvar]" not in lab for lab in bins.labels)


def test_bin_labels_name_the_mappings_covering_most_of_each_bin() -> None:
    # 4 bins of 25 pages: [a a a a ... | ...] where libfoo has 60 pages, [heap] 30, anon 10.
    vmas = vmas_of((0x1000, 60, "/usr/lib/libfoo.so"), (0x5000, 30, "[heap]", VmaKind.HEAP),
                   (0x9000, 10, ""))
    bins = make_bins(vmas, 4)
    mapped = mapped_vpns(vmas)
    edges = [int(e) for e in bins.edges]
    expected = []
    for b in range(4):
        c: Counter[str] = Counter()
        for v in mapped:
            if ref_bin(edges, v) == b:
                c[mapping_label(vmas.names[vma_index(vmas, v)])] += 1
        expected.append(",".join(k for k, _ in c.most_common(2)))
    assert list(bins.labels) == expected
    # By construction: bins of 25 pages; bin 2 holds 10 libfoo + 15 heap, bin 3 15 heap + 10 anon.
    assert bins.labels == ("libfoo.so", "libfoo.so", "[heap],libfoo.so", "[heap],anon")


def test_make_bins_with_more_bins_than_pages_keeps_edges_sorted() -> None:
    vmas = vmas_of((0x1000, 3, ""))
    bins = make_bins(vmas, 8)
    assert bins.n == 8 and bins.mapped_pages == 3
    assert np.all(np.diff(bins.edges.astype(np.int64)) >= 0)
    assert int(bins.bytes.sum()) == 3 * PAGE
    # Every mapped page lands in a bin that has bytes.
    for v in mapped_vpns(vmas):
        b = int(bins.of(np.array([v], np.uint64))[0])
        assert bins.bytes[b] > 0


def test_bins_of_matches_reference_and_clamps_outside_pages_to_end_bins() -> None:
    vmas = vmas_of((0x10000, 40, "/bin/a"), (0x30000, 24, ""))
    bins = make_bins(vmas, 5)
    edges = [int(e) for e in bins.edges]
    probe = [0x0, 0xffff, *range(0x10000, 0x10028), 0x20000, *range(0x30000, 0x30018),
             0x30018, 0x30019, 0xfffff]
    got = bins.of(np.array(probe, np.uint64))
    assert [int(b) for b in got] == [ref_bin(edges, v) for v in probe]
    assert int(got[0]) == 0 and int(got[1]) == 0
    assert int(got[-1]) == bins.n - 1
    outside = sum(1 for v in probe if v < edges[0] or v >= edges[-1])
    assert outside == 5
    assert bins.outside(np.array(probe, np.uint64)) == outside
    # Per-bin counts of a sorted chunk, from the edges alone (TargetState.update's one-combo
    # chunks): the same as counting each page's bin, the pages outside in the end bins.
    counts = [0] * bins.n
    for v in probe:
        counts[ref_bin(edges, v)] += 1
    assert aggregate._sorted_bin_counts(bins, np.array(probe, np.uint64)).tolist() == counts
    assert aggregate._sorted_bin_counts(bins, np.array([], np.uint64)).tolist() == [0] * bins.n


def test_run_bin_counts_are_the_bins_of_the_run_pages() -> None:
    """A contiguous chunk's per-bin counts from its first vpn alone (all its pages, or those at
    some offsets): the same as each page's bin, pages outside the bins in the end bins."""
    vmas = vmas_of((0x10000, 40, "/bin/a"), (0x30000, 24, ""))
    for n_bins in (1, 2, 5, 200):  # 200 bins over 64 pages: repeated edges
        bins = make_bins(vmas, n_bins)
        edges = [int(e) for e in bins.edges]
        for first, n in ((0x10000, 40), (0xfff0, 30), (0x10020, 0x20010), (0x30010, 100), (0x5, 3)):
            for at in (None, np.zeros(0, np.intp), np.array([0, 1, n // 2, n - 1], np.intp)):
                offsets = range(n) if at is None else at.tolist()
                want = [0] * bins.n
                for o in offsets:
                    want[ref_bin(edges, first + o)] += 1
                got = aggregate._run_bin_counts(bins, first, n, at)
                assert got.tolist() == want, (n_bins, first, n, at)


def _runs(lengths: list[int], values: list[int]) -> np.ndarray:
    return np.repeat(np.array(values, np.uint16), lengths)


@pytest.mark.parametrize("x", [
    np.zeros(0, np.uint16),
    np.array([3], np.uint16),
    np.ones(20_000, np.uint16),  # one run: every page never accessed
    _runs([5000, 1, 7000, 3, 1], [1, 9, 1, 4, 9]),  # long runs, a value coming back
    np.arange(1000, dtype=np.uint16) % 7,  # few values: counted value by value
    np.arange(3 * aggregate.RUN_MIN, dtype=np.uint16) % 7,  # many, in runs of one: the same
    _runs([aggregate.RUN_FACTOR] * (aggregate.RUN_MIN // aggregate.RUN_FACTOR + 10),
          [i % 10 for i in range(aggregate.RUN_MIN // aggregate.RUN_FACTOR + 10)]),  # runs RUN_FACTOR long
    np.random.default_rng(7).integers(0, 5, 3000).astype(np.uint16).repeat(9),
], ids=["empty", "one", "one-run", "long-runs", "few", "no-runs", "factor", "random-runs"])
def test_add_counts_adds_one_per_value_whatever_the_runs(x: np.ndarray) -> None:
    before = np.arange(10, dtype=np.int64)
    out = before.copy()
    aggregate._add_counts(out[:], x)
    counted = Counter(int(v) for v in x)
    assert out.tolist() == [int(before[i]) + counted[i] for i in range(10)]
    view = np.zeros(30, np.int64)
    aggregate._add_counts(view[10:20], x)  # into a slice, as update does per combo
    assert view[10:20].tolist() == [counted[i] for i in range(10)] and not view[:10].any()


def test_make_bins_without_mapped_pages_is_empty_but_valid() -> None:
    vmas = Vmas(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint8),
                np.zeros(0, bool), [])
    bins = make_bins(vmas, 4)
    assert bins.n == 4 and bins.mapped_pages == 0
    assert int(bins.bytes.sum()) == 0
    assert isinstance(bins, Bins)


# --- TargetState.update against a page-by-page reference ------------------------------------------


class RefTarget:
    """Slow model of one target: per-page last access, carried only across consecutive
    harvests; promotions are accessed pages that were resident at the previous harvest, by
    the idle age they had there."""

    def __init__(self, cold_after: float) -> None:
        self.cold_after = cold_after
        self.last: dict[int, float | None] = {}
        self.cum: Counter[tuple[int, int, int]] = Counter()
        self.promoted: Counter[tuple[int, int, int]] = Counter()
        self.promoted_seconds: Counter[tuple[int, int]] = Counter()
        self.prev_time: float | None = None

    def update(self, pages: Pages, vmas: Vmas, now: float, edges: list[int]) -> dict:
        last: dict[int, float | None] = {}
        for i in range(len(pages)):
            v = int(pages.vpn[i])
            last[v] = now if pages.accessed[i] else self.last.get(v)
            if pages.accessed[i] and v in self.last:
                assert self.prev_time is not None
                seen = self.last[v]
                age_prev = None if seen is None else self.prev_time - seen
                combo = (int(pages.node[i]), int(pages.type[i]))
                self.promoted[(*combo, ref_idle_bucket(age_prev))] += 1
                self.promoted_seconds[combo] += age_prev or 0.0
        self.last = last
        self.prev_time = now
        idle: Counter[tuple[int, int, int]] = Counter()
        idle_seconds: Counter[tuple[int, int]] = Counter()
        resident: Counter[tuple[int, int, int]] = Counter()
        never: Counter[str] = Counter()
        cold = 0
        for i in range(len(pages)):
            v = int(pages.vpn[i])
            combo = (int(pages.node[i]), int(pages.type[i]))
            b = ref_bin(edges, v)
            resident[(*combo, b)] += 1
            if pages.accessed[i]:
                self.cum[(*combo, b)] += 1
            age = None if last[v] is None else now - last[v]
            idle[(*combo, ref_idle_bucket(age))] += 1
            if age is None:
                never[mapping_label(vmas.names[int(pages.vma[i])])] += 1
                cold += 1
            else:
                idle_seconds[combo] += age
                cold += age > self.cold_after
        return {"idle": idle, "idle_seconds": idle_seconds, "resident": resident, "never": never,
                "cold": cold, "wss": int(np.count_nonzero(pages.accessed)), "cum": Counter(self.cum),
                "promoted": +self.promoted, "promoted_seconds": +self.promoted_seconds}


def view_dicts(view) -> dict:
    idle, idle_s, res, cum, prom, prom_s = (Counter() for _ in range(6))
    for row, combo in enumerate(view.combos):
        for k, n in enumerate(view.idle[row]):
            if n:
                idle[(*combo, k)] = int(n)
        for k, n in enumerate(view.promoted[row]):
            if n:
                prom[(*combo, k)] = int(n)
        if view.promoted_seconds[row]:
            prom_s[combo] = float(view.promoted_seconds[row])
        if view.idle_seconds[row]:
            idle_s[combo] = float(view.idle_seconds[row])
        for b in range(view.bins.n):
            if view.resident[row][b]:
                res[(*combo, b)] = int(view.resident[row][b])
            if view.accessed_cum[row][b]:
                cum[(*combo, b)] = int(view.accessed_cum[row][b])
    return {"idle": idle, "idle_seconds": idle_s, "resident": res, "cum": cum, "promoted": prom,
            "promoted_seconds": prom_s}


@pytest.mark.parametrize("layout", ["mixed", "mixed-per-page", "mixed-runs", "dense",
                                    "dense-per-page", "dense-runs", "per-mapping",
                                    "per-mapping-per-page"])
def test_update_matches_page_by_page_reference_over_many_harvests(
        layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """mixed: random nodes and types, mappings that are not whole 64-page blocks, a random
    15% of pages not resident (per-page: the idle statistics counted page by page, as when
    combos x epochs outgrow BY_EPOCH_MAX; runs: every count made by runs of equal values,
    as for large targets); dense: one (node, type) and whole blocks, resident in whole blocks
    that come and go (the update's fast paths), in several small chunks; per-mapping: as
    mixed, but each mapping's pages on one node and of one type, in chunks that mostly hold
    one mapping (counted per chunk, not per page) and sometimes two."""
    rng = np.random.default_rng(7)
    if layout.endswith("-per-page"):
        monkeypatch.setattr(aggregate, "BY_EPOCH_MAX", 0)
        layout = layout.removesuffix("-per-page")
    if layout.endswith("-runs"):
        monkeypatch.setattr(aggregate, "RUN_MIN", 2)
        monkeypatch.setattr(aggregate, "RUN_FACTOR", 1)  # any run length: by runs
        layout = layout.removesuffix("-runs")
    if layout in ("mixed", "per-mapping"):
        vmas = vmas_of((0x10000, 300, "/usr/lib/libx.so"), (0x20000, 200, "[heap]", VmaKind.HEAP),
                       (0x7ff00, 100, ""))
        if layout == "per-mapping":
            monkeypatch.setattr(aggregate, "CHUNK", 100)
    else:
        vmas = vmas_of((0x10000, 320, "/usr/lib/libx.so"), (0x20000, 256, "[heap]", VmaKind.HEAP),
                       (0x7ff00, 128, ""))
        monkeypatch.setattr(aggregate, "CHUNK", 128)  # several chunks, each whole blocks
    universe = np.array(mapped_vpns(vmas))
    n_nodes, n_types = (2, N_TYPES) if layout == "mixed" else (1, 1)
    node_of = dict(zip(universe.tolist(), rng.integers(0, n_nodes, len(universe)).tolist(), strict=True))
    type_of = dict(zip(universe.tolist(), rng.integers(0, n_types, len(universe)).tolist(), strict=True))
    if layout == "per-mapping":
        of_vma = np.searchsorted(vmas.start, universe * np.uint64(PAGE), side="right") - 1
        node_of = dict(zip(universe.tolist(), (of_vma % 2).tolist(), strict=True))
        type_of = dict(zip(universe.tolist(), ((of_vma + 1) % N_TYPES).tolist(), strict=True))
    state = TargetState(42, "x", n_bins=6, cold_after=30.0)
    ref = RefTarget(cold_after=30.0)
    # Irregular times so ages fall on, between and beyond the bucket bounds (1 s and 2 s exactly).
    times = [100.0, 101.0, 102.0, 104.5, 110.0, 150.0, 200.0, 900.0, 5000.0, 5001.0]
    for k, t in enumerate(times):
        if layout in ("mixed", "per-mapping"):
            resident = universe[rng.random(len(universe)) < (1.0 if k < 3 else 0.85)]
        else:  # whole blocks leave and come back; the same ones for two harvests in a row
            keep = np.random.default_rng(k // 2).random(len(universe) // 64) < (1.0 if k < 3 else 0.8)
            resident = universe[np.repeat(keep, 64)]
        accessed = rng.random(len(resident)) < 0.3
        pages = pages_of(vmas, resident.tolist(), accessed.tolist(),
                         [node_of[v] for v in resident.tolist()], [type_of[v] for v in resident.tolist()])
        view = state.update(harvest(vmas, pages, t), interval=1.0)
        edges = [int(e) for e in view.bins.edges]
        want = ref.update(pages, vmas, t, edges)
        got = view_dicts(view)
        assert got["idle"] == want["idle"], f"harvest {k}"
        assert got["resident"] == want["resident"], f"harvest {k}"
        assert got["cum"] == want["cum"], f"harvest {k}"
        assert got["promoted"] == want["promoted"], f"harvest {k}"
        assert got["promoted_seconds"].keys() == want["promoted_seconds"].keys()
        for c, s in want["promoted_seconds"].items():
            assert got["promoted_seconds"][c] == pytest.approx(s)
        assert got["idle_seconds"].keys() == {c for c, s in want["idle_seconds"].items() if s}
        for c, s in want["idle_seconds"].items():
            assert got["idle_seconds"].get(c, 0.0) == pytest.approx(s)
        assert view.never_accessed == dict(want["never"])
        assert view.cold_pages == want["cold"]
        assert view.wss_pages == want["wss"]
        assert view.resident_pages == len(resident)
        assert view.harvests == k + 1
        assert view.time == t
        assert view.rebins == 0


def test_never_accessed_pages_count_only_in_the_inf_idle_bucket() -> None:
    vmas = vmas_of((0x1000, 10, "/data/f"))
    state = TargetState(1, "x", n_bins=2, cold_after=1e9)
    vpns = list(range(0x1000, 0x100a))
    state.update(harvest(vmas, pages_of(vmas, vpns, [1] * 5 + [0] * 5), 0.0), 1.0)
    # 10000 s later: the 5 accessed pages are older than the last finite bound (3600 s).
    view = state.update(harvest(vmas, pages_of(vmas, vpns, [0] * 10), 10000.0), 1.0)
    assert view.combos == ((0, 0),)
    idle = view.idle[0]
    assert int(idle[:-1].sum()) == 0
    assert int(idle[-1]) == 10
    assert view.never_accessed == {"f": 5}
    assert float(view.idle_seconds[0]) == pytest.approx(5 * 10000.0)  # never-accessed add no age
    # Now with a young access: never-accessed pages are still only in +Inf, not in le=1.
    view = state.update(harvest(vmas, pages_of(vmas, vpns, [1] * 5 + [0] * 5), 10000.5), 1.0)
    assert int(view.idle[0][0]) == 5 and int(view.idle[0][-1]) == 5
    assert int(view.idle[0][1:-1].sum()) == 0


@pytest.mark.parametrize("exec_between", [False, True])
def test_an_exec_starts_a_fresh_history_at_the_same_addresses(exec_between: bool) -> None:
    """Pages of the new program at the old program's addresses have no past: after an exec
    (another address space) the view is what a fresh state makes of the same harvest."""
    from dataclasses import replace

    vmas = vmas_of((0x1000, 8, ""))
    vpns = list(range(0x1000, 0x1008))
    state = TargetState(1, "x", n_bins=2, cold_after=30.0)
    state.update(replace(harvest(vmas, pages_of(vmas, vpns, [1] * 8), 1.0), address_space=0xA), 1.0)
    state.update(replace(harvest(vmas, pages_of(vmas, vpns, [0] * 8), 50.0), address_space=0xA), 1.0)
    after = replace(harvest(vmas, pages_of(vmas, vpns, [1] * 2 + [0] * 6), 51.0),
                    address_space=0xB if exec_between else 0xA)
    view = state.update(after, 1.0)
    if exec_between:
        fresh = TargetState(1, "x", n_bins=2, cold_after=30.0)
        fresh.update(replace(after, time=50.0, pages=pages_of(vmas, vpns, [0] * 8)), 1.0)
        want = fresh.update(after, 1.0)
        assert view.rebins == 1
        assert view.idle.tolist() == want.idle.tolist() and view.cold_pages == want.cold_pages
        assert int(view.promoted[0].sum()) == 0  # nothing was idle before: it did not exist
    else:  # the same program: six pages idle since t=1, two promoted after 49 s of idleness
        assert view.rebins == 0 and view.cold_pages == 6
        assert int(view.promoted[0].sum()) == 2


def test_pages_that_leave_between_two_chunks_of_the_same_blocks_lose_their_history(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Updated in place (the blocks unchanged), a chunk clears the slots of the pages that left
    below it: ten pages accessed at the first harvest, gone at the second, back at the third,
    are never accessed since they became resident again, like every other page."""
    monkeypatch.setattr(aggregate, "CHUNK", 100)
    vmas = vmas_of((0x1000, 256, ""))
    allv = list(range(0x1000, 0x1000 + 256))
    hole = [0x1000 + 100 <= v < 0x1000 + 110 for v in allv]  # where the first chunk ends
    s = TargetState(1, "x", n_bins=4, cold_after=1e9)
    s.update(harvest(vmas, pages_of(vmas, allv, hole), 10.0), 1.0)
    rest = [v for v, h in zip(allv, hole, strict=True) if not h]
    s.update(harvest(vmas, pages_of(vmas, rest, [False] * len(rest)), 11.0), 1.0)
    view = s.update(harvest(vmas, pages_of(vmas, allv, [False] * len(allv)), 12.0), 1.0)
    assert view.never_accessed == {"anon": len(allv)}


def test_page_that_leaves_and_returns_starts_a_fresh_history() -> None:
    vmas = vmas_of((0x1000, 4, ""))
    state = TargetState(1, "x", n_bins=2, cold_after=10.0)
    state.update(harvest(vmas, pages_of(vmas, [0x1000, 0x1001], [1, 1]), 0.0), 1.0)
    epochs = state.history.epochs
    state.update(harvest(vmas, pages_of(vmas, [0x1000], [0]), 1.0), 1.0)  # 0x1001 swapped out
    # The same block: its history was updated in place, and the page that left is ABSENT there.
    assert state.history.epochs is epochs
    assert state.history.lookup(np.array([0x1000, 0x1001], dtype=np.uint64)).tolist() == [
        aggregate.FIRST_EPOCH, aggregate.ABSENT]
    view = state.update(harvest(vmas, pages_of(vmas, [0x1000, 0x1001, 0x1002], [0, 0, 0]), 3.0), 1.0)
    # 0x1000: idle 3 s (le=5); 0x1001 and 0x1002: never seen accessed since they became resident.
    assert int(view.idle[0][IDLE_BOUNDS.index(5.0)]) == 1
    assert int(view.idle[0][-1]) == 2
    assert view.never_accessed == {"anon": 2}
    assert view.cold_pages == 2
    assert float(view.idle_seconds[0]) == pytest.approx(3.0)


def test_accessed_cum_is_monotonic_and_keeps_combos_that_vanish() -> None:
    vmas = vmas_of((0x1000, 8, ""), (0x2000, 8, "/f"))
    state = TargetState(1, "x", n_bins=4, cold_after=10.0)
    anon = list(range(0x1000, 0x1008))
    filep = list(range(0x2000, 0x2008))
    # Harvest 1: anon pages on node 0 and file pages on node 1, all accessed.
    v1 = state.update(harvest(vmas, pages_of(vmas, anon + filep, [1] * 16, [0] * 8 + [1] * 8,
                                             [0] * 8 + [1] * 8), 1.0), 1.0)
    assert set(v1.combos) == {(0, 0), (1, 1)}
    before = {c: v1.accessed_cum[i].copy() for i, c in enumerate(v1.combos)}
    # Harvest 2: the file pages are gone; half the anon pages are accessed.
    v2 = state.update(harvest(vmas, pages_of(vmas, anon, [1, 0] * 4), 2.0), 1.0)
    assert set(v2.combos) == {(0, 0), (1, 1)}
    after = {c: v2.accessed_cum[i] for i, c in enumerate(v2.combos)}
    for c in before:
        assert np.all(after[c] >= before[c]), c
    np.testing.assert_array_equal(after[(1, 1)], before[(1, 1)])
    assert int(after[(0, 0)].sum()) == 8 + 4
    row = v2.combos.index((1, 1))
    assert int(v2.resident[row].sum()) == 0 and int(v2.idle[row].sum()) == 0


def test_pages_on_no_node_keep_node_minus_one() -> None:
    vmas = vmas_of((0x1000, 4, ""))
    state = TargetState(1, "x", n_bins=2, cold_after=10.0)
    state.update(harvest(vmas, pages_of(vmas, [0x1000, 0x1001], [1, 1], [-1, 0], [2, 0]), 1.0), 1.0)
    view = state.update(harvest(vmas, pages_of(vmas, [0x1001], [1], [0], [0]), 2.0), 1.0)
    assert set(view.combos) == {(-1, 2), (0, 0)}
    row = view.combos.index((-1, 2))
    assert int(view.accessed_cum[row].sum()) == 1


# --- rebin triggers ------------------------------------------------------------------------------


def _one_harvest(state: TargetState, vmas: Vmas, t: float, vpns=None):
    vpns = mapped_vpns(vmas) if vpns is None else vpns
    return state.update(harvest(vmas, pages_of(vmas, vpns, [0] * len(vpns)), t), 1.0)


def test_no_rebin_when_mapped_size_stays_within_factor_two() -> None:
    state = TargetState(1, "x", n_bins=4, cold_after=10.0)
    v1 = _one_harvest(state, vmas_of((0x1000, 100, "")), 1.0)
    # Exactly twice the size (the bound is inclusive), with all pages inside the old bins' range.
    v2 = _one_harvest(state, vmas_of((0x1000, 100, ""), (0x1080, 100, "")), 2.0, list(range(0x1000, 0x1064)))
    assert v2.rebins == 0
    assert v2.bins is v1.bins


def test_rebin_when_mapped_size_more_than_doubles() -> None:
    state = TargetState(1, "x", n_bins=4, cold_after=10.0)
    _one_harvest(state, vmas_of((0x1000, 100, "")), 1.0)
    vmas = vmas_of((0x1000, 100, ""), (0x1080, 101, ""))
    v2 = _one_harvest(state, vmas, 2.0, list(range(0x1000, 0x1064)))
    assert v2.rebins == 1
    assert v2.bins.mapped_pages == 201


def test_rebin_when_mapped_size_shrinks_below_half() -> None:
    state = TargetState(1, "x", n_bins=4, cold_after=10.0)
    _one_harvest(state, vmas_of((0x1000, 100, "")), 1.0)
    v2 = _one_harvest(state, vmas_of((0x1000, 49, "")), 2.0)
    assert v2.rebins == 1 and v2.bins.mapped_pages == 49


@pytest.mark.parametrize(("n_outside", "rebinned"), [(10, False), (11, True)])
def test_rebin_when_too_many_pages_lie_outside_the_bins(n_outside: int, rebinned: bool) -> None:
    state = TargetState(1, "x", n_bins=4, cold_after=10.0)
    _one_harvest(state, vmas_of((0x1000, 100, "")), 1.0)
    vmas = vmas_of((0x1000, 100, ""), (0x9000, 20, ""))  # same order of size: ratio 1.2
    vpns = list(range(0x1000, 0x1000 + 100 - n_outside)) + list(range(0x9000, 0x9000 + n_outside))
    assert (n_outside > REBIN_OUTSIDE_FRACTION * len(vpns)) == rebinned  # the rule, by construction
    v2 = _one_harvest(state, vmas, 2.0, vpns)
    assert v2.rebins == int(rebinned)
    if rebinned:
        assert int(v2.bins.edges[-1]) == 0x9000 + 20
        assert v2.bins.outside(np.array(vpns, np.uint64)) == 0


@pytest.mark.parametrize(("n_moved", "rebinned"), [(10, False), (11, True)])
def test_rebin_when_pages_land_in_a_gap_inside_the_bins(n_moved: int, rebinned: bool) -> None:
    """A mapping unmapped and a same-size one mapped in the gap between the others (or an
    exec's new layout): the bins' span and the mapped size are unchanged, but the pages there
    were in no bin's share. Resident per bin after the rebin is the new layout split evenly."""
    state = TargetState(1, "x", n_bins=4, cold_after=10.0)
    _one_harvest(state, vmas_of((0x1000, 100, ""), (0x9000, 20, "")), 1.0, list(range(0x1000, 0x1064)))
    vmas = vmas_of((0x1000, 100, ""), (0x5000, 20, ""))  # the second one moved into the gap
    vpns = list(range(0x1000, 0x1000 + 100 - n_moved)) + list(range(0x5000, 0x5000 + n_moved))
    assert (n_moved > REBIN_OUTSIDE_FRACTION * len(vpns)) == rebinned  # the rule, by construction
    v2 = _one_harvest(state, vmas, 2.0, vpns)
    assert v2.rebins == int(rebinned)
    if rebinned:
        mapped = mapped_vpns(vmas)  # 120 pages, four bins of 30 in address order
        want = Counter(mapped.index(v) * 4 // len(mapped) for v in vpns)
        assert [int(v2.resident.sum(axis=0)[b]) for b in range(4)] == [want[b] for b in range(4)]


def test_uncovered_pages_matches_a_page_by_page_count() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        cuts = np.sort(rng.choice(400, size=2 * int(rng.integers(0, 6)), replace=False)).astype(np.uint64)
        ranges = cuts.reshape(-1, 2)  # sorted, disjoint, possibly adjacent
        covered = {v for lo, hi in ranges.tolist() for v in range(lo, hi)}
        start = rng.integers(0, 420, size=8).astype(np.uint64)
        end = start + rng.integers(0, 60, size=8).astype(np.uint64)
        got = aggregate.uncovered_pages(ranges, start, end)
        want = [sum(v not in covered for v in range(a, b))
                for a, b in zip(start.tolist(), end.tolist(), strict=True)]
        assert got.tolist() == want


def test_no_rebin_when_mapped_size_halves_exactly() -> None:
    state = TargetState(1, "x", n_bins=4, cold_after=10.0)
    _one_harvest(state, vmas_of((0x1000, 100, "")), 1.0)
    v2 = _one_harvest(state, vmas_of((0x1000, 50, "")), 2.0)
    assert v2.rebins == 0 and v2.bins.mapped_pages == 100

"""Unit tests for the compact per-page state of exporter/model/aggregate.py (uint16 aging epochs in
blocks): epoch numbering and wrap-around, layout changes, idle ages under stretched intervals,
and pageheat_promoted_pages against a slow page-by-page model of the access pattern.

Expectations come from the reference model below, which keeps every page's last access time as
a Python float keyed by its address; nothing is copied from the code under test.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pageheat.model import aggregate
from pageheat.model.aggregate import (
    BLOCK,
    IDLE_BOUNDS,
    MAX_EPOCH,
    N_TYPES,
    PageHistory,
    TargetState,
    mapping_label,
)
from pageheat.sources.base import Harvest, Pages, VmaKind, Vmas

PAGE = 4096
INF_BUCKET = len(IDLE_BOUNDS) - 1
HORIZON = IDLE_BOUNDS[-2]  # the tests' cold_after is shorter


def vmas_of(*specs: tuple[int, int, str]) -> Vmas:
    """specs: (start_vpn, n_pages, name), anonymous unless the name is a path."""
    specs = tuple(sorted(specs))
    return Vmas(np.array([s[0] * PAGE for s in specs], np.uint64),
                np.array([(s[0] + s[1]) * PAGE for s in specs], np.uint64),
                np.array([VmaKind.FILE if s[2].startswith("/") else VmaKind.ANON for s in specs], np.uint8),
                np.ones(len(specs), bool), [s[2] for s in specs])


def pages_of(vmas: Vmas, accessed: dict[int, bool], node: dict[int, int] | None = None,
             ptype: dict[int, int] | None = None) -> Pages:
    vpn = np.array(sorted(accessed), np.uint64)
    vma = np.searchsorted(vmas.start, vpn * np.uint64(PAGE), side="right").astype(np.int32) - 1
    assert (vpn * np.uint64(PAGE) < vmas.end[vma]).all(), "page outside every mapping"
    return Pages(vpn, np.array([accessed[int(v)] for v in vpn], bool),
                 np.array([(node or {}).get(int(v), 0) for v in vpn], np.int16),
                 np.array([(ptype or {}).get(int(v), 0) for v in vpn], np.uint8),
                 np.zeros(len(vpn), bool), vma)


def bucket(age: float | None) -> int:
    if age is None:
        return INF_BUCKET
    return next(i for i, b in enumerate(IDLE_BOUNDS) if age <= b)


class Ref:
    """Page-by-page model: last access time per resident page (None: never seen accessed)."""

    def __init__(self, cold_after: float) -> None:
        self.cold_after = cold_after
        self.last: dict[int, float | None] = {}
        self.prev_time: float | None = None
        self.promoted: Counter[tuple[int, int, int]] = Counter()  # (node, type, bucket), summed
        self.promoted_s: Counter[tuple[int, int]] = Counter()

    def step(self, vmas: Vmas, pages: Pages, now: float) -> dict:
        last: dict[int, float | None] = {}
        for i in range(len(pages)):
            v, acc = int(pages.vpn[i]), bool(pages.accessed[i])
            combo = (int(pages.node[i]), int(pages.type[i]))
            if acc and v in self.last:  # accessed now, resident at the previous harvest
                t = self.last[v]
                age = None if t is None else self.prev_time - t
                self.promoted[(*combo, bucket(age))] += 1
                if age is not None:
                    self.promoted_s[combo] += age
            last[v] = now if acc else self.last.get(v)
        self.last, self.prev_time = last, now
        idle: Counter[tuple[int, int, int]] = Counter()
        idle_s: Counter[tuple[int, int]] = Counter()
        never: Counter[str] = Counter()
        ages: dict[int, float | None] = {}
        cold = 0
        for i in range(len(pages)):
            v = int(pages.vpn[i])
            combo = (int(pages.node[i]), int(pages.type[i]))
            age = None if last[v] is None else now - last[v]
            ages[v] = age
            idle[(*combo, bucket(age))] += 1
            if age is None:
                never[mapping_label(vmas.names[int(pages.vma[i])])] += 1
                cold += 1
            else:
                idle_s[combo] += age
                cold += age > self.cold_after
        return {"idle": idle, "idle_s": idle_s, "never": dict(never), "cold": cold, "ages": ages,
                "promoted": Counter(self.promoted), "promoted_s": Counter(self.promoted_s)}


def check(view, want: dict, exact_seconds: bool = True) -> None:
    idle, promoted = Counter(), Counter()
    for row, combo in enumerate(view.combos):
        for k in range(len(IDLE_BOUNDS)):
            if view.idle[row][k]:
                idle[(*combo, k)] = int(view.idle[row][k])
            if view.promoted[row][k]:
                promoted[(*combo, k)] = int(view.promoted[row][k])
        if exact_seconds:
            assert float(view.idle_seconds[row]) == pytest.approx(want["idle_s"].get(combo, 0.0))
        if want["promoted_s"] is not None:
            assert float(view.promoted_seconds[row]) == pytest.approx(want["promoted_s"].get(combo, 0.0))
    assert idle == want["idle"]
    assert promoted == want["promoted"]
    assert view.never_accessed == want["never"]
    assert view.cold_pages == want["cold"]


def run(state: TargetState, ref: Ref, vmas: Vmas, accessed: dict[int, bool], now: float, **kw):
    pages = pages_of(vmas, accessed, **kw)
    view = state.update(Harvest(1, now, pages, vmas, 0.0, 0.0), 1.0)
    want = ref.step(vmas, pages, now)
    got_ages = state.idle_ages(pages.vpn, now)
    for v, a in zip(pages.vpn.tolist(), got_ages.tolist(), strict=True):
        if want["ages"][v] is None:
            assert np.isnan(a), v
        elif want["ages"][v] > HORIZON:  # merged with other old epochs: stays past the horizon
            assert a > HORIZON, v
        else:
            assert a == pytest.approx(want["ages"][v]), v
    return view, want


# --- promotions: a hand-computed case ------------------------------------------------------------


def test_promotions_by_idle_age_at_the_previous_harvest_hand_computed() -> None:
    """Harvests at 0, 5, 10, 100 s of three pages a, b, c.

    a: accessed at every harvest -> promoted at 5 (idle 0 at 0), 10 (idle 0 at 5), 100 (idle 0):
       three promotions in le=1, 0 s.
    b: accessed at 0 and at 100 -> at 100 its idle age at the previous harvest (10) was 10 s:
       one promotion in le=10, 10 s.
    c: never accessed until 100 -> one promotion in +Inf only, no seconds.
    """
    vmas = vmas_of((0x1000, 3, ""))
    a, b, c = 0x1000, 0x1001, 0x1002
    state = TargetState(1, "x", n_bins=2, cold_after=60.0)
    state.update(Harvest(1, 0.0, pages_of(vmas, {a: True, b: True, c: False}), vmas, 0, 0), 1.0)
    state.update(Harvest(1, 5.0, pages_of(vmas, {a: True, b: False, c: False}), vmas, 0, 0), 1.0)
    state.update(Harvest(1, 10.0, pages_of(vmas, {a: True, b: False, c: False}), vmas, 0, 0), 1.0)
    view = state.update(Harvest(1, 100.0, pages_of(vmas, {a: True, b: True, c: True}), vmas, 0, 0), 1.0)
    promoted = view.promoted[0]
    assert int(promoted[IDLE_BOUNDS.index(1.0)]) == 3
    assert int(promoted[IDLE_BOUNDS.index(10.0)]) == 1
    assert int(promoted[INF_BUCKET]) == 1
    assert int(promoted.sum()) == 5
    assert float(view.promoted_seconds[0]) == pytest.approx(10.0)


def test_newly_resident_pages_are_not_promotions() -> None:
    vmas = vmas_of((0x1000, 4, ""))
    state = TargetState(1, "x", n_bins=2, cold_after=60.0)
    state.update(Harvest(1, 0.0, pages_of(vmas, {0x1000: False}), vmas, 0, 0), 1.0)
    # 0x1001..0x1003 fault in during the interval and are accessed: not resident before.
    view = state.update(Harvest(1, 1.0, pages_of(vmas, {v: True for v in range(0x1000, 0x1004)}),
                                vmas, 0, 0), 1.0)
    assert int(view.promoted.sum()) == 1 and int(view.promoted[0][INF_BUCKET]) == 1


# --- against the page-by-page model ------------------------------------------------------------


@pytest.mark.parametrize("combos", ["per-page", "per-mapping"])
def test_random_pattern_with_stretched_intervals_matches_the_model(
        combos: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Irregular harvest times (a stretched interval is just a longer gap: epochs are consecutive,
    times are not), pages entering and leaving, several nodes and types: drawn per page, or
    one node and type per mapping in small chunks, most of them of one mapping."""
    rng = np.random.default_rng(3)
    specs = ((0x10000, 700), (0x20000, 300), (0x7ff00, 100))
    vmas = vmas_of((0x10000, 700, "/usr/lib/libx.so"), (0x20000, 300, "[heap]"), (0x7ff00, 100, ""))
    universe = [v for s, n in specs for v in range(s, s + n)]
    node = {v: int(rng.integers(-1, 2)) for v in universe}
    ptype = {v: int(rng.integers(0, N_TYPES)) for v in universe}
    if combos == "per-mapping":
        monkeypatch.setattr(aggregate, "CHUNK", 150)
        for i, (s, n) in enumerate(specs):
            node.update({v: i % 2 - 1 for v in range(s, s + n)})
            ptype.update({v: (i + 1) % N_TYPES for v in range(s, s + n)})
    state, ref = TargetState(1, "x", n_bins=8, cold_after=30.0), Ref(30.0)
    times = [0.0, 1.0, 2.0, 6.5, 7.5, 67.5, 68.0, 400.0, 401.0, 4500.0, 4501.25, 4502.0]
    for k, t in enumerate(times):
        keep = rng.random(len(universe)) < (1.0 if k < 2 else 0.9)
        acc = rng.random(len(universe)) < 0.3
        accessed = {v: bool(x) for v, r, x in zip(universe, keep, acc, strict=True) if r}
        view, want = run(state, ref, vmas, accessed, t, node=node, ptype=ptype)
        check(view, want)
    assert state.history.compactions == 0


def test_history_survives_layout_changes_by_address() -> None:
    """A mapping grows, another is removed and a new one appears elsewhere (mapping indexes
    shift): pages keep their history by address, new pages start as never accessed."""
    state, ref = TargetState(1, "x", n_bins=4, cold_after=30.0), Ref(30.0)
    v1 = vmas_of((0x1000, 100, "/a"), (0x5000, 50, ""), (0x9000, 10, "[heap]"))
    all1 = {v: v % 3 == 0 for s, n in ((0x1000, 100), (0x5000, 50), (0x9000, 10)) for v in range(s, s + n)}
    check(*run(state, ref, v1, all1, 0.0))
    # /a grows to 300 pages, the anon mapping is gone, a new one appears below /a.
    v2 = vmas_of((0x0800, 20, ""), (0x1000, 300, "/a"), (0x9000, 10, "[heap]"))
    all2 = {v: False for s, n in ((0x0800, 20), (0x1000, 300), (0x9000, 10)) for v in range(s, s + n)}
    all2.update({v: True for v in range(0x1000 + 200, 0x1000 + 210)})
    view, want = run(state, ref, v2, all2, 12.0)
    check(view, want)
    assert view.rebins == 1  # mapped size more than doubled
    # The old /a pages accessed at 0 s (vpn % 3 == 0) are 12 s idle now; so is the heap's.
    ages = state.idle_ages(np.array([0x1002, 0x1000, 0x9000, 0x5001], np.uint64), 12.0)
    assert ages[0] == 12.0 and np.isnan(ages[1]) and ages[2] == 12.0
    assert np.isnan(ages[3])  # removed: no history
    # The anon mapping comes back at the same address: a fresh history.
    v3 = vmas_of((0x1000, 300, "/a"), (0x5000, 50, ""), (0x9000, 10, "[heap]"))
    all3 = {v: False for s, n in ((0x1000, 300), (0x5000, 50), (0x9000, 10)) for v in range(s, s + n)}
    view, want = run(state, ref, v3, all3, 13.0)
    check(view, want)
    assert view.never_accessed["anon"] == 50


def test_sparse_pages_across_many_blocks() -> None:
    """Pages far apart (each in a block of its own) and dense runs crossing block edges."""
    rng = np.random.default_rng(5)
    starts = [0x100000 + i * 0x1000 for i in range(40)]
    vmas = vmas_of(*[(s, 3 * BLOCK, "") for s in starts])
    universe = [s + o for s in starts for o in (0, BLOCK - 1, BLOCK, 2 * BLOCK + 7)]
    state, ref = TargetState(1, "x", n_bins=16, cold_after=5.0), Ref(5.0)
    for t in (0.0, 1.0, 3.0, 10.0):
        keep = rng.random(len(universe)) < 0.8
        accessed = {v: bool(rng.random() < 0.5) for v, r in zip(universe, keep, strict=True) if r}
        view, want = run(state, ref, vmas, accessed, t)
        check(view, want)
    assert len(state.history.keys) <= 3 * len(starts)


# --- epochs: wrap-around -----------------------------------------------------------------------


@pytest.mark.parametrize("churn", [False, True])
def test_epochs_wrap_around_keep_buckets_exact(churn: bool) -> None:
    """With 5 epochs only (max_epoch 6), harvests 700-1500 s apart wrap the numbering many
    times (at most 3 epochs lie inside the horizon, so the merged one and the new one fit).
    Epochs idle past the 3600 s horizon are merged into one at their page-weighted mean time:
    buckets, never-accessed and cold counts stay exact. The idle and promotion second sums
    stay exact while the merged pages stay merged (without churn: the cold half is never
    touched again and every hot page is accessed at least every other harvest); with churn
    (merged pages accessed again or leaving) they are approximate: only buckets are checked."""
    rng = np.random.default_rng(11 + churn)
    vmas = vmas_of((0x1000, 400, ""))
    universe = list(range(0x1000, 0x1000 + 400))
    state, ref = TargetState(1, "x", n_bins=4, cold_after=120.0, max_epoch=6), Ref(120.0)
    t = 0.0
    for k in range(30):
        if churn:
            keep = rng.random(len(universe)) < (0.95 if k else 1.0)
            acc = rng.random(len(universe)) < (0.5 if k == 0 else 0.1)
        else:
            keep = np.ones(len(universe), bool)
            acc = np.array([v < 0x1000 + 200 if k == 0 else v >= 0x1000 + 200 and ((v + k) % 2 == 0
                            or rng.random() < 0.3) for v in universe])
        accessed = {v: bool(a) for v, r, a in zip(universe, keep, acc, strict=True) if r}
        view, want = run(state, ref, vmas, accessed, t)
        if churn:
            want = want | {"promoted_s": None}
        check(view, want, exact_seconds=not churn)
        t += 1500.0 if k % 3 else 700.0
    assert state.history.compactions >= 5 and state.history.overflows == 0
    assert int(state.history.epochs.max()) <= 6


@pytest.mark.parametrize("max_epoch", [MAX_EPOCH, 150])
def test_epoch_times_grow_as_epochs_are_handed_out(max_epoch: int) -> None:
    """PageHistory.times starts at TIMES_INITIAL entries and doubles as harvests go on, up to
    max_epoch + 1 (150: not a power of two, and small enough that 40 s apart the numbering wraps
    and compacts after growing): the idle ages and buckets stay those of the model."""
    rng = np.random.default_rng(5)
    vmas = vmas_of((0x4000, 130, ""))
    universe = list(range(0x4000, 0x4000 + 130))
    state, ref = TargetState(1, "x", n_bins=4, cold_after=60.0, max_epoch=max_epoch), Ref(60.0)
    assert len(state.history.times) == aggregate.TIMES_INITIAL
    lengths = set()
    for k in range(200):  # epochs 2-201
        acc = rng.random(len(universe)) < 0.05
        view, want = run(state, ref, vmas, {v: bool(a) for v, a in zip(universe, acc, strict=True)},
                         40.0 * k)
        check(view, want, exact_seconds=state.history.compactions == 0)
        assert state.history.next <= len(state.history.times) <= max_epoch + 1
        lengths.add(len(state.history.times))
    assert lengths == ({64, 128, 256} if max_epoch == MAX_EPOCH else {64, 128, 151})
    assert (state.history.compactions > 0) == (max_epoch == 150)


def test_epochs_faster_than_the_horizon_fall_back_to_merging_the_oldest() -> None:
    """More harvests inside the horizon than epochs (not reachable with the 100 ms minimum
    aging and 65535 epochs): the oldest are merged; the newest accesses stay exact."""
    vmas = vmas_of((0x1000, 64, ""))
    state = TargetState(1, "x", n_bins=2, cold_after=120.0, max_epoch=4)
    for k in range(12):
        accessed = {0x1000 + i: i == k for i in range(64)}
        view = state.update(Harvest(1, float(k), pages_of(vmas, accessed), vmas, 0, 0), 1.0)
        assert int(view.idle[0].sum()) == 64
        assert view.never_accessed == {"anon": 64 - (k + 1)}
        assert int(view.idle[0][0]) >= 1  # the page accessed now: idle 0 s
        assert state.idle_ages(np.array([0x1000 + k], np.uint64), float(k))[0] == 0.0
    assert state.history.overflows > 0


def test_page_history_rejects_a_bad_epoch_limit() -> None:
    with pytest.raises(ValueError, match="max_epoch"):
        PageHistory(3600.0, max_epoch=MAX_EPOCH + 1)
    with pytest.raises(ValueError, match="max_epoch"):
        PageHistory(3600.0, max_epoch=2)


# --- memory ------------------------------------------------------------------------------------


def test_state_costs_about_two_bytes_per_dense_page() -> None:
    n = 1 << 20  # 4 GiB of 4 KiB pages, one mapping
    vmas = vmas_of((0x100000, n, ""))
    vpn = np.arange(0x100000, 0x100000 + n, dtype=np.uint64)
    pages = Pages(vpn, np.arange(n) % 7 == 0, np.zeros(n, np.int16), np.zeros(n, np.uint8),
                  np.zeros(n, bool), np.zeros(n, np.int32))
    state = TargetState(1, "x", n_bins=64, cold_after=120.0)
    for t in (0.0, 1.0):
        view = state.update(Harvest(1, t, pages, vmas, 0, 0), 1.0)
    per_page = (state.history.keys.nbytes + state.history.epochs.nbytes) / n
    assert per_page == 2 + 8 / BLOCK
    assert state.history.nbytes < 2.2 * n + aggregate.TIMES_INITIAL * 8
    assert view.resident_pages == n and int(view.promoted.sum()) == len(range(0, n, 7))


def test_sorted_bins_agree_with_bins_of_inside_outside_and_on_repeated_edges() -> None:
    from pageheat.model.aggregate import _sorted_bins, make_bins

    rng = np.random.default_rng(2)
    for vmas, nbins in ((vmas_of((0x1000, 3, "")), 8),  # more bins than pages: repeated edges
                        (vmas_of((0x1000, 500, "/a"), (0x9000, 300, "")), 7)):
        bins = make_bins(vmas, nbins)
        lo, hi = int(bins.edges[0]) - 50, int(bins.edges[-1]) + 50
        vpn = np.unique(rng.integers(lo, hi, 400)).astype(np.uint64)
        np.testing.assert_array_equal(_sorted_bins(bins, vpn), bins.of(vpn))


@pytest.mark.parametrize("combos", ["per-page", "per-mapping"])
def test_large_sparse_node_ids_are_counted_by_the_combos_present(
        combos: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Accumulators are sized by the (node, type) pairs present, not by the largest node id
    (CXL memory nodes can have large ids). per-mapping: each mapping on one node, two
    neighbouring anonymous ones on the same, in chunks that hold one of them, both, or a
    mapping of another pair."""
    rng = np.random.default_rng(9)
    specs = ((0x1000, 200, ""), (0x1200, 60, ""), (0x3000, 100, "/f"))
    vmas = vmas_of(*specs)
    universe = [v for start, n, _ in specs for v in range(start, start + n)]
    node = {v: (900 if v % 7 == 0 else 0) for v in universe}
    ptype = {v: (1 if v >= 0x3000 else 0) for v in universe}
    want_combos = {(0, 0), (0, 1), (900, 0), (900, 1)}
    if combos == "per-mapping":
        monkeypatch.setattr(aggregate, "CHUNK", 120)
        node = {v: (0 if v >= 0x3000 else 900) for v in universe}
        want_combos = {(900, 0), (0, 1)}
    state, ref = TargetState(1, "x", n_bins=4, cold_after=5.0), Ref(5.0)
    for t in (0.0, 1.0, 9.0):
        accessed = {v: bool(rng.random() < 0.4) for v in universe}
        view, want = run(state, ref, vmas, accessed, t, node=node, ptype=ptype)
        check(view, want)
    assert set(view.combos) == want_combos


def _ref_bin_labels(vmas: Vmas, sel: np.ndarray, edges: np.ndarray) -> tuple[str, ...]:
    """The per-mapping Python loop the aggregator used before (slow reference)."""
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


@pytest.mark.parametrize("seed", range(6))
def test_bin_labels_match_the_per_mapping_reference(seed: int) -> None:
    """Random layouts with repeated names (ties between labels), tiny and huge mappings, more
    bins than pages: the vectorised labels equal the per-mapping loop's, ties included."""
    from pageheat.model.aggregate import _bin_labels, _binned_vmas, make_bins

    rng = np.random.default_rng(seed)
    specs, at = [], 0x1000
    for _ in range(int(rng.integers(1, 300))):
        size = int(rng.choice([1, 2, 3, 8, 64, 1000]))
        specs.append((at, size, str(rng.choice(["", "/lib/a.so", "/lib/b.so", "[heap]", "/x/c"]))))
        at += size + int(rng.choice([0, 0, 1, 50]))
    vmas = vmas_of(*specs)
    for nbins in (2, 7, 32, 1024):
        bins = make_bins(vmas, nbins)
        sel = _binned_vmas(vmas)
        assert _bin_labels(vmas, sel, bins.edges) == _ref_bin_labels(vmas, sel, bins.edges)


def test_add_per_run_is_bincount_of_the_flagged() -> None:
    """Per-mapping counts from runs of a sorted index agree with bincount of the flagged pages,
    with mappings that have no page in between, at the ends, and a flag that is all False."""
    from pageheat.model.aggregate import _add_per_run

    rng = np.random.default_rng(4)
    for n, n_vmas in ((1, 1), (50, 3), (5000, 400), (3000, 20), (200, 150)):  # long and short runs
        index = np.sort(rng.integers(2, n_vmas + 2, n)).astype(np.int32)  # vmas 0, 1 and gaps empty
        for flag in (rng.random(n) < 0.3, np.zeros(n, dtype=bool), np.ones(n, dtype=bool)):
            out = np.full(n_vmas + 4, 7, dtype=np.int64)
            _add_per_run(out, index, flag)
            want = 7 + np.bincount(index[flag], minlength=n_vmas + 4)
            np.testing.assert_array_equal(out, want)
    out = np.zeros(3, dtype=np.int64)
    _add_per_run(out, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=bool))
    assert not out.any()

"""Unit tests for the fleet's series budget (README, "Cardinality"), the cgroup-level
unmonitored pages and the per-cgroup frame dedupe cache, on synthetic views."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest
from pageheat.config import Config
from pageheat.model import identity
from pageheat.model.aggregate import IDLE_BOUNDS, TargetView
from pageheat.model.fleet import FrameDedupe, PageFrames, _once_per_frame, by_cgroup
from pageheat.serve.collector import SELF_SERIES, PageheatCollector
from pageheat.serve.stats import Stats
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.parser import text_string_to_metric_families
from test_unit_collector import make_view

N_LE = len(IDLE_BOUNDS)  # 12 le values, +Inf included


def kube_path(i: int) -> str:
    """Container i's cgroup, kubelet's systemd-driver naming (containerd)."""
    uid = str(uuid.UUID(int=i + 1)).replace("-", "_")
    cid = f"{i + 1:064x}"
    return (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/"
            f"cri-containerd-{cid}.scope")


def full_view(pid: int, rss: int, n_bins: int, combos: tuple[tuple[int, int], ...]) -> TargetView:
    """A view as ptwalk's aggregator makes them after a few harvests: every address bin
    resident (the formula's upper bound C*B is reached), promotion counts, an achieved period."""
    v = make_view(pid, rss, seed=pid, n_bins=n_bins, combos=combos)
    nc = len(combos)
    return dataclasses.replace(
        v, resident=np.ones((nc, n_bins), np.int64), period=2.5,
        promoted=np.ones((nc, N_LE), np.uint64), promoted_seconds=np.ones(nc))


def scrape(cfg: Config, views: dict[int, TargetView], ids: dict, stats: Stats,
           frames: dict | None = None, collector: PageheatCollector | None = None) -> list:
    c = collector or PageheatCollector(cfg, lambda: views, stats, "fake", identities=lambda: ids,
                                       frames=lambda: frames or {})
    reg = CollectorRegistry()
    reg.register(c)
    text = generate_latest(reg).decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


@pytest.mark.parametrize("combos", [((0, 0), (0, 1)), ((0, 0), (0, 1), (0, 2))],
                         ids=["anon+file", "anon+file+shmem"])
def test_200_containers_fit_the_default_budget(combos: tuple) -> None:
    """The README's formula, term by term, against what the collector exports for 200
    containers (every 10th with a second process), under the default settings."""
    cfg = Config()
    views, ids, stats = {}, {}, Stats()
    pid = 100
    for i in range(200):
        for _ in range(2 if i % 10 == 0 else 1):
            pid += 1
            views[pid] = full_view(pid, rss=10_000 + pid, n_bins=cfg.bins, combos=combos)
            ids[pid] = identity.identity(kube_path(i))
            # every process maps the vDSO; some map hugetlb pages too
            stats.unmonitored[pid] = (f"proc{pid}", {"vdso": 2, **({"hugetlb": 512} if pid % 7 == 0 else {})})
    got = scrape(cfg, views, ids, stats)

    # the formula's parts (README, Cardinality)
    P, W, K, B = len(ids), len(cfg.working_set_windows), cfg.never_accessed_mappings, cfg.bins
    cgroup_of = {p: ids[p].cgroup for p in ids}
    cgroups = sorted(set(cgroup_of.values()))
    C = len(combos)
    info_series = P
    cgroup_series = 0
    for cg in cgroups:
        members = [p for p in ids if cgroup_of[p] == cg]
        U_g = len({r for p in members for r in stats.unmonitored[p][1]})
        cgroup_series += 15 * C + W + N_LE + U_g
    top = sorted(views, key=lambda p: -views[p].resident_pages)[:cfg.per_process_series_top]
    process_series = 0
    for p in top:
        U_p = len(stats.unmonitored[p][1])
        never = min(len(views[p].never_accessed), K + 1)
        process_series += C * (B + 3) + C * B + 14 * C + 14 * C + never + B + 7 + U_p
    formula = info_series + cgroup_series + process_series

    exported = [s for s in got if "pid" in s.labels or "cgroup" in s.labels]
    own = [s for s in got if s.name.startswith("pageheat_") and not {"pid", "cgroup"} & s.labels.keys()]
    assert len(exported) == formula
    assert len(own) <= SELF_SERIES
    assert formula + SELF_SERIES <= cfg.max_series  # nothing left out, room to spare:
    assert formula + SELF_SERIES <= 0.8 * cfg.max_series
    assert stats.series_dropped == 0 and stats.series_exported == formula
    assert {s.value for s in got if s.name in ("pageheat_cgroups_dropped", "pageheat_targets_dropped",
                                              "pageheat_process_info_dropped")} == {0}
    assert [s.value for s in got if s.name == "pageheat_targets_aggregated_only"] == [P - len(top)]


def test_process_info_is_budgeted() -> None:
    """More followed processes than max_series has room for: the info series of the largest
    are kept, the rest counted (pageheat_process_info_dropped, pageheat_series_dropped)."""
    n = 300
    cfg = Config(max_series=SELF_SERIES + 100)
    views = {p: make_view(p, rss=p) for p in range(1, n + 1)}
    ids = {p: identity.identity(f"/c{p % 5}") for p in views}
    stats = Stats()
    got = scrape(cfg, views, ids, stats)
    info = {int(s.labels["pid"]) for s in got if s.name == "pageheat_process_info"}
    assert info == set(range(n - 99, n + 1))  # the 100 largest
    [dropped] = [s.value for s in got if s.name == "pageheat_process_info_dropped"]
    assert dropped == n - 100
    labelled = [s for s in got if "pid" in s.labels or "cgroup" in s.labels]
    assert len(labelled) <= cfg.max_series - SELF_SERIES
    assert stats.series_dropped >= n - 100


def test_unmonitored_pages_of_aggregated_only_processes_count_in_their_cgroup() -> None:
    cfg = Config(per_process_series_top=1)
    views = {p: make_view(p, rss=1000 - p, seed=p) for p in (1, 2, 3, 4)}
    ids = {1: identity.identity("/a"), 2: identity.identity("/a"), 3: identity.identity("/a"),
           4: identity.identity("/b")}
    stats = Stats()
    reasons = {1: {"vdso": 2}, 2: {"vdso": 2, "hugetlb": 512}, 3: {"pfnmap": 16, "vdso": 2}, 4: {}}
    for p, r in reasons.items():
        stats.unmonitored[p] = (f"proc{p}", r)
    got = scrape(cfg, views, ids, stats)
    # per process: only the top one (pid 1) has series
    assert {s.labels["pid"] for s in got if s.name == "pageheat_unmonitored_pages"} == {"1"}
    cg = {(s.labels["cgroup"], s.labels["reason"]): s.value for s in got
          if s.name == "pageheat_cgroup_unmonitored_bytes"}
    want = {}
    for p, r in reasons.items():
        for reason, pages in r.items():
            key = (ids[p].cgroup, reason)
            want[key] = want.get(key, 0) + 4096 * pages
    assert cg == want and ("/a", "hugetlb") in cg and not any(k[0] == "/b" for k in cg)


def frames_of(pfns: list[int], ages: list[float]) -> PageFrames:
    return PageFrames(np.array(pfns, np.uint64), np.zeros(len(pfns), np.int32),
                      np.array(ages, np.float32))


def test_frame_dedupe_sorts_a_cgroup_once_per_change_of_its_frames() -> None:
    views = {p: make_view(p, 10, seed=p) for p in (1, 2, 3)}
    ids = {1: identity.identity("/a"), 2: identity.identity("/a"), 3: identity.identity("/b")}
    frames = {1: frames_of([10, 11, 12], [500.0, np.nan, 0.5]),
              2: frames_of([13, 11, 10], [40.0, np.nan, 3.0]),
              3: frames_of([10, 20], [1.0, 2.0])}
    cfg, stats = Config(), Stats()
    c = PageheatCollector(cfg, lambda: views, stats, "fake", identities=lambda: ids,
                          frames=lambda: frames)
    first = scrape(cfg, views, ids, stats, collector=c)
    assert c.dedupe.computed == 2
    # another encoding of the same generation (OpenMetrics), and a scrape with nothing new
    reg = CollectorRegistry()
    reg.register(c)
    om_exposition.generate_latest(reg)
    again = scrape(cfg, views, ids, stats, collector=c)
    assert c.dedupe.computed == 2
    cgroup = [s for s in first if s.name.startswith("pageheat_cgroup_")]
    assert cgroup == [s for s in again if s.name.startswith("pageheat_cgroup_")]
    # pid 2 harvested again (a new PageFrames): only /a is sorted again, and the numbers follow
    frames = {**frames, 2: frames_of([13, 11], [40.0, 1.0])}
    scrape(cfg, views, ids, stats, collector=c)
    assert c.dedupe.computed == 3
    [g] = [g for g in by_cgroup(list(views.values()), ids, frames, dedupe=c.dedupe) if g.cgroup == "/a"]
    idle, _ = _once_per_frame([frames[1], frames[2]])
    np.testing.assert_array_equal(g.idle[(0, 0)], idle[(0, 0)])
    assert g.resident_pages == 4  # frames 10, 11, 12, 13
    assert c.dedupe.computed == 3
    # /b's process gone: /b forgotten by the cache
    del views[3], ids[3], frames[3]
    scrape(cfg, views, ids, stats, collector=c)
    assert set(c.dedupe._cache) == {"/a"}


def test_frame_dedupe_equals_uncached() -> None:
    rng = np.random.default_rng(5)
    fs = [PageFrames(rng.integers(0, 5000, 3000).astype(np.uint64),
                     rng.integers(0, 4, 3000).astype(np.int32),
                     np.where(rng.random(3000) < 0.1, np.nan, rng.uniform(0, 4000, 3000)).astype(np.float32))
          for _ in range(3)]
    d = FrameDedupe()
    got = d.totals({"/x": fs})["/x"]
    want = _once_per_frame(fs)
    assert got[0].keys() == want[0].keys()
    for k in want[0]:
        np.testing.assert_array_equal(got[0][k], want[0][k])
        assert got[1][k] == want[1][k]

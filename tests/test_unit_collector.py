"""Unit tests for exporter/serve/collector.py: render the registry and check what a scrape would see."""

from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np
import pytest
from pageheat.config import Config
from pageheat.model.aggregate import IDLE_BOUNDS, Bins, TargetState, TargetView
from pageheat.serve.collector import SELF_SERIES, PageheatCollector, series_count
from pageheat.serve.stats import Stats
from pageheat.sources.base import PAGE_TYPE_NAMES, Harvest, Pages, VmaKind, Vmas
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(autouse=True)
def _no_pageheat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.upper().startswith("PAGEHEAT_"):
            monkeypatch.delenv(k)


def make_view(pid: int, rss: int, *, seed: int = 0, n_bins: int = 8,
              combos: tuple[tuple[int, int], ...] = ((0, 0), (1, 1)),
              never: dict[str, int] | None = None) -> TargetView:
    rng = np.random.default_rng(seed)
    nc = len(combos)
    edges = (np.arange(n_bins + 1, dtype=np.uint64) * 16 + 0x7f0000)
    bins = Bins(edges, tuple(f"lib{i}.so" for i in range(n_bins)), np.full(n_bins, 16 * 4096), 16 * n_bins)
    resident = rng.integers(0, 4, (nc, n_bins)).astype(np.int64)
    idle = rng.integers(0, 50, (nc, len(IDLE_BOUNDS))).astype(np.int64)
    return TargetView(
        pid=pid, comm=f"proc{pid}", time=10.0, combos=combos, bins=bins, rebins=2,
        accessed_cum=rng.integers(0, 1000, (nc, n_bins)).astype(np.uint64),
        resident=resident, idle=idle, idle_seconds=rng.uniform(0, 1e4, nc),
        never_accessed=never if never is not None else {"anon": 5, "[heap]": 3},
        harvests=17, interval=2.5, wss_pages=123, resident_pages=rss, cold_pages=45)


def render(cfg: Config, views: dict[int, TargetView], stats: Stats | None = None) -> tuple[str, Stats]:
    stats = stats or Stats()
    reg = CollectorRegistry()
    reg.register(PageheatCollector(cfg, lambda: views, stats, "fake"))
    return generate_latest(reg).decode(), stats


def samples(text: str) -> list:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def by_name(text: str, name: str) -> list:
    return [s for s in samples(text) if s.name == name]


def test_accessed_histogram_is_cumulative_over_bins() -> None:
    v = make_view(100, 1000, seed=1)
    text, _ = render(Config(), {100: v})
    buckets: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for s in by_name(text, "pageheat_accessed_pages_bucket"):
        key = (s.labels["node"], s.labels["type"])
        buckets[key].append((float(s.labels["le"]), s.value))
    counts = {(s.labels["node"], s.labels["type"]): s.value
              for s in by_name(text, "pageheat_accessed_pages_count")}
    sums = {(s.labels["node"], s.labels["type"]): s.value
            for s in by_name(text, "pageheat_accessed_pages_sum")}
    assert len(buckets) == len(v.combos)
    for row, (node, ptype) in enumerate(v.combos):
        key = (str(node), PAGE_TYPE_NAMES[ptype])
        per_bin = [int(x) for x in v.accessed_cum[row]]
        running, want = 0, []
        for i, c in enumerate(per_bin):
            running += c
            want.append((float(i), float(running)))
        want.append((math.inf, float(running)))
        assert sorted(buckets[key]) == want
        assert counts[key] == float(sum(per_bin)) == buckets[key][-1][1]
        assert sums[key] == float(sum(i * c for i, c in enumerate(per_bin)))


def test_idle_gauge_histogram_is_cumulative_with_count_and_sum() -> None:
    v = make_view(100, 1000, seed=2)
    reg = CollectorRegistry()
    reg.register(PageheatCollector(Config(), lambda: {100: v}, Stats(), "fake"))
    text = om_exposition.generate_latest(reg).decode()
    fams = {f.name: f for f in om_parser.text_string_to_metric_families(text)}
    fam = fams["pageheat_idle_pages"]
    assert fam.type == "gaugehistogram"
    for row, (node, ptype) in enumerate(v.combos):
        lab = {"pid": "100", "comm": "proc100", "node": str(node), "type": PAGE_TYPE_NAMES[ptype]}
        mine = [s for s in fam.samples if all(s.labels.get(k) == x for k, x in lab.items())]
        got = {s.labels["le"]: s.value for s in mine if s.name.endswith("_bucket")}
        running = 0
        for bound, n in zip(IDLE_BOUNDS, v.idle[row], strict=True):
            running += int(n)
            le = "+Inf" if math.isinf(bound) else repr(float(bound))
            assert got[le] == running, le
        gcount = [s.value for s in mine if s.name.endswith("_gcount")]
        gsum = [s.value for s in mine if s.name.endswith("_gsum")]
        assert gcount == [got["+Inf"]] == [int(v.idle[row].sum())]
        assert gsum == [pytest.approx(float(v.idle_seconds[row]))]


def test_openmetrics_output_is_valid_and_parses_strictly() -> None:
    views = {1: make_view(1, 10, seed=3), 2: make_view(2, 20, seed=4, combos=((0, 2),))}
    reg = CollectorRegistry()
    reg.register(PageheatCollector(Config(expose_addresses=True), lambda: views, Stats(), "fake"))
    text = om_exposition.generate_latest(reg).decode()
    assert text.endswith("# EOF\n")
    names = {f.name for f in om_parser.text_string_to_metric_families(text)}
    assert {"pageheat_accessed_pages", "pageheat_idle_pages", "pageheat_address_bin", "pageheat_rebins",
            "pageheat_build"} <= names


def test_resident_pages_omit_empty_bins() -> None:
    v = make_view(7, 100, seed=5)
    text, _ = render(Config(), {7: v})
    got = {(s.labels["node"], s.labels["type"], int(s.labels["bin"])): s.value
           for s in by_name(text, "pageheat_resident_pages")}
    want = {}
    for row, (node, ptype) in enumerate(v.combos):
        for b in range(v.bins.n):
            if v.resident[row][b] != 0:
                want[(str(node), PAGE_TYPE_NAMES[ptype], b)] = float(v.resident[row][b])
    assert got == want
    assert 0.0 not in got.values()


def test_no_address_labels_unless_expose_addresses() -> None:
    v = make_view(7, 100)
    text, _ = render(Config(), {7: v})
    info = by_name(text, "pageheat_address_bin_info")
    assert len(info) == v.bins.n
    for s in info:
        assert "start" not in s.labels and "end" not in s.labels
        b = int(s.labels["bin"])
        assert s.labels["mappings"] == v.bins.labels[b]
        assert int(s.labels["size_bytes"]) == int(v.bins.bytes[b])
    assert "0x7f" not in text  # no address anywhere


def test_expose_addresses_adds_start_and_end() -> None:
    v = make_view(7, 100)
    text, _ = render(Config(expose_addresses=True), {7: v})
    for s in by_name(text, "pageheat_address_bin_info"):
        b = int(s.labels["bin"])
        assert int(s.labels["start"], 16) == int(v.bins.edges[b]) * 4096
        assert int(s.labels["end"], 16) == int(v.bins.edges[b + 1]) * 4096


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 4, 10])
def test_never_accessed_top_n_plus_other(limit: int) -> None:
    never = {"a.so": 40, "b.so": 30, "[heap]": 20, "anon": 10}
    v = make_view(7, 100, never=never)
    text, _ = render(Config(never_accessed_mappings=limit), {7: v})
    got = {s.labels["mapping"]: s.value for s in by_name(text, "pageheat_never_accessed_pages")}
    ranked = sorted(never, key=never.get, reverse=True)
    want = {m: float(never[m]) for m in ranked[:limit]}
    if len(never) > limit:
        want["other"] = float(sum(never[m] for m in ranked[limit:]))
    assert got == want
    assert sum(got.values()) == sum(never.values())


def test_per_target_gauges_and_counters() -> None:
    v = make_view(7, 321)
    text, _ = render(Config(), {7: v})
    vals = {s.name: s.value for s in samples(text) if s.labels.get("pid") == "7" and "node" not in s.labels
            and "bin" not in s.labels and "mapping" not in s.labels}
    assert vals == {
        "pageheat_aging_interval_seconds": 2.5, "pageheat_rebins_total": 2.0,
        "pageheat_harvests_total": 17.0, "pageheat_working_set_pages": 123.0,
        "pageheat_cold_pages": 45.0, "pageheat_process_resident_pages": 321.0,
    }


def page_series(text: str) -> dict[str, int]:
    """Series per pid in the exposition (pageheat's own metrics carry no pid)."""
    n: dict[str, int] = defaultdict(int)
    for s in samples(text):
        if "pid" in s.labels:
            n[s.labels["pid"]] += 1
    return dict(n)


def synthetic_state_view(n_bins: int) -> TargetView:
    """A view made by the real aggregator from two harvests."""
    rng = np.random.default_rng(11)
    start = np.array([0x10000, 0x40000], np.uint64) * 4096
    end = start + np.array([300, 100], np.uint64) * 4096
    vmas = Vmas(start, end, np.array([VmaKind.FILE, VmaKind.ANON], np.uint8), np.ones(2, bool),
                ["/usr/lib/libz.so", ""])
    vpn = np.concatenate([np.arange(0x10000, 0x10000 + 300), np.arange(0x40000, 0x40000 + 100)])
    vpn = vpn[rng.random(len(vpn)) < 0.5].astype(np.uint64)
    vma = (vpn >= 0x40000).astype(np.int32)
    st = TargetState(9, "agg", n_bins, 60.0)
    view = None
    for t in (1.0, 2.75):
        pages = Pages(vpn, rng.random(len(vpn)) < 0.4, rng.integers(0, 2, len(vpn)).astype(np.int16),
                      rng.integers(0, 3, len(vpn)).astype(np.uint8), np.zeros(len(vpn), bool), vma)
        view = st.update(Harvest(9, t, pages, vmas, 0.0, 0.0), 1.0)
    assert view is not None
    return view


def test_achieved_period_only_after_the_second_harvest() -> None:
    """pageheat_aging_period_seconds is the time between the last two harvests, which can be
    longer than the scheduled interval (1.0 here); there is none after the first harvest."""
    view = synthetic_state_view(8)
    text, _ = render(Config(), {9: view})
    assert [s.value for s in by_name(text, "pageheat_aging_period_seconds")] == [1.75]
    assert [s.value for s in by_name(text, "pageheat_aging_interval_seconds")] == [1.0]
    text, _ = render(Config(), {7: make_view(7, 321)})  # a single harvest's view
    assert by_name(text, "pageheat_aging_period_seconds") == []


@pytest.mark.parametrize("limit", [0, 1, 10])
def test_series_count_matches_what_is_exported(limit: int) -> None:
    views = {1: make_view(1, 10, seed=6, never={"a": 1, "b": 2, "c": 3}), 9: synthetic_state_view(16)}
    text, stats = render(Config(never_accessed_mappings=limit), views)
    assert page_series(text) == {str(p): series_count(v, limit) for p, v in views.items()}
    assert stats.series_exported == sum(series_count(v, limit) for v in views.values())
    assert by_name(text, "pageheat_series")[0].value == stats.series_exported


def test_max_series_drops_whole_lowest_rss_targets() -> None:
    views = {p: make_view(p, rss, seed=0) for p, rss in ((10, 500), (11, 900), (12, 100), (13, 700))}
    per = series_count(views[10], 10)
    assert all(series_count(v, 10) == per for v in views.values())  # same shape, by construction
    cfg = Config(max_series=SELF_SERIES + 2 * per + per // 2)  # room for two and a half targets
    text, stats = render(cfg, views)
    assert set(page_series(text)) == {"11", "13"}  # the two largest by RSS
    assert all(n == per for n in page_series(text).values())  # nobody is cut in half
    got = {s.name: s.value for s in samples(text) if not s.labels}
    assert got["pageheat_targets"] == 4
    assert got["pageheat_targets_dropped"] == 2
    assert got["pageheat_series_dropped"] == 2 * per
    assert got["pageheat_series"] == 2 * per
    assert sum(page_series(text).values()) <= cfg.max_series - SELF_SERIES


def test_max_series_counters_reset_when_everything_fits() -> None:
    stats = Stats()
    views = {p: make_view(p, p) for p in (1, 2, 3)}
    per = series_count(views[1], 10)
    render(Config(max_series=SELF_SERIES + per), views, stats)
    assert stats.targets_dropped == 2
    text, stats = render(Config(max_series=10000), views, stats)
    assert stats.targets_dropped == 0 and stats.series_dropped == 0
    assert set(page_series(text)) == {"1", "2", "3"}


def test_self_metrics_without_targets() -> None:
    stats = Stats()
    stats.harvest.observe(0.003)
    stats.harvest.observe(0.2)
    stats.errors["harvest"] += 2
    text, _ = render(Config(cpu_budget=0.5), {}, stats)
    assert page_series(text) == {}
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples(text)}
    assert got[("pageheat_targets", ())] == 0
    assert got[("pageheat_cpu_budget_ratio", ())] == 0.5
    assert got[("pageheat_errors_total", (("kind", "harvest"),))] == 2
    assert got[("pageheat_harvest_duration_seconds_count", ())] == 2
    assert got[("pageheat_harvest_duration_seconds_sum", ())] == pytest.approx(0.203)
    assert got[("pageheat_harvest_duration_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("pageheat_harvest_duration_seconds_bucket", (("le", "0.25"),))] == 2
    build = [s for s in samples(text) if s.name == "pageheat_build_info"]
    assert build[0].labels["source"] == "fake"

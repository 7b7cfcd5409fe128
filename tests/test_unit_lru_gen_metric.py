"""pageheat_lru_gen_pages: MGLRU's generation histogram, from Harvest.lru_gen through the real
aggregator and collector to the text exposition a scrape sees."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pageheat.config import Config
from pageheat.model.aggregate import TargetState, TargetView, lru_generations
from pageheat.serve.collector import PageheatCollector, series_count
from pageheat.serve.stats import Stats
from pageheat.sources.base import Harvest, LruGenerations, Pages, VmaKind, Vmas
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

METRIC = "pageheat_lru_gen_pages"


@pytest.fixture(autouse=True)
def _no_pageheat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.upper().startswith("PAGEHEAT_"):
            monkeypatch.delenv(k)


# An mglru harvest's free-form counters (its aging counts are typed Harvest fields).
MGLRU_COUNTERS = {"tlb_flush": 0, "young_pages": 16, "young_not_resident": 0}


def mglru_histogram(hist: dict[tuple[int, int], tuple[int, int]]) -> LruGenerations:
    """{(node, rank): (anon, file)} -> the Harvest.lru_gen mglru-fexit and mglru-hook report."""
    return LruGenerations.from_rows((node, rank, anon, file)
                                    for (node, rank), (anon, file) in hist.items())


def harvest(pid: int, t: float, counters: dict[str, int],
            lru_gen: LruGenerations | None = None) -> Harvest:
    """A small synthetic harvest: one anonymous mapping of 64 pages, every other one resident."""
    start = np.array([0x7f0000 * 4096], np.uint64)
    vmas = Vmas(start, start + np.uint64(64 * 4096), np.array([VmaKind.ANON], np.uint8),
                np.ones(1, bool), [""])
    vpn = np.arange(0x7f0000, 0x7f0000 + 64, 2, dtype=np.uint64)
    n = len(vpn)
    pages = Pages(vpn, np.arange(n) % 3 == 0, np.zeros(n, np.int16), np.zeros(n, np.uint8),
                  np.zeros(n, bool), np.zeros(n, np.int32))
    return Harvest(pid, t, pages, vmas, 0.001, 0.001, counters, lru_gen)


def scrape(views: dict[int, TargetView], cfg: Config | None = None) -> str:
    reg = CollectorRegistry()
    reg.register(PageheatCollector(cfg or Config(), lambda: views, Stats(), "fake"))
    return generate_latest(reg).decode()


def lru_samples(text: str) -> dict[tuple[str, str, str, str, str], float]:
    """(pid, comm, node, type, generation) -> value, checking that no other label sneaks in."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == METRIC:
                assert set(s.labels) == {"pid", "comm", "node", "type", "generation"}, s.labels
                key = (s.labels["pid"], s.labels["comm"], s.labels["node"], s.labels["type"],
                       s.labels["generation"])
                out[key] = s.value
    return out


def test_values_and_labels_from_the_latest_harvest() -> None:
    st = TargetState(42, "memcached", 8, 120.0)
    st.update(harvest(42, 1.0, MGLRU_COUNTERS, mglru_histogram({(0, 0): (1, 2), (0, 1): (3, 4)})), 1.0)
    hist = {(0, 0): (100, 7), (0, 1): (2000, 30), (0, 2): (0, 500), (1, 0): (11, 0), (1, 1): (5, 6)}
    view = st.update(harvest(42, 2.0, MGLRU_COUNTERS, mglru_histogram(hist)), 1.0)
    text = scrape({42: view})
    want = {}
    for (node, rank), (anon, file) in hist.items():
        want[("42", "memcached", str(node), "anon", str(rank))] = float(anon)
        want[("42", "memcached", str(node), "file", str(rank))] = float(file)
    assert lru_samples(text) == want  # the second harvest's values, zeros included
    assert "# TYPE pageheat_lru_gen_pages gauge" in text
    help_line = next(line for line in text.splitlines() if line.startswith(f"# HELP {METRIC} "))
    assert "memory cgroup" in help_line and "not per process" in help_line
    assert "all processes charged to it" in help_line


def test_only_the_typed_histogram_becomes_series() -> None:
    hist = mglru_histogram({(1, 1): (5, 6), (0, 0): (1, 2)})
    assert [(g.node, g.type, g.generation, g.pages) for g in lru_generations(hist)] == [
        (0, "anon", 0, 1), (0, "file", 0, 2), (1, "anon", 1, 5), (1, "file", 1, 6)]
    assert lru_generations(None) == ()
    # Counters named like the old string encoding are diagnostics, not the histogram.
    st = TargetState(4, "w", 8, 120.0)
    view = st.update(harvest(4, 1.0, {"lru_gen_node0_gen0_anon": 9}), 1.0)
    assert view.lru_gen == () and METRIC not in scrape({4: view})


def test_vanishes_with_the_target() -> None:
    views = {}
    for pid in (7, 8):
        st = TargetState(pid, f"p{pid}", 8, 120.0)
        hist = mglru_histogram({(0, 0): (pid, pid + 1)})
        views[pid] = st.update(harvest(pid, 1.0, MGLRU_COUNTERS, hist), 1.0)
    assert {k[0] for k in lru_samples(scrape(views))} == {"7", "8"}
    del views[7]  # what the daemon's _drop does: the next scrape no longer sees the view
    text = scrape(views)
    assert set(lru_samples(text)) == {("8", "p8", "0", "anon", "0"), ("8", "p8", "0", "file", "0")}
    del views[8]
    text = scrape(views)
    assert lru_samples(text) == {}
    assert METRIC not in text  # no HELP/TYPE left behind either


def test_absent_for_sources_without_the_histogram() -> None:
    # ptwalk's counters: what its BPF iterator reports, no lru_gen keys.
    st = TargetState(5, "ptwalked", 8, 120.0)
    view = st.update(harvest(5, 1.0, {"n_vmas": 1, "n_tables": 1, "dropped_vmas": 0,
                                       "dropped_tables": 0}), 1.0)
    text = scrape({5: view})
    assert 'pid="5"' in text  # the target's other series are there ...
    assert METRIC not in text  # ... but not even an empty family for this one


def test_latest_harvest_without_the_histogram_clears_it() -> None:
    # mglru-fexit reports no histogram when lru_gen could not be read at that harvest: the gauge
    # shows the latest harvest, so stale generations do not linger.
    st = TargetState(3, "w", 8, 120.0)
    view = st.update(harvest(3, 1.0, MGLRU_COUNTERS, mglru_histogram({(0, 0): (1, 1)})), 1.0)
    assert lru_samples(scrape({3: view}))
    view = st.update(harvest(3, 2.0, MGLRU_COUNTERS), 1.0)
    assert METRIC not in scrape({3: view})


def test_counted_against_max_series() -> None:
    hist = {(n, r): (1, 1) for n in range(2) for r in range(4)}
    st = TargetState(9, "big", 8, 120.0)
    view = st.update(harvest(9, 1.0, MGLRU_COUNTERS, mglru_histogram(hist)), 1.0)
    without = TargetState(9, "big", 8, 120.0).update(harvest(9, 1.0, {}), 1.0)
    assert series_count(view, 10) == series_count(without, 10) + 16
    text = scrape({9: view})
    per_pid = sum(1 for fam in text_string_to_metric_families(text) for s in fam.samples
                  if s.labels.get("pid") == "9")
    assert per_pid == series_count(view, 10)

"""exporter/serve/sanity.py on synthetic harvests: truncations, unmonitored pages and aging that
does nothing are counted, logged once, and exported (issue 11, kind 3)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from pageheat.config import Config
from pageheat.serve.collector import PageheatCollector
from pageheat.serve.sanity import MIN_PAGES, SUSPECT_HARVESTS, Sanity
from pageheat.serve.stats import Stats
from pageheat.sources.base import Harvest, Pages, Truncations, Unmonitored, Vmas
from prometheus_client import CollectorRegistry, generate_latest

pytestmark = pytest.mark.kind3


def harvest(n: int, accessed: int, **typed: Any) -> Harvest:
    """``n`` resident pages, the first ``accessed`` of them accessed; ``typed``: Harvest's
    truncations, unmonitored, aging_writes, generations_added."""
    acc = np.zeros(n, dtype=bool)
    acc[:accessed] = True
    pages = Pages(np.arange(n, dtype=np.uint64), acc, np.zeros(n, np.int16), np.zeros(n, np.uint8),
                  np.zeros(n, bool), np.zeros(n, np.int32))
    vmas = Vmas(np.zeros(1, np.uint64), np.full(1, n << 12, np.uint64), np.zeros(1, np.uint8),
                np.ones(1, bool), [""])
    return Harvest(42, 0.0, pages, vmas, 0.0, 0.0, **typed)


def test_every_page_accessed_in_a_row_is_flagged_once(caplog) -> None:
    stats = Stats()
    s = Sanity(stats)
    n = MIN_PAGES * 4
    with caplog.at_level(logging.WARNING, "pageheat"):
        for _ in range(SUSPECT_HARVESTS - 1):
            s.check(harvest(n, n), "job")
        assert stats.aging_ineffective["all_accessed"] == 0
        s.check(harvest(n, n), "job")
        assert stats.aging_ineffective["all_accessed"] == 1
        for _ in range(3 * SUSPECT_HARVESTS):
            s.check(harvest(n, n), "job")
    assert stats.aging_ineffective["all_accessed"] == 1  # one streak, one count
    assert sum("clears nothing" in r.message for r in caplog.records) == 1


def test_one_idle_page_breaks_the_streak_and_small_targets_are_not_suspects() -> None:
    stats = Stats()
    s = Sanity(stats)
    n = MIN_PAGES * 4
    for i in range(4 * SUSPECT_HARVESTS):
        s.check(harvest(n, n - (i % SUSPECT_HARVESTS == 0)), "job")
        s.check(harvest(MIN_PAGES, MIN_PAGES), "tiny")
    assert stats.aging_ineffective["all_accessed"] == 0


def test_truncations_counted_and_logged_once(caplog) -> None:
    stats = Stats()
    s = Sanity(stats)
    with caplog.at_level(logging.WARNING, "pageheat"):
        for _ in range(3):
            s.check(harvest(10, 1, truncations=Truncations(step_limit=1, read_error=2)), "job")
    assert stats.truncations["step_limit"] == 3 and stats.truncations["read_error"] == 6
    assert sum("harvest incomplete" in r.message for r in caplog.records) == 2


@pytest.mark.kind1
def test_untrusted_comm_is_escaped_in_log_lines(caplog) -> None:
    """A comm is untrusted bytes from /proc: control characters and U+2028 (a line break to
    many log viewers) come out escaped as procfs.shown() escapes them, never raw."""
    from pageheat.kernel.procfs import shown

    comm = "job\n\x1b[2J\u2028x"
    stats = Stats()
    s = Sanity(stats)
    n = MIN_PAGES * 4
    with caplog.at_level(logging.WARNING, "pageheat"):
        s.check(harvest(10, 1, truncations=Truncations(step_limit=1)), comm)
        for _ in range(SUSPECT_HARVESTS):
            s.check(harvest(n, n), comm)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the truncation and the aging that clears nothing
    for line in lines:
        assert f"pid 42 ({shown(comm)})" in line
        assert not any(c in line for c in "\n\x1b\u2028")
    assert stats.unmonitored[42][0] == comm  # the label value is the name as it is


def test_mglru_aging_without_a_new_generation() -> None:
    stats = Stats()
    s = Sanity(stats)
    s.check(harvest(10, 1, aging_writes=1, generations_added=1), "job")
    assert stats.aging_ineffective["no_new_generation"] == 0
    s.check(harvest(10, 1, aging_writes=1, generations_added=0), "job")
    assert stats.aging_ineffective["no_new_generation"] == 1


def test_exported_with_every_reason_at_zero_and_unmonitored_per_target() -> None:
    from pageheat.model.aggregate import TargetState

    stats = Stats()
    s = Sanity(stats)
    h = harvest(100, 10, unmonitored=Unmonitored(hugetlb=4096, vdso=0))
    s.check(h, "job")
    state = TargetState(42, "job", 32, 60.0)
    view = state.update(h, 1.0)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PageheatCollector(Config(), lambda: {42: view}, stats, "ptwalk"))
    text = generate_latest(reg).decode()
    assert 'pageheat_unmonitored_pages{comm="job",pid="42",reason="hugetlb"} 4096.0' in text
    assert 'reason="vdso"' not in text  # zero reasons are left out of the per-target gauge
    for reason in ("step_limit", "read_error", "young_map_full"):
        assert f'pageheat_walk_truncations_total{{reason="{reason}"}} 0.0' in text
    for reason in ("all_accessed", "no_new_generation"):
        assert f'pageheat_aging_ineffective_total{{reason="{reason}"}} 0.0' in text
    s.forget(42)
    assert 42 not in stats.unmonitored


def test_an_exec_starts_the_all_accessed_streak_again() -> None:
    """A process that execs about once per harvest shows a fresh program each time, every
    page of it just written: not a clear_refs that clears nothing."""
    stats = Stats()
    s = Sanity(stats)
    n = MIN_PAGES * 4
    for i in range(3 * SUSPECT_HARVESTS):
        s.check(harvest(n, n, address_space=0x1000 + (i // (SUSPECT_HARVESTS - 1))), "exe")
    assert stats.aging_ineffective["all_accessed"] == 0
    for _ in range(SUSPECT_HARVESTS):  # the same program, every page accessed every time
        s.check(harvest(n, n, address_space=0x9000), "exe")
    assert stats.aging_ineffective["all_accessed"] == 1

"""pageheat_errors_total: every kind of error is a series from the first scrape, at 0."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pageheat.config import Config
from pageheat.serve.collector import PageheatCollector
from pageheat.serve.stats import ERROR_KINDS, Stats
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

EXPORTER = Path(__file__).resolve().parent.parent / "exporter"


def errors_total(stats: Stats) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PageheatCollector(Config(), dict, stats, "fake"))
    text = generate_latest(registry).decode()
    return {s.labels["kind"]: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == "pageheat_errors_total"}


def test_error_kinds_the_code_counts_are_all_known() -> None:
    """Every ``errors["KIND"]`` the exporter increments is in ERROR_KINDS, so that it is
    exported at 0 before its first error (otherwise rate() misses that error)."""
    used = set()
    for path in EXPORTER.rglob("*.py"):
        used |= set(re.findall(r"""errors\[["']([a-z_]+)["']\]""", path.read_text()))
    assert "harvest" in used  # the scan finds them
    assert used <= set(ERROR_KINDS), used - set(ERROR_KINDS)


@pytest.mark.kind5
def test_every_error_kind_is_exported_at_zero() -> None:
    assert errors_total(Stats()) == dict.fromkeys(ERROR_KINDS, 0.0)


def test_errors_count_up_from_zero() -> None:
    stats = Stats()
    stats.errors["attach"] += 1
    stats.errors["attach"] += 1
    expected = {**dict.fromkeys(ERROR_KINDS, 0.0), "attach": 2.0}
    assert errors_total(stats) == expected

"""The daemon's own counters: what it costs and what went wrong. Written by the harvesting
thread, read by the collector; single integer/float updates need no lock under the GIL."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Every kind of pageheat_errors_total, exported at 0 from the start so that rate() and
# increase() see the first error (a series that appears at 1 has no increase). A new kind of
# error is added here; tests/test_unit_stats.py checks that the code uses no other.
ERROR_KINDS = ("attach", "discovery", "harvest")
DURATION_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class DurationHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BOUNDS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BOUNDS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for bound, n in zip((*DURATION_BOUNDS, float("inf")), self.counts, strict=True):
            acc += n
            out.append((repr(bound) if bound != float("inf") else "+Inf", acc))
        return out


@dataclass
class Stats:
    harvest: DurationHistogram = field(default_factory=DurationHistogram)
    aging: DurationHistogram = field(default_factory=DurationHistogram)
    pages_scanned: int = 0
    overruns: int = 0  # cycles whose CPU cost exceeded their interval
    errors: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(ERROR_KINDS, 0)))
    cpu_usage: float = 0.0  # fraction of one CPU spent on harvest + aging + aggregation, smoothed
    series_exported: int = 0
    series_dropped: int = 0
    targets_dropped: int = 0
    # exporter/serve/sanity.py: truncated harvests and aging that did nothing, by reason; pages each
    # target has that cannot be monitored, by reason (pid -> (comm, {reason: pages})).
    truncations: Counter[str] = field(default_factory=Counter)
    aging_ineffective: Counter[str] = field(default_factory=Counter)
    unmonitored: dict[int, tuple[str, dict[str, int]]] = field(default_factory=dict)

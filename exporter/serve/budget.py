"""The daemon's CPU budget: stretch the aging interval of the costliest targets.

Aging with clear_refs costs tens of nanoseconds per resident page, so a large target aged
every second could use most of a core. Each target's cost per cycle (harvest + aging, in CPU
seconds) is known from the last cycles. If all targets at the configured interval would use
more than the budget, the costliest ones get longer intervals ("water filling"): every target
uses at most a common share ``cap`` per second, chosen so the total fits. Intervals never go
below the configured one. Idle ages use real elapsed time, so stretched intervals stay correct.
"""

from __future__ import annotations

EWMA_WEIGHT = 0.3


def smooth(previous: float | None, sample: float) -> float:
    return sample if previous is None else previous + EWMA_WEIGHT * (sample - previous)


def intervals(cost: dict[int, float], base: float, budget: float) -> dict[int, float]:
    """Interval per target so that sum(cost / interval) <= budget, stretching the largest."""
    usage = {k: c / base for k, c in cost.items()}
    if sum(usage.values()) <= budget:
        return dict.fromkeys(cost, base)
    # Find cap: the smallest targets keep their full usage, the rest share what is left.
    order = sorted(usage.values())
    remaining = budget
    for i, u in enumerate(order):
        share = remaining / (len(order) - i)
        if u > share:
            return {k: base if usage[k] <= share else cost[k] / share for k in cost}
        remaining -= u
    return dict.fromkeys(cost, base)  # everything fitted after all (rounding at the boundary)

"""Unit tests for exporter/serve/budget.py: water-filling of aging intervals under a CPU budget."""

from __future__ import annotations

import numpy as np
import pytest
from pageheat.serve.budget import EWMA_WEIGHT, intervals, smooth


def ref_cap(usage: list[float], budget: float) -> float:
    """The water level: sum(min(u, cap)) == budget, found by bisection (slow reference)."""
    lo, hi = 0.0, max(usage)
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(min(u, mid) for u in usage) > budget:
            hi = mid
        else:
            lo = mid
    return lo


def check_invariants(cost: dict[int, float], base: float, budget: float, got: dict[int, float]) -> None:
    assert got.keys() == cost.keys()
    assert all(iv >= base for iv in got.values()), "an interval went below the configured one"
    total = sum(c / got[k] for k, c in cost.items())
    assert total <= budget * (1 + 1e-9)
    # A costlier target never ages more often than a cheaper one.
    by_cost = sorted(cost, key=cost.get)
    for a, b in zip(by_cost, by_cost[1:], strict=False):
        if cost[a] < cost[b]:
            assert got[a] <= got[b] * (1 + 1e-12)


def test_everything_at_base_when_under_budget() -> None:
    cost = {1: 0.001, 2: 0.004, 3: 0.01}
    assert intervals(cost, 0.5, 0.05) == {1: 0.5, 2: 0.5, 3: 0.5}


def test_no_targets() -> None:
    assert intervals({}, 1.0, 0.02) == {}


def test_largest_is_stretched_first_and_small_ones_keep_base() -> None:
    cost = {1: 0.001, 2: 0.002, 3: 0.1}
    got = intervals(cost, 1.0, 0.013)
    assert got[1] == 1.0 and got[2] == 1.0
    # The remaining 0.010 of the budget all goes to target 3.
    assert got[3] == pytest.approx(0.1 / 0.010)
    check_invariants(cost, 1.0, 0.013, got)
    assert sum(c / got[k] for k, c in cost.items()) == pytest.approx(0.013)


def test_equal_costs_share_the_budget_equally() -> None:
    cost = {1: 0.3, 2: 0.3, 3: 0.3}
    got = intervals(cost, 1.0, 0.3)
    assert got == pytest.approx({1: 3.0, 2: 3.0, 3: 3.0})


def test_zero_cost_target_keeps_base() -> None:
    cost = {1: 0.0, 2: 10.0}
    got = intervals(cost, 1.0, 0.5)
    assert got[1] == 1.0
    assert got[2] == pytest.approx(20.0)


@pytest.mark.parametrize("seed", range(40))
def test_matches_water_filling_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    base = float(rng.choice([0.1, 0.5, 1.0, 2.0]))
    cost = {int(1000 + i): float(c) for i, c in enumerate(rng.lognormal(-5, 2, n))}
    usage = [c / base for c in cost.values()]
    budget = float(sum(usage) * rng.uniform(0.05, 0.95))
    got = intervals(cost, base, budget)
    check_invariants(cost, base, budget, got)
    cap = ref_cap(usage, budget)
    for k, c in cost.items():
        want = base if c / base <= cap else c / cap
        assert got[k] == pytest.approx(want, rel=1e-6), k
    # Water filling uses the whole budget when over it.
    assert sum(c / got[k] for k, c in cost.items()) == pytest.approx(budget, rel=1e-9)


def test_costs_adding_up_to_exactly_the_budget() -> None:
    # 0.004 + 0.014 + 0.002 is 0.02 in real numbers, 0.020000000000000004 in floats: the total
    # is "over" the budget by one ulp, yet no target is over its share. The answer must still be
    # valid intervals (here: all at base, or a hair above), not an exception.
    cost = {1: 0.004, 2: 0.014, 3: 0.002}
    got = intervals(cost, 1.0, 0.02)
    check_invariants(cost, 1.0, 0.02, got)
    assert got == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0})


def test_smooth_starts_at_first_sample_then_moves_by_ewma_weight() -> None:
    assert smooth(None, 0.8) == 0.8
    assert smooth(1.0, 2.0) == pytest.approx(1.0 + EWMA_WEIGHT * 1.0)
    assert smooth(2.0, 1.0) == pytest.approx(2.0 - EWMA_WEIGHT * 1.0)
    assert smooth(0.5, 0.5) == 0.5


def test_smooth_converges_to_a_constant_sample() -> None:
    v = None
    ref = None
    for _ in range(100):
        v = smooth(v, 3.0 if v is not None else 0.0)
        ref = 0.0 if ref is None else ref + EWMA_WEIGHT * (3.0 - ref)
        assert v == pytest.approx(ref)
    assert v == pytest.approx(3.0, rel=1e-6)

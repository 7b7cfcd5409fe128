"""mglru-hook's walk filter, on the patched lab kernel: with a large non-target process in
the same memcg, our aging walks only the target's mm, sees none of the neighbour's pages,
keeps the target exact, and costs less than the same aging unfiltered (A/B, one run)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from .guestlib import in_cgroup, make_cgroup, record, start_workload, stop_process

# Collected only where guestlib.SOURCES has mglru-hook (the patched kernel): see conftest.py.
PAIRS = 5


def _truth_ok(h, t) -> tuple[int, int]:
    """(hot pages missed, cold pages seen) in one harvest of the whole region."""
    lo = np.uint64(t.start >> 12)
    acc = h.pages.vpn[h.pages.accessed]
    touched = np.zeros(t.pages, bool)
    touched[t.hot] = touched[t.warm] = True
    cold = lo + np.flatnonzero(~touched).astype(np.uint64)
    hot = lo + t.hot.astype(np.uint64)
    return int((~np.isin(hot, acc)).sum()), int(np.isin(cold, acc).sum())


def test_walk_filter_visits_only_targets(tmp_path: Path) -> None:
    from pageheat.sources.mglru_hook import MglruHookSource

    cg = make_cgroup("pageheat-filter")
    target = start_workload(tmp_path, "--size", "16MiB", prefix=in_cgroup(cg))
    # The neighbour: 512 MiB, half of it touched every 10 ms, so an unfiltered walk has a
    # lot of young PTEs to clear.
    neighbour = start_workload(tmp_path, "--size", "512MiB", "--hot", "0.5", "--warm", "0",
                               prefix=in_cgroup(cg))
    src = MglruHookSource(aging="active", tlb_flush="always")
    rows = []
    try:
        src.attach(target.pid)
        for i in range(2 * PAIRS):
            src.walk_filter = i % 2 == 0  # A B A B ...: filtered first
            before = src.stats()
            time.sleep(0.5)
            h = src.cycle(target.pid)
            after = src.stats()
            delta = {k: after[k] - before[k] for k in ("mm_walked", "mm_skipped", "young",
                                                       "target_young")}
            missed, cold_seen = _truth_ok(h, target)
            rows.append({"filter": src.walk_filter, "aging_ms": round(h.aging_seconds * 1e3, 2),
                         "others_young": delta["young"] - delta["target_young"],
                         "hot_missed": missed, "cold_seen": cold_seen, **delta})
    finally:
        src.close()
        stop_process(target.proc)
        stop_process(neighbour.proc)
    on = [r for r in rows if r["filter"]]
    off = [r for r in rows if not r["filter"]]
    cost_on = statistics.median(r["aging_ms"] for r in on)
    cost_off = statistics.median(r["aging_ms"] for r in off)
    nodes = len(src.memory_nodes)
    ok = (all(r["mm_walked"] == nodes and r["mm_skipped"] >= nodes and r["others_young"] == 0
              for r in on)
          and all(r["others_young"] > 1000 for r in off)
          and all(r["hot_missed"] == 0 and r["cold_seen"] == 0 for r in rows)
          and cost_on < cost_off)
    record("walk-filter", "mglru-hook", "pass" if ok else "FAIL",
           aging_ms_filtered=cost_on, aging_ms_unfiltered=cost_off,
           ratio=round(cost_on / cost_off, 3), rows=rows)
    assert all(r["mm_walked"] == nodes for r in on), rows  # only the target's mm, per node
    assert all(r["mm_skipped"] >= nodes and r["others_young"] == 0 for r in on), rows
    assert all(r["mm_walked"] == 0 and r["mm_skipped"] == 0 for r in off), rows
    assert all(r["others_young"] > 1000 for r in off), rows  # the neighbour was walked
    assert all(r["hot_missed"] == 0 and r["cold_seen"] == 0 for r in rows), rows
    assert cost_on < cost_off, (cost_on, cost_off, rows)

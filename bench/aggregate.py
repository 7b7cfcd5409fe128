"""The aggregator alone: CPU time and transient memory of ``TargetState.update`` per harvest, on
synthetic harvests (no kernel, no source), so that before/after a change of exporter/model/aggregate.py
can be compared with the rest of the daemon out of the way.

Two targets: DENSE (one mapping, every page resident, 2% accessed per harvest, two page types)
and MAPS (N mappings of 2 pages each). Times are this thread's CPU time per update (median of
the harvests after the first two); "transient" is tracemalloc's peak during one update above
what was allocated before it; "state" is what stays allocated between harvests.

Run it with the interpreter of the checkout to measure (its pageheat is imported):

    .venv/bin/python bench/aggregate.py [--pages 1048576] [--maps 60000] [--harvests 10]
    /path/to/other/checkout/.venv/bin/python bench/aggregate.py ...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc

import numpy as np
import pageheat
from pageheat.model.aggregate import TargetState
from pageheat.sources.base import Harvest, Pages, Vmas


def target(pages: int, maps: int) -> tuple[Vmas, np.ndarray, np.ndarray, np.ndarray]:
    """vmas, vpn, vma index, page type of a dense target (maps == 0) or one with ``maps``
    mappings of 2 pages each."""
    base = 0x7f0000000
    if maps:
        start = (np.arange(maps, dtype=np.uint64) * 2 + np.uint64(base)) << np.uint64(12)
        vmas = Vmas(start, start + np.uint64(8192), np.zeros(maps, np.uint8), np.ones(maps, bool),
                    [f"/lib/m{i % 97}.so" for i in range(maps)])
        n = 2 * maps
        vma = (np.arange(n) // 2).astype(np.int32)
    else:
        vmas = Vmas(np.array([base << 12], np.uint64), np.array([(base + pages) << 12], np.uint64),
                    np.zeros(1, np.uint8), np.ones(1, bool), [""])
        n = pages
        vma = np.zeros(n, np.int32)
    vpn = np.arange(base, base + n, dtype=np.uint64)
    ptype = (np.arange(n) % 5 == 0).astype(np.uint8)  # anon and file pages
    return vmas, vpn, vma, ptype


def run(pages: int, maps: int, harvests: int) -> dict:
    vmas, vpn, vma, ptype = target(pages, maps)
    n = len(vpn)
    rng = np.random.default_rng(1)
    state = TargetState(1, "bench", 32, 120.0)
    times, peaks = [], []
    tracemalloc.start()
    for k in range(harvests):
        p = Pages(vpn, rng.random(n) < 0.02, np.zeros(n, np.int16), ptype, np.zeros(n, bool), vma)
        h = Harvest(1, float(k), p, vmas, 0.0, 0.0)
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t0 = time.thread_time()
        state.update(h, 1.0)
        times.append(time.thread_time() - t0)
        peaks.append(tracemalloc.get_traced_memory()[1] - before)
        del p, h
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"pages": n, "ms": statistics.median(times[2:]) * 1e3, "first_ms": times[0] * 1e3,
            "transient_mib": max(peaks[2:]) / 2**20, "state_mib": after / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=1 << 20)
    ap.add_argument("--maps", type=int, default=60000)
    ap.add_argument("--harvests", type=int, default=10)
    a = ap.parse_args()
    print(f"pageheat from {pageheat.__file__}; numpy {np.__version__}; {time.strftime('%Y-%m-%d %H:%M')}")
    print("| target | pages | update CPU (median) | first update | transient peak | state kept |")
    print("|---|---|---|---|---|---|")
    for name, pages, maps in (("dense", a.pages, 0), (f"{a.maps} mappings", 0, a.maps)):
        r = run(pages, maps, a.harvests)
        print(f"| {name} | {r['pages']} | {r['ms']:.1f} ms | {r['first_ms']:.1f} ms "
              f"| {r['transient_mib']:.1f} MiB | {r['state_mib']:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-aging cost, time to data and accuracy of every source, side by side, in one lab VM.

Boots the patched lab kernel (kernel-patch/, Linux 6.12 + the series: it has MGLRU, fexit and
the series' tracepoints, so all three sources run on one kernel) and, inside it, measures the
same target with each source in turn, rotating the order every round so that they share the
VM's noise:

- ``mglru-hook``: the series' tracepoints, aging through the kfunc, walk filter on;
- ``mglru-hook (no filter)``: the same with the walk filter off (every mm of the memcg);
- ``mglru-fexit``: fexit on ptep/pmdp_test_and_clear_young, aging through debugfs lru_gen;
- ``ptwalk``: the BPF page-table iterator, aging with clear_refs.

Scenarios: the target alone in its own memcg, then with a neighbour (a second process in the
same memcg, half of its memory hot), which every unfiltered MGLRU aging also walks.

Per cycle: aging CPU and harvest CPU of the daemon thread (user + kernel: the forced MGLRU
walk, the kfunc, clear_refs and the iterator all run synchronously in that thread, so the
kernel's work is included), the wall time of one ``cycle()`` (aging request to data in hand),
and accuracy against the workload's ground truth: hot pages (read every 10 ms) must be seen,
cold pages (never touched) must not; precision/recall/F1 over hot + cold pages. Every source
flushes the TLB after aging (PAGEHEAT_TLB_FLUSH=always; see docs/ACCURACY.md).

    .venv/bin/python bench/lab_sources.py [--size 512MiB] [--neighbour 512MiB] [--rounds 3]

Prints a Markdown table and writes bench/results/lab_sources-<UTC time>.json. Under TCG
(no KVM on these machines) absolute times are slow; compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from labbench import make_cgroup, run_guest, start_workload  # noqa: E402

VARIANTS = ("mglru-hook", "mglru-hook (no filter)", "mglru-fexit", "ptwalk")


# -- guest side ---------------------------------------------------------------------------------
def _open(variant: str):  # noqa: ANN202 - a Source
    from pageheat.sources.mglru_fexit import MglruFexitSource
    from pageheat.sources.mglru_hook import MglruHookSource
    from pageheat.sources.ptwalk import PtwalkSource

    if variant == "ptwalk":
        return PtwalkSource(tlb_flush="always")
    if variant == "mglru-fexit":
        return MglruFexitSource(aging="active", tlb_flush="always")
    return MglruHookSource(aging="active", tlb_flush="always",
                           walk_filter=variant == "mglru-hook")


def _accuracy(h, truth: dict) -> dict:  # noqa: ANN001 - a Harvest
    import numpy as np

    lo = int(truth["start"], 16) >> 12
    n = truth["size"] // 4096
    hot = np.array(truth["hot"], dtype=np.int64)
    touched = np.zeros(n, bool)
    touched[hot] = True
    touched[np.array(truth["warm"], dtype=np.int64)] = True
    cold = np.flatnonzero(~touched)
    rel = h.pages.vpn.astype(np.int64) - lo
    seen = rel[h.pages.accessed & (rel >= 0) & (rel < n)]
    tp = int(np.isin(hot, seen).sum())
    fp = int(np.isin(cold, seen).sum())
    fn = len(hot) - tp
    return {"tp": tp, "fp": fp, "fn": fn}


def guest(a: argparse.Namespace) -> int:
    out: dict = {"uname": platform.release(), "nproc": os.cpu_count(), "size": a.size,
                 "neighbour": a.neighbour, "interval": a.interval, "rows": []}
    tmp = Path(tempfile.mkdtemp(prefix="lab-sources-"))
    cg = make_cgroup("bench-sources")
    target, truth = start_workload(tmp, "--size", a.size, "--hot", "0.1", "--warm", "0.1",
                                   cgroup=cg)
    neighbour = None
    scenarios = ["alone"] + (["neighbour"] if a.neighbour != "0" else [])
    try:
        for scenario in scenarios:
            if scenario == "neighbour":
                neighbour, _ = start_workload(tmp, "--size", a.neighbour, "--hot", "0.5",
                                              "--warm", "0", cgroup=cg)
            for r in range(a.rounds):
                order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
                for variant in order:
                    src = _open(variant)
                    try:
                        src.attach(target.pid)
                        for c in range(a.cycles):
                            time.sleep(a.interval)
                            w0 = time.monotonic()
                            h = src.cycle(target.pid)
                            wall = time.monotonic() - w0
                            out["rows"].append({
                                "scenario": scenario, "round": r, "variant": variant, "cycle": c,
                                "aging_ms": h.aging_seconds * 1e3,
                                "harvest_ms": h.harvest_seconds * 1e3,
                                "cycle_wall_ms": wall * 1e3, **_accuracy(h, truth)})
                    finally:
                        src.close()
                    print(f"{scenario} round {r} {variant}: done", flush=True)
    finally:
        for p in (target, neighbour):
            if p is not None:
                p.terminate()
                p.wait()
    Path(a.out).write_text(json.dumps(out))
    return 0


# -- host side ----------------------------------------------------------------------------------
def _med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def table(res: dict) -> str:
    rows = res["rows"]
    lines = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        sel = [r for r in rows if r["scenario"] == scenario]
        base = statistics.median(r["aging_ms"] + r["harvest_ms"] for r in sel
                                 if r["variant"] == "ptwalk")
        lines += [f"**{scenario}**" + (f" (neighbour {res['neighbour']} in the same memcg)"
                                       if scenario == "neighbour" else ""), "",
                  "| source | aging CPU ms | harvest CPU ms | aging + harvest vs ptwalk | "
                  "cycle wall ms (request to data) | precision | recall | F1 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for v in VARIANTS:
            rs = [r for r in sel if r["variant"] == v]
            if not rs:
                continue
            tp, fp, fn = (sum(r[k] for r in rs) for k in ("tp", "fp", "fn"))
            p = tp / (tp + fp) if tp + fp else 1.0
            rec = tp / (tp + fn) if tp + fn else 1.0
            f1 = 2 * p * rec / (p + rec) if p + rec else 0.0
            total = statistics.median(r["aging_ms"] + r["harvest_ms"] for r in rs)
            lines.append(f"| {v} | {_med([r['aging_ms'] for r in rs])} | "
                         f"{_med([r['harvest_ms'] for r in rs])} | {total / base:.2f} | "
                         f"{_med([r['cycle_wall_ms'] for r in rs])} | {p:.4f} | {rec:.4f} | {f1:.4f} |")
        lines.append("")
    return "\n".join(lines)


def host(a: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="lab-sources-", dir="/tmp") as tmp:
        res = run_guest(__file__, ["--size", a.size, "--neighbour", a.neighbour,
                                   "--rounds", str(a.rounds), "--cycles", str(a.cycles),
                                   "--interval", str(a.interval)],
                        Path(tmp), a.kernel, a.memory, a.timeout)
    if res is None:
        return 1
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    res.update({"date": time.strftime("%Y-%m-%d"), "kernel": a.kernel, "host": platform.release(),
                "host_nproc": os.cpu_count(), "command": "bench/lab_sources.py " + " ".join(sys.argv[1:])})
    out = ROOT / "bench/results" / f"lab_sources-{stamp}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"{res['date']}, guest {res['uname']} ({res['nproc']} vCPUs, TCG) on host "
          f"{res['host']}; target {a.size}, {a.cycles} cycles x {a.rounds} rounds per source, "
          f"interval {a.interval} s; raw: {out.relative_to(ROOT)}\n")
    print(table(res))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="512MiB", help="target size (default 512MiB)")
    p.add_argument("--neighbour", default="512MiB", help="neighbour size, 0 for none")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cycles", type=int, default=5, help="cycles per source per round")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between cycles")
    p.add_argument("--kernel", default="patched-6.12", help="lab kernel (lab/kernels.py)")
    p.add_argument("--memory", default="3G")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    return guest(a) if a.guest else host(a)


if __name__ == "__main__":
    sys.exit(main())

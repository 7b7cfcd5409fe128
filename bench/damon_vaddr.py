"""DAMON vaddr vs pageheat's sources, per page, on the ground-truth workload, in one lab VM.

The development kernel's DAMON is the platform's (one paddr kdamond, which bench/damon_compare.py
observes without touching). In a lab VM nobody else uses DAMON, so this script starts its own
kdamond with the ``vaddr`` operations set on the workload, through sysfs
(/sys/kernel/mm/damon/admin), and compares, in the same VM run:

- DAMON vaddr at its default region bounds (10..1000 regions) and with up to 10,000 regions;
- ptwalk and mglru-hook, cycled at DAMON's aggregation interval.

Workload: ``pageheat workload`` (anon, 4 KiB pages): hot pages read every 10 ms, warm pages every
2 s, the rest written once and never again. With a 2 s interval, "accessed" is true for hot and
warm pages and false for cold ones. DAMON: a page counts as accessed in an aggregation when the
region containing its virtual address has nr_accesses > 0 (regions read with
``tp_btf/damon_aggregated``, bench/bpf/damon_trace.bpf.c). pageheat: judged per page.
CPU: kdamond's user + sys from /proc over its phase; the source's harvest + aging CPU time
(daemon thread, including the kernel's synchronous work).

Slowdown (``--slowdown-rounds``, default 3): bench/c/gauss_access.c (the CPU-bound Gaussian
random-access microbenchmark of bench/overhead.py, 256 MiB) for 15 s unmonitored, under the
DAMON vaddr context, under ptwalk and under mglru-hook (each cycled every 2 s), interleaved in
each round; accesses per second relative to the same round's unmonitored run.

    .venv/bin/python bench/damon_vaddr.py [--size 256MiB] [--phase 40] [--interval 2]

Boots the patched lab kernel (it has DAMON vaddr, MGLRU and the series' tracepoints). Prints a
Markdown table; raw JSON in bench/results/damon_vaddr-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from labbench import run_guest, start_workload  # noqa: E402

ADMIN = Path("/sys/kernel/mm/damon/admin")


def _w(path: Path, value: object) -> None:
    path.write_text(f"{value}\n")


def start_kdamond(pid: int, aggr_s: float, max_regions: int) -> int:
    """One kdamond, vaddr on ``pid``; returns its pid."""
    _w(ADMIN / "kdamonds/nr_kdamonds", 1)
    kd = ADMIN / "kdamonds/0"
    _w(kd / "contexts/nr_contexts", 1)
    ctx = kd / "contexts/0"
    _w(ctx / "operations", "vaddr")
    attrs = ctx / "monitoring_attrs"
    _w(attrs / "intervals/sample_us", 5000)  # DAMON's default
    _w(attrs / "intervals/aggr_us", int(aggr_s * 1e6))
    _w(attrs / "nr_regions/min", 10)
    _w(attrs / "nr_regions/max", max_regions)
    _w(ctx / "targets/nr_targets", 1)
    _w(ctx / "targets/0/pid_target", pid)
    _w(kd / "state", "on")
    return int((kd / "pid").read_text())


def stop_kdamond() -> None:
    _w(ADMIN / "kdamonds/0/state", "off")


def _monitor(kind: str, pid: int, interval: float):  # noqa: ANN202 - a stop function
    """Start monitoring ``pid`` with ``kind``; returns a function that stops it."""
    import threading

    from pageheat.sources.mglru_hook import MglruHookSource
    from pageheat.sources.ptwalk import PtwalkSource

    if kind == "none":
        return lambda: None
    if kind == "damon":
        start_kdamond(pid, interval, 1000)
        return stop_kdamond
    src = PtwalkSource(tlb_flush="always") if kind == "ptwalk" else \
        MglruHookSource(aging="active", tlb_flush="always")
    src.attach(pid)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                src.cycle(pid)
            except Exception:  # noqa: BLE001 - the benchmark process exited
                return

    th = threading.Thread(target=loop, daemon=True)
    th.start()

    def halt() -> None:
        stop.set()
        th.join()
        src.close()
    return halt


def slowdown(a: argparse.Namespace) -> list[dict]:
    rows = []
    for r in range(a.slowdown_rounds):
        for kind in ("none", "damon", "ptwalk", "mglru-hook"):
            prog = subprocess.Popen([a.gauss, str(256 << 20), str(a.slowdown_seconds)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                ready = prog.stdout.readline().split()
                assert ready[0] == "ready", ready
                halt = _monitor(kind, prog.pid, a.interval)
                try:
                    time.sleep(3)  # a first harvest / aggregation before the window
                    prog.stdin.write("go\n")
                    prog.stdin.flush()
                    out = prog.stdout.readline().split()
                finally:
                    halt()
            finally:
                prog.kill()
                prog.wait()
            rows.append({"round": r, "monitor": kind, "accesses": int(out[1]),
                         "seconds": float(out[3]), "rate": int(out[1]) / float(out[3])})
            print(f"slowdown round {r} {kind}: {rows[-1]['rate'] / 1e6:.2f} M accesses/s", flush=True)
    return rows


def guest(a: argparse.Namespace) -> int:
    import numpy as np
    from damon_compare import Tracer, prf, proc_cpu, score
    from pageheat.sources.mglru_hook import MglruHookSource
    from pageheat.sources.ptwalk import PtwalkSource

    tmp = Path(tempfile.mkdtemp(prefix="damon-vaddr-"))
    wl, t = start_workload(tmp, "--size", a.size, "--hot", "0.1", "--warm", "0.1")
    tracer = Tracer(Path(a.tracer))
    out: dict = {"uname": platform.release(), "nproc": os.cpu_count(), "size": a.size,
                 "interval": a.interval, "phase_seconds": a.phase, "phases": {}}
    try:
        start, n = int(t["start"], 16), t["size"] // 4096
        truth = np.zeros(n, bool)
        truth[t["hot"]] = True
        truth[t["warm"]] = True
        va = np.uint64(start) + np.arange(n, dtype=np.uint64) * np.uint64(4096)
        vpn = va >> np.uint64(12)
        out.update(pages=n, hot=len(t["hot"]), warm=len(t["warm"]))
        time.sleep(3)
        for phase in ("damon-default", "damon-10k", "ptwalk", "mglru-hook"):
            rows = []
            tracer.poll()
            tracer.aggregations()  # discard what came before the phase
            kpid = src = None
            if phase.startswith("damon"):
                kpid = start_kdamond(wl.pid, a.interval, 1000 if phase == "damon-default" else 10000)
                k0 = proc_cpu(kpid)
            else:
                src = PtwalkSource(tlb_flush="always") if phase == "ptwalk" else \
                    MglruHookSource(aging="active", tlb_flush="always")
                src.attach(wl.pid)
            w0 = time.monotonic()
            next_cycle = w0 + a.interval
            while time.monotonic() - w0 < a.phase:
                time.sleep(max(0.0, min(0.25, next_cycle - time.monotonic())))
                if src is not None and time.monotonic() >= next_cycle:
                    next_cycle += a.interval
                    h = src.cycle(wl.pid)
                    j = np.clip(np.searchsorted(h.pages.vpn, vpn), 0, len(h.pages.vpn) - 1)
                    found = h.pages.vpn[j] == vpn
                    rows.append({**score(found & h.pages.accessed[j], truth),
                                 "cpu": h.harvest_seconds + h.aging_seconds})
                if kpid is not None:
                    tracer.poll()
                    for g in tracer.aggregations():
                        g = np.sort(g, order="start")
                        i = np.searchsorted(g["start"], va, side="right") - 1
                        ok = (i >= 0) & (va < g["end"][np.clip(i, 0, None)])
                        pred = ok & (g["nr"][np.clip(i, 0, None)] > 0)
                        rows.append({**score(pred, truth), "regions": len(g)})
            wall = time.monotonic() - w0
            if kpid is not None:
                cpu = proc_cpu(kpid) - k0
                stop_kdamond()
            else:
                cpu = sum(r["cpu"] for r in rows)
                src.close()
            rows = rows[1:]  # the first interval started before the phase did
            tot = {k: sum(r[k] for r in rows) for k in ("tp", "fp", "fn", "tn")}
            p, r, f = prf(tot)
            out["phases"][phase] = {"wall": wall, "cpu": cpu, "intervals": len(rows),
                                    "precision": p, "recall": r, "f1": f, **tot,
                                    "regions": [x.get("regions") for x in rows if "regions" in x]}
            print(f"{phase}: {len(rows)} intervals, P/R/F1 {p:.4f}/{r:.4f}/{f:.4f}, "
                  f"CPU {cpu:.2f} s in {wall:.0f} s", flush=True)
    finally:
        wl.terminate()
        wl.wait()
        tracer.close()
    out["slowdown"] = slowdown(a) if a.slowdown_rounds else []
    Path(a.out).write_text(json.dumps(out))
    return 0


def host(a: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    from damon_compare import build_tracer


    with tempfile.TemporaryDirectory(prefix="damon-vaddr-", dir="/tmp") as tmpd:
        tmp = Path(tmpd)
        tracer = build_tracer(tmp)  # on the host: clang under TCG would take a while
        gauss = tmp / "gauss_access"
        subprocess.run(["gcc", "-O2", "-o", str(gauss), str(ROOT / "bench/c/gauss_access.c")],
                       check=True)
        res = run_guest(__file__, ["--tracer", str(tracer), "--size", a.size,
                                   "--phase", str(a.phase), "--interval", str(a.interval),
                                   "--gauss", str(gauss),
                                   "--slowdown-rounds", str(a.slowdown_rounds),
                                   "--slowdown-seconds", str(a.slowdown_seconds)],
                        tmp, a.kernel, "2G", a.timeout)
    if res is None:
        return 1
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    res.update({"date": time.strftime("%Y-%m-%d"), "kernel": a.kernel, "host": platform.release(),
                "command": "bench/damon_vaddr.py " + " ".join(sys.argv[1:])})
    out = ROOT / "bench/results" / f"damon_vaddr-{stamp}.json"
    out.write_text(json.dumps(res, indent=1))
    gib_intervals = lambda ph: ph["intervals"] * res["pages"] * 4096 / 2**30  # noqa: E731
    print(f"{res['date']}, guest {res['uname']} ({res['nproc']} vCPUs, TCG) on host "
          f"{res['host']}; workload {a.size}, interval {a.interval} s, {a.phase} s per phase; "
          f"raw: {out.relative_to(ROOT)}\n")
    print("| monitor | intervals | precision | recall | F1 | CPU s per s | CPU ms per GiB-interval |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, ph in res["phases"].items():
        print(f"| {name} | {ph['intervals']} | {ph['precision']:.4f} | {ph['recall']:.4f} | "
              f"{ph['f1']:.4f} | {ph['cpu'] / ph['wall']:.4f} | "
              f"{1e3 * ph['cpu'] / max(gib_intervals(ph), 1e-9):.1f} |")
    if res["slowdown"]:
        import statistics

        print("\n| monitor | accesses/s (M) | ratio to unmonitored, same round |")
        print("| --- | --- | --- |")
        base = {r["round"]: r["rate"] for r in res["slowdown"] if r["monitor"] == "none"}
        for kind in ("none", "damon", "ptwalk", "mglru-hook"):
            rs = [r for r in res["slowdown"] if r["monitor"] == kind]
            rate = [r["rate"] / 1e6 for r in rs]
            ratio = [r["rate"] / base[r["round"]] for r in rs]
            print(f"| {kind} | {statistics.median(rate):.2f} ({min(rate):.2f}-{max(rate):.2f}) | "
                  f"{statistics.median(ratio):.3f} ({min(ratio):.3f}-{max(ratio):.3f}) |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="256MiB")
    p.add_argument("--phase", type=float, default=40, help="seconds per monitor")
    p.add_argument("--interval", type=float, default=2.0, help="DAMON aggregation = cycle interval")
    p.add_argument("--kernel", default="patched-6.12")
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--slowdown-rounds", type=int, default=3, help="0: skip the slowdown part")
    p.add_argument("--slowdown-seconds", type=float, default=15)
    p.add_argument("--tracer", help=argparse.SUPPRESS)
    p.add_argument("--gauss", help=argparse.SUPPRESS)
    a = p.parse_args()
    return guest(a) if a.guest else host(a)


if __name__ == "__main__":
    sys.exit(main())

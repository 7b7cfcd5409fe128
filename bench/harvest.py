"""Harvest cost scaling: ptwalk harvest vs aging vs the kernel's /proc/PID/pagemap, per page,
and the whole daemon's cost beside them.

For each target size, one workload process is populated, then the same process is measured
REPS times, the operations interleaved in each round so that they share the machine's
noise. Each round first times a harvest and a clear_refs write after a 1 s pause (the "cold
floor": what serve meets once per aging interval), then every operation back to back (each
warms the caches for the next). Times are CPU time of this thread (user + kernel), which
includes the kernel's work for the iterator read and the clear_refs writes.

Then, on the same process, ``pageheat serve --pid P --aging 1s --cpu-budget 1.0`` runs for
--cycles aging cycles: its CPU per cycle is user + sys of the whole serve process from
/proc/PID/stat (every thread, including the kernel time of its clear_refs writes and BPF
runs), divided by the harvests it reports on /api/v1/targets (no /metrics scrape inside the
window: a scrape costs CPU too). VmHWM is serve's peak RSS; "RSS before" is serve's lowest
RSS from when its HTTP endpoint answers to its first harvest, "RSS after exit" once the
target was killed and dropped (goal 6 of issue 13). --maps N adds a row for a process with
N mappings of 2 resident pages each. --processes N follows N workloads of each size at once
(serve CPU per harvest of one of them against the mean floor of one); --defaults runs serve
with its default aging and CPU budget (the budget stretches the interval; CPU is still per
harvest) instead of ``--aging 1s --cpu-budget 1.0``.
--root DIR runs serve from another checkout (DIR/.venv/bin/python -m pageheat, cwd DIR),
repeatable: before and after a change side by side, each serve on a fresh target of the same
kind (measuring RSS after exit ends the target). Prints Markdown tables.

    sudo .venv/bin/python bench/harvest.py [--sizes 1GiB,4GiB,16GiB] [--reps 7] [--cycles 20]
        [--maps 60000] [--processes 4] [--defaults] [--root BEFORE --root AFTER]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from pageheat.config import parse_size
from pageheat.kernel import procfs
from pageheat.kernel.procfs import damon_running
from pageheat.serve import api
from pageheat.sources.ptwalk import PtwalkSource


def pagemap_read(pid: int) -> int:
    """Read every mapping's pagemap entries; return the present pages (bit 63)."""
    present = 0
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for m in procfs.read_maps(pid):
            n = (m.end - m.start) >> 12
            if m.name == "[vsyscall]":
                continue
            buf = os.pread(fd, n * 8, (m.start >> 12) * 8)
            entries = np.frombuffer(buf, dtype=np.uint64)
            present += int(np.count_nonzero(entries >> np.uint64(63)))
    finally:
        os.close(fd)
    return present


CLK = os.sysconf("SC_CLK_TCK")
MANY_MAPS = r"""
import ctypes, mmap, signal, sys, time
n = int(sys.argv[1]); ready = sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
size = n * 2 * 4096
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.write(b"x" * size)  # every page resident
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
for i in range(0, n, 2):  # alternate protections so that no two neighbours merge
    if libc.mprotect(base + i * 8192, 8192, 1) != 0:
        sys.exit(f"mprotect: errno {ctypes.get_errno()}")
open(ready, "w").write("ok")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(1)
"""


def proc_cpu(pid: int) -> float:
    """user + system seconds of a process (all its threads)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def as_installed(root: Path) -> None:
    """Byte-compile ``root``'s package, as pip does when it installs the wheel. An editable
    checkout run with PYTHONDONTWRITEBYTECODE=1 (these machines set it) compiles every
    pageheat module at each start instead: about 1-2 MiB more RSS for serve than a deployed
    serve has (docs/BENCHMARKS.md, 2026-12-01)."""
    subprocess.run([str(root / ".venv/bin/python"), "-m", "compileall", "-q", str(root / "exporter")],
                   check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_targets(port: int) -> list[api.TargetSummary]:
    return api.decode_targets(requests.get(f"http://127.0.0.1:{port}{api.TARGETS_PATH}",
                                           timeout=10).json())


def harvests_of(port: int) -> tuple[int, int]:
    """(harvests of all targets, fewest harvests of one target)."""
    rows = api_targets(port)
    return sum(r.harvests for r in rows), min((r.harvests for r in rows), default=0)


def serve_cost(pids: list[int], stop_target, root: Path, cycles: int, tmp: Path,
               defaults: bool = False) -> dict:
    """Run serve on ``pids`` for ``cycles`` harvests; CPU per harvest, VmHWM, RSS before the
    first harvest and after ``stop_target()`` ended the targets and serve dropped them."""
    log = open(tmp / "serve.log", "a")
    py = root / ".venv/bin/python"
    port = free_port()
    pace = [] if defaults else ["--aging", "1s", "--cpu-budget", "1.0"]
    p = subprocess.Popen([str(py), "-m", "pageheat", "serve",
                          *(a for pid in pids for a in ("--pid", str(pid))), *pace,
                          "--listen", f"127.0.0.1:{port}"], cwd=root, stdout=log, stderr=log)
    try:
        rss_before = harvests = 0
        deadline = time.monotonic() + 120
        while not harvests:  # RSS sampled until the first harvest is reported
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve failed, see {tmp / 'serve.log'}")
            try:
                harvests = harvests_of(port)[0]
                if not harvests:  # the lowest: before the first harvest's arrays exist
                    rss = proc_status_kib(p.pid, "VmRSS")
                    rss_before = min(rss_before, rss) if rss_before else rss
            except requests.RequestException:
                pass
            time.sleep(0.05)
        while harvests_of(port)[1] < 3:  # warm up: every target past its first rebinning
            time.sleep(0.2)
        h0, c0 = harvests_of(port)[0], proc_cpu(p.pid)
        while True:
            # Few polls: each JSON API request is serve CPU too (a few ms at 1 GiB, 2 a cycle
            # at a 0.5 s poll, a tenth of serve's cost per cycle there).
            time.sleep(2.5)
            c1 = proc_cpu(p.pid)
            h1 = harvests_of(port)[0]
            if h1 - h0 >= cycles * len(pids):
                break
        hwm = proc_status_kib(p.pid, "VmHWM")
        stop_target()
        deadline = time.monotonic() + 60
        while api_targets(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)
        rss_after = proc_status_kib(p.pid, "VmRSS")
        return {"cpu_per_cycle": (c1 - c0) / (h1 - h0), "cycles": h1 - h0, "vmhwm_kib": hwm,
                "rss_before_kib": rss_before, "rss_after_kib": rss_after}
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def timed(fn) -> tuple[float, object]:
    t0 = time.thread_time()
    out = fn()
    return time.thread_time() - t0, out


def start_target(size: int, maps: int, tmp: Path, python: str = sys.executable) -> subprocess.Popen:
    """maps == 0: a ``pageheat workload`` of ``size`` bytes; else a process with ``maps``
    mappings of 2 resident pages each; run by ``python``. Returns once it is populated."""
    truth = tmp / f"t-{time.monotonic_ns()}.json"
    if maps:
        wl = subprocess.Popen([python, "-c", MANY_MAPS, str(maps), str(truth)])
    else:
        wl = subprocess.Popen([python, "-m", "pageheat", "workload", "--truth", str(truth),
                               "--size", str(size), "--hot", "0.01", "--warm", "0.01"])
    while not truth.exists():
        if wl.poll() is not None:
            raise RuntimeError("workload failed")
        time.sleep(0.1)
    return wl


def round_of(src: PtwalkSource, src_young: PtwalkSource, src_serve: PtwalkSource, pid: int,
             processes: int) -> dict:
    """One round on one target: each operation once, interleaved (they share the noise)."""
    refs = src._targets[pid].clear_refs  # a procfs.ClearRefs
    # First the floor as serve meets it: after an aging interval of the workload running (1 s),
    # a harvest and the clear_refs write, each once. The operations below run back to back, so
    # each finds the page tables and struct pages in the caches the one before it filled.
    time.sleep(1.0 / processes)
    cold_harvest, _ = timed(lambda: src_serve.harvest(pid, lazy=True))
    cold_clear, _ = timed(lambda: refs.write(b"1"))
    if src.tlb_flush:
        refs.write(b"4")
    time.sleep(0.2 / processes)
    scan_s, _ = timed(lambda: src._scan(pid))
    scan_young_s, _ = timed(lambda: src_young._scan(pid))
    cycle = src.cycle(pid)  # scan + decode + aging, as the daemon does it
    serve_harvest, _ = timed(lambda: src_serve.harvest(pid, lazy=True))  # as cycle() times it
    clear_s, _ = timed(lambda: refs.write(b"1"))
    flush_s, _ = timed(lambda: refs.write(b"4")) if src.tlb_flush else (0.0, None)
    pagemap_s, present = timed(lambda: pagemap_read(pid))
    return {"pages": len(cycle.pages), "pagemap_present": present,
            "scan": scan_s, "scan_young": scan_young_s, "harvest": cycle.harvest_seconds,
            "harvest_serve": serve_harvest, "clear_refs": clear_s, "tlb_flush": flush_s,
            "harvest_cold": cold_harvest, "clear_refs_cold": cold_clear,
            "pagemap": pagemap_s}


def measure(size: int, reps: int, cycles: int, roots: list[Path], maps: int = 0,
            processes: int = 1, defaults: bool = False) -> dict:
    """The in-process rounds on the targets, then serve from each root in turn (each on fresh
    targets of the same kind after the first: measuring RSS after exit ends them)."""
    with tempfile.TemporaryDirectory() as tmp:
        wls = [start_target(size, maps, Path(tmp)) for _ in range(processes)]
        try:
            src = PtwalkSource(check_young=False)
            src_young = PtwalkSource(check_young=True)  # what DAMON hosts pay (see sources/pagetable.py)
            # As serve and snapshot make it: PG_young only where DAMON runs; lazy pages, so
            # harvest_seconds is the scan alone (what snapshot reports).
            src_serve = PtwalkSource(lazy_pages=True)
            for wl in wls:
                src.attach(wl.pid)  # the one that ages; the others only scan
                src_young.attach_scanner(wl.pid)
                src_serve.attach_scanner(wl.pid)
            rows = [round_of(src, src_young, src_serve, wl.pid, processes)
                    for _ in range(reps) for wl in wls]
            src.close()
            src_young.close()
            src_serve.close()
            daemons = {}
            for k, root in enumerate(roots):
                if k:
                    wls = [start_target(size, maps, Path(tmp)) for _ in range(processes)]
                targets = list(wls)

                def stop_targets(targets: list[subprocess.Popen] = targets) -> None:
                    for t in targets:
                        t.terminate()
                        t.wait()

                daemons[str(root)] = serve_cost([t.pid for t in targets], stop_targets, root,
                                                cycles, Path(tmp), defaults)
        finally:
            for wl in wls:
                wl.terminate()
                wl.wait()
    return {"size": size, "maps": maps, "processes": processes, "defaults": defaults,
            "rows": rows, "serve": daemons}


def ns_per_page(rows: list[dict], key: str) -> tuple[float, float, float]:
    v = [r[key] / r["pages"] * 1e9 for r in rows]
    return statistics.median(v), min(v), max(v)


def target_name(r: dict) -> str:
    if r["maps"]:
        name = f"{r['maps']} mappings"
    else:
        name = f"{r['size'] >> 30} GiB" if r["size"] >= 1 << 30 else f"{r['size'] >> 20} MiB"
    if r.get("processes", 1) > 1:
        name = f"{r['processes']} x {name}"
    return name + (", defaults" if r.get("defaults") else "")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1GiB,4GiB,16GiB")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--cycles", type=int, default=20, help="serve harvests per measurement")
    ap.add_argument("--maps", type=int, default=0, help="add a row: a process with N mappings")
    ap.add_argument("--root", type=Path, action="append",
                    help="checkout whose serve is measured (repeatable; default: this one)")
    ap.add_argument("--processes", type=int, default=1, help="follow N targets of each size at once")
    ap.add_argument("--defaults", action="store_true",
                    help="serve at its default aging and CPU budget, not --aging 1s --cpu-budget 1.0")
    ap.add_argument("--json", type=Path, help="also write the raw measurements here")
    a = ap.parse_args()
    roots = a.root or [Path(__file__).resolve().parent.parent]
    for root in roots:
        as_installed(root)
    results = [measure(parse_size(s), a.reps, a.cycles, roots, processes=a.processes,
                       defaults=a.defaults) for s in a.sizes.split(",") if s]
    if a.maps:
        results.append(measure(0, a.reps, a.cycles, roots, maps=a.maps, defaults=a.defaults))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?")
    print(f"Machine: {os.cpu_count()} CPUs, {model}, kernel {platform.release()}; "
          f"date {time.strftime('%Y-%m-%d %H:%M')}; {a.reps} rounds per size, median (min-max); "
          f"serve from {', '.join(map(str, roots))}, {a.cycles} cycles.\n")
    print("| target | present pages | BPF scan | BPF scan + PG_young | harvest (scan + decode) "
          "| clear_refs | TLB flush | pagemap read | scan / pagemap | harvest / pagemap |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rows = r["rows"]
        keys = ("scan", "scan_young", "harvest", "clear_refs", "tlb_flush", "pagemap")
        cells = [ns_per_page(rows, k) for k in keys]
        fmt = " | ".join(f"{m:.1f} ({lo:.1f}-{hi:.1f})" for m, lo, hi in cells)
        ratios = []
        for k in ("scan", "harvest"):
            v = [row[k] / row["pagemap"] for row in rows]
            ratios.append(f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})")
        print(f"| {target_name(r)} | {rows[0]['pages']} | {fmt} | {' | '.join(ratios)} |")
    print("\nAll columns but the ratios are ns per present page (CPU time of the harvesting thread).\n")
    print("| target | serve from | present pages | serve CPU per cycle | clear_refs + harvest (floor) "
          "| serve / floor | floor after 1 s (cold) | serve / cold floor | serve / clear_refs "
          "| serve VmHWM | VmHWM bytes per monitored page | goal 2 budget "
          "| RSS before | RSS after exit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for res, root, d in ((r, root, d) for r in results for root, d in r["serve"].items()):
        rows = res["rows"]
        pages = rows[0]["pages"]
        clear = statistics.median(row["clear_refs"] for row in rows)
        floor = statistics.median(row["clear_refs"] + row["harvest_serve"] for row in rows)
        cold = statistics.median(row["clear_refs_cold"] + row["harvest_cold"] for row in rows)
        cpu = d["cpu_per_cycle"]
        hwm = d["vmhwm_kib"] * 1024
        monitored = pages * res.get("processes", 1)  # every followed process's pages
        # Issue 13, goal 2: 60 MiB + 3 bytes per monitored page; 100 MiB for the many-mapping process.
        budget = (100 << 20) if res["maps"] else (60 << 20) + 3 * monitored
        print(f"| {target_name(res)} | {Path(root).name} | {pages} "
              f"| {cpu * 1e3:.1f} ms = {cpu / pages * 1e9:.0f} ns/page "
              f"| {floor * 1e3:.1f} ms | {cpu / floor:.2f}x | {cold * 1e3:.1f} ms | {cpu / cold:.2f}x "
              f"| {cpu / clear:.1f}x | {hwm / 2**20:.0f} MiB "
              f"| {hwm / monitored:.0f} | {budget / 2**20:.0f} MiB ({'met' if hwm <= budget else 'not met'}) "
              f"| {d['rss_before_kib'] / 1024:.0f} MiB | {d['rss_after_kib'] / 1024:.0f} MiB |")
    pace = "serve's defaults" if a.defaults else "--aging 1s --cpu-budget 1.0"
    print(f"\nserve CPU: user + sys of the whole serve process per harvest ({pace}); "
          "floor: clear_refs write + harvest_seconds of a source made as serve makes it (with the "
          f"PG_young check: {'yes, a kdamond runs' if damon_running() else 'no'}), medians of the "
          "rounds above, each operation run right after the others (warm caches); cold floor: the "
          "same two operations once each after a 1 s pause of the workload running, as serve "
          "meets them at --aging 1s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

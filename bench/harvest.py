"""Harvest cost scaling: ptwalk harvest vs aging vs the kernel's /proc/PID/pagemap, per page.

For each target size, one workload process is populated, then the same process is measured
REPS times, the three operations interleaved in each round so that they share the machine's
noise. Times are CPU time of this thread (user + kernel), which includes the kernel's work
for the iterator read and the clear_refs writes. Prints a Markdown table.

    sudo .venv/bin/python bench/harvest.py [--sizes 1GiB,4GiB,16GiB] [--reps 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pageheat import procfs
from pageheat.config import parse_size
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


def timed(fn) -> tuple[float, object]:
    t0 = time.thread_time()
    out = fn()
    return time.thread_time() - t0, out


def measure(size: int, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        truth = Path(tmp) / "t.json"
        wl = subprocess.Popen([sys.executable, "-m", "pageheat", "workload", "--truth", str(truth),
                               "--size", str(size), "--hot", "0.01", "--warm", "0.01"])
        try:
            while not truth.exists():
                if wl.poll() is not None:
                    raise RuntimeError("workload failed")
                time.sleep(0.1)
            json.loads(truth.read_text())
            src = PtwalkSource(check_young=False)
            src_young = PtwalkSource(check_young=True)  # what DAMON hosts pay (see ptwalk.py)
            src.attach(wl.pid)
            src_young.attach(wl.pid)
            fd = src._targets[wl.pid].clear_refs
            rows = []
            for _ in range(reps):
                time.sleep(0.5)
                scan_s, _ = timed(lambda: src._scan(wl.pid))
                scan_young_s, _ = timed(lambda: src_young._scan(wl.pid))
                cycle = src.cycle(wl.pid)  # scan + decode + aging, as the daemon does it
                clear_s, _ = timed(lambda: os.write(fd, b"1"))
                flush_s, _ = timed(lambda: os.write(fd, b"4")) if src.tlb_flush else (0.0, None)
                pagemap_s, present = timed(lambda: pagemap_read(wl.pid))
                rows.append({"pages": len(cycle.pages), "pagemap_present": present,
                             "scan": scan_s, "scan_young": scan_young_s, "harvest": cycle.harvest_seconds,
                             "clear_refs": clear_s, "tlb_flush": flush_s,
                             "pagemap": pagemap_s})
            src.close()
            src_young.close()
        finally:
            wl.terminate()
            wl.wait()
    return {"size": size, "rows": rows}


def ns_per_page(rows: list[dict], key: str) -> tuple[float, float, float]:
    v = [r[key] / r["pages"] * 1e9 for r in rows]
    return statistics.median(v), min(v), max(v)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1GiB,4GiB,16GiB")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    results = [measure(parse_size(s), a.reps) for s in a.sizes.split(",")]
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?")
    print(f"Machine: {os.cpu_count()} CPUs, {model}, kernel {platform.release()}; "
          f"date {time.strftime('%Y-%m-%d')}; {a.reps} rounds per size, median (min-max).\n")
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
        print(f"| {r['size'] >> 30} GiB | {rows[0]['pages']} | {fmt} | {' | '.join(ratios)} |")
    print("\nAll columns but the ratios are ns per present page (CPU time of the harvesting thread).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

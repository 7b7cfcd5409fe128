"""snapshot's harvest split: BPF scan, decode into per-page arrays, against the pagemap read.

For each target size one workload process is populated (1% hot, 1% warm, the rest idle),
then REPS rounds each time, interleaved so that they share the machine's noise:
  scan          ptwalk's BPF iterator run (PtwalkSource._scan), PG_young off;
  scan+young    the same with the PG_young check (what a host running a DAMON kdamond pays),
                reading struct page by plain loads where the kernel has bpf_rdonly_cast;
  scan+young(probe)  the same by bpf_probe_read_kernel, the path of kernels before 6.2;
  decode        bitmaps -> Pages/Vmas (pagetable._decode, including reading /proc/PID/maps),
                what a harvest cost before snapshot read its counts from the tables;
  harvest       what `snapshot` reports as harvest_ms: a whole cycle minus its aging, PG_young
                off and on, with the source as snapshot opens it (lazy pages);
  counts        snapshot's per-mapping counts of that harvest (PageSet.per_vma), outside
                harvest_ms; "harvest+counts" adds them back;
  pagemap       the kernel's /proc/PID/pagemap read of every mapping.
Times are CPU time of this thread (user + kernel). Prints a Markdown table; ratios are per
round, then the median (min-max) of the rounds.

    sudo .venv/bin/python bench/decode.py [--sizes 256MiB,1GiB,2GiB,4GiB] [--reps 7]
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
from pageheat.config import parse_size
from pageheat.kernel import procfs
from pageheat.sources import pagetable
from pageheat.sources.ptwalk import PtwalkSource


def pagemap_read(pid: int) -> int:
    """Read every mapping's pagemap entries; return the present pages (bit 63)."""
    present = 0
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for m in procfs.read_maps(pid):
            if m.name == "[vsyscall]":
                continue
            buf = os.pread(fd, ((m.end - m.start) >> 12) * 8, (m.start >> 12) * 8)
            present += int(np.count_nonzero(np.frombuffer(buf, dtype=np.uint64) >> np.uint64(63)))
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
            # As `pageheat snapshot` opens it (cli._snapshot: lazy_pages).
            src = PtwalkSource(check_young=False, lazy_pages=True)
            src_young = PtwalkSource(check_young=True, lazy_pages=True)
            direct_page_read = pagetable.direct_page_read
            pagetable.direct_page_read = lambda: False
            try:
                src_probe = PtwalkSource(check_young=True)
            finally:
                pagetable.direct_page_read = direct_page_read
            src.attach(wl.pid)  # the one that ages; the others only scan
            src_young.attach_scanner(wl.pid)
            src_probe.attach_scanner(wl.pid)
            pid = wl.pid
            rows = []
            for _ in range(reps):
                time.sleep(0.3)
                scan_s, scanned = timed(lambda: src._scan(pid))
                scan_young_s, _ = timed(lambda: src_young._scan(pid))
                scan_probe_s, _ = timed(lambda: src_probe._scan(pid))
                decode_s, (pages, _) = timed(lambda s=scanned: pagetable._decode(
                    s[0], s[1], s[2], procfs.read_maps_table(pid), src._nodes))
                h = src.cycle(pid)
                harvest = h.harvest_seconds
                counts_s, _ = timed(lambda h=h: h.pages.per_vma(len(h.vmas)))
                harvest_young, _ = timed(lambda: src_young.harvest(pid, lazy=True))  # as cycle() times it
                pagemap_s, present = timed(lambda: pagemap_read(pid))
                rows.append({"pages": len(pages), "pagemap_present": present, "scan": scan_s,
                             "scan_young": scan_young_s, "scan_probe": scan_probe_s,
                             "decode": decode_s, "harvest": harvest,
                             "counts": counts_s, "harvest_counts": harvest + counts_s,
                             "harvest_young": harvest_young, "pagemap": pagemap_s,
                             "young_usable": src_young.young_flag_usable,
                             "young_direct": src_young.young_flag_direct})
            src.close()
            src_young.close()
            src_probe.close()
        finally:
            wl.terminate()
            wl.wait()
    return {"size": size, "rows": rows}


def med(v: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}-{fmt.format(max(v))})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256MiB,1GiB,2GiB,4GiB")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    results = [measure(parse_size(s), a.reps) for s in a.sizes.split(",")]
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?")
    kdamonds = sorted(Path("/sys/kernel/mm/damon/admin/kdamonds").glob("*/state"))
    damon = ",".join(p.read_text().strip() for p in kdamonds) or "none"
    print(f"Machine: {os.cpu_count()} CPUs, {model}, kernel {platform.release()}, kdamond state: "
          f"{damon}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"{a.reps} rounds per size, median (min-max); command: {' '.join(sys.argv)}\n")
    keys = ("scan", "scan_young", "scan_probe", "decode", "harvest", "counts", "harvest_young", "pagemap")
    print("| target | pages | " + " | ".join(f"{k} (ms)" for k in keys)
          + " | harvest / pagemap | harvest+counts / pagemap | harvest+young / pagemap "
          "| decode ns/page | PG_young ns/page | PG_young (probe) ns/page |")
    print("|---|---|" + "---|" * (len(keys) + 6))
    for r in results:
        rows = r["rows"]
        cells = [med([row[k] * 1e3 for row in rows], "{:.2f}") for k in keys]
        ratios = [med([row[k] / row["pagemap"] for row in rows], "{:.2f}")
                  for k in ("harvest", "harvest_counts", "harvest_young")]
        per = med([row["decode"] / row["pages"] * 1e9 for row in rows], "{:.1f}")
        young = [med([(row[k] - row["scan"]) / row["pages"] * 1e9 for row in rows], "{:.1f}")
                 for k in ("scan_young", "scan_probe")]
        label = f"{r['size'] / (1 << 30):g} GiB"
        print(f"| {label} | {rows[0]['pages']} | {' | '.join(cells)} | {' | '.join(ratios)} "
              f"| {per} | {' | '.join(young)} |")
    if not all(row["young_usable"] for r in results for row in r["rows"]):
        print("\nPG_young could not be consulted (struct page array not found): scan_young = scan.")
    elif not all(row["young_direct"] for r in results for row in r["rows"]):
        print("\nNo bpf_rdonly_cast in this kernel: scan_young is the probe-read path too.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

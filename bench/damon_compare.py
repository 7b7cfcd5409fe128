"""ptwalk vs DAMON paddr, per page, on the ground-truth workload, in the same run.

    sudo .venv/bin/python bench/damon_compare.py [--size 1GiB] [--phase 60] [--interval 5]

Why it observes the platform's kdamond instead of starting its own: writing
``/sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds`` returns -EBUSY while any kdamond runs, and
when it succeeds it removes every kdamond directory and creates new ones
(``damon_sysfs_kdamonds_add_dirs()`` in mm/damon/sysfs.c), which would throw away kdamond 0's
configuration. ``damo`` drives the same sysfs files. So a second kdamond cannot be added
without stopping kdamond 0, which the machine's owner does not allow. Instead this script
attaches a BPF program (bench/bpf/damon_trace.bpf.c, ``tp_btf/damon_aggregated``) that copies
every region DAMON reports at each aggregation, changing nothing in DAMON. The comparison is
therefore at kdamond 0's own settings (read from sysfs and printed), and ptwalk is cycled at the
same interval as DAMON's aggregation interval.

Workload: ``pageheat workload`` (anon, 4 KiB pages): hot pages read every 10 ms, warm pages
every 2 s, the rest written once and never touched again. Over an interval of >= 2 s, "accessed"
is true for hot and warm pages and false for cold pages.

- ptwalk: ``PtwalkSource.cycle`` every ``--interval`` seconds, judged per page.
- DAMON: at each aggregation, a workload page counts as accessed when the region that contains
  its physical address (PFN from /proc/PID/pagemap) has nr_accesses > 0; pages outside every
  region count as not accessed.

Phase 1: DAMON alone. Phase 2: DAMON and ptwalk together (ptwalk's clear_refs also clears
the Accessed bits and PG_young that DAMON samples, so DAMON may lose accesses in phase 2).
CPU: kdamond's user + sys from /proc/<kdamond pid>/stat over each phase; ptwalk's harvest +
aging CPU time as reported by each Harvest.
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

import numpy as np
from pageheat.kernel.libbpf import BpfObject
from pageheat.sources.ptwalk import PtwalkSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labbench import start_workload  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ADMIN = Path("/sys/kernel/mm/damon/admin/kdamonds")
CLK = os.sysconf("SC_CLK_TCK")
REC = np.dtype([("start", "<u8"), ("end", "<u8"), ("ns", "<u8"), ("nr", "<u4"), ("age", "<u4"),
                ("tid", "<u4"), ("nreg", "<u4")])
NREC = 1 << 17


def build_tracer(tmp: Path) -> Path:
    out = tmp / "damon_trace.bpf.o"
    gen = ROOT / "bpf/.gen"
    if not (gen / "vmlinux.h").exists():
        subprocess.run(["bash", str(ROOT / "bpf/build.sh"), str(tmp)], check=True)
    subprocess.run(["clang", "-g", "-O2", "-Wall", "-Werror", "-target", "bpf", "-D__TARGET_ARCH_x86",
                    f"-I{gen}", f"-I{ROOT / 'bpf'}", "-c", str(ROOT / "bench/bpf/damon_trace.bpf.c"),
                    "-o", str(out)], check=True)
    return out


def proc_cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def kdamond_config() -> dict:
    kd = ADMIN / "0"
    ctx = kd / "contexts/0"
    rd = lambda p: (ctx / p).read_text().strip()  # noqa: E731
    return {"pid": int((kd / "pid").read_text()), "state": (kd / "state").read_text().strip(),
            "operations": rd("operations"),
            "sample_us": int(rd("monitoring_attrs/intervals/sample_us")),
            "aggr_us": int(rd("monitoring_attrs/intervals/aggr_us")),
            "nr_regions": [int(rd("monitoring_attrs/nr_regions/min")),
                           int(rd("monitoring_attrs/nr_regions/max"))]}


def pfns(pid: int, start: int, n: int) -> np.ndarray:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek((start >> 12) * 8)
        e = np.frombuffer(f.read(n * 8), dtype=np.uint64)
    present = (e >> np.uint64(63)) & np.uint64(1)
    pfn = e & np.uint64((1 << 55) - 1)
    return np.where(present == 1, pfn, np.uint64(0))


def score(pred: np.ndarray, truth: np.ndarray) -> dict:
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = int(np.count_nonzero(~pred & ~truth))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def prf(c: dict) -> tuple[float, float, float]:
    p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else float("nan")
    r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan")
    f = 2 * p * r / (p + r) if p + r else float("nan")
    return p, r, f


class Tracer:
    def __init__(self, obj: Path):
        self.o = BpfObject(obj)
        self.cnt = np.frombuffer(self.o.mmap_array("count"), dtype=np.uint64, count=1)
        self.recs = np.frombuffer(self.o.mmap_array("recs"), dtype=REC, count=NREC)
        self.link = self.o.attach("on_aggregated")
        self.seen = int(self.cnt[0])
        self.pending: list[np.ndarray] = []

    def poll(self) -> None:
        n = int(self.cnt[0])
        if n - self.seen > NREC:
            raise RuntimeError("tracer ring overflowed; poll more often")
        idx = np.arange(self.seen, n) & (NREC - 1)
        if len(idx):
            self.pending.append(self.recs[idx].copy())
        self.seen = n

    def aggregations(self) -> list[np.ndarray]:
        """Complete aggregations so far (records grouped by time gaps > 0.5 s)."""
        if not self.pending:
            return []
        r = np.concatenate(self.pending)
        gaps = np.flatnonzero(np.diff(r["ns"].astype(np.int64)) > 500_000_000) + 1
        groups = np.split(r, gaps)
        # The last group may still be being written: keep it pending.
        self.pending = [groups[-1]]
        return groups[:-1]

    def close(self) -> None:
        self.link.destroy()
        self.o.close()


def damon_pred(group: np.ndarray, phys: np.ndarray) -> tuple[np.ndarray, int]:
    g = np.sort(group, order="start")
    i = np.searchsorted(g["start"], phys, side="right") - 1
    ok = (i >= 0) & (phys < g["end"][np.clip(i, 0, None)]) & (phys > 0)
    pred = ok & (g["nr"][np.clip(i, 0, None)] > 0)
    return pred, int(np.count_nonzero(~ok))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1GiB")
    p.add_argument("--hot", type=float, default=0.10)
    p.add_argument("--warm", type=float, default=0.10)
    p.add_argument("--phase", type=float, default=60, help="seconds per phase")
    p.add_argument("--interval", type=float, default=None, help="ptwalk interval (default: DAMON's aggr)")
    a = p.parse_args()
    cfg = kdamond_config()
    if cfg["state"] != "on":
        print("kdamond 0 is not running; nothing to observe", file=sys.stderr)
        return 1
    interval = a.interval or cfg["aggr_us"] / 1e6
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    print("kdamond 0 (read only):", cfg, flush=True)
    with tempfile.TemporaryDirectory(prefix="damoncmp-") as tmpd:
        tmp = Path(tmpd)
        tracer = Tracer(build_tracer(tmp))
        wl, t = start_workload(tmp, "--size", a.size, "--hot", str(a.hot), "--warm", str(a.warm))
        try:
            start, n = int(t["start"], 16), t["size"] // 4096
            truth = np.zeros(n, bool)
            truth[t["hot"]] = True
            truth[t["warm"]] = True
            time.sleep(3)
            pfn0 = pfns(wl.pid, start, n)
            phys = pfn0 * np.uint64(4096)
            meminfo = Path("/proc/meminfo").read_text().splitlines()
            mem_total = int(next(ln.split()[1] for ln in meminfo if ln.startswith("MemTotal"))) << 10
            out = {"date_utc": stamp, "kdamond": cfg, "size": a.size, "pages": n, "hot": len(t["hot"]),
                   "warm": len(t["warm"]), "interval": interval, "mem_total": mem_total,
                   "machine": f"{os.cpu_count()} CPUs, kernel {platform.release()}", "phases": {}}
            vpn = (start >> 12) + np.arange(n, dtype=np.uint64)
            for phase in ("damon_alone", "both"):
                src = None
                if phase == "both":
                    src = PtwalkSource()
                    src.attach(wl.pid)
                tracer.poll()
                tracer.aggregations()  # discard what came before the phase
                k0, w0 = proc_cpu(cfg["pid"]), time.monotonic()
                pt, dm = [], []
                next_cycle = time.monotonic() + interval
                while time.monotonic() - w0 < a.phase:
                    time.sleep(max(0.0, min(0.25, next_cycle - time.monotonic())))
                    tracer.poll()
                    if src and time.monotonic() >= next_cycle:
                        h = src.cycle(wl.pid)
                        next_cycle += interval
                        j = np.searchsorted(h.pages.vpn, vpn)
                        j = np.clip(j, 0, len(h.pages.vpn) - 1)
                        found = h.pages.vpn[j] == vpn
                        pred = found & h.pages.accessed[j]
                        pt.append({**score(pred, truth), "cpu": h.harvest_seconds + h.aging_seconds,
                                   "harvest": h.harvest_seconds, "aging": h.aging_seconds,
                                   "not_found": int(np.count_nonzero(~found))})
                    for g in tracer.aggregations():
                        pred, outside = damon_pred(g, phys)
                        dm.append({**score(pred, truth), "regions": len(g), "outside": outside,
                                   "regions_covering_workload": int(len(np.unique(
                                       np.searchsorted(np.sort(g["start"]), phys[phys > 0], side="right")))),
                                   "median_region_bytes": float(np.median(g["end"] - g["start"]))})
                wall = time.monotonic() - w0
                kcpu = proc_cpu(cfg["pid"]) - k0
                if src:
                    src.detach(wl.pid)
                    src.close()
                out["phases"][phase] = {"wall": wall, "kdamond_cpu": kcpu, "ptwalk": pt, "damon": dm}
                for name, rows in (("ptwalk", pt), ("DAMON", dm)):
                    if rows:
                        tot = {k: sum(r[k] for r in rows) for k in ("tp", "fp", "fn", "tn")}
                        print(f"{phase} {name}: {len(rows)} intervals, P/R/F1 %.3f/%.3f/%.3f" % prf(tot), tot,
                              flush=True)
                print(f"{phase}: kdamond CPU {kcpu:.2f} s in {wall:.0f} s "
                      f"({100 * kcpu / wall:.2f}% of a core)",
                      flush=True)
            moved = int(np.count_nonzero(pfns(wl.pid, start, n) != pfn0))
            out["pfns_changed_during_run"] = moved
            print("workload pages whose PFN changed during the run:", moved)
        finally:
            wl.terminate()
            wl.wait()
            tracer.close()
    results = ROOT / "bench/results"
    results.mkdir(exist_ok=True)
    (results / f"damon_compare-{stamp}.json").write_text(json.dumps(out))
    print(f"wrote bench/results/damon_compare-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Host coverage: one daemon following many processes of mixed sizes within its CPU budget.

    sudo .venv/bin/python bench/fleet.py [--processes 40] [--cgroups 1] [--seconds 120]
        [--budget 0.02] [--max-series N]

Starts ``--processes`` ground-truth workloads (``pageheat workload``, sizes cycling through
``--sizes`` MiB) in ``--cgroups`` fresh memory cgroups (round robin: one per process stands
for a host of single-process containers), and ``pageheat serve`` following them
(``targets.cgroups``; the same path after selection as ``targets.all: true``, which on a shared
machine would also age everyone else's processes) with the default budget, aging and
``max_series`` (unless ``--budget`` / ``--max-series`` say otherwise). After a
warm-up it measures over ``--seconds``: the daemon's CPU (utime + stime of the whole process,
from /proc/PID/stat) and its harvest + aging CPU (the duration histograms' sums), its RSS
(VmRSS), the achieved aging period of each process (pageheat_aging_period_seconds of the
per-process series, and harvests over time for the others), and the series in /metrics.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pageheat.kernel import cgroups  # noqa: E402
from pageheat.serve.api import decode_targets  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

PAGEHEAT = [sys.executable, "-m", "pageheat"]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=40)
    p.add_argument("--sizes", default="8,16,32,64,128", help="MiB, cycled")
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--warmup", type=float, default=20)
    p.add_argument("--budget", type=float, default=0.02)
    p.add_argument("--cgroups", type=int, default=1)
    p.add_argument("--max-series", type=int, default=None, help="default: pageheat's")
    a = p.parse_args()
    h = cgroups.detect()
    cg_path = f"/pageheat-bench-{uuid.uuid4().hex[:8]}"
    top_dir = h.mount.point / cg_path.lstrip("/")
    top_dir.mkdir()
    if h.version == 2:  # the memory controller for the children
        (top_dir / "cgroup.subtree_control").write_text("+memory")
    cg_dirs = [top_dir / f"c{k}" for k in range(a.cgroups)]
    for d in cg_dirs:
        d.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="pageheat-fleet-"))
    sizes = [int(s) for s in a.sizes.split(",")]
    procs: list[subprocess.Popen] = []
    serve = None
    try:
        for i in range(a.processes):
            size = sizes[i % len(sizes)]
            procs_file = shlex.quote(str(cg_dirs[i % a.cgroups] / "cgroup.procs"))
            enter = f"echo $$ > {procs_file} && exec \"$@\""
            procs.append(subprocess.Popen(["sh", "-c", enter, "sh", *PAGEHEAT, "workload", "--truth",
                                           str(tmp / f"t{i}.json"), "--size", f"{size}MiB",
                                           "--hot", "0.05", "--warm", "0.05", "--seed", str(i)]))
        while not all((tmp / f"t{i}.json").exists() for i in range(a.processes)):
            time.sleep(0.2)
        total = sum(sizes[i % len(sizes)] for i in range(a.processes))
        port = 19476 + os.getpid() % 1000
        cfg = tmp / "serve.yml"
        limit = f"max_series: {a.max_series}\n" if a.max_series else ""
        cfg.write_text(f"cpu_budget: {a.budget}\n{limit}"
                       f"targets: {{top_rss: 0, min_rss: 0, cgroups: ['{cg_path}/**']}}\n")
        serve = subprocess.Popen([*PAGEHEAT, "serve", "--config", str(cfg), "--listen",
                                  f"127.0.0.1:{port}"], stderr=open(tmp / "serve.log", "w"))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                get(url + "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(a.warmup)
        t0, c0, m0 = time.monotonic(), cpu_seconds(serve.pid), get(url + "/metrics").decode()
        h0 = {t.pid: t for t in decode_targets(json.loads(get(url + "/api/v1/targets")))}
        time.sleep(a.seconds)
        t1, c1, m1 = time.monotonic(), cpu_seconds(serve.pid), get(url + "/metrics").decode()
        h1 = {t.pid: t for t in decode_targets(json.loads(get(url + "/api/v1/targets")))}
        rss = rss_mib(serve.pid)
        elapsed = t1 - t0

        def sums(text: str) -> float:
            return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                       if s.name in ("pageheat_harvest_duration_seconds_sum",
                                     "pageheat_aging_duration_seconds_sum"))

        achieved = sorted(elapsed / max(h1[p].harvests - h0[p].harvests, 1)
                          for p in h1 if p in h0)
        intervals = sorted(t.aging_interval_s for t in h1.values())
        samples = [s for f in text_string_to_metric_families(m1) for s in f.samples]
        out = {
            "date": time.strftime("%Y-%m-%d"), "processes": a.processes, "cgroups": a.cgroups,
            "max_series": a.max_series or "default", "followed": len(h1),
            "regions_gib": round(total / 1024, 2),
            "resident_gib": round(sum(t.resident_pages for t in h1.values()) * 4096 / 2**30, 2),
            "budget": a.budget, "seconds": round(elapsed, 1),
            "daemon_cpu": round((c1 - c0) / elapsed, 4),
            "harvest_aging_cpu": round((sums(m1) - sums(m0)) / elapsed, 4),
            "daemon_rss_mib": round(rss, 1),
            "interval_s": {"min": intervals[0], "median": intervals[len(intervals) // 2],
                           "max": intervals[-1]},
            "achieved_period_s": {"min": round(achieved[0], 2),
                                  "median": round(achieved[len(achieved) // 2], 2),
                                  "max": round(achieved[-1], 2)},
            "series": len(samples),
            "pageheat_series": next(s.value for s in samples if s.name == "pageheat_series"),
            "series_dropped": next(s.value for s in samples if s.name == "pageheat_series_dropped"),
            "cgroup_series": sum(1 for s in samples if "cgroup" in s.labels),
        }
        print(json.dumps(out, indent=1))
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.wait(30)
        for d in [*cg_dirs, top_dir]:
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())

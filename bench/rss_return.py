"""Memory given back (issue 13, goal 6), as a long-running daemon meets it: serve already
follows a small process when a large one starts; the large one is followed, exits and is
dropped. Compared: serve's RSS with the small process alone before the large one came, and
after it left. (bench/harvest.py's "RSS before" is serve's lowest RSS before its *first*
harvest, so its ratio also holds what a daemon pays once: code paths, caches and imports
first used by a harvest, a rebinning and an exposition.)

The processes are `pageheat workload`s run under a name of their own (a symlink to the
venv's python, so their comm is ``phwl``), which serve selects by ``targets.comm_regex``.
RSS is sampled every 0.5 s; "warm" and "after" are medians of --settle seconds of samples.

    sudo .venv/bin/python bench/rss_return.py [--sizes 1GiB,4GiB,16GiB] [--small 64MiB]
        [--settle 15] [--cycles 10] [--root BEFORE --root AFTER]
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

import requests
from pageheat.config import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import api_targets, as_installed, proc_status_kib, start_target  # noqa: E402

NAME = "phwl"


def targets(port: int) -> dict[int, int]:
    """pid -> harvests, as serve's JSON API lists them ({} while serve is not listening)."""
    try:
        return {r.pid: r.harvests for r in api_targets(port)}
    except requests.ConnectionError:
        return {}


def wait_for(what: str, cond, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


def sample(pid: int, seconds: float) -> int:
    """Median VmRSS (KiB) over ``seconds``."""
    v = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v.append(proc_status_kib(pid, "VmRSS"))
        time.sleep(0.5)
    return int(statistics.median(v))


def measure(root: Path, size: int, small: int, settle: float, cycles: int, port: int) -> dict:
    venv_bin = root / ".venv/bin"
    py = venv_bin / NAME  # comm "phwl"; in the venv's bin, so the venv is found
    if not py.exists():
        py.symlink_to("python")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "serve.yml").write_text(json.dumps({
            "listen": f"127.0.0.1:{port}", "aging": "1s", "cpu_budget": 1.0,
            "discovery_interval": "1s",
            "targets": {"comm_regex": f"^{NAME}$", "top_rss": 0, "min_rss": 0}}))
        log = open(tmp / "serve.log", "w")
        serve = subprocess.Popen([str(venv_bin / "python"), "-m", "pageheat", "serve",
                                  "--config.file", str(tmp / "serve.yml")], cwd=root,
                                 stdout=log, stderr=log)
        procs = []
        try:
            procs.append(start_target(small, 0, tmp, str(py)))
            s = procs[0].pid
            wait_for("serve to follow the small process",
                     lambda: targets(port).get(s, 0) >= cycles)
            warm = sample(serve.pid, settle)
            procs.append(start_target(size, 0, tmp, str(py)))
            big = procs[1].pid
            wait_for("serve to follow the large process",
                     lambda: targets(port).get(big, 0) >= cycles, timeout=600)
            during = sample(serve.pid, 3)
            procs[1].terminate()
            procs[1].wait()
            wait_for("serve to drop the large process", lambda: big not in targets(port))
            after = sample(serve.pid, settle)
            hwm = proc_status_kib(serve.pid, "VmHWM")
        finally:
            for p in procs:
                p.terminate()
                p.wait()
            serve.terminate()
            serve.wait(20)
    return {"size": size, "small": small, "warm_kib": warm, "during_kib": during,
            "after_kib": after, "hwm_kib": hwm}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1GiB,4GiB,16GiB")
    ap.add_argument("--small", default="64MiB")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds of RSS samples per median")
    ap.add_argument("--cycles", type=int, default=10, help="harvests of a process before measuring")
    ap.add_argument("--root", type=Path, action="append",
                    help="checkout whose serve is measured (repeatable, each size in turn; "
                         "default: this one)")
    ap.add_argument("--port", type=int, default=19476)
    a = ap.parse_args()
    roots = a.root or [Path(__file__).resolve().parent.parent]
    for root in roots:
        as_installed(root)
    rows = [(root, measure(root, parse_size(s), parse_size(a.small), a.settle, a.cycles, a.port))
            for s in a.sizes.split(",") for root in roots]
    print(f"Machine: {os.cpu_count()} CPUs, kernel {platform.release()}; date "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: {' '.join(sys.argv)}\n")
    print("| large target | serve from | serve RSS, small target only (before) | during | VmHWM "
          "| after the large one left | after / before |")
    print("|---|---|---|---|---|---|---|")
    for root, r in rows:
        print(f"| {r['size'] >> 30} GiB | {root} | {r['warm_kib'] / 1024:.1f} MiB | "
              f"{r['during_kib'] / 1024:.1f} MiB | {r['hwm_kib'] / 1024:.1f} MiB | "
              f"{r['after_kib'] / 1024:.1f} MiB | {r['after_kib'] / r['warm_kib']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

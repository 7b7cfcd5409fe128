"""Where serve's fixed memory goes (issue 13, goal 2): its imports, the BPF object load, and
its RSS over time on one target.

1. Imports: a fresh interpreter imports each group in turn and reports VmRSS after each
   (a group's delta excludes what earlier groups already loaded).
2. BPF load: a fresh interpreter with serve's imports opens the ptwalk source; VmRSS and
   VmHWM before and after. libbpf parses the kernel's BTF (/sys/kernel/btf/vmlinux) to load
   an object with CO-RE relocations or an iterator; the buffers are freed after the load, so
   only VmHWM keeps them.
3. Timeline: ``pageheat serve --pid P --aging 1s --cpu-budget 1.0`` on a ``pageheat
   workload`` of --size; VmRSS and VmHWM sampled every 10 ms: the peak during the load, and
   the level once harvests run.

    sudo .venv/bin/python bench/serve_memory.py [--size 1GiB] [--seconds 10]

Prints Markdown tables; MiB are 2^20 bytes.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GROUPS = ["asyncio", "numpy", "uvloop", "yaml", "prometheus_client", "h11", "pydantic.main",
          "pydantic_settings", "pageheat.config", "pageheat.serve.daemon"]

IMPORTS = r"""
import importlib, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
print("interpreter", rss(), len(sys.modules))
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(name, rss(), len(sys.modules))
"""

LOAD = r"""
import pageheat.serve.daemon
from pageheat.sources.ptwalk import PtwalkSource
def status():
    d = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            d[k] = int(v.split()[0])
    return d
before = status()
src = PtwalkSource()
after = status()
print(before["VmRSS"], before["VmHWM"], after["VmRSS"], after["VmHWM"])
"""


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def imports() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORTS, *GROUPS], capture_output=True,
                         text=True, check=True).stdout.split("\n")
    print("| import | VmRSS after (MiB) | delta (MiB) | modules loaded |")
    print("|---|---|---|---|")
    prev = None
    for line in filter(None, out):
        name, rss, mods = line.rsplit(" ", 2)
        delta = "" if prev is None else mib(int(rss) - prev)
        print(f"| {name} | {mib(int(rss))} | {delta} | {mods} |")
        prev = int(rss)


def bpf_load() -> None:
    r = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, check=True)
    rss0, hwm0, rss1, hwm1 = map(int, r.stdout.split())
    print("| | VmRSS (MiB) | VmHWM (MiB) |")
    print("|---|---|---|")
    print(f"| serve's imports | {mib(rss0)} | {mib(hwm0)} |")
    print(f"| + PtwalkSource() (BPF object loaded) | {mib(rss1)} | {mib(hwm1)} |")
    print(f"| load's transient peak (VmHWM after - VmRSS before) | | {mib(hwm1 - rss0)} |")


def status_of(pid: int) -> dict[str, int]:
    d = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                d[k] = int(v.split()[0])
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timeline(size: str, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        truth = Path(tmp) / "truth.json"
        wl = subprocess.Popen([sys.executable, "-m", "pageheat", "workload", "--truth", str(truth),
                               "--size", size, "--hot", "0.01", "--warm", "0.01"])
        try:
            while not truth.exists():
                if wl.poll() is not None:
                    raise SystemExit("workload failed")
                time.sleep(0.1)
            listen = f"127.0.0.1:{free_port()}"
            sv = subprocess.Popen([sys.executable, "-m", "pageheat", "serve", "--pid", str(wl.pid),
                                   "--aging", "1s", "--cpu-budget", "1.0", "--listen", listen],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            samples = []
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < seconds and sv.poll() is None:
                    samples.append((time.monotonic() - t0, status_of(sv.pid)))
                    time.sleep(0.01)
            finally:
                sv.terminate()
                sv.wait()
        finally:
            wl.kill()
            wl.wait()
    if not samples:
        raise SystemExit("serve exited at once")
    # The load's peak: VmHWM rises above VmRSS for the first time (freed buffers).
    spike = next(((t, s) for t, s in samples if s["VmHWM"] - s["VmRSS"] > 2048), None)
    last = samples[-1][1]
    print("| serve on a workload of " + size + " | seconds | VmRSS (MiB) | VmHWM (MiB) |")
    print("|---|---|---|---|")
    if spike:
        print(f"| the first time VmHWM > VmRSS + 2 MiB (after the BPF load) | {spike[0]:.2f} | "
              f"{mib(spike[1]['VmRSS'])} | {mib(spike[1]['VmHWM'])} |")
    print(f"| end, harvesting every second | {samples[-1][0]:.2f} | {mib(last['VmRSS'])} | "
          f"{mib(last['VmHWM'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    print(f"Machine: {os.cpu_count()} CPUs, kernel {platform.release()}; "
          f"date {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; Python {platform.python_version()}\n")
    imports()
    print()
    bpf_load()
    print()
    timeline(args.size, args.seconds)


if __name__ == "__main__":
    main()

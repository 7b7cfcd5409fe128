"""Where serve's fixed memory goes (issue 13, goal 2): its imports, the BPF object load, and
its RSS over time on one target, split by kind of mapping.

1. Imports: a fresh interpreter imports each group in turn and reports VmRSS after each
   (a group's delta excludes what earlier groups already loaded). Then, in another fresh
   interpreter, what three of those groups cost beyond their own dependencies: ``ssl``
   (which asyncio imports), the standard library modules prometheus_client's ``__init__``
   imports (``http.server``, ``wsgiref.simple_server``, ``urllib.request``), and
   pydantic_settings imported after a pydantic model was built (a first model already loads
   ``importlib.metadata``, for pydantic's plugins).
2. BPF load: a fresh interpreter with serve's imports opens the ptwalk source; VmRSS and
   VmHWM before and after. Then the same with only what serve has imported when it opens
   its source (``pageheat.cli``; the daemon, prometheus_client among it, comes after).
   libbpf parses the kernel's BTF (/sys/kernel/btf/vmlinux) to load an object with CO-RE
   relocations or an iterator; the buffers are freed after the load, so only VmHWM keeps
   them.
3. serve: ``pageheat serve --pid P --aging 1s --cpu-budget 1.0`` on a ``pageheat workload``
   of --size; VmRSS and VmHWM sampled every 10 ms: the first time VmHWM exceeds VmRSS by
   2 MiB (the load's freed buffers), and the end. At the end, serve's RSS by kind of mapping
   (/proc/PID/smaps), beside the same split of the interpreter of step 2 after its imports.

    sudo .venv/bin/python bench/serve_memory.py [--size 1GiB] [--seconds 10]

Prints Markdown tables; MiB are 2^20 bytes.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pageheat.config import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import as_installed, free_port, start_target  # noqa: E402

GROUPS = ["asyncio", "numpy", "uvloop", "yaml", "prometheus_client", "h11", "pydantic.main",
          "pydantic_settings", "pageheat.config", "pageheat.serve.daemon"]

# Shared by the child scripts: VmRSS/VmHWM, and RSS by kind of mapping (kinds() below).
HELPERS = r"""
import os, sys
def status(pid="self"):
    d = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            d[k] = int(v.split()[0])
    return d
def kinds(pid="self"):
    out, kind = {}, None
    for line in open(f"/proc/{pid}/smaps"):
        f = line.split()
        if "-" in f[0] and len(f) >= 5:  # a mapping's first line
            name = f[5] if len(f) > 5 else ""
            if name == "[heap]":
                kind = "malloc heap ([heap])"
            elif "bpf" in name:
                kind = "BPF maps (mmapped)"
            elif name.startswith("/"):
                kind = "files (shared libraries, extension modules)"
            elif name.startswith("[stack"):
                kind = "main stack"
            elif not name:
                kind = "anonymous (obmalloc arenas, numpy arrays, thread stacks, glibc arenas)"
            else:
                kind = "other " + name
        elif f[0] == "Rss:":
            out[kind] = out.get(kind, 0) + int(f[1])
    return out
"""

IMPORTS = HELPERS + r"""
import importlib
print("interpreter", status()["VmRSS"], len(sys.modules))
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(name, status()["VmRSS"], len(sys.modules))
"""

# What a group adds beyond what it shares with the others (import order as in serve).
UNIQUE = HELPERS + r"""
import socket, select, selectors, concurrent.futures, threading, email.message, json, logging
r0 = status()["VmRSS"]
import ssl
r1 = status()["VmRSS"]
import http.server, wsgiref.simple_server, urllib.request
r2 = status()["VmRSS"]
import numpy, yaml, h11, prometheus_client
from pydantic import BaseModel
class Model(BaseModel):
    x: int = 1
Model()
r3 = status()["VmRSS"]
import pydantic_settings
r4 = status()["VmRSS"]
print(r1 - r0, r2 - r1, r4 - r3)
"""

# argv[1]: what is imported before the load. pageheat.serve.daemon: all of serve's imports;
# pageheat.cli: what serve has imported when it opens its source (the daemon comes after).
LOAD = HELPERS + r"""
import importlib, json, sys
importlib.import_module(sys.argv[1])
from pageheat.sources.ptwalk import PtwalkSource
before, split = status(), kinds()
src = PtwalkSource()
after = status()
print(json.dumps({"before": before, "after": after, "kinds": split,
                  "asyncio": "asyncio" in sys.modules,
                  "prometheus_client": "prometheus_client" in sys.modules}))
"""


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def child(script: str, *args: str) -> str:
    """stdout of ``python -c script args``; exits with the child's stderr if it failed."""
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"child failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout


def imports() -> None:
    print("| import | VmRSS after (MiB) | delta (MiB) | modules loaded |")
    print("|---|---|---|---|")
    prev = None
    for line in filter(None, child(IMPORTS, *GROUPS).split("\n")):
        name, rss, mods = line.rsplit(" ", 2)
        delta = "" if prev is None else mib(int(rss) - prev)
        print(f"| {name} | {mib(int(rss))} | {delta} | {mods} |")
        prev = int(rss)
    ssl_kib, stdlib_http_kib, settings_kib = map(int, child(UNIQUE).split())
    print()
    print("| beyond what the rest of serve imports anyway | VmRSS delta (MiB) |")
    print("|---|---|")
    print(f"| ssl (imported by asyncio) | {mib(ssl_kib)} |")
    print(f"| http.server, wsgiref.simple_server, urllib.request (by prometheus_client) | "
          f"{mib(stdlib_http_kib)} |")
    print(f"| pydantic_settings, after a pydantic model was built | {mib(settings_kib)} |")


def bpf_load() -> dict[str, int]:
    """Prints the load's table; returns the imports-only RSS split by kind of mapping."""
    import json

    r = json.loads(child(LOAD, "pageheat.serve.daemon"))
    before, after = r["before"], r["after"]
    print("| | VmRSS (MiB) | VmHWM (MiB) |")
    print("|---|---|---|")
    print(f"| serve's imports | {mib(before['VmRSS'])} | {mib(before['VmHWM'])} |")
    print(f"| + PtwalkSource() (BPF object loaded) | {mib(after['VmRSS'])} | {mib(after['VmHWM'])} |")
    print(f"| freed during the load (VmHWM after - VmRSS after) | | "
          f"{mib(after['VmHWM'] - after['VmRSS'])} |")
    s = json.loads(child(LOAD, "pageheat.cli"))
    print(f"| serve's imports when it opens its source (pageheat.cli; asyncio "
          f"{'in' if s['asyncio'] else 'not in'}, prometheus_client "
          f"{'in' if s['prometheus_client'] else 'not in'}) | {mib(s['before']['VmRSS'])} | "
          f"{mib(s['before']['VmHWM'])} |")
    print(f"| + PtwalkSource() | {mib(s['after']['VmRSS'])} | {mib(s['after']['VmHWM'])} |")
    return r["kinds"]


def serve(size: str, seconds: float, imports_split: dict[str, int]) -> None:
    ns: dict = {}
    exec(HELPERS, ns)  # status() and kinds(), as the children have them
    with tempfile.TemporaryDirectory() as tmp:
        wl = start_target(parse_size(size), 0, Path(tmp))  # populated when it returns
        try:
            log = open(Path(tmp) / "serve.log", "w+")
            sv = subprocess.Popen([sys.executable, "-m", "pageheat", "serve", "--pid", str(wl.pid),
                                   "--aging", "1s", "--cpu-budget", "1.0",
                                   "--listen", f"127.0.0.1:{free_port()}"],
                                  stdout=log, stderr=log)
            samples = []
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < seconds:
                    st = ns["status"](sv.pid) if sv.poll() is None else {}
                    if "VmRSS" not in st:  # exited (a zombie has no VmRSS)
                        log.seek(0)
                        raise SystemExit(f"serve exited after {time.monotonic() - t0:.1f} s:\n"
                                         f"{log.read()[-2000:]}")
                    samples.append((time.monotonic() - t0, st))
                    time.sleep(0.01)
                split = ns["kinds"](sv.pid)
            finally:
                sv.terminate()
                sv.wait()
        finally:
            wl.kill()
            wl.wait()
    spike = next(((t, s) for t, s in samples if s["VmHWM"] - s["VmRSS"] > 2048), None)
    end_t, end = samples[-1]
    print(f"| serve on a workload of {size} | seconds | VmRSS (MiB) | VmHWM (MiB) |")
    print("|---|---|---|---|")
    if spike:
        print(f"| the first time VmHWM > VmRSS + 2 MiB | {spike[0]:.2f} | "
              f"{mib(spike[1]['VmRSS'])} | {mib(spike[1]['VmHWM'])} |")
    print(f"| end, harvesting every second | {end_t:.2f} | {mib(end['VmRSS'])} | {mib(end['VmHWM'])} |")
    print()
    print("| RSS by kind of mapping (MiB) | serve's imports only | serve at the end | difference |")
    print("|---|---|---|---|")
    for k in sorted(set(split) | set(imports_split), key=lambda k: -split.get(k, 0)):
        a, b = imports_split.get(k, 0), split.get(k, 0)
        print(f"| {k} | {mib(a)} | {mib(b)} | {mib(b - a)} |")
    a, b = sum(imports_split.values()), sum(split.values())
    print(f"| total | {mib(a)} | {mib(b)} | {mib(b - a)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    as_installed(Path(__file__).resolve().parent.parent)
    print(f"Machine: {os.cpu_count()} CPUs, kernel {platform.release()}; "
          f"date {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; Python {platform.python_version()}\n")
    imports()
    print()
    split = bpf_load()
    print()
    serve(args.size, args.seconds, split)


if __name__ == "__main__":
    main()

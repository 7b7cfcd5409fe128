"""Overhead of `pageheat serve` on the workload it watches: interleaved A/B runs.

    sudo .venv/bin/python bench/overhead.py micro [--size 4GiB] [--seconds 20] [--pairs 5]
    sudo .venv/bin/python bench/overhead.py memcached [--keys 1000000] [--pairs 5] [--variants ABC]

micro: a single-threaded C program (bench/c/gauss_access.c, compiled with gcc at run time)
maps SIZE with 4 KiB pages, writes every page, then reads one word at a Gaussian random page
per access for SECONDS. Each round runs, in this order, on a fresh process:
  A   unmonitored
  B   `pageheat serve --pid P` at default settings (aging 1s, cpu_budget 0.02)
  C   aging 100ms (cpu_budget 0.02: the budget stretches the interval)
  D   aging 100ms, cpu_budget 1.0 (unthrottled)
and reports accesses/s of each, the ratio to the same round's A, the effective aging interval
(`pageheat_aging_interval_seconds` at the end of the window) and the serve process's CPU
(user + sys from /proc/PID/stat, which includes the kernel time of its clear_refs writes)
during the window, per monitored GiB per aging.

memcached: one memcached (THP disabled, -m sized to the keys), populated once (P:P, 1:0),
then per round A (unmonitored), B (`pageheat serve --pid <memcached>`, defaults) and, with
``--variants ABC``, C (defaults but PAGEHEAT_TLB_FLUSH=never: separates the cost of the TLB
flush from the cost of serve's CPU bursts), with ``--variants ABD``, D (defaults but
PAGEHEAT_WORKER_PRIORITY=normal: the harvest worker not at SCHED_IDLE) of the Gaussian
phase (G:G, 0:1, pipeline 8, bench/loadgen.py): ops/s and p99.

Before each measured window, serve (if any) runs for --warmup seconds so that it has
attached and harvested; the unmonitored run waits as long. No Prometheus scrapes during the
window. Results go to bench/results/overhead-<mode>-<UTC time>.json; a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")
PORT = 9478


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(GiB|MiB|KiB|)", text)
    if not m:
        raise ValueError(text)
    return int(m[1]) << {"GiB": 30, "MiB": 20, "KiB": 10, "": 0}[m[2]]


def proc_cpu(pid: int) -> float:
    """user + system seconds of a process (all its threads)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    return f"{os.cpu_count()} CPUs, {model}, kernel {platform.release()}"


def metric(text: str, name: str) -> float | None:
    for ln in text.splitlines():
        if ln.startswith(name) and not ln.startswith("#"):
            return float(ln.rsplit(" ", 1)[1])
    return None


class Serve:
    """`pageheat serve --pid PID` with a config; CPU accounting by /proc/PID/stat."""

    def __init__(self, pid: int, tmp: Path, aging: str, cpu_budget: float | None,
                 env: dict[str, str] | None = None):
        cfg = tmp / f"serve-{aging}-{cpu_budget}.yaml"
        cfg.write_text(f"aging: {aging}\n" + (f"cpu_budget: {cpu_budget}\n" if cpu_budget else ""))
        self.log = open(tmp / "serve.log", "a")
        self.p = subprocess.Popen([PY, "-m", "pageheat", "serve", "--config", str(cfg), "--pid", str(pid),
                                   "--listen", f"127.0.0.1:{PORT}"], stderr=self.log,
                                  env={**os.environ, **(env or {})})

    def wait_harvest(self, timeout: float = 60) -> None:
        t_end = time.time() + timeout
        while time.time() < t_end:
            if self.p.poll() is not None:
                raise RuntimeError("pageheat serve exited")
            try:
                v = metric(requests.get(f"http://127.0.0.1:{PORT}/metrics", timeout=2).text,
                           "pageheat_harvests_total")
                if v and v >= 2:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("no harvest")

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{PORT}/metrics", timeout=5).text

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def summary(xs: list[float], fmt: str = "{:.3f}") -> str:
    if not xs:
        return "-"
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


# ---- micro -----------------------------------------------------------------------------------

VARIANTS = {  # name: (aging, cpu_budget); None = unmonitored
    "A unmonitored": None,
    "B default (1s)": ("1s", None),
    "C aging 100ms": ("100ms", None),
    "D aging 100ms, cpu_budget 1.0": ("100ms", 1.0),
}


def micro_run(exe: Path, size: int, seconds: float, warmup: float, variant, tmp: Path) -> dict:
    prog = subprocess.Popen([str(exe), str(size), str(seconds)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        ready = prog.stdout.readline().split()
        assert ready[0] == "ready", ready
        pages = int(ready[2])
        serve = None
        if variant:
            serve = Serve(prog.pid, tmp, *variant)
            serve.wait_harvest()
        time.sleep(warmup)
        cpu0 = proc_cpu(serve.p.pid) if serve else 0.0
        h0 = metric(serve.metrics(), "pageheat_harvests_total") if serve else 0
        prog.stdin.write("go\n")
        prog.stdin.flush()
        out = prog.stdout.readline().split()
        cpu1 = proc_cpu(serve.p.pid) if serve else 0.0
        rec = {"accesses": int(out[1]), "seconds": float(out[3]), "bench_cpu": float(out[5]), "pages": pages}
        rec["rate"] = rec["accesses"] / rec["seconds"]
        if serve:
            m = serve.metrics()
            rec["serve_cpu"] = cpu1 - cpu0
            rec["harvests"] = metric(m, "pageheat_harvests_total") - h0
            rec["interval"] = metric(m, "pageheat_aging_interval_seconds")
            serve.stop()
        return rec
    finally:
        prog.kill()
        prog.wait()


def micro(a: argparse.Namespace) -> dict:
    exe = Path(tempfile.gettempdir()) / "pageheat-gauss_access"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(ROOT / "bench/c/gauss_access.c")], check=True)
    size = parse_size(a.size)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmpd:
        chosen = {k: v for k, v in VARIANTS.items() if k[0] in a.variants}
        for r in range(a.pairs):
            row = {}
            for name, variant in chosen.items():
                row[name] = micro_run(exe, size, a.seconds, a.warmup, variant, Path(tmpd))
                print(f"round {r} {name}: {json.dumps(row[name])}", flush=True)
            rounds.append(row)
    return {"rounds": rounds, "size": size, "table": micro_table(rounds, size)}


def micro_table(rounds: list[dict], size: int) -> str:
    """accesses/s (wall) and accesses per CPU-second of the benchmark process: the second is
    less sensitive to other tenants taking the benchmark's core, and still includes the
    monitoring's effect on the benchmark itself (TLB flushes, Accessed-bit refills)."""
    gib = size / (1 << 30)
    A = "A unmonitored"
    cols = ["variant", "accesses/s (M)", "ratio to A, same round", "accesses per CPU-s (M)",
            "ratio to A, same round", "bench CPU (% of a core)", "effective aging interval (s)",
            "harvests in window", "serve CPU (% of a core)", "serve CPU per GiB per aging (ms)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name in rounds[0]:
        rates = [row[name]["rate"] / 1e6 for row in rounds]
        ratio = [row[name]["rate"] / row[A]["rate"] for row in rounds]
        pc = [row[name]["accesses"] / row[name]["bench_cpu"] / 1e6 for row in rounds]
        pcr = [(row[name]["accesses"] / row[name]["bench_cpu"]) / (row[A]["accesses"] / row[A]["bench_cpu"])
               for row in rounds]
        bc = [100 * row[name]["bench_cpu"] / row[name]["seconds"] for row in rounds]
        head = (f"| {name} | {summary(rates, '{:.1f}')} | {summary(ratio)} | {summary(pc, '{:.1f}')} | "
                f"{summary(pcr)} | {summary(bc, '{:.0f}')} |")
        if name == A:
            lines.append(head + " - | - | - | - |")
            continue
        iv = [row[name]["interval"] for row in rounds]
        hv = [row[name]["harvests"] for row in rounds]
        cpu = [100 * row[name]["serve_cpu"] / row[name]["seconds"] for row in rounds]
        per = [1000 * row[name]["serve_cpu"] / max(row[name]["harvests"], 1) / gib for row in rounds]
        lines.append(head + f" {summary(iv, '{:.2f}')} | {summary(hv, '{:.0f}')} | "
                     f"{summary(cpu, '{:.1f}')} | "
                     f"{summary(per, '{:.1f}')} |")
    return "\n".join(lines)


# ---- memcached -------------------------------------------------------------------------------

MC_VARIANTS = {"A": "A unmonitored", "B": "B default (1s)",
               "C": "C default, no TLB flush",  # C: PAGEHEAT_TLB_FLUSH=never
               "D": "D default, worker at normal priority"}  # D: PAGEHEAT_WORKER_PRIORITY=normal
MC_ENV = {"C": {"PAGEHEAT_TLB_FLUSH": "never"}, "D": {"PAGEHEAT_WORKER_PRIORITY": "normal"}}


def memcached(a: argparse.Namespace) -> dict:
    port = 11321
    mb = loadgen.memory_mb(a.keys, a.data_size)
    mc = loadgen.start_memcached(port, mb, extra=["-o", "hashpower=21"])
    rounds = []
    try:
        common = dict(port=port, key_minimum=1, key_maximum=a.keys, data_size=a.data_size)
        pop = loadgen.run(loadgen.LoadSpec(**common, key_pattern="P:P", ratio="1:0", requests="allkeys",
                                           pipeline=8, clients=4))
        print("populate:", pop.line(), flush=True)
        st = loadgen.memcached_stats(port)
        rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{mc.pid}/status").read_text())[1]) << 10
        print("memcached:", {k: st[k] for k in ("curr_items", "bytes", "evictions")}, f"RSS {rss >> 20} MiB",
              flush=True)
        with tempfile.TemporaryDirectory(prefix="overhead-") as tmpd:
            for r in range(a.pairs):
                row = {}
                for name in [MC_VARIANTS[v] for v in a.variants if v in MC_VARIANTS]:
                    serve = None
                    if not name.startswith("A"):
                        env = MC_ENV.get(name[0])
                        serve = Serve(mc.pid, Path(tmpd), "1s", None, env)
                        serve.wait_harvest()
                    time.sleep(a.warmup)
                    cpu0 = proc_cpu(serve.p.pid) if serve else 0.0
                    mc0 = proc_cpu(mc.pid)
                    res = loadgen.run(loadgen.LoadSpec(**common, key_pattern="G:G", ratio="0:1", pipeline=8,
                                                       clients=4, test_time=a.seconds, seed=r + 1))
                    rec = {**res.__dict__, "memcached_cpu": (proc_cpu(mc.pid) - mc0) / res.seconds}
                    if serve:
                        rec["serve_cpu"] = (proc_cpu(serve.p.pid) - cpu0) / res.seconds
                        rec["interval"] = metric(serve.metrics(), "pageheat_aging_interval_seconds")
                        serve.stop()
                    row[name] = rec
                    print(f"round {r} {name}: {res.line()} serve/memcached CPU "
                          f"{rec.get('serve_cpu', 0):.1%}/{rec['memcached_cpu']:.0%}", flush=True)
                rounds.append(row)
    finally:
        mc.terminate()
        mc.wait()
    A = MC_VARIANTS["A"]
    cols = ["variant", "ops/s (k)", "p50 (us)", "p99 (us)", "ops/s ratio to A, same round",
            "p99 ratio to A", "generator CPU (max, % of a core)", "serve CPU (% of a core)",
            "effective interval (s)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name in rounds[0]:
        thr = [row[name]["ops_per_sec"] / row[A]["ops_per_sec"] for row in rounds]
        p99 = [row[name]["p99_us"] / row[A]["p99_us"] for row in rounds]
        ops = [row[name]["ops_per_sec"] / 1e3 for row in rounds]
        p50 = [row[name]["p50_us"] for row in rounds]
        p99v = [row[name]["p99_us"] for row in rounds]
        gen = [100 * max(row[name]["gen_cpu_per_process"]) for row in rounds]
        if name == A:
            lines.append(f"| {name} | {summary(ops, '{:.0f}')} | {summary(p50, '{:.0f}')} | "
                         f"{summary(p99v, '{:.0f}')} "
                         f"| 1 | 1 | {summary(gen, '{:.0f}')} | - | - |")
        else:
            cpu = [100 * row[name]["serve_cpu"] for row in rounds]
            iv = [row[name]["interval"] for row in rounds]
            lines.append(f"| {name} | {summary(ops, '{:.0f}')} | {summary(p50, '{:.0f}')} | "
                         f"{summary(p99v, '{:.0f}')} "
                         f"| {summary(thr)} | {summary(p99)} | {summary(gen, '{:.0f}')} | "
                         f"{summary(cpu, '{:.1f}')} | "
                         f"{summary(iv, '{:.2f}')} |")
    return {"populate": pop.__dict__, "memcached_stats": st, "memcached_rss": rss, "memcached_mb": mb,
            "rounds": rounds, "table": "\n".join(lines)}


def main() -> int:
    p = argparse.ArgumentParser(description="pageheat serve overhead, interleaved A/B")
    p.add_argument("mode", choices=("micro", "memcached", "table"))
    p.add_argument("--json", type=Path, help="table: re-render the micro table of this results file")
    p.add_argument("--size", default="4GiB")
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--data-size", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--variants", default=None,
                   help="which variants to run, in this order (micro: ABCD, the default; "
                        "memcached: AB by default, C = defaults without the TLB flush, "
                        "D = defaults with the worker at normal priority)")
    a = p.parse_args()
    a.variants = a.variants or ("ABCD" if a.mode == "micro" else "AB")
    if a.mode == "table":
        d = json.loads(a.json.read_text())
        print(micro_table(d["rounds"], d.get("size") or parse_size(d["args"]["size"])))
        return 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = micro(a) if a.mode == "micro" else memcached(a)
    out.update({"date_utc": stamp, "machine": machine(), "args": vars(a),
                "command": " ".join(sys.argv)})
    results = ROOT / "bench/results"
    results.mkdir(exist_ok=True)
    (results / f"overhead-{a.mode}-{stamp}.json").write_text(json.dumps(out))
    print(f"\n{a.mode}, {stamp}, {machine()}, {a.pairs} rounds, median (min-max)\n")
    print(out["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

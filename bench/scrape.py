"""Scrape cost of /metrics: the exposition encoded at every scrape vs once per generation.

A server process runs pageheat's real HttpServer (uvloop, as `serve` does) over the real
collector, whose views the real aggregator made from synthetic harvests: enough targets for
about --series series; process_* metrics in the live (never cached) registry, as in `serve`.
It bumps the generation every --bump seconds (as a harvest does), and runs a harvest stand-in
on a worker thread (TargetState.update of a synthetic harvest of --harvest-pages pages, in a
loop) whose wall time per update tells whether scrapes slow harvesting. This process runs 1
and 10 scrapers (threads, one keep-alive connection each, Prometheus' Accept and
Accept-Encoding headers) against 127.0.0.1 for --seconds each: back to back, and 10 at one
scrape per second each. "encoded per scrape (before)" is the same server without a
generation (the behaviour before the cache); both modes run in one run, interleaved. Prints a
Markdown table; raw numbers go to bench/results/scrape-TIMESTAMP.json.

    .venv/bin/python bench/scrape.py [--series 10000] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pageheat.model.aggregate import TargetState, TargetView
from pageheat.sources.base import Harvest, Pages, VmaKind, Vmas

ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;"
          "version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")  # Prometheus 2.x
RESULTS = Path(__file__).parent / "results"
# (scrapers, gzip, seconds between one scraper's scrapes: 0 back to back); 0 scrapers: idle
PHASES = [(0, False, 0.0), (1, False, 0.0), (1, True, 0.0), (10, False, 0.0), (10, True, 0.0),
          (10, True, 1.0)]


def synthetic_harvest(pid: int, pages: int, seed: int, nodes: int = 2) -> tuple[Harvest, Vmas]:
    """``pages`` resident pages over four mappings, a random half accessed, anon and file pages
    on ``nodes`` NUMA nodes."""
    rng = np.random.default_rng(seed)
    size = pages // 4
    starts = np.array([0x7F0000000 + i * (size + 16) for i in range(4)], dtype=np.uint64)
    vmas = Vmas(start=starts << np.uint64(12), end=(starts + np.uint64(size)) << np.uint64(12),
                kind=np.array([VmaKind.ANON, VmaKind.FILE, VmaKind.HEAP, VmaKind.ANON], dtype=np.uint8),
                accessible=np.ones(4, dtype=bool), names=["", "/usr/lib/libc.so.6", "[heap]", ""])
    vpn = np.concatenate([s + np.arange(size, dtype=np.uint64) for s in starts])
    vma = np.repeat(np.arange(4, dtype=np.int32), size)
    p = Pages(vpn=vpn, accessed=rng.random(len(vpn)) < 0.5,
              node=rng.integers(0, nodes, len(vpn)).astype(np.int16),
              type=(vma == 1).astype(np.uint8), thp=np.zeros(len(vpn), dtype=bool), vma=vma)
    return Harvest(pid, 100.0, p, vmas, 0.001, 0.001), vmas


def synthetic_view(pid: int, bins: int, seed: int) -> TargetView:
    h, _ = synthetic_harvest(pid, 65536, seed)
    return TargetState(pid, f"synth{pid}", bins, 120.0).update(h, 1.0)


# -- the server process ---------------------------------------------------------------------------
def server_main(a: argparse.Namespace) -> int:
    import uvloop
    from pageheat.config import Config
    from pageheat.serve.collector import PageheatCollector
    from pageheat.serve.http import HttpServer
    from pageheat.serve.stats import Stats
    from pageheat.serve.webconfig import WebConfig
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.exposition import generate_latest

    cfg = Config(max_series=10_000_000, bins=a.bins)
    views: dict[int, TargetView] = {}
    registry = CollectorRegistry(auto_describe=False)
    stats = Stats()
    registry.register(PageheatCollector(cfg, lambda: views, stats, "synthetic"))
    pid = 1000
    while True:  # add targets until the exposition has --series series
        views[pid] = synthetic_view(pid, a.bins, pid)
        pid += 1
        series = sum(1 for line in generate_latest(registry).splitlines() if not line.startswith(b"#"))
        if series >= a.series:
            break
    state = {"generation": 0}
    # As the daemon: process_* self metrics in the live registry, read at every scrape.
    live = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=live)
    server = HttpServer(registry, WebConfig(), generation=(lambda: state["generation"])
                        if a.mode == "cached" else None, live=live)
    encodes: list[tuple[float, float]] = []  # (time.time() at the end, seconds) of each encoding
    plain_encode = server._encode

    def timed_encode(*args):
        t0 = time.perf_counter()
        out = plain_encode(*args)
        encodes.append((time.time(), time.perf_counter() - t0))
        return out

    server._encode = timed_encode  # type: ignore[method-assign]
    harvest, _ = synthetic_harvest(1, max(a.harvest_pages, 4), 1)
    stop = threading.Event()
    updates: list[tuple[float, float]] = []  # (time.time() at the end, seconds)

    def harvesting() -> None:  # the daemon's worker thread, with the same numpy work per page
        target = TargetState(1, "harvest", a.bins, 120.0)
        while a.harvest_pages and not stop.is_set():
            t0 = time.perf_counter()
            target.update(harvest, 1.0)
            updates.append((time.time(), time.perf_counter() - t0))
            time.sleep(0.05)

    async def main() -> None:
        await server.start([("127.0.0.1", 0)])
        worker = threading.Thread(target=harvesting, daemon=True)
        worker.start()
        print(json.dumps({"port": server.port, "series": series, "targets": len(views)}), flush=True)
        done = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), a.bump)
            except TimeoutError:
                state["generation"] += 1
        stop.set()
        worker.join()
        await server.stop()
        Path(a.out).write_text(json.dumps({"updates": updates, "encodes": encodes,
                                           "generations": state["generation"]}))

    uvloop.run(main())
    return 0


# -- the scrapers ---------------------------------------------------------------------------------
def scrape_for(port: int, scrapers: int, seconds: float, gzip_ok: bool,
               every: float = 0.0) -> tuple[list[float], int]:
    """Each scraper loops GET /metrics on its own keep-alive connection, back to back or one
    scrape per ``every`` seconds; returns (latencies in seconds, bytes of one body)."""
    latencies: list[float] = []
    size = [0]
    end = time.monotonic() + seconds
    headers = {"Accept": ACCEPT, **({"Accept-Encoding": "gzip"} if gzip_ok else {})}

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        t0 = time.perf_counter()
        while time.monotonic() < end:
            if every and mine:
                time.sleep(max(0.0, every - (time.perf_counter() - t0)))
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers=headers)
            r = conn.getresponse()
            body = r.read()
            mine.append(time.perf_counter() - t0)
            assert r.status == 200, r.status
            size[0] = len(body)
        conn.close()
        latencies.extend(mine)

    threads = [threading.Thread(target=one) for _ in range(scrapers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, size[0]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q)) if xs else float("nan")


def run_mode(mode: str, a: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / f"{mode}.json"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", mode, "--series", str(a.series),
                             "--bins", str(a.bins), "--bump", str(a.bump), "--harvest-pages",
                             str(a.harvest_pages), "--out", str(out)],
                            stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        phases = []
        time.sleep(1.0)  # warm-up
        for scrapers, gzip_ok, every in PHASES:
            t0 = time.time()
            if scrapers:
                lat, size = scrape_for(info["port"], scrapers, a.seconds, gzip_ok, every)
            else:
                time.sleep(a.seconds)
                lat, size = [], 0
            phases.append({"scrapers": scrapers, "gzip": gzip_ok, "every": every, "latencies": lat,
                           "bytes": size,
                           "start": t0, "end": time.time()})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    raw = json.loads(out.read_text())
    for ph in phases:  # the harvest stand-in's updates that ended within the phase
        ph["harvest_updates"] = [d for t, d in raw["updates"] if ph["start"] <= t <= ph["end"]]
        ph["encodes"] = [d for t, d in raw["encodes"] if ph["start"] <= t <= ph["end"]]
    return {"mode": mode, **info, "phases": phases, "generations": raw["generations"]}


def table(runs: list[dict]) -> str:
    idle = {m: [u for r in runs if r["mode"] == m for p in r["phases"] if p["scrapers"] == 0
                for u in p["harvest_updates"]] for m in ("uncached", "cached")}
    lines = ["| /metrics | scrapers (each) | gzip | scrapes/s | p50 ms | p99 ms | body KiB | encodings/s "
             "| encoding ms (p50) | harvest stand-in ms (p50; idle {}) |".format(
                 ", ".join(f"{statistics.median(v) * 1e3:.0f}" for v in idle.values() if v)),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ("uncached", "cached"):
        for scrapers, gz, every in PHASES[1:]:
            sel = [p for r in runs if r["mode"] == mode for p in r["phases"]
                   if (p["scrapers"], p["gzip"], p["every"]) == (scrapers, gz, every)]
            secs = sum(p["end"] - p["start"] for p in sel)
            lat = [x for p in sel for x in p["latencies"]]
            enc = [x for p in sel for x in p["encodes"]]
            ups = [u for p in sel for u in p["harvest_updates"]]
            lines.append(
                f"| {'encoded per scrape (before)' if mode == 'uncached' else 'cached (after)'} | "
                f"{scrapers} ({f'1/{every:g}s' if every else 'back to back'}) | {'yes' if gz else 'no'} | "
                f"{len(lat) / secs:.1f} | {pct(lat, 50) * 1e3:.2f} | "
                f"{pct(lat, 99) * 1e3:.1f} | {max(p['bytes'] for p in sel) / 1024:.0f} | "
                f"{len(enc) / secs:.2f} | {statistics.median(enc) * 1e3 if enc else float('nan'):.0f} | "
                f"{statistics.median(ups) * 1e3 if ups else float('nan'):.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=int, default=10000)
    p.add_argument("--bins", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="per phase")
    p.add_argument("--rounds", type=int, default=2, help="rounds, the two modes interleaved")
    p.add_argument("--bump", type=float, default=5.0,
                   help="seconds between generations (new views; the daemon bumps after each harvest)")
    p.add_argument("--harvest-pages", type=int, default=262144, help="0: no harvest stand-in")
    p.add_argument("--serve", choices=("cached", "uncached"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        a.mode = a.serve
        return server_main(a)
    runs = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            for mode in (("uncached", "cached") if r % 2 == 0 else ("cached", "uncached")):
                runs.append(run_mode(mode, a, Path(d)))
                print(f"round {r + 1} {mode}: {runs[-1]['series']} series in {runs[-1]['targets']} targets",
                      file=sys.stderr)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scrape-{stamp}.json"
    meta = {"date": stamp, "machine": f"{os.cpu_count()} CPUs, {platform.release()}",
            "args": {k: v for k, v in vars(a).items() if k not in ("serve", "out")},
            "host": socket.gethostname()}
    out.write_text(json.dumps({"meta": meta, "runs": runs}))
    print(f"{meta['machine']}; {stamp}; {runs[0]['series']} series in {runs[0]['targets']} targets; "
          f"raw: {out}")
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

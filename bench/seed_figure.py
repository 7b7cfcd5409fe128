"""The seed figure: memcached's address x time heatmap, from a real Prometheus.

One command, as root:

    .venv/bin/python bench/seed_figure.py [--keys 2000000] [--data-size 1000] [--get-seconds 180] [--bins 32]

It starts memcached on 127.0.0.1 (``-L``: the whole item cache is allocated at start, so the
address layout, and with it pageheat's address bins, stays put while it fills), starts
``pageheat serve --pid <memcached> --aging 1s`` and a Prometheus that scrapes it every second,
then drives memcached with ``bench/loadgen.py``:

1. populate: every key once, in order (memtier ``--key-pattern P:P --ratio 1:0``);
2. a pause;
3. Gaussian gets (``--key-pattern G:G --ratio 0:1 --pipeline 8``) for ``--get-seconds``.

Then it asks Prometheus ``query_range`` for
``sum by (le) (rate(pageheat_accessed_pages_bucket{pid="..."}[5s]))`` at a 1 s step, turns the
cumulative buckets into per-bin rates (difference of consecutive ``le``), and draws
``docs/img/memcached-heatmap.png``. The raw query result and the phase times are written to
``bench/results/seed_figure-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def wait_http(url: str, timeout: float = 60) -> None:
    t_end = time.time() + timeout
    while time.time() < t_end:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def start_prometheus(tmp: Path, target: str, port: int) -> subprocess.Popen:
    cfg = tmp / "prometheus.yml"
    cfg.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pageheat
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ['{target}']
""")
    exe = shutil.which("prometheus") or "/usr/bin/prometheus"
    p = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
    wait_http(f"http://127.0.0.1:{port}/-/ready")
    return p


def query_range(port: int, q: str, start: float, end: float, step: float = 1.0) -> list[dict]:
    r = requests.get(f"http://127.0.0.1:{port}/api/v1/query_range",
                     params={"query": q, "start": start, "end": end, "step": step}, timeout=60)
    r.raise_for_status()
    body = r.json()
    if body["status"] != "success":
        raise RuntimeError(body)
    return body["data"]["result"]


def to_matrix(result: list[dict], start: float, end: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin rate matrix [bin, time] from cumulative `le` series; NaN where missing."""
    times = np.arange(start, end + step / 2, step)
    les = sorted((float(s["metric"]["le"]), s) for s in result if s["metric"]["le"] != "+Inf")
    cum = np.full((len(les), len(times)), np.nan)
    for i, (_, s) in enumerate(les):
        for t, v in s["values"]:
            j = int(round((float(t) - start) / step))
            if 0 <= j < len(times):
                cum[i, j] = float(v)
    per_bin = np.diff(cum, axis=0, prepend=0.0)
    return times, np.clip(per_bin, 0, None)


def draw(times: np.ndarray, m: np.ndarray, phases: dict, out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    t = times - times[0]
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    data = np.where(np.isnan(m) | (m <= 0), np.nan, m)
    vmax = np.nanmax(data) if np.isfinite(np.nanmax(data)) else 1
    im = ax.imshow(data, origin="lower", aspect="auto", cmap="inferno",
                   extent=(t[0] - 0.5, t[-1] + 0.5, -0.5, m.shape[0] - 0.5),
                   norm=PowerNorm(gamma=0.5, vmin=0, vmax=vmax), interpolation="nearest")
    ax.set_facecolor("black")
    for name, (a, b) in phases.items():
        a, b = a - times[0], b - times[0]
        ax.axvline(a, color="cyan", lw=0.8, ls="--")
        ax.axvline(b, color="cyan", lw=0.8, ls=":")
        ax.text((a + b) / 2, m.shape[0] - 0.5, name, color="cyan", ha="center", va="bottom", fontsize=9)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("address bin (low → high address)")
    ax.set_title(title, fontsize=10, pad=16)
    fig.colorbar(im, ax=ax, label="accessed pages / s (rate over 5 s; sqrt colour scale)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main() -> int:
    p = argparse.ArgumentParser(description="memcached address x time heatmap via Prometheus")
    p.add_argument("--keys", type=int, default=2_000_000)
    p.add_argument("--data-size", type=int, default=1000)
    p.add_argument("--get-seconds", type=float, default=180)
    p.add_argument("--pause", type=float, default=10)
    p.add_argument("--populate-clients", type=int, default=1,
                   help="connections for the populate phase (pipeline 1: a sweep over tens of seconds)")
    p.add_argument("--bins", type=int, default=32)
    p.add_argument("--aging", default="1s")
    p.add_argument("--cpu-budget", type=float, help="pageheat cpu_budget (default: pageheat's, 0.02)")
    p.add_argument("--mc-port", type=int, default=11311)
    p.add_argument("--serve-port", type=int, default=9477)
    p.add_argument("--prom-port", type=int, default=9399)
    p.add_argument("--out", type=Path, default=ROOT / "docs/img/memcached-heatmap.png")
    a = p.parse_args()

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="seedfig-") as tmpd:
        tmp = Path(tmpd)
        try:
            mb = loadgen.memory_mb(a.keys, a.data_size)
            mc = loadgen.start_memcached(a.mc_port, mb, extra=["-L", "-o", "hashpower=22"])
            procs.append(mc)
            (tmp / "pageheat.yaml").write_text(f"bins: {a.bins}\n" +
                                               (f"cpu_budget: {a.cpu_budget}\n" if a.cpu_budget else ""))
            serve = subprocess.Popen([PY, "-m", "pageheat", "serve", "--config", str(tmp / "pageheat.yaml"),
                                      "--pid", str(mc.pid), "--aging", a.aging,
                                      "--listen", f"127.0.0.1:{a.serve_port}"],
                                     stderr=open(tmp / "serve.log", "w"))
            procs.append(serve)
            wait_http(f"http://127.0.0.1:{a.serve_port}/healthz")
            prom = start_prometheus(tmp, f"127.0.0.1:{a.serve_port}", a.prom_port)
            procs.append(prom)
            print(f"memcached pid {mc.pid} -m {mb}; pageheat serve pid {serve.pid}; "
                  f"prometheus pid {prom.pid}",
                  flush=True)
            t_start = time.time()
            time.sleep(5)
            common = dict(port=a.mc_port, key_minimum=1, key_maximum=a.keys, data_size=a.data_size)
            t0 = time.time()
            pop = loadgen.run(loadgen.LoadSpec(**common, key_pattern="P:P", ratio="1:0", requests="allkeys",
                                               pipeline=1, clients=a.populate_clients))
            t1 = time.time()
            print("populate:", pop.line(), flush=True)
            st = loadgen.memcached_stats(a.mc_port)
            print("memcached:", {k: st[k] for k in ("curr_items", "bytes", "limit_maxbytes", "evictions")},
                  flush=True)
            status = Path(f"/proc/{mc.pid}/status").read_text()
            rss = [ln for ln in status.splitlines() if ln.startswith(("VmRSS", "VmSize", "RssAnon"))]
            smaps = Path(f"/proc/{mc.pid}/smaps_rollup").read_text()
            thp = [ln for ln in smaps.splitlines() if ln.startswith("AnonHugePages")]
            print("memcached memory:", rss, thp, flush=True)
            time.sleep(a.pause)
            t2 = time.time()
            get = loadgen.run(loadgen.LoadSpec(**common, key_pattern="G:G", ratio="0:1", pipeline=8,
                                               clients=4, test_time=a.get_seconds))
            t3 = time.time()
            print("gaussian gets:", get.line(), flush=True)
            time.sleep(8)
            t_end = time.time()
            q = f'sum by (le) (rate(pageheat_accessed_pages_bucket{{pid="{mc.pid}"}}[5s]))'
            res = query_range(a.prom_port, q, t_start, t_end, 1.0)
            extra = {}
            for name in ("pageheat_aging_interval_seconds", "pageheat_rebins_total",
                         "pageheat_process_resident_pages", "pageheat_harvest_overruns_total"):
                extra[name] = query_range(a.prom_port, name, t_start, t_end, 5.0)
        finally:
            for pr in reversed(procs):
                pr.terminate()
            for pr in reversed(procs):
                try:
                    pr.wait(20)
                except subprocess.TimeoutExpired:
                    pr.kill()
            serve_log = (tmp / "serve.log").read_text() if (tmp / "serve.log").exists() else ""

    phases = {"populate (P:P 1:0)": (t0, t1), "Gaussian gets (G:G 0:1, pipeline 8)": (t2, t3)}
    times, m = to_matrix(res, t_start, t_end, 1.0)
    title = (f"memcached, {a.keys:,} keys x {a.data_size} B (-m {mb} MiB), pageheat ptwalk aging {a.aging}, "
             f"{a.bins} bins, cpu_budget {a.cpu_budget or 0.02}, Prometheus scrape 1s\n"
             "sum by (le)(rate(pageheat_accessed_pages_bucket[5s])), per-bin; "
             f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    draw(times, m, phases, a.out, title)
    results = ROOT / "bench/results"
    results.mkdir(exist_ok=True)
    rec = {"date_utc": stamp, "args": {k: str(v) for k, v in vars(a).items()}, "memcached_mb": mb,
           "phases": {k: list(v) for k, v in phases.items()}, "t_start": t_start, "t_end": t_end,
           "populate": pop.__dict__, "gets": get.__dict__, "memcached_stats": st,
           "memcached_memory": rss + thp,
           "query": q, "result": res, "extra": extra, "serve_log_tail": serve_log[-4000:]}
    (results / f"seed_figure-{stamp}.json").write_text(json.dumps(rec))
    print(f"wrote {a.out} and bench/results/seed_figure-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

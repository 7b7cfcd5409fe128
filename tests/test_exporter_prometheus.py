"""`pageheat serve` monitoring the ground-truth workload, scraped by a real Prometheus."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import PAGEHEAT, free_port, stop_process, wait_http

pytestmark = [pytest.mark.kernel, pytest.mark.prometheus]


def start_serve(tmp: Path, config: str, *args: str) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    cfg = tmp / "pageheat.yml"
    cfg.write_text(config)
    log = tmp / "serve.log"
    proc = subprocess.Popen([*PAGEHEAT, "serve", "--config", str(cfg), "--listen",
                             f"127.0.0.1:{port}", *args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc, port, log


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


# A contiguous hot band: whole address bins are hot and others cold.
HOT_BAND = ("--size", "256MiB", "--layout", "contiguous", "--hot", "0.25", "--warm", "0.05")


def serve_following(tmp: Path, pid: int):
    """`pageheat serve` following pid, with fast intervals and bin addresses."""
    return start_serve(tmp, f"""
targets: {{pids: [{pid}], top_rss: 0}}
aging: 500ms
cpu_budget: 0.5
discovery_interval: 500ms
expose_addresses: true
""")


def serve_hot_band(workload, tmp: Path):
    """The ground-truth hot-band workload, followed by `pageheat serve` (serve_following)."""
    t = workload(*HOT_BAND)
    return (t, *serve_following(tmp, t.pid))


def scrape_job(port: int) -> str:
    return f"""
  - job_name: pageheat
    static_configs: [{{targets: ['127.0.0.1:{port}']}}]
"""


def test_heatmap_idle_and_vanishing_series(ptwalk_ok, workload, prometheus_server, tmp_path):
    t, serve, port, log = serve_hot_band(workload, tmp_path)
    try:
        prom = prometheus_server(scrape_job(port))
        pid = f'pid="{t.pid}"'
        wait_for(lambda: prom.query(f"pageheat_harvests_total{{{pid}}} > 20"), 60, "20 harvests")
        time.sleep(3)

        # Bins from the info metric (addresses exposed in this test's config).
        bins = {}
        for r in prom.query(f"pageheat_address_bin_info{{{pid}}}"):
            m = r["metric"]
            bins[int(m["bin"])] = (int(m["start"], 16), int(m["end"], 16))
        hot_bins, cold_bins = t.hot_and_cold_bins(bins)

        # Per-bin rate: difference of consecutive cumulative buckets.
        cum = {float(r["metric"]["le"]): float(r["value"][1]) for r in prom.query(
            f"sum by (le) (rate(pageheat_accessed_pages_bucket{{{pid}}}[10s]))")}
        les = sorted(cum)
        per_bin = {int(le): cum[le] - (cum[les[i - 1]] if i else 0.0)
                   for i, le in enumerate(les) if le != float("inf")}
        hot_rate = min(per_bin[b] for b in hot_bins)
        cold_rate = max(per_bin[b] for b in cold_bins)
        assert hot_rate > 5 * cold_rate, (per_bin, hot_bins, cold_bins)
        assert hot_rate > 100  # pages per second

        # Cold pages of the region are idle for more than 2 s (never-accessed ones in +Inf).
        idle = {r["metric"]["le"]: float(r["value"][1]) for r in prom.query(
            f"sum by (le) (pageheat_idle_pages_bucket{{{pid}}})")}
        assert idle["+Inf"] - idle["2.0"] >= len(t.cold)

        t.proc.terminate()
        t.proc.wait(10)
        wait_for(lambda: not prom.query(f"pageheat_resident_pages{{{pid}}}"), 30,
                 "series to vanish after the workload exited")
        assert prom.query("pageheat_targets{job='pageheat'} == 0")
    finally:
        stop_process(serve)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert f"stopped following pid {t.pid}" in text

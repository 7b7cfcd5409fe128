"""`pageheat demo`: the exporter on a built-in workload, its heat printed in the terminal.

Starts the ground-truth workload (a hot band in the middle of 256 MiB, a few warm pages,
the rest cold), starts `pageheat serve` on it, and every few seconds scrapes /metrics like
Prometheus would and prints accessed pages per second for each address bin.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

PERIOD = 3.0
BAR = 40


def _scrape(url: str) -> tuple[dict[int, float], dict[int, str]]:
    """Cumulative accessed pages per bin (summed over node/type) and bin labels."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    cum: dict[int, float] = {}
    labels: dict[int, str] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "pageheat_accessed_pages_bucket" and s.labels["le"] != "+Inf":
                b = int(float(s.labels["le"]))
                cum[b] = cum.get(b, 0.0) + s.value
            elif s.name == "pageheat_address_bin_info":
                labels[int(s.labels["bin"])] = s.labels["mappings"]
    per_bin = {b: cum[b] - cum.get(b - 1, 0.0) for b in sorted(cum)}
    return per_bin, labels


def _wait(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pageheat serve did not start") from None
            time.sleep(0.2)


def run(seconds: float, listen: str) -> int:
    me = [sys.executable, "-m", "pageheat"]
    with tempfile.TemporaryDirectory(prefix="pageheat-demo-") as tmp:
        truth = Path(tmp) / "truth.json"
        work = subprocess.Popen([*me, "workload", "--truth", str(truth), "--layout", "contiguous",
                                 "--hot", "0.2", "--warm", "0.05"])
        serve = None
        try:
            while not truth.exists():
                if work.poll() is not None:
                    raise RuntimeError("the demo workload did not start")
                time.sleep(0.05)
            serve = subprocess.Popen([*me, "serve", "--pid", str(work.pid), "--listen", listen,
                                      "--aging", "500ms"])
            url = f"http://{listen}/metrics"
            _wait(url, serve)
            print(f"pageheat serve is exporting {url} for the demo workload (pid {work.pid}):\n"
                  "256 MiB, a hot band in the middle read every 10 ms, 5% warm pages read every 2 s,\n"
                  "the rest never touched again. Accessed pages per second per address bin:\n")
            prev, _ = _scrape(url)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(PERIOD)
                cur, labels = _scrape(url)
                rates = {b: (cur.get(b, 0) - prev.get(b, 0)) / PERIOD for b in cur}
                prev = cur
                _print(rates, labels)
        finally:
            for p in (serve, work):
                if p and p.poll() is None:
                    p.terminate()
                    p.wait(10)
    return 0


def _print(rates: dict[int, float], labels: dict[int, str]) -> None:
    top = max(rates.values(), default=0) or 1.0
    lines = [f"{b:>3} {labels.get(b, '')[:22]:<22} {r:>9.0f}/s {'#' * round(BAR * r / top)}"
             for b, r in sorted(rates.items())]
    print("\n".join(lines) + "\n", flush=True)

"""`pageheat demo`: the exporter on a built-in workload, its heat printed in the terminal.

Starts the ground-truth workload (a hot band in the middle of 256 MiB, a few warm pages,
the rest cold), starts `pageheat serve` on it, and every few seconds scrapes /metrics like
Prometheus would and prints accessed pages per second for each address bin.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

from pageheat import config
from prometheus_client.parser import text_string_to_metric_families

PERIOD = 3.0
BAR = 40
START_TIMEOUT = 30.0


class DemoError(Exception):
    """Why the demo stops: one line (starting "pageheat: ") and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def scrape_url(listen: str) -> str:
    """The URL of serve's metrics, listening on ``listen``, that this host can connect to: an
    address that means "all addresses" (':PORT', 0.0.0.0, [::]) is scraped on the loopback of
    its family."""
    host, port = config.parse_listen(listen)
    try:
        if ipaddress.ip_address(host.partition("%")[0]).is_unspecified:
            host = "127.0.0.1" if "." in host else "::1"
    except ValueError:
        pass  # a host name
    if ":" in host:  # IPv6, in brackets; a zone's '%' is '%25' in a URL (RFC 6874)
        host = f"[{host.replace('%', '%25')}]"
    return f"http://{host}:{port}/metrics"


def _scrape(url: str, pid: int) -> tuple[dict[int, float], dict[int, str]]:
    """The process's cumulative accessed pages per bin (summed over node/type) and bin labels.
    Only its series: another exporter's, or other processes', are not the demo's."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    cum: dict[int, float] = {}
    labels: dict[int, str] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("pid") != str(pid):
                continue
            if s.name == "pageheat_accessed_pages_bucket" and s.labels["le"] != "+Inf":
                b = int(float(s.labels["le"]))
                cum[b] = cum.get(b, 0.0) + s.value
            elif s.name == "pageheat_address_bin_info":
                labels[int(s.labels["bin"])] = s.labels["mappings"]
    per_bin = {b: cum[b] - cum.get(b - 1, 0.0) for b in sorted(cum)}
    return per_bin, labels


class _Relay:
    """serve's stderr: held until serve is up, so that when it does not start, its one-line
    error is all that is said; then passed on as it comes."""

    def __init__(self, stream: IO[str]) -> None:
        self._held: list[str] = []
        self._live = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                if self._live:
                    sys.stderr.write(line)
                    sys.stderr.flush()
                else:
                    self._held.append(line)

    def pass_on(self) -> None:
        with self._lock:
            sys.stderr.write("".join(self._held))
            sys.stderr.flush()
            self._held.clear()
            self._live = True

    def error(self, code: int | None) -> str:
        """serve's error line, once it has exited (its last "pageheat: " line)."""
        self._thread.join(5)
        with self._lock:
            if self._live:  # what it said is said already
                return f"pageheat: the demo's pageheat serve stopped (exit status {code})"
            lines = [ln.strip() for ln in self._held if ln.strip()]
        said = [ln for ln in lines if ln.startswith("pageheat: ")]
        if said:
            return said[-1]
        return f"pageheat: pageheat serve exited with status {code}" + (
            f": {lines[-1]}" if lines else "")


def _serve_failed(serve: subprocess.Popen, relay: _Relay) -> DemoError:
    code = serve.wait()
    return DemoError(relay.error(code), code if code > 0 else 1)


def _wait(url: str, pid: int, serve: subprocess.Popen, relay: _Relay,
          timeout: float = START_TIMEOUT) -> None:
    """Until the demo's serve exports the workload. Another exporter on the same address
    answers too (and then the demo's serve cannot listen): only the workload's series,
    which no other exporter has, say that it is the demo's serve answering."""
    deadline = time.monotonic() + timeout
    why = "no answer"
    while True:
        if serve.poll() is not None:
            raise _serve_failed(serve, relay)
        try:
            _, labels = _scrape(url, pid)
            if labels:
                return
            why = f"no series of pid {pid} yet"
        except (OSError, ValueError) as e:
            why = str(e)
        if time.monotonic() > deadline:
            raise DemoError(f"pageheat: pageheat serve did not export {url} within "
                            f"{timeout:g} s ({' '.join(why.split())})")
        time.sleep(0.2)


def run(seconds: float, listen: str) -> int:
    try:
        return _run(seconds, listen)
    except DemoError as e:
        print(e, file=sys.stderr)
        return e.code


def _run(seconds: float, listen: str) -> int:
    me = [sys.executable, "-m", "pageheat"]
    url = scrape_url(listen)
    with tempfile.TemporaryDirectory(prefix="pageheat-demo-") as tmp:
        truth = Path(tmp) / "truth.json"
        work = subprocess.Popen([*me, "workload", "--truth", str(truth), "--layout", "contiguous",
                                 "--hot", "0.2", "--warm", "0.05"])
        serve = None
        try:
            while not truth.exists():
                if work.poll() is not None:
                    raise DemoError(f"pageheat: the demo workload did not start (exit status "
                                    f"{work.returncode})")
                time.sleep(0.05)
            serve = subprocess.Popen([*me, "serve", "--pid", str(work.pid), "--listen", listen,
                                      "--aging", "500ms"], stderr=subprocess.PIPE, text=True)
            relay = _Relay(serve.stderr)
            _wait(url, work.pid, serve, relay)
            relay.pass_on()
            print(f"pageheat serve is exporting {url} for the demo workload (pid {work.pid}):\n"
                  "256 MiB, a hot band in the middle read every 10 ms, 5% warm pages read every 2 s,\n"
                  "the rest never touched again. Accessed pages per second per address bin:\n",
                  flush=True)
            prev, _ = _scrape_serve(url, work.pid, serve, relay)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(PERIOD)
                cur, labels = _scrape_serve(url, work.pid, serve, relay)
                rates = {b: (cur.get(b, 0) - prev.get(b, 0)) / PERIOD for b in cur}
                prev = cur
                _print(rates, labels)
        finally:
            for p in (serve, work):
                if p and p.poll() is None:
                    p.terminate()
                    p.wait(10)
    return 0


def _scrape_serve(url: str, pid: int, serve: subprocess.Popen,
                  relay: _Relay) -> tuple[dict[int, float], dict[int, str]]:
    """_scrape, while the demo's serve runs (its error when it has stopped)."""
    if serve.poll() is not None:
        raise _serve_failed(serve, relay)
    try:
        return _scrape(url, pid)
    except (OSError, ValueError) as e:
        if serve.poll() is not None:
            raise _serve_failed(serve, relay) from e
        raise DemoError(f"pageheat: cannot scrape {url}: {' '.join(str(e).split())}") from e


def _print(rates: dict[int, float], labels: dict[int, str]) -> None:
    top = max(rates.values(), default=0) or 1.0
    lines = [f"{b:>3} {labels.get(b, '')[:22]:<22} {r:>9.0f}/s {'#' * round(BAR * r / top)}"
             for b, r in sorted(rates.items())]
    print("\n".join(lines) + "\n", flush=True)

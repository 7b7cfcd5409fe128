"""Shared fixtures: kernel gating, the ground-truth workload, the pageheat CLI, Prometheus.

A test that needs a kernel feature calls ``need_kernel(reason)`` when the feature is missing:
it skips only while PAGEHEAT_REQUIRE_KERNEL is unset, and fails when it is set (CI sets it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGEHEAT = [sys.executable, "-m", "pageheat"]


def need_kernel(reason: str) -> None:
    if os.environ.get("PAGEHEAT_REQUIRE_KERNEL"):
        pytest.fail(f"required kernel feature missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ptwalk_ok() -> None:
    """The ptwalk source loads here: root, BTF, BPF iterators."""
    if os.geteuid() != 0:
        need_kernel("not root")
    from pageheat.sources.base import SourceError
    from pageheat.sources.ptwalk import PtwalkSource

    try:
        PtwalkSource().close()
    except SourceError as e:
        need_kernel(str(e))


@dataclass
class Truth:
    """The ground-truth workload's page sets (indices of 4 KiB pages in its region)."""

    pid: int
    start: int
    size: int
    hot: np.ndarray
    warm: np.ndarray
    proc: subprocess.Popen

    @property
    def pages(self) -> int:
        return self.size // 4096

    @property
    def cold(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.pages), np.union1d(self.hot, self.warm))

    @property
    def range_arg(self) -> str:
        return f"{self.start:x}-{self.start + self.size:x}"

    def hot_and_cold_bins(self, bins: dict[int, tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Of address bins {bin: (start, end)} (pageheat_address_bin_info with
        expose_addresses): those wholly inside the contiguous hot band, and those wholly inside
        the region outside it."""
        hot_lo = self.start + int(self.hot[0]) * 4096
        hot_hi = self.start + (int(self.hot[-1]) + 1) * 4096
        hot = [b for b, (s, e) in bins.items() if s >= hot_lo and e <= hot_hi]
        cold = [b for b, (s, e) in bins.items()
                if s >= self.start and e <= self.start + self.size and (e <= hot_lo or s >= hot_hi)]
        assert len(hot) >= 1 and len(cold) >= 2, (bins, hot_lo, hot_hi)
        return sorted(hot), sorted(cold)


def start_workload(tmp: Path, *args: str, prefix: Sequence[str] = (), timeout: float = 180) -> Truth:
    """Start ``pageheat workload`` (behind ``prefix``: numactl, a cgroup shell) and read its truth.

    ``timeout`` is a deadline, not a wait: in a lab VM (QEMU without KVM, the checkout read
    over 9p) the first Python start imports numpy and pydantic at emulation speed, measured
    84 s on deb-6.12; on the host it takes about 0.6 s."""
    truth = tmp / f"truth-{time.monotonic_ns()}.json"
    proc = subprocess.Popen([*prefix, *PAGEHEAT, "workload", "--truth", str(truth), *args])
    deadline = time.monotonic() + timeout
    while not truth.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"workload exited with {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("workload did not start")
        time.sleep(0.05)
    t = json.loads(truth.read_text())
    return Truth(t["pid"], int(t["start"], 16), t["size"], np.array(t["hot"], dtype=np.int64),
                 np.array(t["warm"], dtype=np.int64), proc)


def truth_sets(t: Truth, pages: dict[int, dict]) -> tuple[np.ndarray, np.ndarray]:
    """(must be accessed in every scan, must never be accessed), as page indices.

    The Accessed bit of a PMD-mapped huge page covers all its 512 pages: such a page is hot
    if any of its pages is hot, and cold only if none of its pages is hot or warm.
    """
    thp = np.array([pages.get(i, {}).get("thp", False) for i in range(t.pages)])
    huge_of = np.arange(t.pages) // 512
    hot = np.zeros(t.pages, bool)
    hot[t.hot] = True
    touched = hot.copy()
    touched[t.warm] = True
    hot |= thp & np.isin(huge_of, huge_of[t.hot])
    touched |= thp & np.isin(huge_of, huge_of[np.flatnonzero(touched)])
    return np.flatnonzero(hot), np.flatnonzero(~touched)


def scan_matrix(t: Truth, pages: dict[int, dict], scans: int) -> np.ndarray:
    """[page index, scan] -> accessed (0/1), for every page of the region; -1: not reported."""
    m = np.full((t.pages, scans), -1, dtype=np.int8)
    for i, p in pages.items():
        m[i] = p["scans"]
    return m


@pytest.fixture
def workload(tmp_path: Path) -> Iterator:
    """Factory: ``workload("--size", "64MiB", ...)`` starts one; all are stopped afterwards."""
    started: list[Truth] = []

    def start(*args: str) -> Truth:
        t = start_workload(tmp_path, *args)
        started.append(t)
        return t

    yield start
    for t in started:
        stop_process(t.proc)


def stop_process(proc: subprocess.Popen, timeout: float = 5) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_pageheat(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*PAGEHEAT, *args], capture_output=True, text=True, timeout=timeout, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30, **kw) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2, **kw).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen

    def query(self, expr: str) -> list[dict]:
        import urllib.parse
        import urllib.request

        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def targets_up(self) -> bool:
        return any(float(r["value"][1]) == 1 for r in self.query("up"))


SCRAPE_SECONDS = 1  # the test Prometheus's scrape interval


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator:
    """Factory: ``prometheus_server(scrape_configs_yaml)`` starts Debian's Prometheus on loopback."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus)")
    procs: list[subprocess.Popen] = []

    def start(scrape_configs: str, rule_files: list[Path] | None = None) -> Prometheus:
        port = free_port()
        cfg = tmp_path / "prometheus.yml"
        rules = "".join(f"  - {p}\n" for p in rule_files or [])
        cfg.write_text(f"global:\n  scrape_interval: {SCRAPE_SECONDS}s\n  evaluation_interval: 1s\n"
                       + (f"rule_files:\n{rules}" if rules else "")
                       + "scrape_configs:\n" + scrape_configs)
        log = open(tmp_path / "prometheus.log", "w")
        proc = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path}/tsdb",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/-/ready")
        return Prometheus(url, proc)

    yield start
    for p in procs:
        stop_process(p)


def bpf_object_counts() -> tuple[int, int]:
    """(BPF programs, BPF links) on the system, from bpftool."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True,
                                      text=True, check=True).stdout)
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "list"], capture_output=True,
                                      text=True, check=True).stdout)
    return len(progs), len(links)

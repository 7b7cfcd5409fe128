"""Targets that misbehave: layout churn, death mid-harvest, hundreds of short-lived processes.
No crash, no traceback, no leaked file descriptors, BPF programs or links."""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import bpf_object_counts, stop_process, wait_http
from test_exporter_prometheus import start_serve

pytestmark = pytest.mark.kernel

CHURN = r"""
import mmap, random, time
random.seed(2)
maps = []
while True:
    if len(maps) > 40 or (maps and random.random() < 0.5):
        maps.pop(random.randrange(len(maps))).close()           # munmap
    else:
        m = mmap.mmap(-1, random.choice([4096, 1 << 20, 8 << 20]) , flags=mmap.MAP_PRIVATE)
        m[::4096] = b"x" * len(range(0, len(m), 4096))           # populate
        maps.append(m)
    time.sleep(0.001)
"""


def own_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_mmap_churn_during_harvests(ptwalk_ok) -> None:
    from pageheat.model.aggregate import TargetState
    from pageheat.sources.ptwalk import PtwalkSource

    proc = subprocess.Popen([sys.executable, "-c", CHURN])
    fds, objects = own_fds(), bpf_object_counts()
    try:
        time.sleep(0.3)
        src = PtwalkSource()
        src.attach(proc.pid)
        state = TargetState(proc.pid, "churn", 32, 120.0)
        for _ in range(60):
            h = src.cycle(proc.pid)
            assert len(h.pages) > 0 and not h.counters["dropped_tables"]
            assert (h.pages.vpn[1:] > h.pages.vpn[:-1]).all(), "pages sorted and unique"
            view = state.update(h, 0.02)
            assert view.resident.sum() == len(h.pages)
            time.sleep(0.02)
        src.close()
    finally:
        stop_process(proc)
    assert own_fds() == fds
    assert bpf_object_counts() == objects


def test_target_killed_mid_harvest(ptwalk_ok, workload) -> None:
    from pageheat.sources.base import TargetGone
    from pageheat.sources.ptwalk import PtwalkSource

    fds, objects = own_fds(), bpf_object_counts()
    src = PtwalkSource()
    outcomes = {"gone": 0, "ok": 0}
    for delay in (0.0, 0.001, 0.003, 0.01, 0.03):
        t = workload("--size", "512MiB")
        src.attach(t.pid)
        killer = threading.Timer(delay, os.kill, (t.pid, signal.SIGKILL))
        killer.start()
        try:
            for _ in range(200):
                src.cycle(t.pid)
                outcomes["ok"] += 1
        except TargetGone:
            outcomes["gone"] += 1
        finally:
            killer.join()
            src.detach(t.pid)
            t.proc.wait(10)
    src.close()
    assert outcomes["gone"] == 5
    assert own_fds() == fds
    assert bpf_object_counts() == objects


def fd_kinds(pid: int) -> collections.Counter[str]:
    """How many descriptors of each kind `pid` holds: a socket, pipe or anon inode counted by
    kind (its inode number changes when one is closed and another opened), a file by path."""
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while we listed it
        kinds[re.sub(r":\[\d+\]$", "", target)] += 1
    return kinds


def test_many_short_lived_processes(ptwalk_ok, tmp_path) -> None:
    """200 processes matched by a comm regex come and go while the daemon follows them."""
    short = tmp_path / "phshort"
    shutil.copy("/bin/sleep", short)
    objects = bpf_object_counts()
    serve, port, log = start_serve(tmp_path, """
targets: {comm_regex: "^phshort$", top_rss: 0}
aging: 100ms
cpu_budget: 1.0
discovery_interval: 100ms
""")
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        time.sleep(1.0)  # let the daemon settle before counting its descriptors
        fds_before = fd_kinds(serve.pid)
        procs: list[subprocess.Popen] = []
        for i in range(200):
            procs.append(subprocess.Popen([str(short), str(0.2 + (i % 7) * 0.1)]))
            time.sleep(0.02)
            if i % 50 == 0:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
                assert b"pageheat_targets" in body
        for p in procs:
            p.wait(30)
        # Every exit is noticed at that process's next harvest or the next discovery; the
        # harvest worker runs at SCHED_IDLE, so on a busy machine that can take a while.
        deadline = time.monotonic() + 30
        while True:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            if ("pageheat_targets 0.0" in metrics and 'comm="phshort"' not in metrics) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "pageheat_targets 0.0" in metrics, [x for x in metrics.splitlines() if "_targets" in x]
        assert 'comm="phshort"' not in metrics
        # The server closes the last scrape's socket just after the client has
        # read the body; give it a moment, then name whatever is left over.
        deadline = time.monotonic() + 5
        while fd_kinds(serve.pid) - fds_before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not fd_kinds(serve.pid) - fds_before, "descriptors leaked"
        progs, links = bpf_object_counts()
        assert links == objects[1], "BPF links leaked"
        assert serve.poll() is None
    finally:
        stop_process(serve)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert text.count("following pid") >= 100, "the daemon should have followed most of them"
    assert bpf_object_counts() == objects


def test_nothing_lost_at_scale(ptwalk_ok, workload) -> None:
    """An 8 GiB mapping (the sketch's seq_file output lost almost all of it), scanned with
    buffers deliberately too small: the source grows them and scans again."""
    from pageheat.sources.pagetable import _Capacity
    from pageheat.sources.ptwalk import PtwalkSource

    t = workload("--size", "8GiB", "--hot", "0.001", "--warm", "0")
    src = PtwalkSource()
    try:
        src.attach(t.pid)
        src._reload(_Capacity(vmas=4, tables=16))
        h = src.cycle(t.pid)
        lo, hi = t.start >> 12, (t.start + t.size) >> 12
        in_region = (h.pages.vpn >= lo) & (h.pages.vpn < hi)
        assert int(in_region.sum()) == t.pages
        assert src._cap.tables >= t.pages // 512
        hot = lo + t.hot.astype("uint64")
        assert h.pages.accessed[in_region][t.hot].all() and (h.pages.vpn[in_region][t.hot] == hot).all()
    finally:
        src.close()

"""exporter/serve/daemon.py's one published record per followed process: what the collector's
three callables (views, identities, frames) see after discovery, harvests, a rename and a drop.

Real processes (sleep children) are discovered; the source is a stand-in that returns a
synthetic harvest (two resident pages with frame numbers), so no kernel feature is needed."""

from __future__ import annotations

import subprocess
import time

import numpy as np
from pageheat.config import Config
from pageheat.serve.daemon import Daemon
from pageheat.sources.base import Harvest, Pages, Vmas


class _FakeSource:
    name = "synthetic"

    def __init__(self) -> None:
        self.detached: list[int] = []

    def attach(self, pid: int) -> None:
        pass

    def cycle(self, pid: int) -> Harvest:
        vpn = np.array([0x7f0000, 0x7f0001], dtype=np.uint64)
        pages = Pages(vpn, np.array([True, False]), np.zeros(2, np.int16), np.zeros(2, np.uint8),
                      np.zeros(2, bool), np.zeros(2, np.int32), pfn=vpn + np.uint64(pid << 20))
        vmas = Vmas(np.array([0x7f0000 << 12], np.uint64), np.array([0x7f0002 << 12], np.uint64),
                    np.zeros(1, np.uint8), np.ones(1, bool), [""])
        return Harvest(pid, time.monotonic(), pages, vmas, 0.0, 0.0)

    def detach(self, pid: int) -> None:
        self.detached.append(pid)

    def close(self) -> None:
        pass


def test_views_identities_frames_stay_in_step() -> None:
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    a, b = (p.pid for p in procs)
    src = _FakeSource()
    d = Daemon(Config(targets={"pids": [a, b], "top_rss": 0}), src)  # type: ignore[arg-type]
    try:
        d._discover()
        # Followed, not yet harvested: an identity each, no view, no frames.
        assert sorted(d.identities) == [a, b] and d.views == {} and d.frames == {}
        d._cycle(b)
        d._cycle(a)
        # Views in first-harvest order (the collector's tie-break), frames for both.
        assert list(d.views) == [b, a] and sorted(d.frames) == [a, b]
        assert d.views[a].pid == a and d.identities[a].comm == "sleep"
        d._cycle(b)
        assert list(d.views) == [b, a]  # a later harvest keeps the place
        d._drop(b, "test")
        assert list(d.views) == [a] and list(d.identities) == [a] and list(d.frames) == [a]
        assert src.detached == [b]
    finally:
        for p in procs:
            p.kill()
            p.wait()
        d._worker.shutdown()


def test_published_view_has_the_interval_the_budget_set() -> None:
    """A harvest that costs more than the CPU budget allows stretches the target's interval:
    the view published after it (pageheat_aging_interval_seconds, /api aging_interval_s)
    says the interval now in effect, not the one before."""

    class Costly(_FakeSource):
        def cycle(self, pid: int) -> Harvest:
            h = super().cycle(pid)
            return Harvest(h.pid, h.time, h.pages, h.vmas, 0.5, 0.0)  # 0.5 s of CPU a cycle

    p = subprocess.Popen(["sleep", "30"])
    cfg = Config(targets={"pids": [p.pid], "top_rss": 0})
    d = Daemon(cfg, Costly())  # type: ignore[arg-type]
    try:
        d._discover()
        d._cycle(p.pid)
        interval = d._targets[p.pid].interval
        assert interval > cfg.aging  # stretched by the budget
        assert d.views[p.pid].interval == interval
    finally:
        p.kill()
        p.wait()
        d._worker.shutdown()


def test_drop_trims_after_a_target_that_was_once_large(monkeypatch) -> None:
    """Dropping a target gives memory back (memory.trim) when it was ever large
    (memory.TRIM_MIN_PAGES resident pages at one harvest), even if it had shrunk by its
    last harvest; never after one that was always small."""
    from pageheat.serve import memory

    big = memory.TRIM_MIN_PAGES

    class Shrinking(_FakeSource):
        """``grows``'s first harvest has ``big`` pages, every other harvest 2."""

        def __init__(self) -> None:
            super().__init__()
            self.harvests: dict[int, int] = {}

        def cycle(self, pid: int) -> Harvest:
            n = big if pid == grows and not self.harvests.get(pid) else 2
            self.harvests[pid] = self.harvests.get(pid, 0) + 1
            vpn = np.arange(0x7f0000, 0x7f0000 + n, dtype=np.uint64)
            pages = Pages(vpn, np.ones(n, bool), np.zeros(n, np.int16), np.zeros(n, np.uint8),
                          np.zeros(n, bool), np.zeros(n, np.int32))
            vmas = Vmas(np.array([0x7f0000 << 12], np.uint64),
                        np.array([(0x7f0000 + big) << 12], np.uint64),
                        np.zeros(1, np.uint8), np.ones(1, bool), [""])
            return Harvest(pid, time.monotonic(), pages, vmas, 0.0, 0.0)

    trims: list[int] = []
    monkeypatch.setattr(memory, "trim", lambda: trims.append(1) or True)
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    grows, small = (p.pid for p in procs)
    d = Daemon(Config(targets={"pids": [grows, small], "top_rss": 0}), Shrinking())  # type: ignore[arg-type]
    try:
        d._discover()
        for _ in range(2):  # large, then small again
            d._cycle(grows)
            d._cycle(small)
        assert d.views[grows].resident_pages == 2  # shrunk by its last harvest
        d._drop(small, "test")
        assert trims == []
        d._drop(grows, "test")
        assert trims == [1]
    finally:
        for p in procs:
            p.kill()
            p.wait()
        d._worker.shutdown()


def test_an_explicit_pid_gone_before_discovery_is_logged_once(caplog) -> None:
    """`serve --pid P` where P exits between the start-up check and the first discovery:
    serve goes on (an exit is normal), and says so once instead of following nothing silently."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: no /proc/PID
    live = subprocess.Popen(["sleep", "30"])
    d = Daemon(Config(targets={"pids": [gone.pid, live.pid], "top_rss": 0}), _FakeSource())  # type: ignore[arg-type]
    try:
        for _ in range(3):
            d._discover()
        assert sorted(d.identities) == [live.pid]
        said = [r.getMessage() for r in caplog.records if "before it could be followed" in r.getMessage()]
        assert said == [f"pid {gone.pid} exited before it could be followed"]
    finally:
        live.kill()
        live.wait()
        d._close()

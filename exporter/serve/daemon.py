"""`pageheat serve`: follow the configured processes, harvest them on schedule, serve metrics.

One record per followed process (``_Target``: the process, its aggregator state, its schedule).
The asyncio loop only schedules and serves HTTP. Harvesting and aging are blocking system calls
(reading the BPF iterator, writing clear_refs), so they run on one worker thread; the loop stays
responsive and SIGTERM is answered within the current cycle. Launching ``serve -- CMD``'s
command is launch.py's; the JSON API's formats are api.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pageheat.config import Config
from pageheat.kernel import procfs
from pageheat.kernel.procfs import shown
from pageheat.model import fleet
from pageheat.model.aggregate import TargetState, TargetView
from pageheat.model.identity import Identity, identity
from pageheat.serve import api, budget, memory, targets
from pageheat.serve.collector import PageheatCollector
from pageheat.serve.http import HttpServer
from pageheat.serve.sanity import Sanity
from pageheat.serve.stats import Stats
from pageheat.serve.webconfig import WebConfig
from pageheat.sources.base import Source, TargetGone, cpu_time
from prometheus_client import CollectorRegistry, ProcessCollector

log = logging.getLogger("pageheat")
MAX_CONSECUTIVE_ERRORS = 3
BACKOFF_MAX_SECONDS = 300.0  # longest wait before retrying a process that could not be followed


@dataclasses.dataclass
class _Target:
    """A followed process and its schedule. Worker thread only, except ``cost`` (read by the
    JSON API on the loop: one attribute read)."""

    proc: targets.Process
    state: TargetState
    interval: float  # its aging interval, seconds: cfg.aging, stretched by the CPU budget
    due: float  # monotonic time of its next cycle
    cost: float | None = None  # smoothed CPU seconds per cycle (harvest + aging); None: no cycle yet
    errors: int = 0  # harvests that failed in a row
    # Most pages one harvest found: whether dropping it calls for memory.trim (its last view
    # may be of an exiting process whose memory is mostly gone already).
    peak_pages: int = 0


@dataclasses.dataclass(frozen=True)
class Published:
    """One followed process as scrapes and the JSON API see it: replaced whole, never mutated,
    so that a reader on another thread needs no lock.

    identity: its fleet identity (cgroup, comm) from discovery (None only for views published
    without a followed process, see Daemon.views); view: the aggregator's latest, None until
    its first harvest; frames: its pages by physical frame, when the source reads frame
    numbers (fleet.py).
    """

    identity: Identity | None
    view: TargetView | None = None
    frames: fleet.PageFrames | None = None


@dataclasses.dataclass
class _Refused:
    """A selected process that could not be followed, and when to try it again."""

    start_time: int
    attempts: int = 0
    next_try: float = 0.0


def worker_priority(priority: str) -> None:
    """Lower the calling thread's CPU priority (Linux: policies and nice values are per
    thread, and pid 0 means the calling thread). "idle": SCHED_IDLE, which the scheduler
    runs only beside nothing else runnable (kernel/sched/fair.c, SCHED_IDLE entities get
    the minimum weight); the harvest then never preempts the workload it watches. Where the
    policy cannot be set (seccomp, a restricted container), nice 19 instead. The cost: on a
    saturated host the harvest waits, and the cpu budget stretches the interval."""
    if priority != "idle":
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError) as e:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 19)
        except OSError:
            log.warning("harvest worker stays at normal priority: %s", e)


class Daemon:
    def __init__(self, cfg: Config, source: Source, web: WebConfig | None = None) -> None:
        self.cfg = cfg
        self.source = source
        self.stats = Stats()
        self.sanity = Sanity(self.stats)
        # pid -> what is published of each followed process: the dict is replaced, never
        # mutated, so scrapes read it lock-free. Ordered by first harvest among harvested
        # processes (views' order, the tie-break of the collector's size order).
        self._published: dict[int, Published] = {}
        self._targets: dict[int, _Target] = {}  # followed processes by pid
        self._refused: dict[int, _Refused] = {}  # selected but could not be followed
        self._pinned: dict[int, int] = {}  # explicit pid -> start_time of the process it named
        self._gone_early: set[int] = set()  # explicit pids that exited before discovery saw them
        self._shared: dict[int, int] = {}  # pid -> start_time, said to share a followed one's mm
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="harvest",
                                          initializer=worker_priority, initargs=(cfg.worker_priority,))
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PageheatCollector(cfg, lambda: self.views, self.stats, source.name,
                                                 identities=lambda: self.identities,
                                                 frames=lambda: self.frames))
        # Bumped after every piece of worker-thread work (harvest, drop, discovery), which is
        # what changes the views and the stats: /metrics is encoded at most once per value.
        self.generation = 0
        # Collectors that change between harvests (process_* self metrics) go here instead:
        # read at every scrape, never cached.
        self.live_registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.live_registry)  # process_* self metrics: CPU, memory, fds
        self.http = HttpServer(self.registry, web or WebConfig(),
                               {api.TARGETS_PATH: self._api_targets, api.HEAT_PATH: self._api_heat},
                               metrics_path=cfg.telemetry_path, generation=lambda: self.generation,
                               live=self.live_registry)

    @property
    def views(self) -> dict[int, TargetView]:
        """pid -> latest view of every harvested process (a new dict at each call)."""
        return {pid: p.view for pid, p in self._published.items() if p.view is not None}

    @views.setter
    def views(self, views: Mapping[int, TargetView]) -> None:
        """Publish ``views`` as they are, for a daemon that follows nothing itself (tests of
        the HTTP side); identities and frames of the same pids are kept."""
        old = self._published
        self._published = {pid: dataclasses.replace(old.get(pid, Published(None)), view=v)
                           for pid, v in views.items()}

    @property
    def identities(self) -> dict[int, Identity]:
        """pid -> fleet identity of every followed process (a new dict at each call)."""
        return {pid: p.identity for pid, p in self._published.items() if p.identity is not None}

    @property
    def frames(self) -> dict[int, fleet.PageFrames]:
        """pid -> pages by physical frame, of the harvested processes whose source reads frame
        numbers (a new dict at each call)."""
        return {pid: p.frames for pid, p in self._published.items() if p.frames is not None}

    async def run(self, stop: asyncio.Event) -> None:
        memory.one_arena()  # before the harvest thread's first allocation: see serve/memory.py
        addresses = self.cfg.listen_addresses
        await self.http.start(addresses)
        where = ", ".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                          for (host, _), port in zip(addresses, self.http.ports, strict=True))
        log.info("serving %s on %s, source %s, aging %gs", self.cfg.telemetry_path, where,
                 self.source.name, self.cfg.aging)
        loop = asyncio.get_running_loop()
        next_discovery = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_discovery:
                    await loop.run_in_executor(self._worker, self._discover)
                    self.generation += 1
                    next_discovery = time.monotonic() + self.cfg.discovery_interval
                for pid in [p for p, t in self._targets.items() if t.due <= now]:
                    if stop.is_set():
                        break
                    await loop.run_in_executor(self._worker, self._cycle, pid)
                    self.generation += 1
                wake = min([next_discovery, *(t.due for t in self._targets.values())]) \
                    - time.monotonic()
                if wake > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=wake)
                    except TimeoutError:
                        pass
        finally:
            await self.http.stop()
            await loop.run_in_executor(self._worker, self._close)
            self._worker.shutdown()
            log.info("stopped")

    # -- on the worker thread ------------------------------------------------------------------
    def _discover(self) -> None:
        try:
            wanted = {p.pid: p for p in targets.select(self.cfg.targets, pinned=self._pinned)}
        except OSError as e:
            self.stats.errors["discovery"] += 1
            log.warning("target discovery failed: %s", e)
            return
        self._pin(wanted)
        for pid in self.cfg.targets.pids:  # named explicitly, gone before it was ever followed
            if pid not in self._pinned and pid not in wanted and pid not in self._gone_early:
                self._gone_early.add(pid)
                log.warning("pid %d exited before it could be followed", pid)
        for pid, t in list(self._targets.items()):
            known = t.proc
            if pid not in wanted or wanted[pid].start_time != known.start_time:
                # an exiting process leaves the selection (its rss drops to 0) before /proc/PID goes
                running = procfs.is_running(pid, known.start_time)
                self._drop(pid, "no longer selected" if running else "exited")
            elif wanted[pid].comm != known.comm:
                self._rename(pid, wanted[pid])
            elif wanted[pid].cgroup != known.cgroup:  # moved to another cgroup: same history
                t.proc = wanted[pid]
        now = time.monotonic()
        for pid in [p for p, r in self._refused.items() if not procfs.is_running(p, r.start_time)]:
            del self._refused[pid]  # that process is gone: one that reuses the pid starts afresh
        for pid in [p for p, start in self._shared.items() if not procfs.is_running(p, start)]:
            del self._shared[pid]
        for pid, proc in wanted.items():
            refused = self._refused.get(pid)
            if pid in self._targets or (refused and now < refused.next_try):
                continue
            if self._shares_address_space(pid, proc):
                continue
            try:
                self.source.attach(pid)
            except TargetGone:
                continue
            except Exception as e:  # noqa: BLE001 - one bad target must not stop the daemon
                self._refuse(pid, proc, f"cannot follow pid {pid} ({shown(proc.comm)}): {e}")
                continue
            # Still in _refused until a harvest succeeds.
            self._targets[pid] = _Target(proc, TargetState(pid, proc.comm, self.cfg.bins,
                                                           self.cfg.cold_after),
                                         interval=self.cfg.aging,
                                         due=time.monotonic() + self.cfg.aging)
            log.info("following pid %d (%s), %d MiB resident%s", pid, shown(proc.comm),
                     proc.rss_pages * 4096 >> 20,
                     f", after {refused.attempts} failed attempts" if refused else "")
        self._publish_identities()

    def _shares_address_space(self, pid: int, proc: targets.Process) -> bool:
        """Whether ``pid`` shares its mm with a followed process (clone(CLONE_VM)): aging one
        ages both, so each would see only what was touched since the other's aging. It is
        left to the one followed first, said once per process."""
        twin = next((q for q in self._targets if procfs.same_address_space(pid, q)), None)
        if twin is None:
            return False
        if self._shared.get(pid) != proc.start_time:
            self._shared[pid] = proc.start_time
            log.info("not following pid %d (%s): it shares its address space with pid %d "
                     "(clone(CLONE_VM)), which is followed", pid, shown(proc.comm), twin)
        return True

    def _publish_identities(self) -> None:
        """Every followed process's identity from its current comm and cgroup, and none for
        any other: published records keep their place and view, new ones are added (without
        a view) at the end."""
        def current(pid: int) -> Identity | None:
            t = self._targets.get(pid)
            return identity(t.proc.cgroup, t.proc.comm) if t is not None else None

        old = self._published
        kept = {pid: dataclasses.replace(p, identity=current(pid)) for pid, p in old.items()}
        self._published = {**{pid: p for pid, p in kept.items()
                              if p.identity is not None or p.view is not None},
                           **{pid: Published(current(pid)) for pid in self._targets if pid not in old}}

    def _pin(self, wanted: dict[int, targets.Process]) -> None:
        """Remember which process each explicit pid named when first seen, so that a process
        that later reuses the pid is not taken for it (targets.select(pinned=...))."""
        for pid in self.cfg.targets.pids:
            if pid not in self._pinned and pid in wanted:
                self._pinned[pid] = wanted[pid].start_time

    def _refuse(self, pid: int, proc: targets.Process, why: str) -> None:
        """A selected process that cannot be followed: counted and logged once per process,
        retried with back-off (discovery_interval doubling up to BACKOFF_MAX_SECONDS)."""
        r = self._refused.get(pid)
        if r is None or r.start_time != proc.start_time:
            self.stats.errors["attach"] += 1
            log.warning("%s; retrying with back-off (up to every %gs)", why, BACKOFF_MAX_SECONDS)
            r = self._refused[pid] = _Refused(proc.start_time)
        else:
            log.debug("%s (attempt %d)", why, r.attempts + 1)
        r.attempts += 1
        delay = min(BACKOFF_MAX_SECONDS, self.cfg.discovery_interval * 2 ** min(r.attempts, 16))
        r.next_try = time.monotonic() + delay

    def _rename(self, pid: int, proc: targets.Process) -> None:
        """The process changed its comm (an exec, or prctl(PR_SET_NAME)): the same process, so
        its counters go on, but its series carry the new comm from the next scrape on and
        those with the old one go away. An exec's new address space starts a new page
        history and new bins in the aggregator (Harvest.address_space), comm or not."""
        t = self._targets[pid]
        log.info("pid %d is now %s (was %s)", pid, shown(proc.comm), shown(t.proc.comm))
        t.proc = proc
        t.state.comm = proc.comm
        self._publish_identities()
        p = self._published.get(pid)
        if p is not None and p.view is not None:
            self._publish(pid, dataclasses.replace(p, view=dataclasses.replace(p.view, comm=proc.comm)))

    def _cycle(self, pid: int) -> None:
        t = self._targets.get(pid)
        if t is None:
            return
        planned = t.due
        try:
            h = self.source.cycle(pid)
        except TargetGone:
            self._drop(pid, "exited")
            return
        except Exception as e:  # noqa: BLE001
            self.stats.errors["harvest"] += 1
            t.errors += 1
            log.warning("harvest of pid %d failed: %s", pid, e)
            if t.errors >= MAX_CONSECUTIVE_ERRORS:
                self._drop(pid, f"{MAX_CONSECUTIVE_ERRORS} harvests in a row failed")
                self._refuse(pid, t.proc, f"cannot harvest pid {pid} ({shown(t.proc.comm)}): {e}")
            else:
                t.due = time.monotonic() + t.interval
            return
        t.errors = 0
        t.peak_pages = max(t.peak_pages, len(h.pages))
        self._refused.pop(pid, None)
        self.sanity.check(h, t.proc.comm)
        started = cpu_time()
        view = t.state.update(h, t.interval)
        f = fleet.frames(t.state, h)
        # The aggregation counts with the harvest: with lazy pages (ptwalk) it decodes the bits.
        harvest_seconds = h.harvest_seconds + cpu_time() - started
        cost = harvest_seconds + h.aging_seconds
        self.stats.harvest.observe(harvest_seconds)
        self.stats.aging.observe(h.aging_seconds)
        self.stats.pages_scanned += len(h.pages)
        if cost > t.interval:
            self.stats.overruns += 1
        t.cost = budget.smooth(t.cost, cost)
        self._replan()
        # The view says the interval now in effect (the replan may have stretched it).
        view = dataclasses.replace(view, interval=t.interval)
        p = self._published.get(pid, Published(identity(t.proc.cgroup, t.proc.comm)))
        self._publish(pid, dataclasses.replace(p, view=view, frames=f if f is not None else p.frames))
        # Keep to the schedule without drifting, but never queue up missed cycles.
        t.due = max(planned + t.interval, time.monotonic())

    def _publish(self, pid: int, p: Published) -> None:
        """Replace ``pid``'s record in a new dict. A first view moves the record to the end,
        so that views stay in first-harvest order."""
        old = self._published
        if p.view is not None and (pid not in old or old[pid].view is None):
            self._published = {**{q: r for q, r in old.items() if q != pid}, pid: p}
        else:
            self._published = {**old, pid: p}

    def _replan(self) -> None:
        costs = {pid: t.cost for pid, t in self._targets.items() if t.cost is not None}
        new = budget.intervals(costs, self.cfg.aging, self.cfg.cpu_budget)
        for pid, interval in new.items():
            t = self._targets[pid]
            old = t.interval
            if abs(interval - old) > 0.25 * old:
                log.info("pid %d: aging interval %.2fs -> %.2fs (CPU budget %.1f%% of a core)",
                         pid, old, interval, 100 * self.cfg.cpu_budget)
            elif abs(interval - old) <= 0.05 * old:
                continue  # hysteresis: do not reschedule for noise
            t.due += interval - old
            t.interval = interval
        self.stats.cpu_usage = sum(costs[p] / self._targets[p].interval for p in costs)

    def _drop(self, pid: int, why: str) -> None:
        self.source.detach(pid)
        self.sanity.forget(pid)
        t = self._targets.pop(pid, None)
        self._published = {p: r for p, r in self._published.items() if p != pid}
        if t is None:
            return
        log.info("stopped following pid %d (%s): %s", pid, shown(t.proc.comm), why)
        big = memory.worth_trimming(t.peak_pages)
        del t  # its history goes with it, before the trim
        if big:
            memory.trim()  # its history and the source's arrays were freed: give the pages back

    def _close(self) -> None:
        for pid in list(self._targets):
            self._drop(pid, "shutting down")
        self.source.close()

    def _api_views(self, query: Mapping[str, str]) -> list[TargetView]:
        """The views the query selects: all, or the one of ``?pid=N`` (none if not followed).
        Raises BadRequest for a pid that is not a positive integer."""
        pid = api.selected_pid(query)
        return [v for v in self.views.values() if pid is None or v.pid == pid]

    def _cost_of(self, pid: int) -> float:
        t = self._targets.get(pid)
        return t.cost if t is not None and t.cost is not None else 0.0

    async def _api_targets(self, query: Mapping[str, str]) -> Any:
        return api.encode_targets([api.TargetSummary.of(v) for v in self._api_views(query)])

    async def _api_heat(self, query: Mapping[str, str]) -> Any:
        """Latest per-bin counts of every target, for `pageheat top --connect` (api.Heat).
        Addresses only with expose_addresses."""
        expose = self.cfg.expose_addresses
        return api.encode_heat(api.Heat(self.source.name, expose, tuple(
            api.HeatTarget.of(v, self._cost_of(v.pid), expose) for v in self._api_views(query))))

"""Prometheus metric families, built at scrape time from the aggregator's latest views.

Metric names and labels are pageheat's public API: add, never rename.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from pageheat import buildinfo
from pageheat.config import Config
from pageheat.model.aggregate import IDLE_BOUNDS, TargetView
from pageheat.model.fleet import (
    PAGE_BYTES,
    CgroupTotals,
    FrameDedupe,
    PageFrames,
    PromotedLedger,
    by_cgroup,
)
from pageheat.model.identity import Identity
from pageheat.serve.sanity import AGING_REASONS
from pageheat.serve.stats import Stats
from pageheat.sources.base import PAGE_TYPE_NAMES, TRUNCATION_REASONS
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

TARGET = ["pid", "comm"]
PAGES = ["pid", "comm", "node", "type"]
BIN_LE = [floatToGoString(i) for i in range(1024)]
IDLE_LE = [floatToGoString(b) for b in IDLE_BOUNDS]
SELF_SERIES = 64  # reserved for pageheat's own metrics when applying max_series

log = logging.getLogger("pageheat")


class PageheatCollector(Collector):
    def __init__(self, cfg: Config, views: Callable[[], dict[int, TargetView]], stats: Stats,
                 source_name: str,
                 identities: Callable[[], Mapping[int, Identity]] | None = None,
                 frames: Callable[[], Mapping[int, PageFrames]] | None = None) -> None:
        self.cfg = cfg
        self.views = views
        self.stats = stats
        self.source_name = source_name
        # pid -> identity of every followed process; without it, no info or cgroup metrics.
        self.identities = identities or (lambda: {})
        self.frames = frames or (lambda: {})
        self.promoted = PromotedLedger()
        self.dedupe = FrameDedupe()  # each cgroup's pages sorted by frame once, not per encoding
        self._dropped = (0, 0, 0)  # (infos, cgroups, targets) left out at the last logged scrape

    def _log_dropped(self, infos: int, cgroups: int, targets: int, series: int) -> None:
        """No silent caps: say so when max_series starts (or stops) leaving things out; once
        per change, not at every scrape."""
        if (infos, cgroups, targets) == self._dropped:
            return
        self._dropped = (infos, cgroups, targets)
        if infos or cgroups or targets:
            log.warning("max_series %d: left out %d pageheat_process_info series, %d cgroups and "
                        "%d processes (%d series) at this scrape; see pageheat_series_dropped",
                        self.cfg.max_series, infos, cgroups, targets, series)
        else:
            log.info("max_series %d: every series fits again", self.cfg.max_series)

    def collect(self) -> Iterator[Metric]:
        """Series budget (README, Cardinality): max_series - SELF_SERIES, spent in this order:
        one pageheat_process_info per followed process, largest process first; each cgroup's
        aggregates, largest cgroup first; per-process page series for the
        per_process_series_top largest processes, largest first. What does not fit is left
        out (a whole cgroup, a whole process) and counted."""
        views = sorted(self.views().values(), key=lambda v: -v.resident_pages)
        ids = dict(self.identities())
        unmonitored = {pid: reasons for pid, (_, reasons) in self.stats.unmonitored.copy().items()}
        budget = self.cfg.max_series - SELF_SERIES
        size = {v.pid: v.resident_pages for v in views}  # not yet harvested: last
        by_size = sorted(ids.items(), key=lambda kv: (-size.get(kv[0], -1), kv[0]))
        info, budget, dropped_infos, info_series = _fit(by_size, [1] * len(by_size), budget)
        info.sort()
        windows = self.cfg.working_set_windows
        every_group = by_cgroup(views, ids, self.frames(), unmonitored, self.dedupe)
        promoted = self.promoted.totals(views, ids, [g.cgroup for g in every_group])
        groups, budget, dropped_cgroups, cgroup_series = _fit(
            every_group, [cgroup_series_count(g, len(windows), g.cgroup in promoted) for g in every_group],
            budget)
        top = self.cfg.per_process_series_top
        heat, aggregated_only = views[:top], views[top:]
        # + pageheat_unmonitored_pages: one series per nonzero reason (_sanity)
        kept, budget, dropped_targets, target_series = _fit(
            heat, [series_count(v, self.cfg.never_accessed_mappings) + len(unmonitored.get(v.pid, {}))
                   for v in heat], budget)
        dropped_series = info_series + cgroup_series + target_series
        self.stats.series_dropped = dropped_series
        self.stats.targets_dropped = dropped_targets
        self._log_dropped(dropped_infos, dropped_cgroups, dropped_targets, dropped_series)
        self.stats.series_exported = self.cfg.max_series - SELF_SERIES - budget
        yield from self._pages(kept)
        yield from self._sanity(kept)
        yield from self._fleet(info, groups, promoted)
        yield from self._self_metrics(len(views))
        yield GaugeMetricFamily(
            "pageheat_targets_aggregated_only",
            "Followed processes beyond per_process_series_top (by resident size): counted only in "
            "their cgroup's pageheat_cgroup_* series, without per-process page series.",
            value=len(aggregated_only))
        yield GaugeMetricFamily(
            "pageheat_cgroups_dropped",
            "Cgroups whose pageheat_cgroup_* series were left out at the latest scrape to stay "
            "under max_series (the smallest by resident size).", value=dropped_cgroups)
        yield GaugeMetricFamily(
            "pageheat_process_info_dropped",
            "Followed processes whose pageheat_process_info series was left out at the latest "
            "scrape to stay under max_series (the smallest by resident size).", value=dropped_infos)

    def _fleet(self, info: list[tuple[int, Identity]], groups: list[CgroupTotals],
               promoted: dict[str, np.ndarray]) -> Iterator[Metric]:
        """The identity info metric and the per-cgroup aggregates (exporter/model/fleet.py), in bytes."""
        comms = {v.pid: v.comm for v in self.views().values()}  # the same as the page series'
        pinfo = GaugeMetricFamily(
            "pageheat_process_info",
            "1 for each followed process: its cgroup (memory controller's path on cgroup v1, "
            "unified on v2) and, for kubelet-made cgroups, container_id and pod_uid (else empty). "
            "Join with * on(pid) group_left(cgroup, pod_uid).",
            labels=["pid", "comm", "cgroup", "container_id", "pod_uid"])
        for pid, ident in info:
            pinfo.add_metric([str(pid), comms.get(pid, ident.comm), ident.cgroup, ident.container_id,
                              ident.pod_uid], 1)
        yield pinfo
        labels = ["cgroup", "node", "type"]
        resident = GaugeMetricFamily(
            "pageheat_cgroup_resident_bytes",
            "Resident bytes of the cgroup's followed processes; a physical page several of them map "
            "counts once when the source reads frame numbers (ptwalk), else once per process.",
            labels=labels)
        idle = GaugeHistogramMetricFamily(
            "pageheat_cgroup_idle_bytes",
            "Resident bytes of the cgroup's followed processes by seconds since last seen "
            "accessed (same bounds as pageheat_idle_pages); never-accessed only in +Inf. "
            "gsum: byte-seconds.", labels=labels)
        wss = GaugeMetricFamily(
            "pageheat_cgroup_working_set_bytes",
            "Bytes of the cgroup's followed processes seen accessed within the last window "
            "(idle age <= window), as of each process's latest harvest.",
            labels=["cgroup", "window"])
        # A counter histogram, like pageheat_promoted_pages (a counter may not carry "le": promtool
        # check metrics refuses it). No _sum: the ledger keeps bucket counts only.
        prom = HistogramMetricFamily(
            "pageheat_cgroup_promoted_bytes",
            "Bytes of the cgroup's followed processes found accessed after being idle, by how long "
            "they had been idle (le, seconds, cumulative; never-accessed only in +Inf), summed over "
            "harvests; kept monotonic while the cgroup's processes come and go.",
            labels=["cgroup"])
        for g in groups:
            for (node, ptype), pages in sorted(g.resident().items()):
                lab = [g.cgroup, str(node), PAGE_TYPE_NAMES[ptype]]
                resident.add_metric(lab, pages * PAGE_BYTES)
                icum = np.cumsum(g.idle[(node, ptype)]) * PAGE_BYTES
                idle.add_metric(lab, [(IDLE_LE[i] if i < len(IDLE_LE) - 1 else "+Inf", int(c))
                                      for i, c in enumerate(icum)],
                                gsum_value=g.idle_seconds[(node, ptype)] * PAGE_BYTES)
            for w in self.cfg.working_set_windows:
                wss.add_metric([g.cgroup, _window(w)], g.working_set_pages(w) * PAGE_BYTES)
            if g.cgroup in promoted:
                pcum = np.cumsum(promoted[g.cgroup]) * PAGE_BYTES
                prom.add_metric([g.cgroup], [(IDLE_LE[i] if i < len(IDLE_LE) - 1 else "+Inf", int(c))
                                             for i, c in enumerate(pcum)], None)
        yield from (resident, idle, wss)
        unmon = GaugeMetricFamily(
            "pageheat_cgroup_unmonitored_bytes",
            "Mapped bytes of the cgroup's followed processes that pageheat cannot monitor, by reason "
            "(as pageheat_unmonitored_pages), summed over all of them, those without per-process "
            "series included; a page several of them map counts once per process. Nonzero only.",
            labels=["cgroup", "reason"])
        for g in groups:
            for reason, pages in sorted(g.unmonitored.items()):
                unmon.add_metric([g.cgroup, reason], pages * PAGE_BYTES)
        yield unmon
        if prom.samples:  # only with the per-page promotion counts (aggregate.py)
            yield prom

    def _pages(self, views: list[TargetView]) -> Iterator[Metric]:
        accessed = HistogramMetricFamily(
            "pageheat_accessed_pages",
            "Pages found accessed at each harvest, observed at their address bin index (le).",
            labels=PAGES)
        resident = GaugeMetricFamily("pageheat_resident_pages", "Resident pages per address bin.",
                                     labels=[*PAGES, "bin"])
        idle = GaugeHistogramMetricFamily(
            "pageheat_idle_pages",
            "Resident pages by seconds since last seen accessed; never-accessed pages only in +Inf.",
            labels=PAGES)
        # A counter histogram; not named *_total: `promtool check metrics` rejects that suffix on
        # a histogram ("non-counter metrics should not have _total suffix"); _count is the total.
        promoted = HistogramMetricFamily(
            "pageheat_promoted_pages",
            "Pages found accessed that were resident at the previous harvest, by how long they had "
            "been idle there (le, seconds: their pageheat_idle_pages bucket; never-accessed pages only "
            "in +Inf); _sum is their summed idle seconds.",
            labels=PAGES)
        never = GaugeMetricFamily("pageheat_never_accessed_pages",
                                  "Resident pages never seen accessed, per mapping.",
                                  labels=[*TARGET, "mapping"])
        bin_info = InfoMetricFamily("pageheat_address_bin", "Address bins of a monitored process.",
                                    labels=[*TARGET, "bin"])
        interval = GaugeMetricFamily("pageheat_aging_interval_seconds",
                                     "Effective aging interval (stretched by the CPU budget).",
                                     labels=TARGET)
        period = GaugeMetricFamily(
            "pageheat_aging_period_seconds",
            "Achieved time between the last two harvests; longer than the effective interval "
            "when harvesting falls behind (CPU contention).", labels=TARGET)
        rebins = CounterMetricFamily("pageheat_rebins", "Times the address bins were recomputed.",
                                     labels=TARGET)
        harvests = CounterMetricFamily("pageheat_harvests", "Harvests of this process.",
                                       labels=TARGET)
        wss = GaugeMetricFamily("pageheat_working_set_pages",
                                "Pages accessed during the latest aging interval.", labels=TARGET)
        cold = GaugeMetricFamily("pageheat_cold_pages",
                                 "Resident pages idle longer than cold_after, or never accessed.",
                                 labels=TARGET)
        total = GaugeMetricFamily("pageheat_process_resident_pages",
                                  "Resident pages of the process seen by the last harvest.",
                                  labels=TARGET)
        lru_gen = GaugeMetricFamily(
            "pageheat_lru_gen_pages",
            "Pages in each MGLRU generation (age rank, 0 youngest) of the memory cgroup the process "
            "is charged to, at the latest harvest: the kernel's MGLRU view of the whole memcg "
            "(all processes charged to it), not per process.",
            labels=[*PAGES, "generation"])
        for v in views:
            pid = str(v.pid)
            t = [pid, v.comm]
            for row, (node, ptype) in enumerate(v.combos):
                labels = [pid, v.comm, str(node), PAGE_TYPE_NAMES[ptype]]
                counts = v.accessed_cum[row]
                cum = np.cumsum(counts)
                buckets = [(BIN_LE[i], int(c)) for i, c in enumerate(cum)]
                buckets.append(("+Inf", int(cum[-1])))
                accessed.add_metric(labels, buckets,
                                    float(np.dot(counts.astype(np.float64), np.arange(len(counts)))))
                for b in np.flatnonzero(v.resident[row]):
                    resident.add_metric([*labels, str(b)], int(v.resident[row][b]))
                icum = np.cumsum(v.idle[row])
                idle.add_metric(labels, [(IDLE_LE[i] if i < len(IDLE_LE) - 1 else "+Inf", int(c))
                                         for i, c in enumerate(icum)],
                                gsum_value=float(v.idle_seconds[row]))
                if v.promoted is not None and v.promoted_seconds is not None:
                    pcum = np.cumsum(v.promoted[row])
                    promoted.add_metric(labels, [(IDLE_LE[i] if i < len(IDLE_LE) - 1 else "+Inf", int(c))
                                                 for i, c in enumerate(pcum)],
                                        float(v.promoted_seconds[row]))
            top = sorted(v.never_accessed.items(), key=lambda kv: -kv[1])
            limit = self.cfg.never_accessed_mappings
            for name, n in top[:limit]:
                never.add_metric([*t, name], n)
            if len(top) > limit:
                never.add_metric([*t, "other"], sum(n for _, n in top[limit:]))
            for b in range(v.bins.n):
                info = {"size_bytes": str(int(v.bins.bytes[b])), "mappings": v.bins.labels[b]}
                if self.cfg.expose_addresses:
                    info["start"] = hex(int(v.bins.edges[b]) << 12)
                    info["end"] = hex(int(v.bins.edges[b + 1]) << 12)
                bin_info.add_metric([*t, str(b)], info)
            interval.add_metric(t, v.interval)
            if v.period > 0:
                period.add_metric(t, v.period)
            rebins.add_metric(t, v.rebins)
            harvests.add_metric(t, v.harvests)
            wss.add_metric(t, v.wss_pages)
            cold.add_metric(t, v.cold_pages)
            total.add_metric(t, v.resident_pages)
            for g in v.lru_gen:
                lru_gen.add_metric([pid, v.comm, str(g.node), g.type, str(g.generation)], g.pages)
        yield from (accessed, resident, idle, promoted, never, bin_info, interval, period, rebins, harvests,
                    wss, cold, total)
        if lru_gen.samples:  # only sources that read MGLRU's histogram have it (not ptwalk)
            yield lru_gen

    def _sanity(self, views: list[TargetView]) -> Iterator[Metric]:
        """exporter/serve/sanity.py's findings; every known reason exported, at 0 until it happens."""
        s = self.stats
        unmon = GaugeMetricFamily(
            "pageheat_unmonitored_pages",
            "Mapped 4 KiB pages of the process that pageheat cannot monitor, by reason (hugetlb: "
            "clear_refs does not age it; pfnmap: device/PFN maps; vdso), at the latest harvest.",
            labels=[*TARGET, "reason"])
        for v in views:
            for reason, n in s.unmonitored.get(v.pid, ("", {}))[1].items():
                unmon.add_metric([str(v.pid), v.comm, reason], n)
        yield unmon
        trunc = CounterMetricFamily(
            "pageheat_walk_truncations",
            "Harvests that could not read everything, by reason (step_limit: VMAs whose walk ran "
            "out of BPF loop steps; read_error: page-table reads that failed; young_map_full: "
            "young pages the BPF hash had no room for).", labels=["reason"])
        for reason in sorted({*TRUNCATION_REASONS, *s.truncations}):
            trunc.add_metric([reason], s.truncations[reason])
        yield trunc
        aging = CounterMetricFamily(
            "pageheat_aging_ineffective",
            "Times aging looked ineffective, by reason (all_accessed: every resident page "
            "accessed in several harvests in a row; no_new_generation: an MGLRU aging added no "
            "generation).", labels=["reason"])
        for reason in sorted({*AGING_REASONS, *s.aging_ineffective}):
            aging.add_metric([reason], s.aging_ineffective[reason])
        yield aging

    def _self_metrics(self, n_targets: int) -> Iterator[Metric]:
        s = self.stats
        for name, hist, what in (("pageheat_harvest_duration_seconds", s.harvest,
                                  "reading the bits, decoding and aggregating them"),
                                 ("pageheat_aging_duration_seconds", s.aging, "aging")):
            h = HistogramMetricFamily(name, f"CPU time per target cycle spent {what}.")
            h.add_metric([], hist.buckets(), hist.total)
            yield h
        yield CounterMetricFamily("pageheat_pages_scanned", "Resident pages harvested.",
                                  value=s.pages_scanned)
        yield CounterMetricFamily("pageheat_harvest_overruns",
                                  "Cycles whose CPU cost exceeded their aging interval.",
                                  value=s.overruns)
        errors = CounterMetricFamily("pageheat_errors", "Errors by kind.", labels=["kind"])
        for kind, n in sorted(s.errors.items()):
            errors.add_metric([kind], n)
        yield errors
        yield GaugeMetricFamily("pageheat_targets", "Processes monitored.", value=n_targets)
        yield GaugeMetricFamily("pageheat_cpu_usage_ratio",
                                "Fraction of one CPU spent on harvest and aging (smoothed).",
                                value=s.cpu_usage)
        yield GaugeMetricFamily("pageheat_cpu_budget_ratio", "Configured CPU budget.",
                                value=self.cfg.cpu_budget)
        yield GaugeMetricFamily("pageheat_series", "Page series exported at the latest scrape.",
                                value=s.series_exported)
        yield GaugeMetricFamily("pageheat_series_dropped",
                                "Series left out at the latest scrape to stay under max_series.",
                                value=s.series_dropped)
        yield GaugeMetricFamily("pageheat_targets_dropped",
                                "Processes left out at the latest scrape to stay under max_series.",
                                value=s.targets_dropped)
        info = InfoMetricFamily("pageheat_build", "pageheat version, git revision, harvesting "
                                "source, kernel release and Python version.")
        info.add_metric([], buildinfo.labels(self.source_name))
        yield info


def _window(seconds: float) -> str:
    """A window as a Prometheus-style duration label: 30s, 1m, 5m, 1h."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _fit(items: list, costs: list[int], budget: int) -> tuple[list, int, int, int]:
    """Keep items (largest first) while their series fit the budget; once one does not fit,
    it and all after it are left out. Returns (kept, budget left, items left out, their series)."""
    kept = []
    for i, (item, n) in enumerate(zip(items, costs, strict=True)):
        if n > budget:
            return kept, budget, len(items) - i, sum(costs[i:])
        kept.append(item)
        budget -= n
    return kept, budget, 0, 0


def series_count(view: TargetView, max_never_mappings: int) -> int:
    """The page series ``PageheatCollector`` exports for one view: what the series budget
    (``max_series``) charges it. One term per metric family of ``_pages``: keep them in step."""
    n_combo, n_bins = view.accessed_cum.shape
    return (
        n_combo * (n_bins + 3)  # accessed histogram: buckets incl. +Inf, _sum, _count
        + int(np.count_nonzero(view.resident))  # resident per bin (zeros omitted)
        + n_combo * (len(IDLE_BOUNDS) + 2)  # idle gauge histogram
        + (n_combo * (len(IDLE_BOUNDS) + 2) if view.promoted is not None else 0)  # promoted
        + min(len(view.never_accessed), max_never_mappings + 1)
        + n_bins  # address_bin_info
        + 6  # per-target gauges
        + int(view.period > 0)  # aging_period_seconds
        + len(view.lru_gen)  # lru_gen_pages
    )


def cgroup_series_count(totals: CgroupTotals, n_windows: int, promoted: bool = False) -> int:
    """The series ``PageheatCollector`` exports for one cgroup (keep in step with ``_cgroups``
    and the README's formula): per (node, type) combination one resident gauge and the idle
    gauge histogram's buckets + _gcount + _gsum; one working-set gauge per window; the
    promotion histogram's buckets; one unmonitored gauge per nonzero reason."""
    n = len(totals.idle)
    return (n * (1 + len(IDLE_BOUNDS) + 2) + n_windows + (len(IDLE_BOUNDS) if promoted else 0)
            + len(totals.unmonitored))

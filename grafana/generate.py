"""Generate pageheat's Grafana dashboards with grafana-foundation-sdk.

    python grafana/generate.py            # write grafana/dashboards/*.json
    python grafana/generate.py --check    # exit 1 when the committed JSON is out of date

The JSON in grafana/dashboards/ is what Grafana provisions (grafana/provisioning/); edit this
file, not the JSON. tests/test_dashboards.py checks that the JSON is up to date and evaluates
every panel query against a real Prometheus scraping a real `pageheat serve`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, dashboard, heatmap, prometheus, stat, table
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).resolve().parent / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Selectors shared by the panels: every template variable narrows every per-process query.
# `instance` names the host: the ServiceMonitor (deploy/kubernetes/) sets it to the node name.
HOST = 'job=~"$job", instance=~"$instance"'
PROC = f'{HOST}, comm=~"$comm", pid=~"$pid"'
PAGES = f'{PROC}, node=~"$node", type=~"$type"'


def q(expr: str, legend: str = "", fmt: PromQueryFormat = PromQueryFormat.TIME_SERIES,
      instant: bool = False, ref: str = "A") -> prometheus.Dataquery:
    d = prometheus.Dataquery().expr(expr).ref_id(ref).format(fmt).datasource(DS)
    if legend:
        d = d.legend_format(legend)
    return d.instant() if instant else d.range()


def datasource_var() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def query_var(name: str, label: str, query: str, single: bool = False) -> dashboard.QueryVariable:
    """A variable from a label_values() query; "All" by default, or (``single``) one value,
    the first, with no "All": a pid is meaningful on one host only, and one process's heatmap
    is what the per-process dashboard is for."""
    v = (dashboard.QueryVariable(name).label(label).datasource(DS)
         .query({"query": query, "refId": f"{name}-var"})
         .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))
    if single:
        return v.multi(False).include_all(False)
    return (v.multi(True).include_all(True).all_value(".*")
            .current(VariableOption(selected=True, text="All", value="$__all")))


def variables(names: tuple[str, ...], single: tuple[str, ...] = ()) -> list:
    defs = {
        "job": ("Job", "label_values(pageheat_build_info, job)"),
        "instance": ("Host", 'label_values(pageheat_build_info{job=~"$job"}, instance)'),
        "comm": ("Command", f"label_values(pageheat_process_resident_pages{{{HOST}}}, comm)"),
        "pid": ("PID", f'label_values(pageheat_process_resident_pages{{{HOST}, comm=~"$comm"}}, pid)'),
        "node": ("NUMA node", f"label_values(pageheat_idle_pages_bucket{{{PROC}}}, node)"),
        "type": ("Page type", f"label_values(pageheat_idle_pages_bucket{{{PROC}}}, type)"),
        "cgroup": ("Cgroup", f"label_values(pageheat_cgroup_resident_bytes{{{HOST}}}, cgroup)"),
    }
    return [datasource_var(), *(query_var(n, *defs[n], single=n in single) for n in names)]


def heat(title: str, expr: str, unit: str, description: str, scheme: str = "Oranges",
         ylabel: str = "address bin") -> heatmap.Panel:
    """A heatmap of cumulative `le` buckets: format heatmap makes Grafana de-accumulate them."""
    return (heatmap.Panel().title(title).description(description).datasource(DS)
            .with_target(q(expr, "{{le}}", PromQueryFormat.HEATMAP))
            .calculate(False).unit(unit)
            .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.LE))
            .color(heatmap.HeatmapColorOptions().mode("scheme").scheme(scheme)
                   .scale("exponential").exponent(0.5).steps(64).fill("dark-orange").reverse(False))
            .y_axis(heatmap.YAxisConfig().axis_label(ylabel).unit("short").decimals(0))
            .cell_gap(0).show_legend().show_tooltip().show_y_histogram().max_data_points(200))


def timeseries(title: str, targets: list[prometheus.Dataquery], unit: str, description: str,
               ) -> ts.Panel:
    p = ts.Panel().title(title).description(description).datasource(DS).unit(unit)
    for t in targets:
        p = p.with_target(t)
    return (p.fill_opacity(10).line_width(1)
            .legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                    .placement(cm.LegendPlacement.BOTTOM).show_legend(True)
                    .calcs(["lastNotNull", "max"])))


def process_dashboard() -> dashboard.Dashboard:
    accessed = f"sum by (le) (rate(pageheat_accessed_pages_bucket{{{PAGES}}}[$__rate_interval]))"
    d = (dashboard.Dashboard("pageheat / process").uid("pageheat-process")
         .description("Where a process's memory is hot and cold: page-table Accessed bits by address "
                      "bin over time, idle ages, cold ratio, working set.")
         .tags(["pageheat"]).time("now-30m", "now").refresh("30s")
         .tooltip(DashboardCursorSync.CROSSHAIR).editable()
         .variables(variables(("job", "instance", "comm", "pid", "node", "type"), single=("pid",)))
         .with_row(dashboard.Row("Heat"))
         .with_panel(heat(
             "Accessed pages per second by address bin", accessed, "short",
             "rate(pageheat_accessed_pages_bucket): pages found accessed per second in each "
             "address bin (y, bin 0 = lowest address), summed over the selected processes. The "
             "table on the right says which mappings each bin covers.").height(14).span(16))
         .with_panel(table.Panel().title("Address bins").datasource(DS)
                     .description("pageheat_address_bin_info: the mappings and size of each bin.")
                     .with_target(q(f'max by (pid, bin, mappings, size_bytes) '
                                    f'(pageheat_address_bin_info{{{PROC}}})',
                                    fmt=PromQueryFormat.TABLE, instant=True))
                     .height(14).span(8))
         .with_panel(heat(
             "Accessed pages per second by address bin, node $node",
             f"sum by (le) (rate(pageheat_accessed_pages_bucket{{{PAGES}}}[$__rate_interval]))",
             "short", "The address-bin heatmap for one NUMA node (repeated per selected node).",
             scheme="Blues").repeat("node").repeat_direction("h").height(10).span(12))
         .with_panel(heat(
             "Accessed pages per second by address bin, $type pages",
             f"sum by (le) (rate(pageheat_accessed_pages_bucket{{{PAGES}}}[$__rate_interval]))",
             "short", "The address-bin heatmap for one page type: anon, file or shmem "
             "(repeated per selected type).", scheme="Greens").repeat("type").repeat_direction("h")
                     .height(10).span(12))
         .with_row(dashboard.Row("Idle ages and cold memory"))
         .with_panel(heat(
             "Resident pages by idle age",
             f"sum by (le) (pageheat_idle_pages_bucket{{{PAGES}}})", "short",
             "pageheat_idle_pages: resident pages by seconds since last seen accessed (y: idle "
             "age bucket, +Inf holds pages never seen accessed), over time.",
             scheme="Purples", ylabel="idle seconds").height(10).span(12))
         .with_panel(timeseries(
             "Cold ratio", [
                 q(f"pageheat:cold_ratio_120s:ratio{{{PROC}}}", "{{comm}} {{pid}} > 120 s"),
                 q(f"pageheat:cold_ratio_600s:ratio{{{PROC}}}", "{{comm}} {{pid}} > 600 s", ref="B")],
             "percentunit", "Share of resident pages idle for more than 120 s / 600 s, or never "
             "accessed (recording rules from deploy/prometheus/rules).").min(0).max(1)
             .height(10).span(12))
         .with_panel(timeseries(
             "Working set, cold and resident memory", [
                 q(f"pageheat:working_set_bytes:sum{{{PROC}}}", "{{comm}} {{pid}} working set"),
                 q(f"pageheat:cold_bytes_120s:sum{{{PROC}}}", "{{comm}} {{pid}} cold > 120 s", ref="B"),
                 q(f"pageheat:resident_bytes:sum{{{PROC}}}", "{{comm}} {{pid}} resident", ref="C")],
             "bytes", "Working set: pages accessed in the latest aging interval. Cold: idle for "
             "more than 120 s or never accessed.").height(10).span(12))
         .with_panel(bargauge.Panel().title("Never accessed, by mapping").datasource(DS)
                     .description("pageheat_never_accessed_pages: resident pages never seen "
                                  "accessed since pageheat began following the process.")
                     .with_target(q(f"sort_desc(sum by (mapping) "
                                    f"(pageheat_never_accessed_pages{{{PROC}}}) * 4096)",
                                    "{{mapping}}", instant=True))
                     .unit("bytes").orientation(cm.VizOrientation.HORIZONTAL)
                     .display_mode(cm.BarGaugeDisplayMode.GRADIENT).height(10).span(12))
         .with_row(dashboard.Row("Promotions: cold pages accessed again"))
         .with_panel(heat(
             "Pages accessed again per second, by how long they had been idle",
             f"sum by (le) (rate(pageheat_promoted_pages_bucket{{{PAGES}}}[$__rate_interval]))", "short",
             "pageheat_promoted_pages: pages found accessed that were resident at the previous "
             "harvest, by the idle age they had there (y; +Inf also holds pages never seen "
             "accessed before). High rows are cold pages coming back: what reclaiming them "
             "would have cost in faults.", scheme="Reds", ylabel="idle seconds").height(10).span(12))
         .with_panel(timeseries(
             "Promotion rate of pages idle > 120 s", [
                 q(f"pageheat:promotion_rate_120s:ratio{{{PROC}}}", "{{comm}} {{pid}}")],
             "percentunit", "Pages accessed again after more than 120 s idle, per minute, as a "
             "share of the working set at 120 s (recording rule pageheat:promotion_rate_120s:ratio). "
             "Google's far-memory SLO (ASPLOS'19) is 0.2% per minute: below it, pages idle for "
             "120 s are safe to move to far memory (zswap).").min(0).height(10).span(12)))
    return d


def fleet_dashboard() -> dashboard.Dashboard:
    sel = f'{HOST}, comm=~"$comm"'
    cg = f'{HOST}, cgroup=~"$cgroup"'
    # cgroup -> pod uid (pageheat_process_info), pod uid -> namespace and name (kube-state-metrics'
    # kube_pod_info, whose uid label is the pod's uid). pageheat never calls the Kubernetes API.
    # label_join(v, "dst", "", "src") copies a label: label_replace's "$1" would read as a
    # Grafana variable.
    pod_of = (f'* on (instance, cgroup) group_left (pod_uid) max by (instance, cgroup, pod_uid) '
              f'(pageheat_process_info{{{HOST}, pod_uid!=""}}) '
              f'* on (pod_uid) group_left (namespace, pod) max by (pod_uid, namespace, pod) '
              f'(label_join(kube_pod_info, "pod_uid", "", "uid"))')
    to_process = (dashboard.DashboardLink("Per-process heatmap").type(DashboardLinkType.LINK)
                  .url("/d/pageheat-process/pageheat-process?var-job=${__data.fields.job}"
                       "&var-instance=${__data.fields.instance}&var-pid=${__data.fields.pid}"
                       "&${__url_time_range}"))
    return (dashboard.Dashboard("pageheat / fleet").uid("pageheat-fleet")
            .description("Cold memory and working set across hosts, cgroups (containers, pods, "
                         "services) and processes.")
            .tags(["pageheat"]).time("now-6h", "now").refresh("1m").editable()
            .variables(variables(("job", "instance", "cgroup", "comm")))
            .links([dashboard.DashboardLink("Per-process heatmap").type(DashboardLinkType.DASHBOARDS)
                    .tags(["pageheat"]).include_vars(True).keep_time(True)])
            .with_panel(stat.Panel().title("Cold memory (> 600 s)").datasource(DS)
                        .with_target(q(f"sum(pageheat:cgroup_cold_bytes_600s:sum{{{cg}}})", instant=True))
                        .unit("bytes").height(5).span(6))
            .with_panel(stat.Panel().title("Cold share of followed memory").datasource(DS)
                        .with_target(q(f"sum(pageheat:cgroup_cold_bytes_600s:sum{{{cg}}}) / "
                                       f"sum(pageheat:cgroup_resident_bytes:sum{{{cg}}})", instant=True))
                        .unit("percentunit").height(5).span(6))
            .with_panel(stat.Panel().title("Working set (5 min)").datasource(DS)
                        .with_target(q(f'sum(pageheat_cgroup_working_set_bytes{{{cg}, window="5m"}})',
                                       instant=True))
                        .unit("bytes").height(5).span(6))
            .with_panel(stat.Panel().title("Cgroups / processes followed").datasource(DS)
                        .with_target(q(f"count(count by (instance, cgroup) "
                                       f"(pageheat_cgroup_resident_bytes{{{cg}}}))", instant=True))
                        .with_target(q(f'sum(pageheat_targets{{{HOST}}})', instant=True, ref="B"))
                        .unit("short").height(5).span(6))
            .with_row(dashboard.Row("Cgroups and pods"))
            .with_panel(table.Panel().title("Top cgroups by cold bytes (> 600 s)").datasource(DS)
                        .description("pageheat:cgroup_cold_bytes_600s:sum: bytes of the cgroup's "
                                     "followed processes idle for more than 10 minutes or never "
                                     "accessed.")
                        .with_target(q(f"topk(20, pageheat:cgroup_cold_bytes_600s:sum{{{cg}}})",
                                       fmt=PromQueryFormat.TABLE, instant=True))
                        .unit("bytes").height(12).span(12))
            .with_panel(table.Panel().title("Pods by cold bytes (> 600 s)").datasource(DS)
                        .description("The cgroups' cold bytes by pod: pod_uid from "
                                     "pageheat_process_info, namespace and pod name from "
                                     "kube-state-metrics' kube_pod_info.")
                        .with_target(q(f"topk(20, sum by (namespace, pod, pod_uid) "
                                       f"(pageheat:cgroup_cold_bytes_600s:sum{{{cg}}} {pod_of}))",
                                       fmt=PromQueryFormat.TABLE, instant=True))
                        .unit("bytes").height(12).span(12))
            .with_panel(timeseries(
                "Cold ratio by cgroup, top 10", [
                    q(f"topk(10, pageheat:cgroup_cold_ratio_600s:ratio{{{cg}}})", "{{instance}} {{cgroup}}")],
                "percentunit", "Cgroups with the largest share of their followed memory idle "
                "> 600 s (the PageheatCgroupColdMemoryHigh alert's ratio).")
                        .min(0).max(1).height(10).span(12))
            .with_panel(timeseries(
                "Working set: pageheat vs cAdvisor", [
                    q(f'sum by (instance, cgroup) (pageheat_cgroup_working_set_bytes{{{cg}, window="5m"}})',
                      "{{instance}} {{cgroup}} pageheat, accessed in 5 min"),
                    q(f'max by (cgroup) (label_join(container_memory_working_set_bytes{{id=~"$cgroup"}}, '
                      f'"cgroup", "", "id")) and on (cgroup) '
                      f'max by (cgroup) (pageheat_cgroup_resident_bytes{{{cg}}})',
                      "{{cgroup}} cAdvisor working set", ref="B")],
                "bytes", "pageheat_cgroup_working_set_bytes{window=\"5m\"}: bytes of the cgroup's "
                "followed processes accessed in the last 5 minutes. cAdvisor's "
                "container_memory_working_set_bytes (usage minus inactive file cache) counts page "
                "cache and memory untouched for hours, so it is usually larger.")
                        .height(10).span(12))
            .with_panel(timeseries(
                "Cold bytes by host", [q(f"sum by (instance) (pageheat:cgroup_cold_bytes_600s:sum{{{cg}}})",
                                         "{{instance}}")],
                "bytes", "Followed memory idle for more than 600 s or never accessed, per host.")
                        .height(10).span(12))
            .with_row(dashboard.Row("Processes"))
            .with_panel(table.Panel().title("Top processes by cold bytes (> 600 s)").datasource(DS)
                        .description("Click a row for its per-process heatmap.")
                        .with_target(q(f"topk(20, pageheat:cold_bytes_600s:sum{{{sel}}}) "
                                       f"* on (instance, pid) group_left (cgroup, pod_uid) "
                                       f"pageheat_process_info{{{HOST}}}",
                                       fmt=PromQueryFormat.TABLE, instant=True))
                        .data_links([to_process])
                        .unit("bytes").height(12).span(12))
            .with_panel(timeseries(
                "Cold ratio, top 10 processes", [
                    q(f"topk(10, pageheat:cold_ratio_600s:ratio{{{sel}}})", "{{instance}} {{comm}} {{pid}}")],
                "percentunit", "Processes with the largest share of memory idle > 600 s.")
                        .min(0).max(1).height(10).span(12)))


def exporter_dashboard() -> dashboard.Dashboard:
    i = HOST
    return (dashboard.Dashboard("pageheat / exporter").uid("pageheat-exporter")
            .description("Health and cost of the pageheat exporters.")
            .tags(["pageheat"]).time("now-1h", "now").refresh("30s").editable()
            .variables(variables(("job", "instance")))
            .with_panel(timeseries("Harvest and aging CPU time per cycle (p50, p99)", [
                q(f"histogram_quantile(0.99, sum by (instance, le) "
                  f"(rate(pageheat_harvest_duration_seconds_bucket{{{i}}}[$__rate_interval])))",
                  "{{instance}} harvest p99"),
                q(f"histogram_quantile(0.5, sum by (instance, le) "
                  f"(rate(pageheat_harvest_duration_seconds_bucket{{{i}}}[$__rate_interval])))",
                  "{{instance}} harvest p50", ref="B"),
                q(f"histogram_quantile(0.99, sum by (instance, le) "
                  f"(rate(pageheat_aging_duration_seconds_bucket{{{i}}}[$__rate_interval])))",
                  "{{instance}} aging p99", ref="C")],
                "s", "CPU time per target cycle spent reading and aggregating the bits, and aging.")
            .height(9).span(12))
            .with_panel(timeseries("CPU usage and budget", [
                q(f"pageheat_cpu_usage_ratio{{{i}}}", "{{instance}} usage"),
                q(f"pageheat_cpu_budget_ratio{{{i}}}", "{{instance}} budget", ref="B")],
                "percentunit", "Fraction of one CPU used for harvest + aging, and the configured "
                "budget.").height(9).span(12))
            .with_panel(timeseries("Errors and overruns", [
                # Zero lines where nothing went wrong, instead of "No data".
                q(f"sum by (instance, kind) (rate(pageheat_errors_total{{{i}}}[$__rate_interval])) "
                  f"or sum by (instance) (0 * pageheat_targets{{{i}}})", "{{instance}} errors {{kind}}"),
                q(f"rate(pageheat_harvest_overruns_total{{{i}}}[$__rate_interval])",
                  "{{instance}} overruns", ref="B")],
                "ops", "Errors by kind and harvests slower than their interval, per second.")
                        .height(9).span(12))
            .with_panel(timeseries("Series and targets", [
                q(f"pageheat_series{{{i}}}", "{{instance}} series"),
                q(f"pageheat_series_dropped{{{i}}}", "{{instance}} series dropped", ref="B"),
                q(f"pageheat_targets{{{i}}}", "{{instance}} targets", ref="C"),
                q(f"pageheat_targets_dropped{{{i}}}", "{{instance}} targets dropped", ref="D")],
                "short", "Page series exported at the latest scrape and those left out to stay "
                "under max_series.").height(9).span(12))
            .with_panel(timeseries("Pages scanned per second", [
                q(f"rate(pageheat_pages_scanned_total{{{i}}}[$__rate_interval])", "{{instance}}")],
                "short", "Resident pages harvested per second.").height(9).span(12))
            .with_panel(timeseries("Aging interval per process", [
                q(f"pageheat_aging_interval_seconds{{{i}}}", "{{instance}} {{comm}} {{pid}} planned"),
                q(f"pageheat_aging_period_seconds{{{i}}}", "{{instance}} {{comm}} {{pid}} achieved",
                  ref="B")],
                "s", "Effective aging interval, stretched by the CPU budget (planned), and the "
                "time that actually passed between the last two harvests (achieved).")
                        .height(9).span(12))
            .with_panel(table.Panel().title("Exporters").datasource(DS)
                        .with_target(q(f'max by (instance, version, source, kernel) '
                                       f'(pageheat_build_info{{{i}}}) * on (instance) group_left '
                                       f'max by (instance) (up{{{i}}})',
                                       fmt=PromQueryFormat.TABLE, instant=True))
                        .height(6).span(24)))


DASHBOARDS = {
    "pageheat-process.json": process_dashboard,
    "pageheat-fleet.json": fleet_dashboard,
    "pageheat-exporter.json": exporter_dashboard,
}


def render() -> dict[str, str]:
    """File name -> dashboard JSON text."""
    return {name: json.dumps(make().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
            for name, make in DASHBOARDS.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the JSON files are out of date")
    args = p.parse_args()
    stale = []
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        path = OUT / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run python grafana/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

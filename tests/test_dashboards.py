"""grafana/: the generated dashboards are up to date, and every panel query and template
variable of every dashboard returns data from a real Prometheus scraping a real `pageheat serve`
that follows the ground-truth workload (with the recording rules loaded). The same data feeds
`pageheat render`."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, SCRAPE_SECONDS, Truth, run_pageheat, start_workload, stop_process
from fleet_helpers import KubeCgroup, kube_cgroups, static_exporter
from pageheat.commands import render as render_mod
from test_exporter_prometheus import HOT_BAND, scrape_job, serve_following, wait_for

GRAFANA = ROOT / "grafana"
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
VARIABLES = {"job", "instance", "comm", "pid", "node", "type"}
# What Grafana would put in for its built-in variables, at a 1 s scrape interval.
BUILTINS = {"$__rate_interval": "10s", "$__interval": "2s", "$__range": "60s"}
RANGE_SECONDS, STEP = 60, 2


def generator():
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        pytest.fail("grafana-foundation-sdk is not installed (.venv/bin/pip install grafana-foundation-sdk)")
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dashboards() -> dict[str, dict]:
    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert files
    return {f.name: json.loads(f.read_text()) for f in files}


def panels(dash: dict):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # collapsed rows


def targets(dash: dict):
    for p in panels(dash):
        for t in p.get("targets", []):
            yield p, t


# --- static checks ----------------------------------------------------------------------------


def test_generated_json_is_up_to_date():
    gen = generator()
    rendered = gen.render()
    on_disk = {f.name: f.read_text() for f in (GRAFANA / "dashboards").glob("*.json")}
    assert rendered.keys() == on_disk.keys()
    for name, text in rendered.items():
        assert on_disk[name] == text, f"{name} is out of date: run python grafana/generate.py"


def test_dashboard_structure():
    ds = dashboards()
    uids = [d["uid"] for d in ds.values()]
    assert len(set(uids)) == len(uids)
    process = ds["pageheat-process.json"]
    names = {v["name"] for v in process["templating"]["list"]}
    assert VARIABLES | {"datasource"} <= names
    for name, d in ds.items():
        assert d["schemaVersion"] >= 36 and d["title"].startswith("pageheat")
        used = {v["name"] for v in d["templating"]["list"]}
        for p, t in targets(d):
            assert t["datasource"]["uid"] == "${datasource}", (name, p["title"])
            # Every variable a query uses is defined on its dashboard.
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var.startswith("__") or var in used, (name, p["title"], var)
            if p["type"] == "heatmap":
                assert t["format"] == "heatmap" and "sum by (le)" in t["expr"], p["title"]
                assert p["options"]["calculate"] is False
    heat = [p for p in panels(process) if p["type"] == "heatmap"]
    exprs = [p["targets"][0]["expr"] for p in heat]
    assert any("pageheat_accessed_pages_bucket" in e for e in exprs)
    assert any("pageheat_idle_pages_bucket" in e for e in exprs)
    assert {p.get("repeat") for p in heat} >= {"node", "type"}
    all_exprs = " ".join(t["expr"] for d in ds.values() for _, t in targets(d))
    for metric in ("pageheat_address_bin_info", "pageheat_never_accessed_pages",
                   "pageheat:cold_ratio_120s:ratio", "pageheat:working_set_bytes:sum",
                   "pageheat_harvest_duration_seconds_bucket", "pageheat_aging_duration_seconds_bucket",
                   "pageheat_errors_total", "pageheat_series", "pageheat_series_dropped"):
        assert metric in all_exprs, metric


def test_provisioning_files():
    dsp = yaml.safe_load((GRAFANA / "provisioning/datasources/pageheat.yml").read_text())
    assert dsp["apiVersion"] == 1 and dsp["datasources"][0]["type"] == "prometheus"
    dbp = yaml.safe_load((GRAFANA / "provisioning/dashboards/pageheat.yml").read_text())
    (provider,) = dbp["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# --- against real data ------------------------------------------------------------------------


def query_range(url: str, expr: str, seconds: int = RANGE_SECONDS) -> list[dict]:
    end = time.time()
    q = urllib.parse.urlencode({"query": expr, "start": end - seconds, "end": end, "step": STEP})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def resolve_variables(prom, dash: dict) -> dict[str, str]:
    """Evaluate each `label_values(expr, label)` variable in order, as Grafana would, and make
    it the regex of every value it found (what "All" with several values selected gives)."""
    values: dict[str, str] = {}
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"].strip())
        assert m, v["query"]
        found = {r["metric"][m[2]] for r in prom.query(substitute(m[1], values)) if m[2] in r["metric"]}
        assert found, f"variable {v['name']}: {m[1]} has no {m[2]} values"
        # Regex-escaped, then escaped again for a PromQL double-quoted string (as Grafana does).
        regex = "(" + "|".join(re.escape(x) for x in sorted(found)) + ")"
        values[v["name"]] = regex.replace("\\", "\\\\")
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    for k, v in BUILTINS.items():
        expr = expr.replace(k, v)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m[1], m[0]), expr)


def bin_rates(prom_url: str, expr: str) -> dict[int, float]:
    """Per-bin accessed pages per second at the latest step of the heatmap query."""
    cum = {}
    for r in query_range(prom_url, expr, 20):
        cum[float(r["metric"]["le"])] = float(r["values"][-1][1])
    les = sorted(cum)
    return {int(le): cum[le] - (cum[les[i - 1]] if i else 0.0)
            for i, le in enumerate(les) if le != float("inf")}


def hot_and_cold_bins(prom, t: Truth) -> tuple[list[int], list[int]]:
    """Bins wholly inside the hot band, and bins wholly inside the region outside it
    (addresses from pageheat_address_bin_info with expose_addresses)."""
    bins = {}
    for r in prom.query(f'pageheat_address_bin_info{{pid="{t.pid}"}}'):
        m = r["metric"]
        bins[int(m["bin"])] = (int(m["start"], 16), int(m["end"], 16))
    return t.hot_and_cold_bins(bins)


def resident_pages(pid: int, lo: int, hi: int) -> tuple[int, int]:
    """(resident pages of the process, resident pages of VMAs inside [lo, hi)) from smaps."""
    total = region = 0
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            s, e = (int(x, 16) for x in head.split("-"))
            inside = s >= lo and e <= hi
        elif head == "Rss:":
            pages = int(line.split()[1]) // 4
            total += pages
            region += pages if inside else 0
    return total, region


def serve_hot_band_in_pod(cg: KubeCgroup, tmp: Path):
    """The ground-truth workload with a contiguous hot band (whole address bins hot, others
    cold), started in a kubelet-named container cgroup, followed by `pageheat serve` with fast
    intervals and bin addresses."""
    t = start_workload(tmp, *HOT_BAND, prefix=cg.prefix)
    return (t, *serve_following(tmp, t.pid))


def kube_series(cg: KubeCgroup, rss_bytes: int) -> str:
    """What kube-state-metrics and cAdvisor would say about the pod and its container."""
    return (f'kube_pod_info{{namespace="shop",pod="web-0",uid="{cg.pod_uid}",node="n1"}} 1\n'
            f'container_memory_working_set_bytes{{id="{cg.path}",namespace="shop",pod="web-0",'
            f'container="app"}} {rss_bytes}\n')


@pytest.mark.kernel
@pytest.mark.prometheus
def test_every_panel_query_returns_data(ptwalk_ok, prometheus_server, tmp_path):
    with kube_cgroups(("systemd", "burstable", "cri-containerd")) as (cg,):
        every_panel_query_returns_data(cg, prometheus_server, tmp_path)


def every_panel_query_returns_data(cg: KubeCgroup, prometheus_server, tmp_path: Path) -> None:
    t, serve, port, log = serve_hot_band_in_pod(cg, tmp_path)
    started = time.monotonic()
    try:
        ksm = static_exporter(kube_series(cg, 3 * t.size))
        prom = prometheus_server(scrape_job(port) + f"""
  - job_name: kube-state-metrics
    static_configs: [{{targets: ['127.0.0.1:{ksm}']}}]
""", rule_files=RULES)
        pid = f'pid="{t.pid}"'
        wait_for(lambda: prom.query(f"pageheat_harvests_total{{{pid}}} > 20"), 60, "20 harvests")
        wait_for(lambda: prom.query(f"pageheat:cold_ratio_120s:ratio{{{pid}}}"), 30, "recording rules")
        # A minute of data, so that range queries and rate windows are full.
        time.sleep(max(0.0, RANGE_SECONDS - (time.monotonic() - started)))

        # Every rule (recording and alerting) evaluates without error.
        with urllib.request.urlopen(f"{prom.url}/api/v1/rules", timeout=10) as r:
            groups = json.load(r)["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        assert len(rules) == sum(len(g["rules"]) for f in RULES
                                 for g in yaml.safe_load(f.read_text())["groups"])
        assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]

        # Every panel query of every dashboard, with the variables resolved from the data.
        empty = []
        for name, dash in dashboards().items():
            values = resolve_variables(prom, dash)
            if "pid" in values:
                assert values["pid"] == f"({t.pid})", values
            for p, tgt in targets(dash):
                expr = substitute(tgt["expr"], values)
                assert "$" not in expr, expr
                try:
                    result = prom.query(expr) if tgt.get("instant") else query_range(prom.url, expr)
                except urllib.error.HTTPError as e:
                    raise AssertionError(f"{name} / {p['title']}: {expr}: {e.read().decode()}") from e
                if not result:
                    empty.append((name, p["title"], tgt["refId"], expr))
        assert not empty, "panel queries without data:\n" + "\n".join(map(str, empty))

        # The address-bin heatmap shows the hot band: its bins are far hotter than the region's
        # cold bins.
        process = dashboards()["pageheat-process.json"]
        values = resolve_variables(prom, process)
        heat = next(p for p in panels(process) if p["type"] == "heatmap" and not p.get("repeat"))
        per_bin = bin_rates(prom.url, substitute(heat["targets"][0]["expr"], values))
        hot_bins, cold_bins = hot_and_cold_bins(prom, t)
        hot_rate = min(per_bin[b] for b in hot_bins)
        cold_rate = max(per_bin[b] for b in cold_bins)
        assert hot_rate > 5 * cold_rate and hot_rate > 100, (per_bin, hot_bins, cold_bins)

        # The cold ratio at 120 s, after about a minute: the pages never seen accessed (no page
        # has been idle 120 s yet) over all resident pages of the process. Never accessed are
        # the region's cold pages (populated before pageheat attached, never touched again)
        # plus most of the interpreter's other memory, of which the workload's loop touches a
        # few hundred pages at most. So, with R resident pages of which R_region in the region:
        #   C_region / R  <=  ratio  <=  (C_region + R - R_region) / R
        # and the ratio is within 5 points of the upper bound.
        ratio = float(prom.query(f"pageheat:cold_ratio_120s:ratio{{{pid}}}")[0]["value"][1])
        resident, region = resident_pages(t.pid, t.start, t.start + t.size)
        assert region == t.pages, (region, t.pages)
        lower = len(t.cold) / resident
        upper = (len(t.cold) + resident - region) / resident
        print(f"hot bins {hot_rate:.0f} pages/s, cold bins {cold_rate:.0f} pages/s")
        print(f"cold ratio {ratio:.4f}, bounds [{lower:.4f}, {upper:.4f}], resident {resident}")
        assert lower - 0.01 <= ratio <= upper + 0.01, (lower, ratio, upper)
        assert abs(ratio - upper) <= 0.05, (lower, ratio, upper)
        # And it agrees with the exporter's own pageheat_cold_pages (cold_after 120 s).
        own = prom.query(f"pageheat_cold_pages{{{pid}}} / pageheat_process_resident_pages{{{pid}}}")
        assert abs(float(own[0]["value"][1]) - ratio) < 0.01
        ws = float(prom.query(f"pageheat:working_set_bytes:sum{{{pid}}}")[0]["value"][1])
        assert ws >= len(t.hot) * 4096 * 0.9  # the hot band is accessed in every interval

        fleet_checks(prom, t, cg)
        render_checks(prom.url, t, hot_bins, cold_bins, len(per_bin), tmp_path)
    finally:
        stop_process(serve)
        stop_process(t.proc)
    assert "Traceback" not in log.read_text()


def query_at(url: str, expr: str, at: float) -> list[dict]:
    q = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def fleet_checks(prom, t: Truth, cg: KubeCgroup) -> None:
    """The fleet dashboard's pod table joins the cgroup's numbers to kube_pod_info by pod uid."""
    fleet = dashboards()["pageheat-fleet.json"]
    values = resolve_variables(prom, fleet)
    assert re.escape(cg.path).replace("\\", "\\\\") in values["cgroup"], values["cgroup"]
    [pods] = [tgt for p, tgt in targets(fleet) if p["title"].startswith("Pods by cold bytes")]
    at = time.time() - 2  # both queries at one instant: the cold bytes change as pages age
    [row] = query_at(prom.url, substitute(pods["expr"], values), at)
    assert row["metric"] == {"namespace": "shop", "pod": "web-0", "pod_uid": cg.pod_uid}, row
    [cold] = query_at(prom.url, f'pageheat:cgroup_cold_bytes_600s:sum{{cgroup="{cg.path}"}}', at)
    assert float(row["value"][1]) == float(cold["value"][1]) > 0
    # The process's cold bytes with its cgroup and pod: the join on pid.
    [proc] = [tgt for p, tgt in targets(fleet) if p["title"].startswith("Top processes by cold")]
    [row] = prom.query(substitute(proc["expr"], values))
    assert row["metric"]["pid"] == str(t.pid) and row["metric"]["cgroup"] == cg.path
    assert row["metric"]["pod_uid"] == cg.pod_uid


def render_checks(prom_url: str, t: Truth, hot_bins: list[int], cold_bins: list[int], n_bins: int,
                  tmp: Path) -> None:
    """`pageheat render --png` of the same data: in the image, the hot band's rows are brighter
    (hotter, in a colormap whose luminance rises with the value) than the cold rows."""
    from matplotlib import image
    from pageheat.commands import render

    png = tmp / "heatmap.png"
    r = run_pageheat("render", "--prometheus", prom_url, "--pid", str(t.pid), "--range", "1m",
                     "--step", "1s", "--rate-interval", "10s", "--png", str(png))
    assert r.returncode == 0, r.stderr
    img = image.imread(png)[..., :3]
    h, w = img.shape[:2]
    assert (w, h) == (render.FIGSIZE[0] * render.DPI, render.FIGSIZE[1] * render.DPI)
    # The heatmap's axes, in pixels (the figure layout is fixed); rows are bins, bin 0 at the
    # bottom. Look at the last third of the time axis, inset from the axes' edges.
    left, bottom, width, height = render.HEAT_AXES
    x0, x1 = int((left + width * 2 / 3) * w), int((left + width) * w) - 3
    top_px, bottom_px = (1 - bottom - height) * h, (1 - bottom) * h
    rows_px = (bottom_px - top_px) / n_bins

    def brightness(b: int) -> float:
        y = bottom_px - (b + 0.5) * rows_px
        band = img[int(y - rows_px / 4):int(y + rows_px / 4) + 1, x0:x1]
        return float(band.mean())

    hot = min(brightness(b) for b in hot_bins)
    cold = max(brightness(b) for b in cold_bins)
    print(f"render: hot rows brightness >= {hot:.3f}, cold rows <= {cold:.3f}")
    r = run_pageheat("render", "--prometheus", prom_url, "--pid", str(t.pid), "--range", "1m",
                     "--step", "1s", "--rate-interval", "10s")
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    # stdout is a pipe here: plain text, no escape sequences, at most 80 x 24.
    assert "\x1b" not in r.stdout
    lines = r.stdout.splitlines()
    assert len(lines) <= 24 and max(map(len, lines)) <= 80
    # A rate window shorter than the scrape interval holds one sample at most: rate() has
    # nothing to work on. Said so, with the interval Prometheus scrapes at, not an empty map.
    short = run_pageheat("render", "--prometheus", prom_url, "--pid", str(t.pid), "--range", "1m",
                         "--step", "1s", "--rate-interval", f"{SCRAPE_SECONDS * 500}ms")
    assert short.returncode == 1 and short.stderr.count("\n") == 1, short
    assert (f"--rate-interval {SCRAPE_SECONDS / 2:g}s holds fewer than two samples" in short.stderr
            and f"{SCRAPE_SECONDS:g} s apart: use --rate-interval {2 * SCRAPE_SECONDS:g}s or more"
            in short.stderr), short.stderr
    enough = run_pageheat("render", "--prometheus", prom_url, "--pid", str(t.pid), "--range", "1m",
                          "--step", "1s", "--rate-interval", f"{2 * SCRAPE_SECONDS}s")
    assert enough.returncode == 0, enough.stderr
    if os.environ.get("PAGEHEAT_RENDER_DEMO"):  # keep the picture for docs/img/
        shutil.copy(png, os.environ["PAGEHEAT_RENDER_DEMO"])
    assert hot > cold + 0.2, (hot, cold)


def synthetic() -> render_mod.Data:
    t = np.arange(0.0, 60.0)
    heat = np.full((32, 60), 50.0)
    heat[8:13] = 6000.0
    idle = np.zeros((12, 60))
    idle[0], idle[11] = 20000.0, 55000.0
    return render_mod.Data(1, "python", render_mod.Matrix(t, [f"{b:2d} anon" for b in range(32)], heat),
                           render_mod.Matrix(t, [f"idle {k}" for k in range(12)], idle), 60)


def test_terminal_view_colour_and_plain(monkeypatch, capsys):
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    colour = render_mod.terminal(synthetic(), 80, 24, color=True)
    lines = colour.splitlines()
    assert len(lines) == 24 and "\x1b[38;2;" in colour and "▀" in colour
    assert max(len(ansi.sub("", line)) for line in lines) <= 80
    plain = render_mod.terminal(synthetic(), 80, 24, color=False)
    assert "\x1b" not in plain and len(plain.splitlines()) <= 24
    # The hot band (bins 8-12) is the densest text: '@' there, blanks in cold rows.
    rows = {line[:17].strip(): line[18:] for line in plain.splitlines()[1:15]}
    assert any("@" in body for label, body in rows.items() if label.startswith(("9 ", "11 ")))
    assert all(set(body) <= {" ", "."} for label, body in rows.items() if label.startswith(("0 ", "29 ")))

    # `render` without --png/--svg: colour only on a terminal without NO_COLOR.
    monkeypatch.setattr(render_mod, "fetch", lambda *a, **k: synthetic())
    args = render_mod.argparse.Namespace(prometheus="http://x", pid=1, range="1m", step=None,
                                         rate_interval="10s", png=None, svg=None, width=80, height=24)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert render_mod.run(args) == 0
    assert "\x1b[38;2;" in capsys.readouterr().out
    monkeypatch.setenv("NO_COLOR", "1")
    assert render_mod.run(args) == 0
    assert "\x1b" not in capsys.readouterr().out


def _label_range(label: str) -> tuple[float, float]:
    """The idle ages [lower, upper) a terminal line's label names."""
    if m := re.fullmatch(r"> (\S+) s or never", label):
        return float(m[1]), math.inf
    m = re.fullmatch(r"(\S+)-(\S+) s", label)
    assert m, label
    return float(m[1]), float(m[2])


def _bins_range(label: str) -> tuple[int, int]:
    """The address bins LO..HI (inclusive) a terminal line's label names ('9-10 anon', '3 anon')."""
    m = re.match(r"\s*(\d+)(?:-(\d+))?(?: |$)", label)
    assert m, label
    return int(m[1]), int(m[2] or m[1])


@pytest.mark.parametrize("color", [False, True])
def test_terminal_labels_name_every_row_a_line_stands_for(color: bool) -> None:
    """Fewer lines than idle buckets (or bins): a line's label names all the buckets it stands
    for, and its shade is theirs: the pages of them all (idle), the mean rate of a bin (heat).
    Only the youngest and the never-accessed bucket hold pages, so a line named after its
    first bucket alone ("1800-3600 s") would be wrong."""
    from pageheat.model.aggregate import IDLE_BOUNDS
    from pageheat.top.ramp import SHADES, shade

    t = np.arange(0.0, 60.0)
    idle = np.zeros((len(IDLE_BOUNDS), len(t)))
    idle[0], idle[-1] = 20000.0, 55000.0
    heat = np.full((32, len(t)), 50.0)
    heat[8:13] = 6000.0
    bins = list(range(32))
    data = render_mod.Data(1, "python", render_mod.heat_matrix(t, bins, {b: "anon" for b in bins}, heat),
                           render_mod.idle_matrix(t, list(IDLE_BOUNDS), idle), 60)
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    lines = render_mod.terminal(data, 80, 24, color=color).splitlines()
    at = lines.index("resident pages by idle age")
    heat_lines, idle_lines = lines[1:at - 1], lines[at + 1:-1]
    assert heat_lines and idle_lines

    def label(line: str) -> str:
        return ansi.sub("", line)[:17].strip()

    # Bottom line first: the ranges follow each other from 0 to never, each from bucket bounds.
    ranges = [_label_range(label(line)) for line in reversed(idle_lines)]
    assert ranges[0][0] == 0 and ranges[-1][1] == math.inf
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False)), ranges
    assert {x for r in ranges for x in r} <= {0.0, *IDLE_BOUNDS}
    lower = [0.0, *IDLE_BOUNDS[:-1]]
    pages = [sum(idle[i, 0] for i in range(len(IDLE_BOUNDS)) if lo <= lower[i] and IDLE_BOUNDS[i] <= hi)
             for lo, hi in ranges]
    spans = [_bins_range(label(line)) for line in reversed(heat_lines)]
    assert spans[0][0] == 0 and spans[-1][1] == 31
    assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    rate = [heat[lo:hi + 1, 0].mean() for lo, hi in spans]
    if color:
        assert len(ranges) == len(IDLE_BOUNDS) // 2  # two buckets a line, one a half-block
        return
    # Without colour a line is one shade: that of its value (sqrt scale, as the view says).
    for line, value, top in [*zip(reversed(idle_lines), pages, [max(pages)] * len(pages), strict=True),
                             *zip(reversed(heat_lines), rate, [max(rate)] * len(rate), strict=True)]:
        body = line[18:]
        assert set(body) == {shade(np.array([math.sqrt(value / top)]))[0]}, (line, value, top)
    # The top line: the last two buckets, the never-accessed pages the most.
    top_line = idle_lines[0]
    assert top_line.startswith(f"> {IDLE_BOUNDS[-3]:g} s or never ") and top_line.endswith(SHADES[-1])


@pytest.mark.kind5
@pytest.mark.parametrize(("args", "said"), [
    (["--pid", "-5"], "--pid: not a process id: -5"), (["--pid", "0"], "--pid: not a process id: 0"),
    (["--rate-interval", "0"], "--rate-interval must be"),
    (["--rate-interval", "0.5ms"], "--rate-interval must be"),
    (["--rate-interval", "1.5ms"], "--rate-interval must be"),
    (["--range", "0"], "--range must be more than 0"),
    (["--step", "0"], "--step must be more than 0"),
    (["--range", "10m", "--step", "1ms"], f"more than the {render_mod.MAX_POINTS} points"),
    (["--rate-interval", "inf"], "not a duration"),
    (["--height", "0"], f"--height must be at least {render_mod.MIN_HEIGHT}"),
    (["--width", "-1"], f"--width must be at least {render_mod.MIN_WIDTH}"),
])
def test_render_rejects_bad_values_before_asking(args: list[str], said: str) -> None:
    """What Prometheus would refuse (400) or the view cannot show: one line, exit 2, before any
    query (here, no Prometheus answers: a query would be exit 1)."""
    pid = [] if "--pid" in args else ["--pid", "1"]
    r = run_pageheat("render", "--prometheus", "http://127.0.0.1:9", *pid, *args)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith("pageheat: ") and said in line, line


def test_render_sizes_at_the_least_fit(capsys):
    """At MIN_WIDTH x MIN_HEIGHT the whole view is there: every idle line and the scale."""
    text = render_mod.terminal(synthetic(), render_mod.MIN_WIDTH, render_mod.MIN_HEIGHT, color=False)
    lines = text.splitlines()
    assert len(lines) == render_mod.MIN_HEIGHT and max(map(len, lines)) <= render_mod.MIN_WIDTH
    assert lines[-1].lstrip().startswith("scale:")


def test_render_reports_missing_data(tmp_path):
    # A Prometheus that is not there: one line, exit 1.
    r = run_pageheat("render", "--prometheus", "http://127.0.0.1:9", "--pid", "1", "--png",
                     str(tmp_path / "x.png"))
    assert r.returncode == 1 and r.stderr.startswith("pageheat: Prometheus"), r.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("stamps", [[1000.0], [1000.0, 1015.0, 1030.0, 1046.0]])
def test_render_says_why_the_rate_is_empty(monkeypatch, stamps: list[float]) -> None:
    """The pid's idle ages are in Prometheus but rate() gave nothing: the message says how far
    apart the samples are (their median spacing) and what window would hold two, or how few
    there are yet. Prometheus's answers are given here; the real one is in the panel test."""
    def get(url: str, path: str, params: dict) -> list[dict]:
        q = params["query"]
        if q.startswith("group by"):
            return [{"metric": {"instance": "a", "job": "pageheat"}}]
        if "rate(" in q or q.startswith("pageheat_address_bin_info"):
            return []
        if path.endswith("query_range"):
            return [{"metric": {"le": "+Inf"}, "values": [[stamps[-1], "10"]]}]
        assert q.endswith("[60s]") and 'le="+Inf"' in q, q
        return [{"metric": {"le": "+Inf", "node": n}, "values": [[t, "10"] for t in stamps]}
                for n in ("0", "1")]  # two series scraped together: one spacing

    monkeypatch.setattr(render_mod, "_get", get)
    with pytest.raises(render_mod.RenderError) as e:
        render_mod.fetch("http://p", 7, 60.0, 1.0, rate_interval=5.0, now=stamps[-1])
    said = str(e.value)
    assert said.startswith("no accessed-pages rate for pid 7: --rate-interval 5s holds fewer than two")
    if len(stamps) == 1:
        assert said.endswith("Prometheus has 1 in the last 60 s so far")
    else:
        spacing = float(np.median(np.diff(stamps)))
        assert said.endswith(f"{spacing:g} s apart: use --rate-interval {2 * spacing:g}s or more")

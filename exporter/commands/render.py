"""`pageheat render`: draw one process's address-bin × time heatmap and idle-age distribution
from a Prometheus server, to PNG / SVG (matplotlib) or to the terminal.

    pageheat render --prometheus http://prom:9090 --pid 1234 --range 10m --png heat.png
    pageheat render --prometheus http://prom:9090 --pid 1234          # terminal view

The heatmap is ``sum by (le) (rate(pageheat_accessed_pages_bucket{pid=...}[RATE]))`` over the
range, de-accumulated into one row per address bin (bin 0, the lowest address, at the bottom),
labelled with the mappings from ``pageheat_address_bin_info``. The idle-age distribution is
``pageheat_idle_pages_bucket`` de-accumulated the same way. matplotlib is imported only when an
image is written.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pageheat import config
from pageheat.commands.files import replace_file
from pageheat.config import parse_duration
from pageheat.kernel.procfs import shown
from pageheat.top.ramp import HEAT, colours, shade

# Figure layout, fixed (no tight_layout) so that the image's geometry is known: axes rectangles
# in figure fractions (left, bottom, width, height).
FIGSIZE = (12.0, 8.0)
DPI = 100
HEAT_AXES = (0.28, 0.40, 0.60, 0.52)
IDLE_AXES = (0.28, 0.07, 0.60, 0.24)
CMAP = "inferno"  # luminance rises monotonically with the value
# Prometheus answers a range query with at most this many points a series (and 400 beyond).
MAX_POINTS = 11000
# The terminal view: labels, and at least 8 columns of heat; 2 lines of heat, 6 of idle
# ages, the title, the time axis, the idle title and the scale.
LABEL_W, IDLE_LINES = 18, 6
MIN_WIDTH, MIN_HEIGHT = LABEL_W + 1 + 8, 2 + IDLE_LINES + 4


# matplotlib is the `render` extra; only images need it (the terminal view does not).
MISSING_EXTRA = ("pageheat render --png/--svg needs the 'render' extra: "
                 "pip install 'pageheat[render]'")


class RenderError(Exception):
    pass


@dataclass
class Matrix:
    """rows × time: values[row, t]; rows from low to high (bin 0 / shortest idle first).
    Where the terminal has fewer lines than rows, rows lo..hi (inclusive) are drawn as one:
    ``span(lo, hi)`` is its label (None: the first and last rows' labels), and its value the
    rows' sum if ``additive`` (pages of the whole range), else their mean (equal address bins:
    the rate of an average bin of the range). See heat_matrix and idle_matrix."""

    times: np.ndarray
    rows: list[str]
    values: np.ndarray
    span: Callable[[int, int], str] | None = None
    additive: bool = False

    def label(self, lo: int, hi: int) -> str:
        if lo == hi:
            return self.rows[lo]
        if self.span is not None:
            return self.span(lo, hi)
        return f"{self.rows[lo]}..{self.rows[hi]}"


@dataclass
class Data:
    pid: int
    comm: str
    heat: Matrix
    idle: Matrix
    range_seconds: float


# --- Prometheus -------------------------------------------------------------------------------


def _get(url: str, path: str, params: dict) -> list[dict]:
    full = f"{url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(full, timeout=30) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:200]
        raise RenderError(f"Prometheus {url}: HTTP {e.code}: {detail}") from e
    except (OSError, ValueError) as e:
        raise RenderError(f"Prometheus {url}: {e}") from e
    if body.get("status") != "success":
        raise RenderError(f"Prometheus {url}: {body.get('error', body)}")
    return body["data"]["result"]


def _buckets(result: list[dict], times: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Cumulative ``le`` series from a range query -> (upper bounds, per-bucket values[le, t])."""
    series: dict[float, np.ndarray] = {}
    for r in result:
        le = float(r["metric"]["le"])
        row = series.setdefault(le, np.full(len(times), np.nan))  # NaN: no sample (no data yet)
        for ts, v in r["values"]:
            i = int(np.searchsorted(times, float(ts)))
            if i < len(times) and abs(times[i] - float(ts)) < 1e-3:
                f = float(v)
                row[i] = (0.0 if math.isnan(row[i]) else row[i]) + (0.0 if math.isnan(f) else f)
    les = sorted(series)
    if not les:
        return [], np.zeros((0, len(times)))
    cum = np.array([series[le] for le in les])
    per = np.diff(cum, axis=0, prepend=0.0)
    missing = np.isnan(cum).all(axis=0)  # a step with no bucket at all: no data
    per = np.where(np.isnan(per), 0.0, np.clip(per, 0.0, None))
    per[:, missing] = np.nan
    return les, per


def _quote(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def selector(pid: int, instance: str | None = None, job: str | None = None) -> str:
    """The label matchers of one process on one exporter: a pid is only unique per host."""
    sel = [f'pid="{pid}"']
    if instance is not None:
        sel.append(f"instance={_quote(instance)}")
    if job is not None:
        sel.append(f"job={_quote(job)}")
    return ", ".join(sel)


def _one_exporter(url: str, sel: str, pid: int, range_seconds: float, end: float) -> None:
    """Raise RenderError when the selector matches the pid on more than one exporter: their
    bins are unrelated, a sum over them would be meaningless."""
    found = _get(url, "/api/v1/query", {
        "query": f"group by (instance, job) (last_over_time(pageheat_idle_pages_bucket{{{sel}}}"
                 f"[{max(1, round(range_seconds))}s]))", "time": f"{end:.3f}"})
    if len(found) > 1:
        where = ", ".join(sorted(f"{r['metric'].get('instance', '')} (job {r['metric'].get('job', '')})"
                                 for r in found)[:5])
        raise RenderError(f"pid {pid} is on {len(found)} exporters in Prometheus {url}: {where}; "
                          "choose one with --instance (and --job)")


def fetch(url: str, pid: int, range_seconds: float, step: float | None = None,
          rate_interval: float = 60.0, now: float | None = None, instance: str | None = None,
          job: str | None = None) -> Data:
    """The process's heat and idle matrices over the range. Raises RenderError (no data, the
    pid on several exporters without --instance/--job to choose, Prometheus unreachable)."""
    end = time.time() if now is None else now
    step = step or max(1.0, round(range_seconds / 240.0))
    start = end - range_seconds
    times = np.arange(start, end + step / 2, step)
    times = np.round(times, 3)
    sel = selector(pid, instance, job)
    params = {"start": f"{times[0]:.3f}", "end": f"{times[-1]:.3f}", "step": f"{step:g}"}
    _one_exporter(url, sel, pid, range_seconds, end)

    info = _get(url, "/api/v1/query", {"query": f"pageheat_address_bin_info{{{sel}}}",
                                       "time": f"{end:.3f}"})
    rate = promql_duration(rate_interval)
    heat_res = _get(url, "/api/v1/query_range", {
        **params, "query": f"sum by (le) (rate(pageheat_accessed_pages_bucket{{{sel}}}[{rate}]))"})
    idle_res = _get(url, "/api/v1/query_range", {
        **params, "query": f"sum by (le) (pageheat_idle_pages_bucket{{{sel}}})"})
    if not heat_res and not idle_res:
        where = "".join(f" {k} {v!r}" for k, v in (("instance", instance), ("job", job)) if v)
        raise RenderError(f"Prometheus {url} has no pageheat data for pid {pid}{where} in the last "
                          f"{range_seconds:g} s")
    if not heat_res:  # the pid's series are there, but rate() had nothing to work on
        raise RenderError(_no_rate(url, sel, pid, rate_interval, range_seconds, end))

    les, heat = _buckets(heat_res, times)
    # Label values come from /proc names, any characters: escaped for a terminal or an image.
    mappings = {int(r["metric"]["bin"]): shown(r["metric"].get("mappings", "")) for r in info}
    comm = shown(next((r["metric"].get("comm", "") for r in info), ""))
    bins = [int(le) for le in les if le != math.inf]
    heat = heat[: len(bins)]  # the +Inf bucket holds nothing beyond the last bin
    idle_les, idle = _buckets(idle_res, times)
    return Data(pid, comm, heat_matrix(times, bins, mappings, heat), idle_matrix(times, idle_les, idle),
                range_seconds)


def _no_rate(url: str, sel: str, pid: int, rate_interval: float, range_seconds: float,
             end: float) -> str:
    """Why the accessed-pages rate came back empty where the idle ages did not: rate() needs
    two samples of a series inside its window. Says how far apart Prometheus has them (the
    median spacing of the pid's raw samples over the range) and what window would do."""
    raw = _get(url, "/api/v1/query", {
        "query": f'pageheat_idle_pages_bucket{{{sel}, le="+Inf"}}[{max(1, round(range_seconds))}s]',
        "time": f"{end:.3f}"})
    stamps = sorted({float(ts) for r in raw for ts, _ in r.get("values", [])})
    said = (f"no accessed-pages rate for pid {pid}: --rate-interval {rate_interval:g}s holds fewer "
            f"than two samples of its series")
    if len(stamps) < 2:
        return f"{said}, and Prometheus has {len(stamps)} in the last {range_seconds:g} s so far"
    spacing = float(np.median(np.diff(stamps)))
    return (f"{said}, which Prometheus has {spacing:g} s apart: use --rate-interval "
            f"{math.ceil(2000 * spacing) / 1000:g}s or more")


def heat_matrix(times: np.ndarray, bins: list[int], mappings: dict[int, str],
                values: np.ndarray) -> Matrix:
    """Accessed pages/s of address bins ``bins`` (values[i]: bin bins[i]); ``mappings``: each
    bin's mapping names, comma-separated. Rows drawn as one are bins LO-HI with the names of
    all their mappings, and the mean rate of a bin there (the bins are equal parts of the
    mapped pages: aggregate.make_bins)."""
    def span(lo: int, hi: int) -> str:
        names = [n for b in bins[lo:hi + 1] for n in mappings.get(b, "").split(",") if n]
        return _bin_label(f"{bins[lo]:2d}-{bins[hi]}", ",".join(dict.fromkeys(names)))

    rows = [_bin_label(f"{b:2d}", mappings.get(b, "")) for b in bins]
    return Matrix(times, rows, values, span)


def idle_matrix(times: np.ndarray, les: list[float], values: np.ndarray) -> Matrix:
    """Resident pages by idle age, values[i]: the bucket of upper bound les[i] (seconds, the
    last +Inf: never accessed too). Rows drawn as one are the range from the first's lower
    bound to the last's upper bound, and the pages of all of them."""
    lower = [0.0, *les[:-1]]

    def span(lo: int, hi: int) -> str:
        return _idle_label(lower[lo], les[hi])

    rows = [_idle_label(a, b) for a, b in zip(lower, les, strict=True)]
    return Matrix(times, rows, values, span, additive=True)


def _idle_label(lower: float, upper: float) -> str:
    return f"> {lower:g} s or never" if upper == math.inf else f"{lower:g}-{upper:g} s"


def promql_duration(seconds: float) -> str:
    """A PromQL range duration: whole milliseconds (Prometheus takes no fractions, '1.5s')."""
    return f"{round(seconds * 1000)}ms"


def _bin_label(bins: str, mappings: str, width: int = 28) -> str:
    text = f"{bins} {mappings}" if mappings else bins
    return text if len(text) <= width else text[: width - 1] + "…"


# --- images -----------------------------------------------------------------------------------


def draw(data: Data, out: Path, fmt: str = "png") -> None:
    """Write the image to ``out`` in ``fmt`` (png or svg: the flag's, whatever the file's name
    ends with), through a temporary file beside it: a failed write leaves ``out`` as it was."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import PowerNorm

    fig = plt.figure(figsize=FIGSIZE, dpi=DPI)
    rel = data.heat.times - data.heat.times[-1]
    extent = (float(rel[0]), float(rel[-1]) if len(rel) > 1 else 1.0)
    for rect, m, title, unit in (
            (HEAT_AXES, data.heat, "accessed pages per second by address bin", "pages/s"),
            (IDLE_AXES, data.idle, "resident pages by idle age", "pages")):
        ax = fig.add_axes(rect)
        values = m.values if m.values.size else np.full((1, len(m.times)), np.nan)
        vmax = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
        vmax = vmax or 1.0
        cmap = matplotlib.colormaps[CMAP].with_extremes(bad="#d0d0d0")  # grey: no data
        im = ax.imshow(values, aspect="auto", origin="lower", interpolation="nearest", cmap=cmap,
                       norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax),
                       extent=(*extent, -0.5, values.shape[0] - 0.5))
        ax.set_yticks(range(len(m.rows)))
        ax.set_yticklabels([_literal(r) for r in m.rows], fontsize=7 if len(m.rows) > 16 else 8)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("seconds before now", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        cax = fig.add_axes((rect[0] + rect[2] + 0.015, rect[1], 0.015, rect[3]))
        fig.colorbar(im, cax=cax).set_label(unit, fontsize=8)
    fig.suptitle(_literal(f"pageheat: pid {data.pid} {data.comm}"), x=0.02, ha="left", fontsize=12)
    try:
        replace_file(out, lambda f: fig.savefig(f, dpi=DPI, format=fmt))
    finally:
        plt.close(fig)


# --- terminal ---------------------------------------------------------------------------------


def _literal(text: str) -> str:
    """Text that matplotlib draws as it is: a pair of ``$`` would start mathtext, and a name
    from /proc (comm, a mapped file's name) may hold any characters, control ones too."""
    return shown(text).replace("$", r"\$")


def _groups(n_src: int, n_dst: int) -> list[tuple[int, int]]:
    """The source cells [lo, hi) each of n_dst target cells stands for: consecutive groups in
    which every source cell is in exactly one when the target is smaller, one source cell
    each (repeated) when it is larger."""
    if n_src >= n_dst:
        e = [i * n_src // n_dst for i in range(n_dst + 1)]
        return list(itertools.pairwise(e))
    return [(i * n_src // n_dst, i * n_src // n_dst + 1) for i in range(n_dst)]


def _resample(values: np.ndarray, rows: int, cols: int, add_rows: bool = False) -> np.ndarray:
    """Resize a matrix to rows × cols (the cells of _groups): a target row is the sum
    (``add_rows``) or the mean of its source rows, a target column the mean of its source
    columns (time steps)."""
    if values.size == 0:
        return np.zeros((rows, cols))
    values = np.nan_to_num(values)
    rows_of = np.sum if add_rows else np.mean
    by_row = np.array([rows_of(values[lo:hi], axis=0) for lo, hi in _groups(values.shape[0], rows)])
    return np.array([by_row[:, lo:hi].mean(axis=1) for lo, hi in _groups(values.shape[1], cols)]).T


def _normalise(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values)
    vmax = float(values.max()) if values.size else 0.0
    return np.sqrt(values / vmax) if vmax > 0 else np.zeros_like(values)


def terminal(data: Data, width: int = 80, height: int = 24, color: bool = True) -> str:
    """The heatmap and the idle-age distribution in width × height characters. With colour,
    each character is two pixels (upper half block: foreground = upper, background = lower),
    coloured with `top`'s heat ramp (top/ramp.py; the images use matplotlib's inferno)."""
    label_w = LABEL_W
    cols = max(8, width - label_w - 1)
    idle_lines = IDLE_LINES
    heat_lines = max(2, height - 4 - idle_lines)
    lines = [f"pageheat pid {data.pid} {data.comm}: accessed pages/s by address bin, "
             f"last {data.range_seconds:g} s"[:width]]

    def block(m: Matrix, n_lines: int) -> list[str]:
        px = n_lines * 2 if color else n_lines
        grid = _normalise(_resample(m.values, px, cols, m.additive))[::-1]  # top line = highest row
        groups = _groups(len(m.rows), px)[::-1]  # the source rows of each pixel row
        per_line = 2 if color else 1
        out = []
        for ln in range(n_lines):
            if color:
                top, bottom = grid[2 * ln], grid[2 * ln + 1]
                rgb_t, rgb_b = colours(HEAT, top).tolist(), colours(HEAT, bottom).tolist()
                cells = "".join(f"\x1b[38;2;{a[0]};{a[1]};{a[2]}m\x1b[48;2;{b[0]};{b[1]};{b[2]}m▀"
                                for a, b in zip(rgb_t, rgb_b, strict=True))
                body = cells + "\x1b[0m"
            else:
                body = "".join(shade(grid[ln]))
            mine = groups[per_line * ln: per_line * (ln + 1)]
            # The label names every source row the line stands for.
            name = m.label(min(lo for lo, _ in mine), max(hi for _, hi in mine) - 1) if m.rows else ""
            out.append(f"{name[:label_w - 1]:<{label_w - 1}} {body}")
        return out

    lines += block(data.heat, heat_lines)
    span = f"-{data.range_seconds:g}s"
    axis = f"{'':<{label_w}}{span}{'now':>{cols - len(span)}}"
    lines.append(axis)
    lines.append("resident pages by idle age"[:width])
    lines += block(data.idle, idle_lines)
    peak = float(np.nan_to_num(data.heat.values).max()) if data.heat.values.size else 0.0
    lines.append(f"{'':<{label_w}}scale: sqrt, peak {peak:,.0f} pages/s"[:width])
    return "\n".join(lines[:height]) + "\n"


# --- command ----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--instance", help="the exporter's instance label (a pid is unique per host only; "
                   "needed when Prometheus has the pid from several exporters)")
    p.add_argument("--job", help="the exporter's job label")
    p.add_argument("--range", default="10m", help="how far back (default 10m)")
    p.add_argument("--step", help="query resolution (default: range / 240, at least 1s)")
    p.add_argument("--rate-interval", default="1m",
                   help="rate() window, whole milliseconds (default 1m; at least 4 scrape intervals)")
    p.add_argument("--png", type=Path, help="write a PNG")
    p.add_argument("--svg", type=Path, help="write an SVG")
    p.add_argument("--width", type=int,
                   help=f"terminal columns (default: the terminal's, at most 80; at least {MIN_WIDTH})")
    p.add_argument("--height", type=int, help=f"terminal lines (default 24, at least {MIN_HEIGHT})")


def _check(args: argparse.Namespace) -> tuple[float, float | None, float]:
    """(range, step, rate interval) in seconds, or ValueError for what Prometheus would refuse
    (400) or the view cannot show, before any query."""
    if args.pid <= 0:
        raise ValueError(f"--pid: not a process id: {args.pid}")
    range_s = parse_duration(args.range)
    if range_s <= 0:
        raise ValueError(f"--range must be more than 0, got {args.range!r}")
    step = parse_duration(args.step) if args.step is not None else None
    if step is not None:
        if step <= 0:
            raise ValueError(f"--step must be more than 0, got {args.step!r}")
        if range_s / step + 1 > MAX_POINTS:
            least = math.ceil(range_s / (MAX_POINTS - 1) * 1000) / 1000
            raise ValueError(f"--step {args.step} over --range {args.range} is more than the "
                             f"{MAX_POINTS} points Prometheus returns a series; use --step {least:g}s "
                             "or more")
    rate = parse_duration(args.rate_interval)
    ms = rate * 1000
    if ms < 1 or abs(ms - round(ms)) > 1e-6:
        raise ValueError(f"--rate-interval must be a whole number of milliseconds, at least 1ms "
                         f"(and at least two scrape intervals), got {args.rate_interval!r}")
    for flag, value, least in (("--width", getattr(args, "width", None), MIN_WIDTH),
                               ("--height", getattr(args, "height", None), MIN_HEIGHT)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    return range_s, step, rate


def run(args: argparse.Namespace, no_color: bool | None = None) -> int:
    """``no_color``: the NO_COLOR convention, as config.no_color() reads it (the default)."""
    try:
        range_s, step, rate = _check(args)
    except ValueError as e:
        print(f"pageheat: {e}", file=sys.stderr)
        return 2
    images = [(out, fmt) for out, fmt in ((args.png, "png"), (args.svg, "svg")) if out is not None]
    for out, fmt in images:
        if out.is_dir():
            print(f"pageheat: --{fmt} {out}: is a directory", file=sys.stderr)
            return 2
        if not out.parent.is_dir():
            print(f"pageheat: --{fmt} {out}: no such directory {out.parent}", file=sys.stderr)
            return 2
    if images and importlib.util.find_spec("matplotlib") is None:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    try:
        data = fetch(args.prometheus, args.pid, range_s, step, rate,
                     instance=getattr(args, "instance", None), job=getattr(args, "job", None))
    except RenderError as e:
        print(f"pageheat: {e}", file=sys.stderr)
        return 1
    for out, fmt in images:
        try:
            draw(data, out, fmt)
        except OSError as e:
            print(f"pageheat: cannot write {out}: {e.strerror or e}", file=sys.stderr)
            return 1
    if not images:
        tty = sys.stdout.isatty()
        color = tty and not (config.no_color() if no_color is None else no_color)
        width = args.width or min(80, shutil.get_terminal_size((80, 24)).columns)
        sys.stdout.write(terminal(data, width, args.height or 24, color))
    return 0

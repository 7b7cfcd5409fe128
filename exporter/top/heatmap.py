"""The heatmap's data (columns of aggregated agings) and its rendering into text lines.

Two bins per text row with the upper half block: foreground is the upper bin, background the
lower one. Colours are 24-bit; Textual's console turns them into 256 colours on terminals
without truecolor, and with NO_COLOR the heatmap draws shades (one glyph per text row).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from pageheat.kernel.procfs import shown
from pageheat.top.feed import Layout, Sample
from pageheat.top.ramp import HEAT, colours, gradient, shade
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

OVERLAYS = ("heat", "numa", "type", "idle", "never")
OVERLAY_TITLES = {"heat": "accessed pages (log)", "numa": "NUMA node", "type": "anon/file/shmem",
                  "idle": "idle age (median)", "never": "never accessed"}
MAX_COLUMNS = 1000
LABEL_WIDTH = 28
EMPTY = (14, 14, 18)  # nothing resident
HALF = "\u2580"
PLAIN = Style()

# Heat is the ramp shared with `render` (top/ramp.py). Recently used is warm, long idle is
# cold; never accessed has its own colour.
IDLE = gradient([(0.0, (255, 230, 120)), (0.35, (230, 90, 40)), (0.7, (90, 40, 140)),
                  (1.0, (30, 50, 110))])
NEVER_COLOUR = (10, 110, 140)
NEVER = gradient([(0.0, (40, 40, 50)), (1.0, (60, 200, 240))])
NODES = np.array([(80, 170, 255), (255, 170, 60), (120, 220, 110), (230, 90, 200),
                  (240, 230, 80), (90, 220, 220), (200, 120, 90), (170, 170, 255)], dtype=np.uint8)
NO_NODE = (110, 110, 110)
TYPES = np.array([(90, 140, 255), (110, 220, 110), (230, 90, 220)], dtype=np.uint8)  # anon, file, shmem
IDLE_MAX = 3600.0


@dataclass
class Column:
    """Agings aggregated into one column of the heatmap."""

    accessed: np.ndarray
    last: Sample
    agings: int = 1


class History:
    """Columns, newest last. Reset whenever the display bins change."""

    def __init__(self, aggregate: int = 3, max_columns: int = MAX_COLUMNS) -> None:
        self.aggregate = aggregate
        self.columns: deque[Column] = deque(maxlen=max_columns)
        self.layout: Layout | None = None
        self.latest: Sample | None = None
        self.samples = 0  # harvests added (previews after a resize or zoom not counted)

    def add(self, s: Sample) -> None:
        if self.layout is None or s.layout.key != self.layout.key:
            self.columns.clear()
            self.layout = s.layout
        self.latest = s
        if not s.extra.get("preview"):
            self.samples += 1  # harvests shown; a re-binned preview of the last one is not one
        cur = self.columns[-1] if self.columns else None
        if cur is None or cur.agings >= self.aggregate:
            self.columns.append(Column(s.accessed.copy(), s, s.agings))
        else:
            cur.accessed = cur.accessed + s.accessed
            cur.last = s
            cur.agings += s.agings

    def set_aggregate(self, n: int) -> None:
        self.aggregate = max(1, n)


def _levels(hist: History, cols: list[Column], overlay: str) -> tuple[np.ndarray, np.ndarray]:
    """RGB [bins, columns, 3] for the overlay, and a mask [bins, columns] of cells with data."""
    layout = hist.layout
    assert layout is not None
    nb, nc = layout.n, len(cols)
    rgb = np.empty((nb, nc, 3), dtype=np.uint8)
    rgb[:] = EMPTY
    if nc == 0:
        return rgb, np.zeros((nb, 0), bool)
    resident = np.stack([c.last.resident for c in cols], axis=1)
    has = resident > 0
    if overlay == "heat":
        acc = np.stack([c.accessed for c in cols], axis=1).astype(np.float64)
        has = has | (acc > 0)
        ref = np.array([max(layout.bin_pages * c.agings, 1.0) for c in cols])
        lvl = np.log1p(acc) / np.log1p(ref)[None, :]
        rgb[has] = colours(HEAT, lvl[has])
    elif overlay == "numa":
        node = np.stack([c.last.node for c in cols], axis=1).astype(np.int64)
        rgb[has] = NO_NODE
        known = has & (node >= 0)
        rgb[known] = NODES[node[known] % len(NODES)]
    elif overlay == "type":
        t = np.stack([c.last.type for c in cols], axis=1).astype(np.int64)
        known = has & (t >= 0)
        rgb[known] = TYPES[t[known] % len(TYPES)]
    elif overlay == "idle":
        idle = np.stack([c.last.idle for c in cols], axis=1)
        never = has & np.isinf(idle)
        seen = has & np.isfinite(idle)
        lvl = np.log1p(np.minimum(idle[seen], IDLE_MAX)) / math.log1p(IDLE_MAX)
        rgb[seen] = colours(IDLE, lvl)
        rgb[never] = NEVER_COLOUR
    elif overlay == "never":
        never = np.stack([c.last.never for c in cols], axis=1)
        frac = never[has] / resident[has]
        rgb[has] = colours(NEVER, frac)
    return rgb, has


def _pack(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]


class FrameRenderer:
    """Turns a History into Strips; styles are cached across frames."""

    def __init__(self, no_color: bool = False) -> None:
        self.no_color = no_color
        self._styles: dict[tuple[int, int], Style] = {}
        self.label_style = Style(color="grey70")
        self.cursor_style = Style(color="black", bgcolor="grey85", bold=True)

    def _style(self, top: int, bottom: int) -> Style:
        key = (top, bottom)
        s = self._styles.get(key)
        if s is None:
            if len(self._styles) > 50_000:
                self._styles.clear()
            s = self._styles[key] = Style.from_color(
                Color.from_rgb(top >> 16, (top >> 8) & 255, top & 255),
                Color.from_rgb(bottom >> 16, (bottom >> 8) & 255, bottom & 255))
        return s

    def frame(self, hist: History, overlay: str, rows: int, width: int, cursor: int = -1,
              show_addresses: bool = True) -> list[Strip]:
        """``rows`` text lines of ``width`` cells: a label column, then the newest columns."""
        layout = hist.layout
        if layout is None or rows <= 0 or width <= 0:
            return [Strip.blank(max(width, 0), PLAIN)] * max(rows, 0)
        label_w = min(LABEL_WIDTH, max(width // 3, 0))
        ncols = max(width - label_w, 0)
        cols = list(hist.columns)[-ncols:] if ncols else []
        rgb, has = _levels(hist, cols, overlay)
        packed = _pack(rgb)
        pad = ncols - len(cols)  # newest column at the right edge, older ones scroll left
        lines: list[Strip] = []
        for y in range(rows):
            b0, b1 = 2 * y, 2 * y + 1
            label = self._label(layout, b0, show_addresses)[:label_w].ljust(label_w)
            segs = [Segment(label, self.cursor_style if y == cursor else self.label_style)]
            if pad:
                segs.append(Segment(" " * pad, PLAIN))
            if b0 < layout.n and cols:
                if self.no_color:
                    segs.extend(self._shade_row(hist, cols, overlay, b0, b1, has))
                else:
                    top = packed[b0]
                    bot = packed[b1] if b1 < layout.n else np.full_like(top, _pack(np.array(EMPTY)))
                    segs.extend(self._half_row(top, bot))
            elif cols:
                segs.append(Segment(" " * len(cols), PLAIN))
            lines.append(Strip(segs, width))
        return lines

    def _half_row(self, top: np.ndarray, bot: np.ndarray) -> list[Segment]:
        segs: list[Segment] = []
        change = np.flatnonzero((top[1:] != top[:-1]) | (bot[1:] != bot[:-1])) + 1
        starts = [0, *change.tolist()]
        ends = [*change.tolist(), len(top)]
        t, b = top.tolist(), bot.tolist()
        for s, e in zip(starts, ends, strict=True):
            segs.append(Segment(HALF * (e - s), self._style(t[s], b[s])))
        return segs

    def _shade_row(self, hist: History, cols: list, overlay: str, b0: int, b1: int,
                   has: np.ndarray) -> list[Segment]:
        """NO_COLOR: one shade glyph per text row, from the hotter of its two bins."""
        layout = hist.layout
        assert layout is not None
        rows = [b for b in (b0, b1) if b < layout.n]
        if overlay == "heat":
            acc = np.array([[c.accessed[b] for c in cols] for b in rows], dtype=np.float64).max(axis=0)
            ref = np.array([max(layout.bin_pages * c.agings, 1.0) for c in cols])
            lvl = np.log1p(acc) / np.log1p(ref)
        elif overlay == "never":
            lvl = np.array([max(c.last.never[b] / max(c.last.resident[b], 1) for b in rows) for c in cols])
        elif overlay == "idle":
            idle = np.array([min(c.last.idle[b] for b in rows) for c in cols])
            lvl = 1 - np.log1p(np.minimum(np.nan_to_num(idle, nan=IDLE_MAX), IDLE_MAX)) / math.log1p(IDLE_MAX)
        else:  # categorical: the digit of the node or the type's letter
            key = "node" if overlay == "numa" else "type"
            text = "".join(_category_char(overlay, int(getattr(c.last, key)[b0])) for c in cols)
            return [Segment(text, PLAIN)]
        present = has[rows].any(axis=0)
        text = "".join(g if p else " " for g, p in zip(shade(lvl), present.tolist(), strict=True))
        return [Segment(text, PLAIN)]

    @staticmethod
    def _label(layout: Layout, b: int, show_addresses: bool) -> str:
        if b >= layout.n:
            return ""
        name = shown(layout.labels[b]) or "-"  # names are untrusted bytes from /proc
        if layout.addrs is not None and show_addresses:
            return f"{layout.addrs[b]:012x} {name}"
        return f"#{b:<3d} {name}"


def _category_char(overlay: str, v: int) -> str:
    if v < 0:
        return " "
    if overlay == "numa":
        return str(v % 10)
    return "afs"[v % 3]


def legend(overlay: str) -> str:
    if overlay == "heat":
        return "dark: resident, idle  ->  white: every page accessed in every aging"
    if overlay == "numa":
        return "blue: node 0  orange: node 1  green: node 2  pink: node 3  grey: no node"
    if overlay == "type":
        return "blue: anon  green: file  magenta: shmem"
    if overlay == "idle":
        return "yellow: just used -> blue: idle 1h; teal: never accessed"
    return "dark: all accessed at least once -> cyan: never accessed"

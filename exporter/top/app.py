"""The Textual app of `pageheat top`: heatmap, mappings table, status line, keys.

Harvesting runs on its own thread (``HarvestThread``): it blocks in system calls, the UI never
waits for it. Samples reach the UI as messages; requests (zoom, resize) reach the thread
through attributes of the feed and an Event.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time

from pageheat.kernel.procfs import shown
from pageheat.sources.base import TargetGone
from pageheat.top.feed import PAGE, Sample
from pageheat.top.heatmap import OVERLAY_TITLES, OVERLAYS, PLAIN, FrameRenderer, History, legend
from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import DataTable, Static

AGING_STEPS = (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
HELP = """[b]pageheat top[/b]

  [b]q[/b]        quit
  [b]p[/b]        pause / resume the display (harvesting goes on)
  [b]+ -[/b]      aging interval longer / shorter
  [b]] [[/b]      more / fewer agings per column
  [b]o[/b]        next overlay: heat, NUMA node, anon/file/shmem, idle age, never accessed
  [b]z Enter[/b]  zoom: into the mapping selected in the table, or around the heatmap cursor
  [b]Esc[/b]      zoom out
  [b]Tab[/b]      switch between heatmap and table; [b]Up Down[/b] move the cursor
  [b]?[/b]        this help

Rows are address bins (two per text row: upper and lower half of each cell), labelled with
the mapping that covers most of them and its start address. Columns are aggregation
intervals, the newest on the right.
"""


def human_pages(n: int) -> str:
    b = n * PAGE
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return str(b)


def ms(s: float) -> str:
    return f"{s * 1000:.1f}ms"


class NewSample(Message):
    def __init__(self, sample: Sample) -> None:
        super().__init__()
        self.sample = sample


class FeedEnded(Message):
    def __init__(self, why: str, error: bool) -> None:
        super().__init__()
        self.why = why
        self.error = error


class HarvestThread(threading.Thread):
    """Attaches, then cycles the feed every aging interval and posts the samples."""

    def __init__(self, app: TopApp) -> None:
        super().__init__(name="pageheat-top-harvest", daemon=True)
        self.app = app
        self.stop = threading.Event()
        self.wake = threading.Event()

    def run(self) -> None:
        app, feed = self.app, self.app.feed
        try:
            try:
                feed.attach()
            except TargetGone:
                app.post_message(FeedEnded("process exited", False))
                return
            except Exception as e:  # noqa: BLE001 - shown in the UI, then the app ends
                app.post_message(FeedEnded(f"cannot follow: {e}", True))
                return
            due = time.monotonic() + app.aging
            while not self.stop.is_set():
                if self.wake.wait(timeout=max(0.0, due - time.monotonic())):
                    self.wake.clear()
                    if self.stop.is_set():
                        break
                    s = feed.rebin()
                    if s is not None:
                        app.post_message(NewSample(s))
                    continue
                try:
                    s = feed.step(app.aging)
                except TargetGone:
                    app.post_message(FeedEnded("process exited", False))
                    return
                except Exception as e:  # noqa: BLE001
                    app.post_message(FeedEnded(f"harvest failed: {e}", True))
                    return
                due = max(due + app.aging, time.monotonic())
                if s is not None:
                    app.post_message(NewSample(s))
        finally:
            with contextlib.suppress(Exception):
                feed.close()

    def request(self) -> None:
        self.wake.set()

    def shutdown(self, timeout: float = 2.0) -> None:
        self.stop.set()
        self.wake.set()
        if self.is_alive():
            self.join(timeout)


class Heatmap(Widget, can_focus=True):
    """Address bins (rows) over aggregation intervals (columns)."""

    DEFAULT_CSS = "Heatmap { width: 1fr; height: 1fr; }"
    BINDINGS = [Binding("up", "cursor(-1)", show=False), Binding("down", "cursor(1)", show=False),
                Binding("pageup", "cursor(-8)", show=False), Binding("pagedown", "cursor(8)", show=False),
                Binding("enter", "app.zoom", show=False)]

    def __init__(self, history: History, no_color: bool = False, show_addresses: bool = True) -> None:
        super().__init__()
        self.history = history
        self.renderer = FrameRenderer(no_color)
        self.overlay = "heat"
        self.cursor = 0
        self.show_addresses = show_addresses
        self._frame: list[Strip] | None = None
        self.frame_seconds = 0.0

    def refresh_frame(self) -> None:
        self._frame = None
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        rows = max(self.size.height, 1)
        self.cursor = min(max(self.cursor + delta, 0), rows - 1)
        self.refresh_frame()

    def render_line(self, y: int) -> Strip:
        if self._frame is None or len(self._frame) != self.size.height:
            t0 = time.perf_counter()
            self._frame = self.renderer.frame(self.history, self.overlay, self.size.height, self.size.width,
                                              self.cursor if self.has_focus else -1, self.show_addresses)
            self.frame_seconds = time.perf_counter() - t0
        if y < len(self._frame):
            return self._frame[y]
        return Strip.blank(self.size.width, PLAIN)

    def on_focus(self) -> None:
        self.refresh_frame()

    def on_blur(self) -> None:
        self.refresh_frame()

    def cursor_range(self, span: int = 4) -> tuple[int, int] | None:
        """Addresses around the cursor: ``span`` text rows above and below it."""
        layout = self.history.layout
        if layout is None or layout.addrs is None or layout.n == 0:
            return None
        lo_bin = max(2 * (self.cursor - span), 0)
        hi_bin = min(2 * (self.cursor + span + 1), layout.n)
        if lo_bin >= layout.n:
            return None
        lo = layout.addrs[lo_bin]
        hi = layout.addrs[hi_bin] if hi_bin < layout.n else layout.end
        return (lo, hi) if hi > lo else None


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 90; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", show=False)]

    def compose(self) -> ComposeResult:
        yield Static(HELP)


class TopApp(App[int]):
    TITLE = "pageheat top"
    CSS = """
    Screen { layout: vertical; }
    #main { height: 1fr; }
    #table { width: 64; height: 1fr; border-left: solid $primary-darken-2; }
    #bottom { height: auto; }
    #status { height: auto; max-height: 2; background: $primary-darken-3; color: $text; }
    #legend { height: 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("q", "quit_top", "quit", priority=True),
        Binding("p", "pause", "pause"),
        Binding("plus,equals_sign", "aging(1)", "aging+"),
        Binding("minus", "aging(-1)", "aging-"),
        Binding("right_square_bracket", "aggregate(1)", "agg+"),
        Binding("left_square_bracket", "aggregate(-1)", "agg-"),
        Binding("o", "overlay", "overlay"),
        Binding("z", "zoom", "zoom"),
        Binding("escape", "zoom_out", "zoom out"),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self, feed, aging: float = 0.5, aggregate: int = 3, autostart: bool = True,
                 show_addresses: bool = True) -> None:
        super().__init__()
        self.feed = feed
        self.aging = aging
        self.history = History(aggregate)
        self.paused = False
        self.message = ""
        self.autostart = autostart
        self.show_addresses = show_addresses
        self.exit_code = 0
        self.thread: HarvestThread | None = None
        self.heatmap = Heatmap(self.history, self.no_color, show_addresses)
        self.table: DataTable = DataTable(id="table", cursor_type="row", zebra_stripes=False)
        self._rows: list = []

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield self.heatmap
            yield self.table
        with Vertical(id="bottom"):
            yield Static(id="legend")
            yield Static(id="status")

    def on_mount(self) -> None:
        self.table.add_columns("mapping", "resident", "acc", "never", "idle p50")
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self.action_quit_top)
            loop.add_signal_handler(signal.SIGHUP, self.action_quit_top)
        self.heatmap.focus()
        self.update_status()
        if self.autostart:
            self.start_harvesting()

    def start_harvesting(self) -> None:
        self.thread = HarvestThread(self)
        self.thread.start()

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self._sync_bins)

    def _sync_bins(self) -> None:
        if self.feed.remote:
            return
        want = max(2 * self.heatmap.size.height, 8)
        if want != self.feed.n_bins:
            self.feed.n_bins = want
            self._request_rebin()

    def _request_rebin(self) -> None:
        if self.thread is not None:
            self.thread.request()
        else:  # not harvesting on a thread (tests): rebin right here
            s = self.feed.rebin()
            if s is not None:
                self.add_sample(s)

    # -- data --------------------------------------------------------------------------------
    def on_new_sample(self, message: NewSample) -> None:
        self.add_sample(message.sample)

    def add_sample(self, s: Sample) -> None:
        if not self.paused or s.layout.key != (self.history.layout.key if self.history.layout else None):
            self.history.add(s)
            self.heatmap.refresh_frame()
            self._fill_table(s)
        self.update_status()

    def on_feed_ended(self, message: FeedEnded) -> None:
        self.message = message.why
        if message.error:
            self.exit_code = 1
        self.update_status()

    def _fill_table(self, s: Sample) -> None:
        rows = list(s.mappings)
        self._rows = rows
        keep = self.table.cursor_row
        self.table.clear()
        for r in rows:
            idle = "-" if r.idle_median != r.idle_median else (
                "never" if r.idle_median == float("inf") else f"{r.idle_median:.1f}s")
            name = shown(r.name)  # untrusted bytes from /proc: no control characters on screen
            if r.start is not None and self.show_addresses:
                name = f"{name} {r.start:x}"
            self.table.add_row(Text(name[:30]), f"{r.resident}", f"{r.accessed}", f"{r.never}", idle)
        if rows:
            self.table.move_cursor(row=min(keep, len(rows) - 1))

    # -- status ------------------------------------------------------------------------------
    def status_text(self) -> str:
        f, s = self.feed, self.history.latest
        parts = ["PAUSED"] if self.paused else []
        parts += [f"pid {f.pid}" + (f" ({shown(f.comm)})" if f.comm else ""), f"source {f.source_name}"]
        eff = s.interval if s is not None and s.interval > 0 else self.aging
        agg = self.history.aggregate
        if f.remote:
            parts.append(f"aging {eff:.2f}s (server) x{agg} = {eff * agg:.2f}s/col")
        else:
            parts.append(f"aging {self.aging:.2f}s (eff {eff:.2f}s) x{agg} = {eff * agg:.2f}s/col")
        if s is not None and f.remote:  # the server reports one smoothed harvest + aging cost
            parts.append(f"cost {ms(s.harvest_s)} (server)")
        elif s is not None:
            parts.append(f"harvest {ms(s.harvest_s)} aging {ms(s.aging_s)}")
            parts.append(f"WSS {human_pages(s.wss_pages)} of {human_pages(s.resident_pages)}")
        parts.append(f"overlay {self.heatmap.overlay}")
        zoom = f.zoom_stack[-1] if f.zoom_stack else None
        if zoom:
            parts.append(f"zoom {len(f.zoom_stack)} {human_pages((zoom[1] - zoom[0]) // PAGE)}")
        if self.message:
            parts.append(self.message)
        return " | ".join(parts)

    def update_status(self) -> None:
        with contextlib.suppress(Exception):
            self.query_one("#status", Static).update(Text(self.status_text()))
            ov = self.heatmap.overlay
            self.query_one("#legend", Static).update(
                Text(f"{OVERLAY_TITLES[ov]}: {legend(ov)}   ? help", no_wrap=True, overflow="ellipsis"))

    # -- actions -----------------------------------------------------------------------------
    def action_quit_top(self) -> None:
        if self.thread is not None:
            self.thread.stop.set()
            self.thread.wake.set()
        self.exit(self.exit_code)

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.update_status()

    def action_aging(self, direction: int) -> None:
        if self.feed.remote:
            self.message = "aging is set by the server"
        else:
            i = min(range(len(AGING_STEPS)), key=lambda k: abs(AGING_STEPS[k] - self.aging))
            self.aging = AGING_STEPS[min(max(i + direction, 0), len(AGING_STEPS) - 1)]
        self.update_status()

    def action_aggregate(self, delta: int) -> None:
        self.history.set_aggregate(self.history.aggregate + delta)
        self.heatmap.refresh_frame()
        self.update_status()

    def action_overlay(self) -> None:
        h = self.heatmap
        h.overlay = OVERLAYS[(OVERLAYS.index(h.overlay) + 1) % len(OVERLAYS)]
        h.refresh_frame()
        self.update_status()

    def action_zoom(self) -> None:
        if self.feed.remote:
            self.message = "no zoom over --connect (the server's bins are fixed)"
            self.update_status()
            return
        rng = None
        if self.table.has_focus and self._rows:
            r = self._rows[min(self.table.cursor_row, len(self._rows) - 1)]
            if r.start is not None and r.end is not None:
                rng = (r.start, r.end)
        else:
            rng = self.heatmap.cursor_range()
        if rng is None:
            return
        self.feed.zoom_in(*rng)
        self.heatmap.cursor = 0
        self._request_rebin()
        self.update_status()

    def action_zoom_out(self) -> None:
        if self.feed.zoom_stack:
            self.feed.zoom_out()
            self._request_rebin()
        self.update_status()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_zoom()

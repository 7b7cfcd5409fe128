"""`pageheat top`: a live terminal heatmap of one process's page accesses."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

HEADLESS = ("pageheat top: stdout is not a terminal; for a non-interactive view use "
            "`pageheat snapshot --pid PID --json`")


def run(pid: int | None, command: list[str], connect: str | None, source: str, aging: float,
        aggregate: int, tlb_flush: str = "auto", mglru_aging: str = "active") -> int:
    """Entry point of the subcommand; returns the exit code. ``tlb_flush`` and ``mglru_aging``
    are the Config's settings for the source. Raises SourceError, OSError."""
    if not sys.stdout.isatty():
        print(HEADLESS, file=sys.stderr)
        return 2
    from .. import procfs
    from .app import TopApp
    from .feed import LocalFeed, RemoteFeed

    child: subprocess.Popen | None = None
    if connect:
        feed = RemoteFeed(connect, pid)
        try:
            feed.attach()  # fails early, before the terminal is taken over
        except (LookupError, ValueError) as e:
            print(f"pageheat: {connect}: {e}", file=sys.stderr)
            return 1
        app = TopApp(feed, aging=aging, aggregate=aggregate)
    else:
        from ..sources import open_source

        src = open_source(source, tlb_flush, mglru_aging)
        if command:
            try:
                child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            except OSError:
                src.close()
                raise
            pid = child.pid
            time.sleep(0.05)
        assert pid is not None
        try:
            comm = procfs.read_comm(pid)
        except OSError:
            comm = ""
        app = TopApp(LocalFeed(src, pid, comm), aging=aging, aggregate=aggregate)
    # Log records would scribble over the screen: hold them while the app runs, print them after.
    root = logging.getLogger()
    saved, held = root.handlers[:], _Held()
    root.handlers = [held]
    try:
        code = app.run()
    finally:
        if app.thread is not None:
            app.thread.shutdown()
        if child is not None:
            _stop(child)
        root.handlers = saved
        for record in held.records:
            for h in saved:
                if record.levelno >= h.level:
                    h.handle(record)
    if app.return_code:  # Textual's own failure (an exception in the app)
        return app.return_code
    if code and app.message:  # the harvest failed: say why once the screen is gone
        print(f"pageheat: {app.message}", file=sys.stderr)
    return int(code or 0)


class _Held(logging.Handler):
    def __init__(self, keep: int = 100) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.keep = keep

    def emit(self, record: logging.LogRecord) -> None:
        self.records = [*self.records[-(self.keep - 1):], record]


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(1.0)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

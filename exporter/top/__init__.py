"""`pageheat top`: a live terminal heatmap of one process's page accesses."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from pageheat.serve.launch import not_runnable

if TYPE_CHECKING:
    from pageheat.serve.launch import Launched
    from pageheat.sources import SourceOptions

# textual (and rich, which it brings) are the `top` extra: the daemon on every node does not
# need them. Checked before anything else so that a missing extra is one line, not a traceback.
MISSING_EXTRA = "pageheat top needs the 'top' extra: pip install 'pageheat[top]'"
STOP_GRACE_SECONDS = 1.0  # between SIGTERM and SIGKILL for the command top launched
HEADLESS = ("pageheat top: stdout is not a terminal; for a non-interactive view use "
            "`pageheat snapshot --pid PID --json`")


def run(pid: int | None, command: list[str], connect: str | None, source: str, aging: float,
        aggregate: int, *, connect_user: str | None = None, password_file: str | None = None,
        ca_file: str | None = None, options: SourceOptions, bins: int, cold_after: float) -> int:
    """Entry point of the subcommand; returns the exit code. Raises SourceError, OSError.
    connect_user, password_file, ca_file: basic auth and a private CA for ``connect``;
    ``options`` (Config.source_options), ``bins`` and ``cold_after``: the Config's settings
    for the source and the aggregator."""
    if not has_extra():
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    if command and (why := not_runnable(command)):  # said as `serve -- CMD` says it
        print(f"pageheat: {why}", file=sys.stderr)
        return 2
    if not sys.stdout.isatty():
        print(HEADLESS, file=sys.stderr)
        return 2
    from pageheat.kernel import procfs
    from pageheat.top.app import TopApp
    from pageheat.top.feed import LocalFeed, RemoteFeed

    child: Launched | None = None
    if connect:
        try:
            feed = RemoteFeed(connect, pid, user=connect_user, password_file=password_file,
                              ca_file=ca_file)
        except ValueError as e:  # the URL or the credentials' flags: usage
            print(f"pageheat: --connect: {e}", file=sys.stderr)
            return 2
        try:
            feed.attach()  # fails early, before the terminal is taken over
        except (LookupError, ValueError) as e:
            print(f"pageheat: {feed.base}: {e}", file=sys.stderr)  # no password in feed.base
            return 1
        app = TopApp(feed, aging=aging, aggregate=aggregate)
    else:
        from pageheat.serve.launch import Launched
        from pageheat.sources import open_source

        src = open_source(source, options)
        if command:
            try:  # its output would scribble over the screen
                child = Launched(command, stdio=subprocess.DEVNULL)
            except (FileNotFoundError, PermissionError) as e:  # gone or changed since the check
                src.close()
                print(f"pageheat: cannot run {command[0]}: {e.strerror}", file=sys.stderr)
                return 2
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
        feed = LocalFeed(src, pid, comm, bins=bins, cold_after=cold_after)
        app = TopApp(feed, aging=aging, aggregate=aggregate)
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
            child.stop(STOP_GRACE_SECONDS)
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


def has_extra() -> bool:
    """Whether textual and rich are installed (without importing them: that takes ~0.3 s)."""
    return all(importlib.util.find_spec(m) is not None for m in ("textual", "rich"))


class _Held(logging.Handler):
    def __init__(self, keep: int = 100) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.keep = keep

    def emit(self, record: logging.LogRecord) -> None:
        self.records = [*self.records[-(self.keep - 1):], record]


"""What the anon_pass BPF program adds to a ptwalk harvest (docs/ACCURACY.md, section 4).

On one ``pageheat workload`` process (its interpreter's RELRO and data pages are what the pass
looks at), REPS rounds of a harvest with the pass and one without, interleaved; CPU time of
this thread, median. Also the pages the pass asked (anon_cow_checks).

    sudo .venv/bin/python bench/anon_pass.py [--size 1GiB] [--reps 11]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pageheat.config import parse_size
from pageheat.sources import pagetable
from pageheat.sources.ptwalk import PtwalkSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harvest import start_target  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--reps", type=int, default=11)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wl = start_target(parse_size(a.size), 0, Path(tmp))
        src = PtwalkSource(lazy_pages=True)
        try:
            src.attach(wl.pid)
            with_pass = pagetable.PageTableScan._mark_cow_anon
            ms: dict[str, list[float]] = {"with": [], "without": []}
            checks = 0
            for _ in range(a.reps):
                for mode in ("with", "without"):
                    pagetable.PageTableScan._mark_cow_anon = (  # type: ignore[method-assign]
                        with_pass if mode == "with" else lambda self, vmas: None)
                    t0 = time.thread_time()
                    pages, _, report = src.harvest(wl.pid, lazy=True)
                    ms[mode].append((time.thread_time() - t0) * 1e3)
                    if mode == "with":
                        checks = report.counters["anon_cow_checks"]
            pagetable.PageTableScan._mark_cow_anon = with_pass  # type: ignore[method-assign]
        finally:
            src.close()
            wl.kill()
            wl.wait()
    w, wo = statistics.median(ms["with"]), statistics.median(ms["without"])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"kernel {platform.release()}, {when}, {a.size}, {a.reps} rounds, {len(pages)} pages")
    print("| harvest with anon_pass (ms) | without (ms) | difference (ms) | pages asked |")
    print("|---|---|---|---|")
    print(f"| {w:.2f} | {wo:.2f} | {w - wo:.2f} | {checks} |")


if __name__ == "__main__":
    main()

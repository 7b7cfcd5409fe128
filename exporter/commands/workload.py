"""`pageheat workload`: a process whose memory access pattern is known page by page.

It maps a region (anonymous, file-backed, shmem, optionally THP), populates every page, then
reads a seeded random "hot" set every ``hot_period`` and a "warm" set every ``warm_period``,
and never touches the rest again. The sets go to a JSON truth file, so tests and benchmarks
can judge any source page by page. Used by the tests, the demo and the benchmarks.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pageheat.commands.files import replace_file

PAGE = 4096
HUGE = 2 << 20


@dataclass(frozen=True)
class Spec:
    size: int = 256 << 20
    backing: str = "anon"  # anon | file | shmem
    thp: bool = False
    hot: float = 0.10
    warm: float = 0.10
    hot_period: float = 0.010
    warm_period: float = 2.0
    layout: str = "random"  # random | contiguous (hot pages in one band, for pictures)
    seed: int = 1
    dir: Path = Path("/var/tmp")
    file_advice: str = "random"  # random | normal: madvise of a file backing (see run())


def choose_sets(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """Hot and warm page indices, disjoint, sorted."""
    n = spec.size // PAGE
    n_hot, n_warm = int(n * spec.hot), int(n * spec.warm)
    rng = np.random.default_rng(spec.seed)
    if spec.layout == "contiguous":
        start = n // 2 - n_hot // 2
        hot = np.arange(start, start + n_hot)
        rest = np.setdiff1d(np.arange(n), hot)
        warm = np.sort(rng.choice(rest, n_warm, replace=False))
        return hot, warm
    perm = rng.permutation(n)
    return np.sort(perm[:n_hot]), np.sort(perm[n_hot : n_hot + n_warm])


def _map(spec: Spec) -> tuple[mmap.mmap, Path | None]:
    if spec.backing == "anon":
        # MAP_PRIVATE | MAP_ANONYMOUS; over-allocate to align to 2 MiB for THP.
        m = mmap.mmap(-1, spec.size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return m, None
    if spec.backing == "shmem":
        fd = os.memfd_create("pageheat-workload")
        path = None
    else:
        fd, name = tempfile.mkstemp(dir=spec.dir, prefix="pageheat-workload-")
        path = Path(name)
    os.ftruncate(fd, spec.size)
    m = mmap.mmap(fd, spec.size, flags=mmap.MAP_SHARED)
    os.close(fd)
    return m, path


def run(spec: Spec, truth: Path) -> None:
    region, path = _map(spec)
    buf = np.frombuffer(region, dtype=np.uint8)
    base_addr = buf.ctypes.data
    offset = (-base_addr) % HUGE if spec.backing == "anon" else 0  # aligned, so THP can back it
    # Without --thp, keep 4 KiB mappings (file systems with large folios would map 2 MiB).
    region.madvise(mmap.MADV_HUGEPAGE if spec.thp else mmap.MADV_NOHUGEPAGE, offset, spec.size)
    if spec.backing == "file" and not spec.thp and spec.file_advice == "random":
        # No readahead, so the page cache holds single-page folios. File systems with large
        # folios otherwise group 16-512 pages, and whoever else clears Accessed bits (DAMON)
        # keeps what it saw per folio, not per page: see docs/ACCURACY.md. MGLRU, though,
        # never looks at MADV_RANDOM mappings: "normal" is for the mglru sources, on kernels
        # whose file system has no large folios (ext4 before 6.16) and without DAMON.
        region.madvise(mmap.MADV_RANDOM)
    words = buf[offset : offset + spec.size].view(np.uint64)
    per_page = PAGE // 8
    words[::per_page] = 1  # populate: write every page once
    hot, warm = choose_sets(spec)
    hot_words, warm_words = hot * per_page, warm * per_page
    record = {
        "pid": os.getpid(), "start": hex(base_addr + offset), "size": spec.size,
        "page_size": PAGE, "backing": spec.backing, "thp": spec.thp, "file": str(path or ""),
        "hot_period": spec.hot_period, "warm_period": spec.warm_period,
        "hot": hot.tolist(), "warm": warm.tolist(),
    }
    # Readers never see half a file; nothing beside it is touched.
    replace_file(truth, lambda f: f.write(json.dumps(record).encode()))

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sink = 0
    next_warm = time.monotonic()
    try:
        while not stop:
            sink += int(words[hot_words].sum())  # reads: the Accessed bit without dirtying
            now = time.monotonic()
            if now >= next_warm:
                sink += int(words[warm_words].sum())
                next_warm = now + spec.warm_period
            time.sleep(spec.hot_period)
    finally:
        if path:
            path.unlink(missing_ok=True)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text!r}")
    return value


def _size(text: str) -> int:
    from pageheat.config import parse_size

    try:
        size = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if size <= 0 or size % PAGE:
        raise argparse.ArgumentTypeError(f"expected a size of whole {PAGE}-byte pages, more than 0, "
                                         f"got {text!r}")
    return size


def _seed(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a seed from 0 up, got {text!r}")
    return int(text)


def _truth(text: str) -> Path:
    """Where the truth file goes: a file (new or replaced) in a folder that exists."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory (the truth is a file)")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such directory {path.parent}")
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pageheat.config import parse_duration

    d = Spec()
    p.add_argument("--size", type=_size, default=d.size, help="region size (default 256MiB)")
    p.add_argument("--backing", choices=("anon", "file", "shmem"), default=d.backing)
    p.add_argument("--thp", action="store_true", help="madvise(MADV_HUGEPAGE) (anon only)")
    p.add_argument("--hot", type=_fraction, default=d.hot,
                   help="fraction of pages read every hot period (0 to 1; with --warm at most 1)")
    p.add_argument("--warm", type=_fraction, default=d.warm,
                   help="fraction read every warm period (0 to 1; with --hot at most 1)")
    p.add_argument("--hot-period", type=parse_duration, default=d.hot_period)
    p.add_argument("--warm-period", type=parse_duration, default=d.warm_period)
    p.add_argument("--layout", choices=("random", "contiguous"), default=d.layout)
    p.add_argument("--seed", type=_seed, default=d.seed)
    p.add_argument("--dir", type=Path, default=d.dir, help="where the file backing goes")
    p.add_argument("--file-advice", choices=("random", "normal"), default=d.file_advice,
                   help="madvise of a file backing (default random: single-page folios; "
                        "MGLRU skips such mappings)")
    p.add_argument("--truth", type=_truth, required=True, help="write the page sets here (JSON)")


def spec_from_args(a: argparse.Namespace) -> Spec:
    """The Spec of the flags; ConfigError when they do not make one (the hot and warm sets are
    disjoint: together at most all pages)."""
    from pageheat.config import ConfigError

    if a.hot + a.warm > 1 + 1e-9:  # a float sum (0.7 + 0.3) may round above 1
        raise ConfigError(f"--hot {a.hot:g} and --warm {a.warm:g} are more than all pages together "
                          "(the sets are disjoint: at most 1)")
    return Spec(size=a.size, backing=a.backing, thp=a.thp, hot=a.hot, warm=a.warm,
                hot_period=a.hot_period, warm_period=a.warm_period, layout=a.layout,
                seed=a.seed, dir=a.dir, file_advice=a.file_advice)

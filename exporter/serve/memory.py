"""Giving memory back to the system after a large target is dropped.

numpy returns its big arrays with munmap, but everything smaller than glibc's mmap threshold
(128 KiB, raised dynamically up to 32 MiB once large blocks were freed: mallopt(3)) stays in
the heap of the thread that allocated it. After a target with many mappings or pages is gone,
``malloc_trim(0)`` hands the free pages of every arena back (glibc >= 2.8 trims all arenas, not
only the main one: malloc/malloc.c, mtrim). Measured with bench/harvest.py on a process with
60,000 mappings (serve RSS 57 MiB before it): 193 MiB after it exited without either,
146 MiB with malloc_trim, 101 MiB with gc.collect() first (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger("pageheat")
_libc: ctypes.CDLL | None = None
# A full gc.collect() costs tens of ms: only after targets big enough to have left that much
# behind (128 MiB resident), not after each of many short-lived small ones.
TRIM_MIN_PAGES = 1 << 15


def worth_trimming(resident_pages: int) -> bool:
    """Whether dropping a target of this many resident pages calls for ``trim()``."""
    return resident_pages >= TRIM_MIN_PAGES


def trim() -> bool:
    """Collect reference cycles (a TargetGone traceback keeps the frames of the harvest that
    raised it, and their arrays), then return free heap memory to the kernel; False where
    there is no glibc malloc_trim."""
    global _libc
    gc.collect()
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None)  # the process's own symbols: no ldconfig subprocess
        return bool(_libc.malloc_trim(0))
    except (OSError, AttributeError) as e:  # musl, or no libc found: nothing to trim with
        log.debug("malloc_trim unavailable: %s", e)
        return False

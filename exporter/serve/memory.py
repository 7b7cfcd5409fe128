"""Giving memory back to the system after a large target is dropped.

``one_arena()`` at start: ``malloc_trim`` shrinks only the main arena's heap from its top
(malloc/malloc.c, mtrim: systrim for the main arena alone), so the free memory at the top
of the harvest thread's own arena stayed resident after a large target left
(bench/rss_return.py: 7-14 MiB after a 4 or 16 GiB target). With one arena for every
thread (the event loop, the harvest worker, and the HTTP executor's threads that check
passwords and encode /metrics), all of it can be trimmed; they share the arena's lock, which
bench/harvest.py did not show as CPU (it does not scrape while it measures). Only threads that
have no arena yet are affected: serve calls it before its first harvest and first request.

numpy returns its big arrays with munmap, but everything smaller than glibc's mmap threshold
(128 KiB, raised dynamically up to 32 MiB once large blocks were freed: mallopt(3)) stays in
the heap of the thread that allocated it. After a target with many mappings or pages is gone,
``malloc_trim(0)`` hands back the free pages in every arena's free lists (glibc >= 2.8,
malloc/malloc.c, mtrim) and the free top of the main arena's heap. Measured with
bench/harvest.py on a process with 60,000 mappings (serve RSS 57 MiB before it): 193 MiB
after it exited without either, 146 MiB with malloc_trim, 101 MiB with gc.collect() first
(docs/BENCHMARKS.md).
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
M_ARENA_MAX = -8  # malloc.h


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None)  # the process's own symbols: no ldconfig subprocess
    return _libc


def one_arena() -> bool:
    """mallopt(M_ARENA_MAX, 1): threads that have no arena yet share the main one (mallopt(3));
    False where there is no glibc mallopt (musl) or it refused."""
    try:
        return bool(_lib().mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError) as e:
        log.debug("mallopt unavailable: %s", e)
        return False


def worth_trimming(resident_pages: int) -> bool:
    """Whether dropping a target of this many resident pages calls for ``trim()``."""
    return resident_pages >= TRIM_MIN_PAGES


def trim() -> bool:
    """Collect reference cycles (a TargetGone traceback keeps the frames of the harvest that
    raised it, and their arrays), then return free heap memory to the kernel; False where
    there is no glibc malloc_trim."""
    gc.collect()
    try:
        return bool(_lib().malloc_trim(0))
    except (OSError, AttributeError) as e:  # musl, or no libc found: nothing to trim with
        log.debug("malloc_trim unavailable: %s", e)
        return False

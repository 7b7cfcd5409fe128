"""serve/memory.py against glibc itself, each case in a fresh interpreter (arena settings are
per process): one_arena() keeps a new thread's allocations in the main arena, whose heap
malloc_trim can shrink; without it the thread gets an arena of its own, a 64 MiB-aligned
mapping (glibc's HEAP_MAX_SIZE), whose free top malloc_trim leaves resident."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, sys, threading
from pageheat.serve import memory

def arena_heaps():
    out = set()
    for line in open("/proc/self/maps"):
        f = line.split()
        lo = int(f[0].split("-")[0], 16)
        if len(f) == 5 and lo % (64 << 20) == 0:  # anonymous, 64 MiB-aligned
            out.add(lo)
    return out

if sys.argv[1] == "one":
    assert memory.one_arena()
before = arena_heaps()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def work():
    for p in [libc.malloc(100000) for _ in range(10)]:  # a thread's first allocations
        libc.free(p)

t = threading.Thread(target=work)
t.start()
t.join()
assert memory.trim()
print(len(arena_heaps() - before))
"""


@pytest.mark.parametrize(("mode", "new_heaps"), [("default", 1), ("one", 0)])
def test_one_arena_keeps_threads_in_the_main_arena(mode: str, new_heaps: int) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True)
    assert int(out.stdout) == new_heaps, out

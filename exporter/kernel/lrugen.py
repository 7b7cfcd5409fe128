"""MGLRU's debugfs interface, /sys/kernel/debug/lru_gen: read generations, request agings.

Format (identical on 6.1 and 6.12, see lab/README.md)::

    memcg     2 /pageheat-smoke          <- memcg ID, cgroup path relative to the cgroup2 root
     node     0
              3      22252        260        1491   <- seq, age_ms, anon pages, file pages

Sequence numbers grow without bound; at most four are listed per memcg and node, and the
largest is that node's MAX_GEN. The memcg ID is the kernel's mem_cgroup id, not the cgroup
directory's inode number, so a process is mapped to it through its cgroup path
(``cgroups.cgroup_path``).

An aging request ``+ MEMCG_ID NODE_ID MAX_GEN SWAPPINESS FORCE_SCAN`` adds a generation and,
with FORCE_SCAN=1, walks the page tables of **every** mm on that memcg's mm list (all the
processes charged to the memcg, not only ours), clearing their Accessed bits. That walk is
where mglru-fexit sees young pages; its cost grows with the memcg, not with the target.
A stale MAX_GEN is accepted silently and does nothing, so the value is re-read right before
each write and checked afterwards.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

LRU_GEN = Path("/sys/kernel/debug/lru_gen")
ENABLED = Path("/sys/kernel/mm/lru_gen/enabled")

_MEMCG = re.compile(r"^memcg\s+(\d+)\s+(\S*)\s*$")
_NODE = re.compile(r"^\s+node\s+(\d+)\s*$")
# Exactly four integers: lru_gen_full's per-tier lines (other shapes) never match.
_GEN = re.compile(r"^\s+(\d+)\s+(\d+)\s+(-?\d+)\s+(-?\d+)\s*$")


class LruGenError(OSError):
    """lru_gen is missing, unreadable, or refused a request; the message says which."""


@dataclass(frozen=True)
class Generation:
    seq: int
    age_ms: int
    anon: int  # pages
    file: int


@dataclass
class Memcg:
    id: int
    path: str
    nodes: dict[int, list[Generation]] = field(default_factory=dict)

    def max_seq(self, node: int) -> int:
        return max(g.seq for g in self.nodes[node])


def mglru_state(enabled: Path = ENABLED) -> str | None:
    """None if MGLRU runs; otherwise why not, with the fix."""
    if not enabled.exists():
        return "MGLRU is not built into this kernel (CONFIG_LRU_GEN)"
    try:
        value = int(enabled.read_text().strip(), 16)
    except (OSError, ValueError) as e:
        return f"cannot read {enabled}: {e}"
    if not value & 1:
        return f"MGLRU is disabled: echo y > {enabled}"
    return None


def parse(text: str) -> dict[int, Memcg]:
    """lru_gen (or lru_gen_full) text -> memcgs by ID."""
    out: dict[int, Memcg] = {}
    memcg: Memcg | None = None
    gens: list[Generation] | None = None
    for line in text.split("\n"):  # not splitlines(): cgroup names may hold \x0c, \x85, ...
        if m := _MEMCG.match(line):
            memcg = out[int(m[1])] = Memcg(int(m[1]), m[2] or "/")
            gens = None
        elif (m := _NODE.match(line)) and memcg is not None:
            gens = memcg.nodes[int(m[1])] = []
        elif (m := _GEN.match(line)) and gens is not None:
            gens.append(Generation(int(m[1]), int(m[2]), int(m[3]), int(m[4])))
    return out


def read(path: Path = LRU_GEN) -> dict[int, Memcg]:
    try:
        # Memcg paths are cgroup directory names, any bytes: decoded as file names are, so
        # that they compare equal to cgroups.cgroup_path()'s and still name the directory.
        return parse(os.fsdecode(path.read_bytes()))
    except FileNotFoundError as e:
        raise LruGenError(errno.ENOENT, f"{path} is missing: mount debugfs "
                          "(mount -t debugfs none /sys/kernel/debug) on a kernel with MGLRU") from e
    except PermissionError as e:
        raise LruGenError(errno.EACCES, f"{path}: permission denied (needs root)") from e


def memcg_of(path: str, memcgs: dict[int, Memcg]) -> Memcg:
    """The memcg a cgroup's pages are charged to: the cgroup itself or, when the memory
    controller is not enabled down to it, its nearest ancestor that lru_gen lists."""
    by_path = {m.path: m for m in memcgs.values()}
    p = path
    while True:
        if p in by_path:
            return by_path[p]
        if p in ("/", ""):
            raise LruGenError(errno.ENOENT, f"no memcg for cgroup {path} in {LRU_GEN}")
        p = p.rsplit("/", 1)[0] or "/"


def age(memcg_id: int, nodes: list[int], swappiness: int = 1, path: Path = LRU_GEN) -> int:
    """Add one generation on each node of ``memcg_id`` with a forced page-table walk.

    Returns how many nodes aged. Swappiness must not be 0: 0 tells MGLRU to leave anonymous
    (and shmem) memory alone, and with no swap it would never look at anon pages at all.
    """
    done = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        for node in nodes:
            for _ in range(3):  # someone else (kswapd) may age between our read and write
                before = read(path)[memcg_id].max_seq(node)
                try:
                    os.write(fd, f"+ {memcg_id} {node} {before} {swappiness} 1".encode())
                except OSError as e:
                    raise LruGenError(e.errno, f"aging memcg {memcg_id} node {node} "
                                      f"(+ {memcg_id} {node} {before} {swappiness} 1): "
                                      f"{os.strerror(e.errno or 0)}") from e
                if read(path)[memcg_id].max_seq(node) > before:
                    done += 1
                    break
    finally:
        os.close(fd)
    return done


def histogram(memcg: Memcg) -> list[tuple[int, int, int, int]]:
    """(node, age rank, anon pages, file pages), youngest generation = rank 0."""
    out = []
    for node, gens in sorted(memcg.nodes.items()):
        for rank, g in enumerate(sorted(gens, key=lambda g: -g.seq)):
            out.append((node, rank, g.anon, g.file))
    return out

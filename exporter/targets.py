"""Which processes to follow: explicit pids, a comm regex, and the top N by RSS."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import procfs
from .config import Targets


@dataclass(frozen=True)
class Process:
    pid: int
    start_time: int  # with the pid, the process's identity: pids are reused
    comm: str
    rss_pages: int


def _read(pid: int, proc: Path) -> Process | None:
    try:
        return Process(pid, procfs.read_start_time(pid, proc), procfs.read_comm(pid, proc),
                       procfs.rss_pages(pid, proc))
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None  # exited while we looked


def select(spec: Targets, proc: Path = procfs.PROC, self_pid: int | None = None) -> list[Process]:
    """The processes ``spec`` names, largest RSS first. Kernel threads and pageheat itself are
    never selected by comm or RSS."""
    me = os.getpid() if self_pid is None else self_pid
    chosen: dict[int, Process] = {}
    for pid in spec.pids:
        p = _read(pid, proc)
        if p and p.rss_pages:  # no memory: a kernel thread, or a zombie
            chosen[pid] = p
    if spec.comm_regex is None and spec.top_rss == 0:
        return sorted(chosen.values(), key=lambda p: -p.rss_pages)
    regex = re.compile(spec.comm_regex) if spec.comm_regex is not None else None
    candidates = []
    for pid in procfs.list_pids(proc):
        if pid == me or pid in chosen:
            continue
        p = _read(pid, proc)
        if p is None or p.rss_pages == 0:
            continue
        if regex is not None and regex.search(p.comm):
            chosen[pid] = p
        elif p.rss_pages * 4096 >= spec.min_rss:
            candidates.append(p)
    candidates.sort(key=lambda p: -p.rss_pages)
    for p in candidates[: spec.top_rss]:
        chosen[p.pid] = p
    return sorted(chosen.values(), key=lambda p: -p.rss_pages)

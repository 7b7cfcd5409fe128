"""Readers for the few /proc files pageheat needs. Each takes a root, so tests can point
them at a fake tree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    name: str  # "" for anonymous memory


def read_maps(pid: int, proc: Path = PROC) -> list[Mapping]:
    out = []
    with open(proc / str(pid) / "maps", "rb") as f:
        for line in f.read().decode(errors="replace").splitlines():
            parts = line.split(None, 5)
            lo, _, hi = parts[0].partition("-")
            out.append(Mapping(int(lo, 16), int(hi, 16), parts[1], parts[5] if len(parts) > 5 else ""))
    return out


def read_comm(pid: int, proc: Path = PROC) -> str:
    return (proc / str(pid) / "comm").read_text().rstrip("\n")


def read_start_time(pid: int, proc: Path = PROC) -> int:
    """Field 22 of /proc/PID/stat, in clock ticks since boot: with the pid, a process's identity."""
    stat = (proc / str(pid) / "stat").read_bytes()
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def read_status_kib(pid: int, keys: tuple[str, ...], proc: Path = PROC) -> dict[str, int]:
    """Numeric fields of /proc/PID/status, in KiB (0 for kernel threads and absent keys)."""
    found = dict.fromkeys(keys, 0)
    for line in (proc / str(pid) / "status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in found:
            found[key] = int(rest.split()[0])
    return found


def rss_pages(pid: int, proc: Path = PROC) -> int:
    """Resident pages from /proc/PID/statm (0 for kernel threads)."""
    return int((proc / str(pid) / "statm").read_text().split()[1])


def list_pids(proc: Path = PROC) -> list[int]:
    return [int(d) for d in os.listdir(proc) if d.isdigit()]


def pid_exists(pid: int, proc: Path = PROC) -> bool:
    return (proc / str(pid)).exists()

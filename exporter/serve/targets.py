"""Which processes to follow: explicit pids, a comm regex, the top N by RSS, cgroup globs and
every user process (``all``); and whether a pid given explicitly names a process pageheat can
follow. Each selected process carries its cgroup path (``kernel.cgroups.read_cgroup``), read once per
discovery."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pageheat.config import Targets
from pageheat.kernel import capabilities, cgroups, procfs
from pageheat.model import identity


@dataclass(frozen=True)
class Process:
    pid: int
    start_time: int  # with the pid, the process's identity: pids are reused
    comm: str
    rss_pages: int
    cgroup: str = ""  # cgroups.read_cgroup: memory controller's path (v1) or unified (v2)


class PidError(Exception):
    """A pid given explicitly that pageheat cannot follow; the message says why, in one line."""


_GONE = (FileNotFoundError, ProcessLookupError, IndexError, ValueError)


def _read(pid: int, proc: Path) -> Process | None:
    try:
        return Process(pid, procfs.read_start_time(pid, proc), procfs.read_comm(pid, proc),
                       procfs.rss_pages(pid, proc))
    except _GONE:
        return None  # exited while we looked


def _with_cgroup(p: Process, proc: Path) -> Process:
    """``p`` with its cgroup; "" when it cannot be read (the process exited meanwhile: its
    harvest will say so; or a /proc without cgroup files): no cgroup is not a reason to skip."""
    try:
        return dataclasses.replace(p, cgroup=cgroups.read_cgroup(p.pid, proc))
    except (*_GONE, PermissionError):
        return p


def _tgid(pid: int, proc: Path) -> int | None:
    try:
        return procfs.read_tgid(pid, proc)
    except _GONE:
        return None


def select(spec: Targets, proc: Path = procfs.PROC, self_pid: int | None = None,
           pinned: dict[int, int] | None = None) -> list[Process]:
    """The processes ``spec`` names, largest RSS first, each with its cgroup. Kernel threads
    (no resident memory) and pageheat itself are never selected by comm, RSS, cgroup or
    ``all``. A thread id in ``spec.pids`` stands for its process. ``pinned`` (pid ->
    start_time) names the processes the explicit pids stood for when they were given: once
    such a process has exited, a new process that reuses its pid is not selected by that pid."""
    me = os.getpid() if self_pid is None else self_pid
    chosen: dict[int, Process] = {}
    for given in spec.pids:
        pid = _tgid(given, proc)
        p = _read(pid, proc) if pid is not None else None
        if p is None or not p.rss_pages:  # no memory: a kernel thread, or a zombie
            continue
        if pinned is not None and pinned.get(given, p.start_time) != p.start_time:
            continue  # the pid was reused
        chosen[pid] = p
    if spec.comm_regex is not None or spec.top_rss or spec.cgroups or spec.all:
        regex = re.compile(spec.comm_regex) if spec.comm_regex is not None else None
        candidates = []
        for pid in procfs.list_pids(proc):
            if pid == me or pid in chosen:
                continue
            p = _read(pid, proc)
            if p is None or p.rss_pages == 0:
                continue
            if spec.cgroups:
                p = _with_cgroup(p, proc)
                if p.cgroup and identity.matches(p.cgroup, spec.cgroups):
                    chosen[pid] = p
                    continue
            if regex is not None and regex.search(p.comm):
                chosen[pid] = p
            elif p.rss_pages * 4096 >= spec.min_rss:
                if spec.all:
                    chosen[pid] = p
                else:
                    candidates.append(p)
        candidates.sort(key=lambda p: -p.rss_pages)
        for p in candidates[: spec.top_rss]:
            chosen[p.pid] = p
    out = [p if p.cgroup else _with_cgroup(p, proc) for p in chosen.values()]
    return sorted(out, key=lambda p: -p.rss_pages)


def resolve(pid: int, proc: Path = procfs.PROC) -> tuple[int, str | None]:
    """The process a pid given explicitly stands for, and a note when that is not the pid
    itself (a thread id: its process is followed). Raises PidError when there is no process
    to follow: no such pid, a kernel thread, a process that has exited."""
    if not procfs.pid_exists(pid, proc):
        raise PidError(f"no such process: {pid}")
    try:
        tgid = procfs.read_tgid(pid, proc)
        st = procfs.read_stat(tgid, proc)
        comm = procfs.shown(procfs.read_comm(tgid, proc))
    except _GONE as e:
        raise PidError(f"no such process: {pid} (it exited)") from e
    note = None
    if tgid != pid:
        note = f"pid {pid} is a thread of process {tgid} ({comm}): following process {tgid}"
    if st.flags & procfs.PF_KTHREAD:
        raise PidError(f"pid {pid} is a kernel thread ({comm}): it has no user memory to follow")
    if procfs.task_dir(tgid, proc) == proc / str(tgid) and st.state in procfs.DEAD_STATES:
        raise PidError(f"process {tgid} ({comm}) has exited: a zombie its parent has not reaped")
    return tgid, note


def _why_refused(pid: int, proc: Path) -> str:
    """Why the kernel refuses a process to a pageheat that has CAP_SYS_PTRACE. A process may
    be read without that capability when its permitted set is a subset of ours
    (security/commoncap.c, cap_ptrace_access_check); otherwise CAP_SYS_PTRACE must be granted
    in its user namespace, which an LSM can refuse. Measured on these machines: pid 1 holds
    CAP_SYS_RESOURCE, outside pageheat's bounding set, and is refused."""
    try:
        extra = capabilities.effective(proc / str(pid) / "status", b"CapPrm:") & ~capabilities.effective()
    except OSError:
        extra = 0
    if extra:
        return (f"it holds capabilities pageheat lacks ({', '.join(capabilities.names(extra))}), "
                "and the kernel did not let CAP_SYS_PTRACE make up for them (a security module, "
                "or another user namespace): give pageheat those capabilities too")
    return "a security module (SELinux, AppArmor, Landlock) or its user namespace refuses it"


def check_access(pid: int, proc: Path = procfs.PROC) -> None:
    """Can this process be read and aged: its page-table layout (maps, which needs the right
    to ptrace-read it) and its clear_refs (writable by its owner only). Raises PidError."""
    d = procfs.task_dir(pid, proc)
    try:
        comm = procfs.shown(procfs.read_comm(pid, proc))
    except OSError:
        comm = "?"
    for name, flags in (("maps", os.O_RDONLY), ("clear_refs", os.O_WRONLY)):
        try:
            os.close(os.open(d / name, flags | os.O_CLOEXEC))
        except PermissionError as e:
            cap = capabilities.CAP_SYS_PTRACE if name == "maps" else capabilities.CAP_DAC_OVERRIDE
            need = capabilities.NAMES[cap]
            if capabilities.missing((cap,)):
                why = f"needs {need}, or to run as its user"
            else:  # the capability did not do (kernel/ptrace.c __ptrace_may_access, cap_ptrace_access_check)
                why = f"although pageheat has {need}: " + _why_refused(pid, proc)
            raise PidError(f"cannot follow process {pid} ({comm}): {d / name}: permission "
                           f"denied ({why})") from e
        except (FileNotFoundError, ProcessLookupError) as e:
            raise PidError(f"no such process: {pid} (it exited)") from e

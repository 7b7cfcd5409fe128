"""Readers for the few /proc files pageheat needs. Each takes a root, so tests can point
them at a fake tree.

Everything in /proc is untrusted bytes: a process names itself (``prctl(PR_SET_NAME)``, any
15 bytes but NUL, not necessarily UTF-8) and names its files (any bytes but ``/`` and NUL).
So every reader here reads bytes, ends lines only at ``\\n`` (``str.splitlines`` would also
split at ``\\x0c``, ``\\x1c``, ``\\x85``, U+2028, ...), and decodes names with replacement.
Names keep their other characters: they are label values, and the exposition format escapes
what it must; ``shown()`` makes them safe for a log line or a terminal.

A process whose main thread called ``pthread_exit`` while other threads run has a zombie
thread-group leader: ``/proc/PID/maps`` and ``statm`` read empty and ``clear_refs`` silently
ages nothing, because they go through the leader's ``mm``, which ``exit_mm()`` has cleared
(fs/proc/task_mmu.c, ``clear_refs_write``: no mm, nothing done, no error). The same files of a
live thread, ``/proc/PID/task/TID/...``, see the process's memory: ``task_dir()`` picks one.
ptwalk's BPF task_vma iterator needs no such help: with a pid filter it visits every thread of
the process and skips those without an mm (kernel/bpf/task_iter.c, task_group_seq_get_next and
task_vma_seq_get_next), so it walks the live threads' mm; measured on 6.18 in
tests/test_realworld_proc.py (every page of the region found, every mapping named).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import io
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROC = Path("/proc")
# include/linux/proc_ns.h: the initial PID namespace's inode number, fixed since Linux 3.8.
INIT_PID_NS_INO = 0xEFFFFFFC
INIT_CGROUP_NS_INO = 0xEFFFFFFB  # PROC_CGROUP_INIT_INO, include/linux/proc_ns.h
PF_KTHREAD = 0x00200000  # include/linux/sched.h, task flags (field 9 of /proc/PID/stat)
# include/linux/sched.h: set by exit_signals() at the start of do_exit() (kernel/exit.c), before
# exit_mm() drops the task's mm. A task with it is leaving, though its state is not yet Z.
PF_EXITING = 0x00000004
DEAD_STATES = frozenset("ZXx")  # zombie, dead: no mm any more


@dataclass(frozen=True, slots=True)  # slots: a process can have 65,530 mappings (vm.max_map_count)
class Mapping:
    start: int
    end: int
    perms: str
    name: str  # "" for anonymous memory


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat that pageheat uses."""

    state: str  # one letter: R S D T t Z X I ...
    ppid: int
    flags: int  # PF_* task flags
    start_time: int  # clock ticks since boot: with the pid, a process's identity


def decode(data: bytes) -> str:
    """Untrusted bytes -> str: invalid UTF-8 becomes U+FFFD, never an exception."""
    return data.decode("utf-8", "replace")


def shown(text: str) -> str:
    """``text`` for a log line or a terminal: every non-printable character but the space
    (``\\n``, ``\\x1b``, ``\\x85``, U+2028, ...) as an escape, so a name can neither break a line
    nor drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _escape(c) for c in text)


def _escape(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class MapsTable:
    """/proc/PID/maps as columns, in the file's (address) order: start, end uint64 arrays;
    perms, names: one str per mapping, equal ones shared (a process can have 65,530
    mappings, vm.max_map_count: one object per line and field would cost ~10 MiB)."""

    start: np.ndarray
    end: np.ndarray
    perms: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.start)


def parse_maps_table(data: bytes) -> MapsTable:
    """/proc/PID/maps bytes -> MapsTable. Only ``\\n`` ends a line: the kernel escapes a newline
    in a file name (as ``\\012``, fs/proc/task_mmu.c ``seq_file_path(m, file, "\\n")``) but no
    other byte. A line is ``START-END PERMS OFFSET DEV INODE`` and one space, then, for a named
    mapping, padding spaces and the name (which may itself contain spaces)."""
    starts, ends = array("Q"), array("Q")
    perms: list[str] = []
    names: list[str] = []
    strings: dict[bytes, str] = {}

    def text(b: bytes) -> str:
        s = strings.get(b)
        if s is None:
            s = strings[b] = decode(b)
        return s

    for line in io.BytesIO(data):  # binary lines end at b"\n" only, one at a time
        line = line.removesuffix(b"\n")
        if not line:
            continue
        parts = line.split(b" ", 5)
        lo, _, hi = parts[0].partition(b"-")
        starts.append(int(lo, 16))
        ends.append(int(hi, 16))
        perms.append(text(parts[1]))
        names.append(text(parts[5].lstrip(b" ") if len(parts) > 5 else b""))
    return MapsTable(np.frombuffer(starts, dtype=np.uint64).copy(),
                     np.frombuffer(ends, dtype=np.uint64).copy(), perms, names)


def parse_maps(data: bytes) -> list[Mapping]:
    """/proc/PID/maps bytes -> one Mapping per line (see parse_maps_table)."""
    t = parse_maps_table(data)
    return [Mapping(s, e, p, n) for s, e, p, n in zip(t.start.tolist(), t.end.tolist(), t.perms,
                                                      t.names, strict=True)]


def _maps_bytes(pid: int, proc: Path) -> bytes:
    data = _read(proc / str(pid) / "maps")
    if not data:
        d = task_dir(pid, proc)
        if d != proc / str(pid):
            data = _read(d / "maps")
    return data


def read_maps(pid: int, proc: Path = PROC) -> list[Mapping]:
    """The process's mappings; read through a live thread when the leader is a zombie.
    Empty for a kernel thread or a process that has exited."""
    return parse_maps(_maps_bytes(pid, proc))


def read_maps_table(pid: int, proc: Path = PROC) -> MapsTable:
    """read_maps as columns (MapsTable)."""
    return parse_maps_table(_maps_bytes(pid, proc))


def count_maps(pid: int, proc: Path = PROC) -> int:
    """How many mappings the process has (read_maps's length, without parsing them)."""
    return _maps_bytes(pid, proc).count(b"\n")


def read_comm(pid: int, proc: Path = PROC) -> str:
    """The process's name (comm), decoded with replacement. The kernel prints it raw
    (fs/proc/base.c ``comm_show``, no escaping) and adds one ``\\n``: only that one is removed,
    a name may itself end in a newline."""
    data = _read(proc / str(pid) / "comm")
    return decode(data[:-1] if data.endswith(b"\n") else data)


def parse_stat(data: bytes) -> Stat:
    """/proc/PID/stat bytes -> Stat. comm (field 2) may contain spaces, parentheses and any
    other byte: the fields after it start after the *last* ``)``. Raises ValueError when the
    line is cut short (a process that is exiting)."""
    try:
        rest = data[data.rindex(b")") + 2:].split(b" ")
        return Stat(decode(rest[0]), int(rest[1]), int(rest[6]), int(rest[19]))
    except IndexError as e:
        raise ValueError(f"short /proc stat line ({len(data)} bytes)") from e


def read_stat(pid: int, proc: Path = PROC) -> Stat:
    return parse_stat(_read(proc / str(pid) / "stat"))


def read_start_time(pid: int, proc: Path = PROC) -> int:
    """Field 22 of /proc/PID/stat, in clock ticks since boot: with the pid, a process's identity."""
    return read_stat(pid, proc).start_time


def _status(path: Path) -> dict[bytes, bytes]:
    out = {}
    for line in _read(path).split(b"\n"):
        key, sep, value = line.partition(b":")
        if sep:
            out[key] = value.strip()
    return out


def read_status_kib(pid: int, keys: tuple[str, ...], proc: Path = PROC) -> dict[str, int]:
    """Numeric fields of /proc/PID/status, in KiB (0 for kernel threads and absent keys); of a
    live thread when the leader is a zombie (a zombie's status has no memory fields).
    ``Name:`` in status holds the raw comm, so the file is not read as text."""
    fields = _status(task_dir(pid, proc) / "status")
    found = {}
    for k in keys:
        value = fields.get(k.encode())
        found[k] = int(value.split()[0]) if value else 0
    return found


def read_tgid(pid: int, proc: Path = PROC) -> int:
    """The process (thread group) a pid belongs to: itself for a process, the process's pid
    for a thread id. /proc/TID exists for every thread, though ``ls /proc`` does not show it."""
    value = _status(proc / str(pid) / "status").get(b"Tgid")
    if not value:
        raise ValueError(f"/proc/{pid}/status has no Tgid")
    return int(value)


def rss_pages(pid: int, proc: Path = PROC) -> int:
    """Resident pages from /proc/PID/statm (0 for kernel threads); through a live thread
    when the leader is a zombie (its statm reads all zeros)."""
    rss = int(_read(proc / str(pid) / "statm").split(b" ")[1])
    if rss == 0:
        d = task_dir(pid, proc)
        if d != proc / str(pid):
            rss = int(_read(d / "statm").split(b" ")[1])
    return rss


def list_pids(proc: Path = PROC) -> list[int]:
    return [int(d) for d in os.listdir(proc) if d.isdigit()]


def pid_exists(pid: int, proc: Path = PROC) -> bool:
    return (proc / str(pid)).exists()


def _alive(d: Path) -> bool:
    """The task of ``d`` neither is a zombie nor has begun to exit."""
    try:
        stat = parse_stat(_read(d / "stat"))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    return stat.state not in DEAD_STATES and not stat.flags & PF_EXITING


def is_running(pid: int, start_time: int, proc: Path = PROC) -> bool:
    """Process ``pid`` is still the one that started at ``start_time`` (clock ticks) and one of
    its threads is neither a zombie nor exiting. False from the moment it begins to exit, while
    /proc/PID still reads (exiting, then a zombie until its parent reaps it), and once it is
    gone or the pid is reused."""
    try:
        if read_start_time(pid, proc) != start_time:
            return False
    except (OSError, ValueError):
        return False
    return _alive(task_dir(pid, proc))


def task_dir(pid: int, proc: Path = PROC) -> Path:
    """Where to read and age process ``pid``: ``/proc/PID`` while its leader lives, else
    ``/proc/PID/task/TID`` of its first live thread (see the module doc). ``/proc/PID`` when
    no thread lives (the process has exited) or the process is gone."""
    d = proc / str(pid)
    if _alive(d):
        return d
    try:
        tids = sorted(int(t) for t in os.listdir(d / "task") if t.isdigit())
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return d
    for tid in tids:
        t = d / "task" / str(tid)
        if tid != pid and _alive(t):
            return t
    return d


def damon_running(proc: Path = PROC) -> bool:
    """A kdamond thread exists: DAMON is clearing Accessed bits somewhere."""
    for pid in list_pids(proc):
        try:
            if read_comm(pid, proc).startswith("kdamond"):
                return True
        except OSError:
            continue
    return False


def soft_dirty_tracking(smaps: Path = Path("/proc/self/smaps")) -> bool:
    """True if the kernel tracks soft-dirty bits: it marks new mappings "sd" in VmFlags."""
    # Bytes, split at \n only: the file names in smaps are any bytes.
    return any(line.startswith(b"VmFlags:") and b" sd" in line
               for line in smaps.read_bytes().split(b"\n"))


class TargetBusy(OSError):
    """Another pageheat (or another tool that takes the same lock) ages the process."""


class ClearRefs:
    """``clear_refs`` of a process, written through a live thread, held exclusively.

    Opened on ``task_dir(pid)``. Before each write it checks that the thread it goes through
    still lives, and reopens on another one if not: a write through a zombie leader succeeds
    and ages nothing, a write through a thread that has gone fails with ESRCH.

    Two agers of one process clear each other's Accessed bits: each sees only what was
    touched since the other's last write (measured: a second snapshot of a process another
    one followed saw 0 of its 2,048 pages read every second). So ``/proc/PID/clear_refs``
    itself is flock()ed for as long as this is open: the lock lives on that file's inode, so
    it ends with the process (and never outlives a pid) and needs no file of pageheat's own.

    Raises ProcessLookupError / FileNotFoundError when the process has exited, PermissionError
    when its clear_refs may not be written, TargetBusy when another holder has it.
    """

    def __init__(self, pid: int, proc: Path = PROC) -> None:
        self.pid = pid
        self._proc = proc
        self.fd = -1
        self._lock = os.open(proc / str(pid) / "clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._open()
        except BlockingIOError:
            os.close(self._lock)
            raise TargetBusy(f"another pageheat already ages process {pid} (its clear_refs is "
                             "locked): two would clear each other's Accessed bits") from None
        except BaseException:
            os.close(self._lock)
            raise

    def _open(self) -> None:
        self.dir = task_dir(self.pid, self._proc)
        if not _alive(self.dir):
            raise ProcessLookupError(errno.ESRCH, f"process {self.pid} has exited")
        fd = os.open(self.dir / "clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

    def write(self, data: bytes) -> None:
        if not _alive(self.dir):
            self._open()
        try:
            os.write(self.fd, data)
        except ProcessLookupError:  # the thread exited after the check: once more
            self._open()
            os.write(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._lock >= 0:
            os.close(self._lock)  # releases the flock
            self._lock = -1


# kcmp(2) on x86_64 (arch/x86/entry/syscalls/syscall_64.tbl), the only architecture pageheat's
# BPF objects are built for; include/uapi/linux/kcmp.h.
_SYS_KCMP = 312 if os.uname().machine == "x86_64" else None
_KCMP_VM = 1


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def same_address_space(a: int, b: int) -> bool:
    """Whether processes ``a`` and ``b`` share one mm (clone(CLONE_VM) without CLONE_THREAD:
    vfork children until they exec, some runtimes), by kcmp(2) KCMP_VM. False when it cannot
    tell: no kcmp (CONFIG_KCMP, another architecture), a process gone, or not allowed (it
    needs ptrace read access to both, as reading their maps does)."""
    if _SYS_KCMP is None:
        return False
    return _libc().syscall(_SYS_KCMP, a, b, _KCMP_VM, 0, 0) == 0


def cgroup_namespace_problem(proc: Path = PROC) -> str | None:
    """None when pageheat sees the host's cgroup paths; else one line saying what it cannot do.

    In a cgroup namespace of its own (docker and podman on cgroup v2 by default, ``unshare
    --cgroup``), /proc/PID/cgroup gives other processes' paths relative to pageheat's own
    cgroup (``/../../kubepods/...``, kernel/cgroup/cgroup.c, cgroup_path_ns): targets.cgroups
    globs cannot match them, and the cgroup, pod_uid and container_id labels are not the
    host's."""
    try:
        ino = os.stat(proc / "self/ns/cgroup").st_ino
    except OSError:
        return None  # no cgroup namespaces (kernels before 4.6): the host's paths
    if ino == INIT_CGROUP_NS_INO:
        return None
    return ("pageheat runs in a cgroup namespace of its own: other processes' cgroups read as "
            "paths relative to its own (/../..), so targets.cgroups cannot match them and cgroup "
            "labels are not the host's (run it with docker/podman --cgroupns=host, or outside "
            "unshare --cgroup)")


def pid_namespace_problem(proc: Path = PROC) -> str | None:
    """None when pageheat sees the host's pids; else one line saying why it cannot work.

    pageheat's BPF programs compare the kernel's pids (``task->tgid``, the host PID namespace's)
    with the pids it reads from /proc and is given: in a PID namespace of its own (a container
    without ``hostPID``, ``unshare --pid``) those are the namespace's, a live target looks
    exited and the host's processes are invisible."""
    try:
        ino = os.stat(proc / "self/ns/pid").st_ino
    except OSError:
        return None  # no /proc/self/ns (a kernel without namespaces): nothing to compare
    why = ("but needs the host's: its BPF programs see host pids, while /proc and the pids "
           "given to it would be the namespace's (run it with hostPID: true, docker --pid=host, "
           "or outside unshare --pid)")
    if ino != INIT_PID_NS_INO:
        return f"pageheat runs in a PID namespace of its own {why}"
    try:
        me = os.readlink(proc / "self")
    except OSError:
        return None
    if me != str(os.getpid()):
        return f"pageheat reads a {proc} of another PID namespace (/proc/self is {me}, " \
               f"pageheat is {os.getpid()}) {why}"
    return None

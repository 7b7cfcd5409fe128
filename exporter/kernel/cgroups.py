"""Cgroups: a process's cgroup v2 path and id, and memory cgroups for the command
`pageheat serve -- CMD` launches (``--cgroup own``).

The one parser of /proc/PID/cgroup (``parse_proc_cgroup``) and of cgroup mounts in
mountinfo (``parse_mountinfo``) is here. The mglru sources name a target's memcg by its
cgroup v2 path (``cgroup_path``, what /sys/kernel/debug/lru_gen lists) and, for
bpf_lru_gen_run_aging(), by its cgroup v2 id (``cgroup_id``).

Why: an MGLRU aging walks every mm charged to the target's memcg, so a target that shares a
busy memcg makes every aging walk everyone; a memcg of its own bounds that cost to the target.

This module finds the memory controller's hierarchy (cgroup v2 or v1) from
/proc/self/mountinfo and /proc/self/cgroup, creates a cgroup in it, moves a forked child into
it before exec, and removes it. It knows nothing about sources or the daemon.

Where the new cgroup goes:

* cgroup v2: ``<mount>/pageheat/<name>-<n>``. Not under pageheat's own cgroup: v2 allows
  processes only in leaves (once a cgroup enables a controller for its children it may hold
  no processes itself), and pageheat's own cgroup holds pageheat.
* cgroup v1: ``<memory mount>/<pageheat's own memory cgroup>/pageheat/<name>-<n>``, so the
  command stays inside whatever memory limits pageheat itself runs under (a container).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pageheat.kernel.procfs import task_dir

log = logging.getLogger("pageheat")

PROC = Path("/proc")
PROC_SELF = PROC / "self"
GROUP = "pageheat"  # the directory all of pageheat's cgroups go in
_OCTAL = re.compile(r"\\([0-7]{3})")


class CgroupError(Exception):
    """No memory cgroup can be made here; the message says why, in one line."""


@dataclass(frozen=True)
class Mount:
    """One cgroup or cgroup2 line of /proc/self/mountinfo."""

    fstype: str  # cgroup (v1) or cgroup2
    root: str  # the directory of the hierarchy that is mounted here, "/" for all of it
    point: Path
    super_options: frozenset[str]  # cgroup v1: its controllers ("memory"), among "rw" and such


@dataclass(frozen=True)
class Hierarchy:
    """Where memory cgroups are made: the hierarchy with the memory controller."""

    version: int  # 1 or 2
    mount: Mount
    parent: Path  # new cgroups are created in here (a directory named GROUP)


@dataclass(frozen=True)
class Cgroup:
    path: Path  # the directory
    name: str  # its path as /proc/PID/cgroup shows it (hierarchy root = "/")
    hierarchy: Hierarchy

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash in paths as \\ooo octal."""
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts in /proc/PID/mountinfo text, in mount order.

    Line format (proc(5)): ``ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
    SUPER_OPTIONS``; the optional fields vary in number, hence the split at `` - ``.
    """
    out = []
    for line in text.split("\n"):  # not splitlines(): mount points may hold \x0c, \x85, ...
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 2 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(rest[2].split(",")) if len(rest) > 2 else frozenset()
        out.append(Mount(rest[0], _unescape(fields[3]), Path(_unescape(fields[4])), options))
    return out


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup text -> {controller: cgroup path}. The cgroup v2 line (``0::/path``) is
    under ``""``; a v1 line with several controllers (``2:cpu,cpuacct:/x``) gives each one."""
    out: dict[str, str] = {}
    for line in text.split("\n"):
        hier, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep1 and sep2):
            continue
        if hier == "0" and controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def cgroup_path(pid: int, proc: Path = PROC) -> str:
    """The process's cgroup v2 path (``0::/a/b``), relative to the cgroup2 root. Raises
    CgroupError when it is in no cgroup v2 hierarchy; FileNotFoundError or ProcessLookupError
    when the process is gone."""
    path = parse_proc_cgroup(os.fsdecode((task_dir(pid, proc) / "cgroup").read_bytes())).get("")
    if path is None:
        raise CgroupError(f"process {pid} is in no cgroup v2 hierarchy "
                          "(MGLRU debugfs names memcgs by their cgroup v2 path)")
    return path


def cgroup2_mount(mountinfo: Path = PROC_SELF / "mountinfo") -> Path | None:
    """Where the cgroup v2 hierarchy is mounted in our namespace, if anywhere."""
    return next((m.point for m in parse_mountinfo(os.fsdecode(mountinfo.read_bytes()))
                 if m.fstype == "cgroup2"), None)


def cgroup_id(path: str, mount: Path | None = None) -> int:
    """The cgroup v2 id of ``path`` (relative to the cgroup2 root): the inode number of its
    directory, what bpf_get_current_cgroup_id() returns. The root is 1 even unmounted.
    Raises CgroupError when cgroup v2 is not mounted, FileNotFoundError when the cgroup is
    gone."""
    if path in ("/", ""):
        return 1
    root = mount or cgroup2_mount()
    if root is None:
        raise CgroupError(f"cgroup {path}: the cgroup v2 hierarchy is not mounted "
                          "(mount -t cgroup2 none /sys/fs/cgroup)")
    return os.stat(root / path.lstrip("/")).st_ino


def _v2_controllers(mount: Mount) -> set[str]:
    try:
        return set((mount.point / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def _under_mount(path: str, mount: Mount) -> Path:
    """A cgroup path from /proc/self/cgroup as a directory under ``mount``. A container may
    mount only part of a hierarchy (mount root /docker/ID): the path then starts with it."""
    root = mount.root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    elif root:
        raise CgroupError(f"pageheat's memory cgroup {path} is outside the hierarchy mounted at "
                          f"{mount.point} ({mount.root})")
    return mount.point / path.lstrip("/")


def find_memory_hierarchy(mountinfo: str, self_cgroup: str) -> Hierarchy:
    """The hierarchy with the memory controller, from mountinfo and /proc/self/cgroup text.
    cgroup2's controllers are read from its mount's cgroup.controllers. Raises CgroupError."""
    mounts = parse_mountinfo(mountinfo)
    for m in mounts:
        if m.fstype == "cgroup2" and "memory" in _v2_controllers(m):
            return Hierarchy(2, m, m.point / GROUP)
    for m in mounts:
        if m.fstype == "cgroup" and "memory" in m.super_options:
            own = parse_proc_cgroup(self_cgroup).get("memory")
            if own is None:
                raise CgroupError("no memory line in /proc/self/cgroup, though a cgroup v1 memory "
                                  f"hierarchy is mounted at {m.point}")
            return Hierarchy(1, m, _under_mount(own, m) / GROUP)
    raise CgroupError("no memory cgroup controller: no cgroup2 mount has memory in "
                      "cgroup.controllers and no cgroup v1 memory hierarchy is mounted")


def detect(proc_self: Path = PROC_SELF) -> Hierarchy:
    try:
        # Any mount point or cgroup name on the host may be bytes that are not UTF-8: decoded
        # as file names are (surrogateescape), they still name the same directories.
        mountinfo = os.fsdecode((proc_self / "mountinfo").read_bytes())
        self_cgroup = os.fsdecode((proc_self / "cgroup").read_bytes())
    except OSError as e:
        raise CgroupError(f"cannot read {e.filename}: {e.strerror}") from e
    return find_memory_hierarchy(mountinfo, self_cgroup)


def _enable_memory(directory: Path) -> None:
    """cgroup v2: let the children of ``directory`` have their own memory controller."""
    control = directory / "cgroup.subtree_control"
    if "memory" not in control.read_text().split():
        control.write_text("+memory")


def _safe_name(command: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(command))[:64].lstrip(".")
    return name or "command"


def create(h: Hierarchy, command: str) -> Cgroup:
    """A new, empty memory cgroup named after ``command`` (and pageheat's pid: a name of our
    own, since the command's pid is known only after the fork). Raises CgroupError."""
    base = f"{_safe_name(command)}-{os.getpid()}"
    try:
        for attempt in range(3):
            try:
                if h.version == 2:
                    _enable_memory(h.mount.point)
                h.parent.mkdir(exist_ok=True)  # not parents=True: pageheat's own cgroup must exist
                if h.version == 2:
                    _enable_memory(h.parent)
                path = _mkdir_unique(h.parent, base)
                break
            except FileNotFoundError:
                # Another pageheat removed the shared, empty GROUP directory between our mkdirs.
                if attempt == 2 or not h.parent.parent.is_dir():
                    raise
    except OSError as e:
        raise CgroupError(f"cannot create a memory cgroup: {e.filename or h.parent}: "
                          f"{e.strerror or e}") from e
    root = h.mount.root.rstrip("/")
    return Cgroup(path, f"{root}/{path.relative_to(h.mount.point)}", h)


def _mkdir_unique(parent: Path, base: str) -> Path:
    for n in range(100):
        path = parent / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue  # left over by an earlier pageheat with the same pid
    raise FileExistsError(errno.EEXIST, "100 cgroups of that name exist", str(parent / base))


@contextmanager
def entering(cg: Cgroup) -> Iterator[Callable[[], None]]:
    """A ``preexec_fn`` for subprocess.Popen that moves the forked child into ``cg``.

    Race-free: the child moves itself after fork and before exec, so no instruction of the
    command runs, and none of its memory is charged, outside the cgroup; and Popen returns only
    once the exec succeeded, or raises if the move failed. preexec_fn is unsafe when other
    threads hold locks the child needs, so it does only one write() on a descriptor opened
    here, before the fork; writing "0" to cgroup.procs means "the writer" (v1 and v2), so the
    child needs no getpid() either. O_CLOEXEC keeps the descriptor out of the command.
    """
    try:
        fd = os.open(cg.procs, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(f"cannot enter memory cgroup {cg.path}: {e.strerror}") from e

    def enter() -> None:
        os.write(fd, b"0")

    try:
        yield enter
    finally:
        os.close(fd)


def pids(cg: Cgroup) -> list[int]:
    return [int(x) for x in cg.procs.read_text().split()]


def remove(cg: Cgroup, timeout: float = 2.0) -> bool:
    """Remove the cgroup once its processes are gone; then GROUP too, if nobody else uses it.

    Right after the last process was reaped, rmdir can still fail with EBUSY for a moment (the
    kernel finishes taking the exited task out asynchronously), hence the retries. Never
    raises: a cgroup left behind is logged, not fatal. Returns whether it is gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            cg.path.rmdir()
            break
        except FileNotFoundError:
            break
        except OSError as e:
            if e.errno == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            try:
                left = f", processes {pids(cg)}" if e.errno == errno.EBUSY else ""
            except OSError:
                left = ""
            log.warning("cannot remove memory cgroup %s: %s%s", cg.path, e.strerror, left)
            return False
    try:
        cg.hierarchy.parent.rmdir()
    except OSError:
        pass  # another pageheat's cgroup is in it, or it is already gone: both fine
    return True


def cgroup_of(text: str) -> str:
    """The cgroup path that names a process, from /proc/PID/cgroup text: the memory
    controller's on cgroup v1 (pageheat's numbers are memory), else the unified (v2) one;
    "" when there is neither."""
    paths = parse_proc_cgroup(text)
    return paths.get("memory", paths.get("", ""))


def read_cgroup(pid: int, proc: Path = PROC) -> str:
    """A process's cgroup path (see cgroup_of), read through a live thread once its leader
    has exited (procfs.task_dir: cgroup v1 shows an exited task in the root, /). Raises
    OSError (FileNotFoundError, ProcessLookupError) when the process is gone."""
    with open(task_dir(pid, proc) / "cgroup", "rb") as f:
        # A cgroup is a directory and may be any bytes; the path becomes a label value, which
        # must be UTF-8 (a surrogate-escaped name would make every scrape fail). Invalid bytes
        # become \xNN escapes, not U+FFFD as other names from /proc (procfs.decode): the path
        # is a key (pageheat_cgroup_* series sum per cgroup), and two cgroups whose names
        # differ only in such bytes must stay two.
        return cgroup_of(f.read().decode("utf-8", "backslashreplace"))

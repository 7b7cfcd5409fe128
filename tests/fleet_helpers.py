"""Helpers for the fleet tests: kubelet-named cgroups in the real memory hierarchy."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from conftest import need_kernel
from pageheat.kernel import cgroups


@dataclass(frozen=True)
class KubeCgroup:
    path: str  # as /proc/PID/cgroup shows it
    dir: Path
    pod_uid: str
    container_id: str

    @property
    def prefix(self) -> tuple[str, ...]:
        """A command prefix that runs the command inside this cgroup (it moves itself)."""
        procs = shlex.quote(str(self.dir / "cgroup.procs"))
        return ("sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh")


def memory_root() -> Path:
    """The directory of the memory hierarchy's root (cgroup v1 memory mount, or cgroup2)."""
    if os.geteuid() != 0:
        need_kernel("not root: cannot create memory cgroups")
    try:
        h = cgroups.detect()
    except cgroups.CgroupError as e:
        need_kernel(str(e))
    if h.mount.root != "/":
        need_kernel(f"the memory hierarchy is mounted from {h.mount.root}, not its root")
    ctl = h.mount.point / "cgroup.subtree_control"  # cgroup v2: memory for the children
    if h.version == 2 and "memory" not in ctl.read_text().split():
        ctl.write_text("+memory")
    return h.mount.point


def kube_paths(driver: str, qos: str = "burstable", runtime: str = "cri-containerd") -> tuple[str, str, str]:
    """(cgroup path, pod uid, container id) named like kubelet's, with a fresh uid and id."""
    uid = str(uuid.uuid4())
    cid = (uuid.uuid4().hex + uuid.uuid4().hex)
    if driver == "systemd":
        pod = uid.replace("-", "_")
        path = (f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{pod}.slice/"
                f"{runtime}-{cid}.scope")
    else:
        path = f"/kubepods/{qos}/pod{uid}/{cid}"
    return path, uid, cid


def _rmdir(d: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while d.exists():
        try:
            d.rmdir()
        except OSError as e:  # EBUSY for a moment after the last task exited; ENOTEMPTY: a child
            if time.monotonic() > deadline:
                raise AssertionError(f"cannot remove test cgroup {d}: {e}") from e
            time.sleep(0.05)


@contextmanager
def kube_cgroups(*specs: tuple[str, str, str]) -> Iterator[list[KubeCgroup]]:
    """Create one cgroup per (driver, qos, runtime) and remove them (and the parents made
    here) afterwards; the caller stops the processes inside first."""
    root = memory_root()
    made: list[Path] = []
    out = []
    try:
        for driver, qos, runtime in specs:
            path, uid, cid = kube_paths(driver, qos, runtime)
            d = root
            parts = path.strip("/").split("/")
            for i, part in enumerate(parts):
                d = d / part
                if not d.exists():
                    d.mkdir()
                    made.append(d)
                ctl = d / "cgroup.subtree_control"  # cgroup v2: memory for the children
                if i < len(parts) - 1 and ctl.exists() and "memory" not in ctl.read_text().split():
                    ctl.write_text("+memory")
            out.append(KubeCgroup(path, d, uid, cid))
        yield out
    finally:
        for d in sorted(made, key=lambda p: -len(p.parts)):
            _rmdir(d)


@contextmanager
def plain_cgroup(name: str) -> Iterator[KubeCgroup]:
    """One fresh memory cgroup ``/<name>-<uuid>`` (not a container: no ids)."""
    root = memory_root()
    path = f"/{name}-{uuid.uuid4().hex[:12]}"
    d = root / path.lstrip("/")
    d.mkdir()
    try:
        yield KubeCgroup(path, d, "", "")
    finally:
        _rmdir(d)


def static_exporter(text: str) -> int:
    """Serve ``text`` as /metrics on a loopback port (a stand-in for kube-state-metrics and
    cAdvisor, which are not on this machine); a daemon thread, gone with the test process.
    Returns the port."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = text.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


# A parent and a child sharing a populated anonymous region copy-on-write (both only read
# it), so its pages are mapped by both processes with the same frame numbers.
_FORKED = r"""
import mmap, os, sys, time
size = int(sys.argv[1])
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.madvise(mmap.MADV_NOHUGEPAGE)
for off in range(0, size, 4096):
    m[off] = 1
child = os.fork()
if child:
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child}")
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
hot = range(0, size // 8, 4096)
while True:
    s = 0
    for off in hot:
        s += m[off]
    time.sleep(0.05)
"""


def start_forked_pair(tmp: Path, size: int, prefix: tuple[str, ...]) -> tuple[subprocess.Popen, int, int]:
    """(the parent's Popen, parent pid, child pid); the child dies with the parent's group."""
    out = tmp / f"forked-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([*prefix, sys.executable, "-c", _FORKED, str(size), str(out)],
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while not out.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "forked pair did not start"
        time.sleep(0.05)
    parent, child = (int(x) for x in out.read_text().split())
    return proc, parent, child


def stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


_SKIP = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]")  # not walked by pageheat


def frames_in(pid: int, start: int, size: int) -> np.ndarray:
    """uint64 frame numbers of the present pages of [start, start + size) of the process, from
    /proc/PID/pagemap (needs CAP_SYS_ADMIN for the frame numbers). Bit 63: present; bits
    0-54: the frame number (Documentation/admin-guide/mm/pagemap.rst)."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        e = np.frombuffer(os.pread(f.fileno(), size // 4096 * 8, start // 4096 * 8), dtype=np.uint64)
    present = (e >> np.uint64(63)) & np.uint64(1) == 1
    return e[present] & np.uint64((1 << 55) - 1)


def resident_frames(pid: int) -> np.ndarray:
    """uint64 frame numbers of every present page of the process (``frames_in`` over each
    mapping pageheat walks): the truth a frame-counting cgroup total must equal."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[5] in _SKIP:
            continue
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        out.append(frames_in(pid, lo, hi - lo))
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def vdso_rss_pages(pid: int) -> int:
    """Resident 4 KiB pages of the process's [vdso] mapping (/proc/PID/smaps): the truth for
    pageheat's ``vdso`` unmonitored pages (bpf/ptwalk.bpf.c counts the VMA at mm->context.vdso,
    whose present pages it does not walk). 0 when it has none."""
    block = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header
            block = fields[5] if len(fields) > 5 else ""
        elif block == "[vdso]" and fields[:1] == ["Rss:"]:
            return int(fields[1]) // 4
    return 0

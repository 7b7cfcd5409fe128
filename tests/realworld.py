"""Helpers for tests/test_realworld_proc.py: processes with what a real host's processes contain
(names that are not UTF-8, file names with line-breaking bytes, a zombie thread-group leader),
and a `pageheat serve` run with its log and metrics at hand."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import PAGEHEAT, free_port, stop_process, wait_http

C_DIR = Path(__file__).resolve().parent / "c"
PAGE = 4096

# A process that names itself (prctl PR_SET_NAME, raw bytes) and maps one file per given name
# (raw bytes, in DIR), PAGES pages each, every page written once; one file is unlinked after
# mapping (the kernel then shows " (deleted)"). It prints one JSON line: its mappings' start
# addresses, then sleeps until stdin closes.
NAMED = r"""
import ctypes, json, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
comm, pages, d = bytes.fromhex(sys.argv[1]), int(sys.argv[2]), os.fsencode(sys.argv[3])
keep, starts = [], []
for i, hexname in enumerate(sys.argv[4:]):
    path = os.path.join(d, bytes.fromhex(hexname))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, pages * 4096)
    m = mmap.mmap(fd, pages * 4096)
    os.close(fd)
    for p in range(pages):
        m[p * 4096] = 1
    if i == 0:
        os.unlink(path)
    keep.append(m)
    starts.append(ctypes.addressof(ctypes.c_char.from_buffer(m)))
if libc.prctl(15, ctypes.c_char_p(comm), 0, 0, 0):
    raise OSError(ctypes.get_errno(), "prctl")
print(json.dumps({"starts": starts}), flush=True)
sys.stdin.read()
"""


@dataclass
class Named:
    proc: subprocess.Popen
    comm: bytes
    files: list[bytes]  # base names, raw
    starts: list[int]
    pages: int

    @property
    def pid(self) -> int:
        return self.proc.pid


def kernel_map_name(path: bytes, deleted: bool) -> str:
    """How /proc/PID/maps shows a mapped file's path, decoded as pageheat must decode it: the
    kernel escapes only a newline (as \\012, fs/proc/task_mmu.c seq_file_path(..., "\\n")); the
    rest are raw bytes, which are decoded with replacement."""
    shown = path.replace(b"\n", b"\\012") + (b" (deleted)" if deleted else b"")
    return shown.decode("utf-8", "replace")


@contextmanager
def named_process(tmp: Path, comm: bytes, files: list[bytes], pages: int) -> Iterator[Named]:
    proc = subprocess.Popen([sys.executable, "-c", NAMED, comm.hex(), str(pages), str(tmp),
                             *(f.hex() for f in files)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the named process exited with {proc.wait()}"
        yield Named(proc, comm, files, json.loads(line)["starts"], pages)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        stop_process(proc)


def build(name: str, tmp: Path) -> Path:
    """Compile tests/c/NAME.c with gcc into tmp."""
    exe = tmp / name
    subprocess.run(["gcc", "-O1", "-Wall", "-pthread", "-o", str(exe), str(C_DIR / f"{name}.c")],
                   check=True, capture_output=True, timeout=120)
    return exe


@dataclass
class ZombieLeader:
    """tests/c/zombie_leader.c: the main thread exited; a worker reads the first ``hot`` of
    ``pages`` pages at ``addr`` over and over."""

    proc: subprocess.Popen
    addr: int
    pages: int
    hot: int
    worker: int  # a live thread's id

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def range_arg(self) -> str:
        return f"{self.addr:x}-{self.addr + self.pages * PAGE:x}"


@contextmanager
def zombie_leader(exe: Path, pages: int, hot: int, *extra: str) -> Iterator[ZombieLeader]:
    proc = subprocess.Popen([str(exe), str(pages), str(hot), *extra], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert line[:1] == ["ready"], f"zombie_leader exited with {proc.wait()}"
        yield ZombieLeader(proc, int(line[1], 16), int(line[2]), int(line[3]), int(line[4]))
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        stop_process(proc)


def state(pid: int, tid: int | None = None) -> str:
    """The one-letter state of a process (or one of its threads) from its stat line."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    data = Path(path).read_bytes()
    return data[data.rindex(b")") + 2:].split(b" ")[0].decode()


def wait_for(cond, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


class Serve:
    """A running `pageheat serve`; its stderr goes to a file (``log()``)."""

    def __init__(self, tmp: Path, config: str, *args: str, prefix: tuple[str, ...] = (),
                 command: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        cfg = tmp / f"serve-{self.port}.yml"
        cfg.write_text(config)
        self.err = tmp / f"serve-{self.port}.log"
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen([*prefix, *PAGEHEAT, *args, "serve", "--config", str(cfg),
                                          "--listen", f"127.0.0.1:{self.port}",
                                          *(("--", *command) if command else ())],
                                         stdin=subprocess.PIPE, stderr=err)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> Serve:
        wait_http(self.url("/healthz"))
        return self

    def targets(self) -> list[dict]:
        with urllib.request.urlopen(self.url("/api/v1/targets"), timeout=10) as r:
            return json.load(r)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=10) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        finally:
            stop_process(self.proc)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in exposition text, None if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def fs_kind(path: Path) -> str:
    """The VMA kind a file on ``path``'s filesystem maps as: shmem on tmpfs, else file."""
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                        check=True, timeout=10).stdout.strip()
    return "shmem" if fs == "tmpfs" else "file"


def smaps_rss_pages(pid: int, tid: int | None = None) -> int:
    """Rss of the whole process from smaps_rollup, in pages (through a thread if given)."""
    path = f"/proc/{pid}/smaps_rollup" if tid is None else f"/proc/{pid}/task/{tid}/smaps_rollup"
    m = re.search(rb"^Rss:\s+(\d+) kB", Path(path).read_bytes(), re.M)
    assert m, path
    return int(m[1]) // 4


def kernel_thread_pid() -> int:
    """A kernel thread's pid, found by its PF_KTHREAD flag (field 9 of stat)."""
    for d in sorted(os.listdir("/proc"), key=lambda x: (len(x), x)):
        if d.isdigit():
            try:
                data = Path(f"/proc/{d}/stat").read_bytes()
            except OSError:
                continue
            if int(data[data.rindex(b")") + 2:].split(b" ")[6]) & 0x00200000:
                return int(d)
    raise AssertionError("no kernel thread found")

"""A small typed ctypes binding to the system libbpf (Debian's libbpf1, 1.1 or newer).

Only what pageheat uses is exposed: open an object, size its maps, load it, find programs
and maps, mmap array maps, update, delete and batch-drain map elements by fd, attach
(iterators and ordinary programs), and test-run a program.
Every libbpf call that returns a pointer declares ``restype = c_void_p``: the default int
return would truncate pointers and crash later, far from the cause.
"""

from __future__ import annotations

import collections
import ctypes as C
import errno
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

_PAGE = mmap.PAGESIZE


class LibbpfError(OSError):
    """A libbpf call failed. ``log`` holds libbpf's last messages (verifier output and such)."""

    def __init__(self, what: str, err: int, log: str = "") -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.what = what
        self.log = log


class _TestRunOpts(C.Structure):
    _fields_ = [
        ("sz", C.c_size_t),
        ("data_in", C.c_void_p),
        ("data_out", C.c_void_p),
        ("data_size_in", C.c_uint32),
        ("data_size_out", C.c_uint32),
        ("ctx_in", C.c_void_p),
        ("ctx_out", C.c_void_p),
        ("ctx_size_in", C.c_uint32),
        ("ctx_size_out", C.c_uint32),
        ("retval", C.c_uint32),
        ("repeat", C.c_int),
        ("duration", C.c_uint32),
        ("flags", C.c_uint32),
        ("cpu", C.c_uint32),
        ("batch_size", C.c_uint32),
    ]


class _IterTask(C.Structure):
    _fields_ = [("tid", C.c_uint32), ("pid", C.c_uint32), ("pid_fd", C.c_uint32)]


class _IterLinkInfo(C.Union):
    # union bpf_iter_link_info: the cgroup member (u32 order, u32 fd, u64 id) makes it 16 bytes.
    _fields_ = [("task", _IterTask), ("_size", C.c_uint8 * 16)]


class _IterAttachOpts(C.Structure):
    _fields_ = [
        ("sz", C.c_size_t),
        ("link_info", C.POINTER(_IterLinkInfo)),
        ("link_info_len", C.c_uint32),
    ]


_PRINT_FN = C.CFUNCTYPE(C.c_int, C.c_int, C.c_char_p, C.c_void_p)


def _load_lib() -> C.CDLL:
    lib = C.CDLL("libbpf.so.1", use_errno=True)
    sigs: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (C.c_void_p, [C.c_char_p, C.c_void_p]),
        "bpf_object__load": (C.c_int, [C.c_void_p]),
        "bpf_object__close": (None, [C.c_void_p]),
        "bpf_object__find_map_by_name": (C.c_void_p, [C.c_void_p, C.c_char_p]),
        "bpf_object__find_program_by_name": (C.c_void_p, [C.c_void_p, C.c_char_p]),
        "bpf_map__set_max_entries": (C.c_int, [C.c_void_p, C.c_uint32]),
        "bpf_map__max_entries": (C.c_uint32, [C.c_void_p]),
        "bpf_map__value_size": (C.c_uint32, [C.c_void_p]),
        "bpf_map__fd": (C.c_int, [C.c_void_p]),
        "bpf_map_update_elem": (C.c_int, [C.c_int, C.c_void_p, C.c_void_p, C.c_uint64]),
        "bpf_map_delete_elem": (C.c_int, [C.c_int, C.c_void_p]),
        "bpf_map_lookup_and_delete_batch": (C.c_int, [C.c_int, C.c_void_p, C.c_void_p, C.c_void_p,
                                                      C.c_void_p, C.POINTER(C.c_uint32), C.c_void_p]),
        "bpf_program__fd": (C.c_int, [C.c_void_p]),
        "bpf_program__set_autoload": (C.c_int, [C.c_void_p, C.c_bool]),
        "bpf_program__attach": (C.c_void_p, [C.c_void_p]),
        "bpf_program__attach_iter": (C.c_void_p, [C.c_void_p, C.c_void_p]),
        "bpf_link__fd": (C.c_int, [C.c_void_p]),
        "bpf_link__destroy": (C.c_int, [C.c_void_p]),
        "bpf_iter_create": (C.c_int, [C.c_int]),
        "bpf_prog_test_run_opts": (C.c_int, [C.c_int, C.c_void_p]),
        "libbpf_set_print": (C.c_void_p, [_PRINT_FN]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


_lib: C.CDLL | None = None
_log: collections.deque[str] = collections.deque(maxlen=200)
_libc = C.CDLL(None)
_libc.vsnprintf.argtypes = [C.c_char_p, C.c_size_t, C.c_char_p, C.c_void_p]


@_PRINT_FN
def _on_print(level: int, fmt: bytes, args: int) -> int:
    # libbpf hands us printf arguments as a va_list; on x86-64 that is a pointer we can pass on.
    buf = C.create_string_buffer(1024)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    _log.append(buf.value.decode(errors="replace").rstrip("\n"))
    return 0


def lib() -> C.CDLL:
    global _lib
    if _lib is None:
        _lib = _load_lib()
        _lib.libbpf_set_print(_on_print)
    return _lib


def _fail(what: str) -> LibbpfError:
    err = C.get_errno() or 1
    return LibbpfError(what, err, "\n".join(_log))


def map_update(fd: int, key: C._CData, value: C._CData, flags: int = 0) -> None:
    """bpf_map_update_elem(): set ``key`` (a ctypes object, the map's key size) to ``value``.
    Raises LibbpfError (E2BIG: a hash map is full)."""
    C.set_errno(0)
    if lib().bpf_map_update_elem(fd, C.byref(key), C.byref(value), flags):
        raise _fail("bpf_map_update_elem")


def map_delete(fd: int, key: C._CData) -> bool:
    """bpf_map_delete_elem(): remove ``key``; whether it was there. Never raises."""
    return lib().bpf_map_delete_elem(fd, C.byref(key)) == 0


def map_lookup_and_delete_batch(fd: int, token: C.c_uint64 | None, next_token: C.c_uint64,
                                keys: int, values: int, count: int) -> tuple[int, bool]:
    """One bpf_map_lookup_and_delete_batch() on a hash map: moves up to ``count`` entries into
    the buffers at addresses ``keys`` and ``values`` (``count`` keys and values of the map's
    sizes each). ``token``: None for the first call, then the ``next_token`` the previous call
    filled in. Returns (entries moved, whether the whole map has been read: ENOENT). Raises
    LibbpfError on any other failure."""
    n = C.c_uint32(count)
    C.set_errno(0)
    rc = lib().bpf_map_lookup_and_delete_batch(
        fd, None if token is None else C.byref(token), C.byref(next_token), keys, values,
        C.byref(n), None)
    if not rc:
        return n.value, False
    err = C.get_errno() or -rc
    if err == errno.ENOENT:
        return n.value, True
    raise LibbpfError("bpf_map_lookup_and_delete_batch", err, "\n".join(_log))


@dataclass
class Link:
    """An attached program. Destroying it detaches; always destroy (or use ``with``)."""

    ptr: int

    @property
    def fd(self) -> int:
        return lib().bpf_link__fd(self.ptr)

    def create_iter(self) -> int:
        """A new iterator instance: reading the returned fd runs the program."""
        fd = lib().bpf_iter_create(self.fd)
        if fd < 0:
            raise LibbpfError("bpf_iter_create", -fd)
        return fd

    def destroy(self) -> None:
        if self.ptr:
            lib().bpf_link__destroy(self.ptr)
            self.ptr = 0

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class BpfObject:
    """One loaded CO-RE object file."""

    def __init__(
        self,
        path: Path,
        max_entries: dict[str, int] | None = None,
        autoload: dict[str, bool] | None = None,
    ) -> None:
        lb = lib()
        _log.clear()
        C.set_errno(0)
        self._obj = lb.bpf_object__open_file(str(path).encode(), None)
        if not self._obj:
            raise _fail(f"open {path}")
        try:
            for name, n in (max_entries or {}).items():
                if lb.bpf_map__set_max_entries(self._map(name), n):
                    raise _fail(f"set max_entries of map {name}")
            for name, on in (autoload or {}).items():
                lb.bpf_program__set_autoload(self._prog(name), on)
            err = lb.bpf_object__load(self._obj)
            if err:
                C.set_errno(-err)
                raise _fail(f"load {path.name}")
        except BaseException:
            self.close()
            raise

    def _map(self, name: str) -> int:
        ptr = lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not ptr:
            raise LibbpfError(f"no map named {name!r}", 2)
        return ptr

    def _prog(self, name: str) -> int:
        ptr = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not ptr:
            raise LibbpfError(f"no program named {name!r}", 2)
        return ptr

    def map_fd(self, name: str) -> int:
        return lib().bpf_map__fd(self._map(name))

    def value_size(self, name: str) -> int:
        return lib().bpf_map__value_size(self._map(name))

    def max_entries(self, name: str) -> int:
        return lib().bpf_map__max_entries(self._map(name))

    def mmap_array(self, name: str) -> mmap.mmap:
        """The whole BPF_F_MMAPABLE array map ``name``, shared with the kernel."""
        # Array values are laid out at 8-byte-rounded strides.
        stride = (self.value_size(name) + 7) & ~7
        length = max(_PAGE, -(-stride * self.max_entries(name) // _PAGE) * _PAGE)
        return mmap.mmap(self.map_fd(name), length, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)

    def attach(self, prog: str) -> Link:
        """Attach by section name (tracepoints, tp_btf, fexit, ...)."""
        C.set_errno(0)
        ptr = lib().bpf_program__attach(self._prog(prog))
        if not ptr:
            raise _fail(f"attach {prog}")
        return Link(ptr)

    def attach_task_iter(self, prog: str, pid: int) -> Link:
        """Attach a task/task_vma iterator that visits only process ``pid``."""
        info = _IterLinkInfo()
        info.task.pid = pid
        opts = _IterAttachOpts(sz=C.sizeof(_IterAttachOpts), link_info=C.pointer(info),
                               link_info_len=C.sizeof(_IterLinkInfo))
        C.set_errno(0)
        ptr = lib().bpf_program__attach_iter(self._prog(prog), C.byref(opts))
        if not ptr:
            raise _fail(f"attach iterator {prog} to pid {pid}")
        return Link(ptr)

    def test_run(self, prog: str, ctx: C.Structure | None = None) -> int:
        """Run ``prog`` once in the caller's context (BPF_PROG_TEST_RUN); its return value.
        ``ctx`` is the context of a BPF_PROG_TYPE_SYSCALL program: the kernel copies it in
        and, for that program type, back out, so outputs land in the same structure."""
        opts = _TestRunOpts(sz=C.sizeof(_TestRunOpts))
        if ctx is not None:
            opts.ctx_in = C.addressof(ctx)
            opts.ctx_size_in = C.sizeof(ctx)
        C.set_errno(0)
        err = lib().bpf_prog_test_run_opts(lib().bpf_program__fd(self._prog(prog)), C.byref(opts))
        if err:
            raise _fail(f"test run {prog}")
        return int(opts.retval)

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = 0

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A small typed ctypes binding to the system libbpf (Debian's libbpf1, 1.1 or newer).

Only what pageheat uses is exposed: open an object, size its maps, set its ``const volatile``
globals, load it, find programs and maps, mmap array maps, update, delete and batch-drain
map elements by fd, attach (iterators and ordinary programs), and test-run a program; and
read an object's BTF (``Btf``), against which the Python descriptions of the shared structs
and enums (bpf/*.h) are checked field by field.
Every libbpf call that returns a pointer declares ``restype = c_void_p``: the default int
return would truncate pointers and crash later, far from the cause.
"""

from __future__ import annotations

import collections
import ctypes as C
import enum
import errno
import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_PAGE = mmap.PAGESIZE


class LibbpfError(OSError):
    """A libbpf call failed. ``log`` holds libbpf's last messages (verifier output and such)."""

    def __init__(self, what: str, err: int, log: str = "") -> None:
        super().__init__(err, f"{what}: {_strerror(err)}")
        self.what = what
        self.log = log


LIBBPF_ERRNO_START = 4000  # libbpf's own error codes (enum libbpf_errno, libbpf.h) start here


def _strerror(err: int) -> str:
    """strerror, and libbpf_strerror for libbpf's own codes (4001 "Invalid ELF format" and
    such, which os.strerror calls "Unknown error 4001")."""
    if err < LIBBPF_ERRNO_START:
        return os.strerror(err)
    buf = C.create_string_buffer(128)
    lib().libbpf_strerror(err, buf, len(buf))
    return buf.value.decode(errors="replace") or os.strerror(err)


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
        "libbpf_strerror": (C.c_int, [C.c_int, C.c_char_p, C.c_size_t]),
        "bpf_map__initial_value": (C.c_void_p, [C.c_void_p, C.POINTER(C.c_size_t)]),
        "bpf_object__btf": (C.c_void_p, [C.c_void_p]),
        "btf__parse_elf": (C.c_void_p, [C.c_char_p, C.c_void_p]),
        "btf__free": (None, [C.c_void_p]),
        "btf__find_by_name_kind": (C.c_int32, [C.c_void_p, C.c_char_p, C.c_uint32]),
        "btf__type_by_id": (C.c_void_p, [C.c_void_p, C.c_uint32]),
        "btf__name_by_offset": (C.c_char_p, [C.c_void_p, C.c_uint32]),
        "btf__resolve_type": (C.c_int32, [C.c_void_p, C.c_uint32]),
        "btf__resolve_size": (C.c_int64, [C.c_void_p, C.c_uint32]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


_lib: C.CDLL | None = None
_log: collections.deque[str] = collections.deque(maxlen=200)
_libc = C.CDLL(None)
_libc.vasprintf.argtypes = [C.POINTER(C.c_void_p), C.c_char_p, C.c_void_p]
_libc.free.argtypes = [C.c_void_p]


@_PRINT_FN
def _on_print(level: int, fmt: bytes, args: int) -> int:
    # libbpf hands us printf arguments as a va_list; on x86-64 that is a pointer we can pass on.
    # vasprintf, not a fixed buffer: the verifier's log comes as one message of up to megabytes,
    # and its end (the rejected instruction) is the part that matters.
    out = C.c_void_p()
    if _libc.vasprintf(C.byref(out), fmt, args) < 0:  # out of memory: the bare format, then
        _log.append(fmt.decode(errors="replace").rstrip("\n"))
        return 0
    try:
        _log.append(C.string_at(out).decode(errors="replace").rstrip("\n"))
    finally:
        _libc.free(out)
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
        if not self.ptr:  # bpf_link__fd would read a NULL link
            raise LibbpfError("BPF link used after destroy", errno.EBADF)
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
    """One loaded CO-RE object file.

    ``rodata``: values of the object's ``const volatile`` globals (its .rodata section),
    written before load at the offsets its BTF gives; the verifier then knows them. A name
    the object does not have, or a value that does not fit, is a LibbpfError (EINVAL).
    ``load=False`` only opens the file: its BTF can be read without privileges or kernel."""

    def __init__(
        self,
        path: Path,
        max_entries: dict[str, int] | None = None,
        autoload: dict[str, bool] | None = None,
        rodata: Mapping[str, int] | None = None,
        load: bool = True,
    ) -> None:
        lb = lib()
        _log.clear()
        C.set_errno(0)
        self.path = path
        self._obj = lb.bpf_object__open_file(str(path).encode(), None)
        if not self._obj:
            raise _fail(f"open {path}")
        try:
            for name, n in (max_entries or {}).items():
                if lb.bpf_map__set_max_entries(self._map(name), n):
                    raise _fail(f"set max_entries of map {name}")
            for name, on in (autoload or {}).items():
                lb.bpf_program__set_autoload(self._prog(name), on)
            if rodata:
                self._set_rodata(rodata)
            err = lb.bpf_object__load(self._obj) if load else 0
            if err:
                C.set_errno(-err)
                raise _fail(f"load {path.name}")
        except BaseException:
            self.close()
            raise

    @property
    def btf(self) -> Btf:
        """The object's own BTF (its types, not the kernel's); valid until close()."""
        ptr = lib().bpf_object__btf(self._live())
        if not ptr:
            raise LibbpfError(f"{self.path.name} has no BTF", errno.ENOENT)
        return Btf(ptr, self.path.name)

    def _set_rodata(self, values: Mapping[str, int]) -> None:
        """Write const volatile globals into .rodata's initial image (between open and load)."""
        size = C.c_size_t(0)
        # libbpf names internal maps "<object>.rodata"; a name starting with a dot matches
        # the section (bpf_object__find_map_by_name in libbpf.c).
        base = lib().bpf_map__initial_value(self._map(".rodata"), C.byref(size))
        if not base:
            raise LibbpfError(f"{self.path.name}: no initial image of .rodata", errno.ENOENT)
        variables = self.btf.datasec(".rodata")
        for name, value in values.items():
            var = variables.get(name)
            if var is None or var.offset + var.size > size.value:
                raise LibbpfError(f"{self.path.name} has no const volatile {name!r}", errno.EINVAL)
            try:
                data = int(value).to_bytes(var.size, "little", signed=var.kind.startswith("i"))
            except OverflowError:
                raise LibbpfError(f"{value} does not fit {name} ({var.kind}) of {self.path.name}",
                                  errno.EINVAL) from None
            C.memmove(base + var.offset, data, var.size)

    def _live(self) -> int:
        """The bpf_object pointer; LibbpfError (EBADF) once closed. libbpf's lookups take a
        NULL object as a valid one and fault (bpf_object__next_map reads obj->maps)."""
        if not self._obj:
            raise LibbpfError(f"{self.path.name}: used after close", errno.EBADF)
        return self._obj

    def _map(self, name: str) -> int:
        ptr = lib().bpf_object__find_map_by_name(self._live(), name.encode())
        if not ptr:
            raise LibbpfError(f"no map named {name!r}", 2)
        return ptr

    def _prog(self, name: str) -> int:
        ptr = lib().bpf_object__find_program_by_name(self._live(), name.encode())
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


# -- BTF ---------------------------------------------------------------------------------------
# Layouts from include/uapi/linux/btf.h. A btf_type is followed by kind-specific data.
class _BtfType(C.Structure):
    _fields_ = [("name_off", C.c_uint32), ("info", C.c_uint32), ("size_or_type", C.c_uint32)]


class _BtfMember(C.Structure):
    _fields_ = [("name_off", C.c_uint32), ("type", C.c_uint32), ("offset", C.c_uint32)]


class _BtfEnum(C.Structure):
    _fields_ = [("name_off", C.c_uint32), ("val", C.c_int32)]


class _BtfArray(C.Structure):
    _fields_ = [("type", C.c_uint32), ("index_type", C.c_uint32), ("nelems", C.c_uint32)]


class _BtfVarSecinfo(C.Structure):
    _fields_ = [("type", C.c_uint32), ("offset", C.c_uint32), ("size", C.c_uint32)]


class BtfKind(enum.IntEnum):
    """BTF_KIND_* of linux/btf.h (the ones pageheat reads)."""

    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FLOAT = 16
    DATASEC = 15


_BTF_INT_SIGNED = 1 << 0  # BTF_INT_ENCODING bits


class BtfMismatch(ValueError):
    """A Python description of a shared struct or enum disagrees with the object's BTF (or
    the BTF lacks it). The message is one line naming the object, the type and the field."""


@dataclass(frozen=True)
class BtfField:
    """A struct member or a DATASEC variable: byte offset, byte size, and its type in numpy
    terms: ``kind`` like "u8", "i4" ("V<size>" for a struct or union), ``shape`` of an array."""

    name: str
    offset: int
    size: int
    kind: str
    shape: tuple[int, ...] = ()

    def describe(self) -> str:
        dims = "".join(f"[{n}]" for n in self.shape)
        return f"{self.kind}{dims} at offset {self.offset}"


class Btf:
    """Read access to one BTF: the structs, enums and DATASECs pageheat shares with its BPF
    objects. ``Btf.from_elf`` parses an object file without loading it (no privileges);
    ``BpfObject.btf`` borrows a loaded object's. Raises BtfMismatch for a missing type."""

    def __init__(self, ptr: int, origin: str, owned: bool = False) -> None:
        self._ptr = ptr
        self.origin = origin
        self._owned = owned

    @classmethod
    def from_elf(cls, path: Path) -> Btf:
        C.set_errno(0)
        ptr = lib().btf__parse_elf(str(path).encode(), None)
        if not ptr:
            raise _fail(f"read BTF of {path}")
        return cls(ptr, path.name, owned=True)

    def close(self) -> None:
        if self._owned and self._ptr:
            lib().btf__free(self._ptr)
        self._ptr = 0

    def __enter__(self) -> Btf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw access ----------------------------------------------------------------------------
    def _find(self, name: str, kind: BtfKind) -> int:
        tid = lib().btf__find_by_name_kind(self._ptr, name.encode(), int(kind))
        if tid <= 0:
            raise BtfMismatch(f"{self.origin} has no {kind.name.lower()} {name} in its BTF")
        return tid

    def _type(self, tid: int) -> tuple[_BtfType, int]:
        """The btf_type of ``tid`` and the address of the data that follows it."""
        addr = lib().btf__type_by_id(self._ptr, tid)
        t = _BtfType.from_address(addr)
        return t, addr + C.sizeof(_BtfType)

    def _name(self, off: int) -> str:
        return (lib().btf__name_by_offset(self._ptr, off) or b"").decode()

    @staticmethod
    def _kind_vlen(t: _BtfType) -> tuple[int, int, bool]:
        return (t.info >> 24) & 0x1F, t.info & 0xFFFF, bool(t.info >> 31)

    def _field(self, name: str, offset: int, tid: int) -> BtfField:
        """Member or variable ``name`` of type ``tid`` at byte ``offset``, in numpy terms."""
        lb = lib()
        size = lb.btf__resolve_size(self._ptr, tid)
        shape: list[int] = []
        tid = lb.btf__resolve_type(self._ptr, tid)  # through typedef, const, volatile
        t, data = self._type(tid)
        while self._kind_vlen(t)[0] == BtfKind.ARRAY:
            arr = _BtfArray.from_address(data)
            shape.append(arr.nelems)
            tid = lb.btf__resolve_type(self._ptr, arr.type)
            t, data = self._type(tid)
        kind, _, kflag = self._kind_vlen(t)
        elem = lb.btf__resolve_size(self._ptr, tid)
        if kind == BtfKind.INT:
            enc = C.c_uint32.from_address(data).value >> 24
            code = "i" if enc & _BTF_INT_SIGNED else "u"
        elif kind == BtfKind.ENUM:
            code = "i" if kflag else "u"  # kflag: a signed enum (BTF since 6.0)
        elif kind == BtfKind.PTR:
            code = "u"
        elif kind == BtfKind.FLOAT:
            code = "f"
        else:
            code = "V"
        return BtfField(name, offset, int(size), f"{code}{elem}", tuple(shape))

    # -- what pageheat reads -------------------------------------------------------------------
    def struct(self, name: str) -> tuple[int, list[BtfField]]:
        """Size and members of ``struct name``, in declaration order. Bitfields are refused
        (a numpy dtype cannot describe them)."""
        t, data = self._type(self._find(name, BtfKind.STRUCT))
        _, vlen, kflag = self._kind_vlen(t)
        fields = []
        for i in range(vlen):
            m = _BtfMember.from_address(data + i * C.sizeof(_BtfMember))
            bits = m.offset & 0xFFFFFF if kflag else m.offset
            if (kflag and m.offset >> 24) or bits % 8:
                raise BtfMismatch(f"{self.origin}: struct {name} has a bitfield "
                                  f"{self._name(m.name_off)}")
            fields.append(self._field(self._name(m.name_off), bits // 8, m.type))
        return t.size_or_type, fields

    def enum(self, name: str) -> dict[str, int]:
        """Enumerator name -> value of ``enum name``."""
        t, data = self._type(self._find(name, BtfKind.ENUM))
        _, vlen, kflag = self._kind_vlen(t)
        out = {}
        for i in range(vlen):
            e = _BtfEnum.from_address(data + i * C.sizeof(_BtfEnum))
            out[self._name(e.name_off)] = e.val if kflag else e.val & 0xFFFFFFFF
        return out

    def datasec(self, name: str) -> dict[str, BtfField]:
        """Variables of section ``name`` (".rodata", ".bss"): offsets in the section. Only an
        opened object's BTF has them right (libbpf fixes them up at open)."""
        t, data = self._type(self._find(name, BtfKind.DATASEC))
        out = {}
        for i in range(self._kind_vlen(t)[1]):
            v = _BtfVarSecinfo.from_address(data + i * C.sizeof(_BtfVarSecinfo))
            var, _ = self._type(v.type)
            f = self._field(self._name(var.name_off), v.offset, var.size_or_type)
            out[f.name] = f
        return out

    # -- checks --------------------------------------------------------------------------------
    def check(self, structs: Mapping[str, np.dtype | type[C.Structure]],
              enums: Mapping[str, tuple[type[enum.Enum], str]]) -> None:
        """check_struct for each (C name -> Python layout) and check_enum for each (C name ->
        (Python enum, prefix)): one BtfMismatch for the first disagreement."""
        for name, layout in structs.items():
            self.check_struct(name, layout)
        for name, (values, prefix) in enums.items():
            self.check_enum(name, values, prefix)

    def check_struct(self, name: str, layout: np.dtype | type[C.Structure]) -> None:
        """Raise BtfMismatch unless ``layout`` (a numpy structured dtype, or a ctypes
        Structure) has exactly the members of ``struct name``: same names, offsets, sizes,
        integer kinds and array shapes, and the same total size."""
        dtype = np.dtype(layout)
        size, fields = self.struct(name)
        where = f"{self.origin}: struct {name}"
        py = {n: _py_field(n, *dtype.fields[n][:2]) for n in dtype.names or ()}
        for f in fields:
            p = py.pop(f.name, None)
            if p is None:
                raise BtfMismatch(f"{where} field {f.name} ({f.describe()}) is missing from the "
                                  "exporter's description")
            if (p.offset, p.size, p.kind, p.shape) != (f.offset, f.size, f.kind, f.shape):
                raise BtfMismatch(f"{where} field {f.name} is {f.describe()} in the object, "
                                  f"{p.describe()} in the exporter")
        if py:
            raise BtfMismatch(f"{where} has no field {next(iter(py))}, which the exporter describes")
        if dtype.itemsize != size:
            raise BtfMismatch(f"{where} is {size} bytes in the object, {dtype.itemsize} in the "
                              "exporter")

    def check_enum(self, name: str, values: type[enum.Enum], prefix: str) -> None:
        """Raise BtfMismatch unless ``values`` names every enumerator of ``enum name`` (less
        ``prefix``: VMA_F_SHARED is VmaFlag.SHARED) with the same value, and no other."""
        c = self.enum(name)
        py = {prefix + n: int(m.value) for n, m in values.__members__.items()}
        where = f"{self.origin}: enum {name}"
        for n, v in c.items():
            if n not in py:
                raise BtfMismatch(f"{where}: {n} ({v}) is missing from the exporter's "
                                  f"{values.__name__}")
            if py[n] != v:
                raise BtfMismatch(f"{where}: {n} is {v} in the object, {py[n]} in the exporter")
        extra = sorted(set(py) - set(c))
        if extra:
            raise BtfMismatch(f"{where} has no {extra[0]}, which the exporter's "
                              f"{values.__name__} has")


def _py_field(name: str, dtype: np.dtype, offset: int) -> BtfField:
    """A numpy field in BtfField terms (bool counts as unsigned: C's bool is an INT)."""
    base, shape = dtype.subdtype if dtype.subdtype else (dtype, ())
    code = {"b": "u"}.get(base.kind, base.kind)
    return BtfField(name, offset, dtype.itemsize, f"{code}{base.itemsize}", tuple(shape))

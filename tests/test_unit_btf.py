"""The BPF <-> Python boundary: the Python description of every struct and enum shared with a
BPF object (bpf/*.h) against that object's BTF, field by field, on the compiled objects
themselves (opened, not loaded: no privileges needed). A deliberately wrong description is
refused with one line naming the struct or enum and the field."""

from __future__ import annotations

import ctypes as C
import enum

import numpy as np
import pytest
from pageheat.kernel.libbpf import BpfObject, Btf, BtfMismatch, LibbpfError
from pageheat.sources import mglru, mglru_hook, pagetable
from pageheat.sources.objects import object_path

# object -> (structs, enums), exactly what each source checks at load.
DESCRIPTIONS = {"ptwalk": pagetable.BTF_TYPES, "mglru_fexit": mglru.BTF_TYPES,
                "mglru_hook": mglru_hook.BTF_TYPES}


@pytest.fixture(params=sorted(DESCRIPTIONS))
def opened(request: pytest.FixtureRequest):
    obj = BpfObject(object_path(request.param), load=False)
    yield request.param, obj
    obj.close()


def test_descriptions_match_each_object(opened) -> None:
    name, obj = opened
    structs, enums = DESCRIPTIONS[name]
    obj.btf.check(structs, enums)  # raises BtfMismatch on the first difference
    # And the check is not vacuous: every described field is in the BTF at the same offset.
    for c_name, layout in structs.items():
        size, fields = obj.btf.struct(c_name)
        dtype = np.dtype(layout)
        assert size == dtype.itemsize
        assert [(f.name, f.offset) for f in fields] == sorted(
            ((n, dtype.fields[n][1]) for n in dtype.names), key=lambda x: x[1])
    for c_name, (values, prefix) in enums.items():
        assert obj.btf.enum(c_name) == {prefix + n: int(m) for n, m in values.__members__.items()}


def test_elf_btf_matches_opened_object() -> None:
    """Btf.from_elf (no libbpf object) reads the same structs as an opened object."""
    path = object_path("ptwalk")
    with Btf.from_elf(path) as btf, BpfObject(path, load=False) as obj:
        for c_name in DESCRIPTIONS["ptwalk"][0]:
            assert btf.struct(c_name) == obj.btf.struct(c_name)


def test_rodata_variables_from_btf() -> None:
    """The const volatile settings each source writes are .rodata variables of its object,
    at distinct offsets inside the section (libbpf fixes the offsets up at open)."""
    for name, wanted in (("ptwalk", {"max_vmas", "max_tables", "max_raw", "copy_raw",
                                     "check_young", "probe_max_gib"}),):
        with BpfObject(object_path(name), load=False) as obj:
            sec = obj.btf.datasec(".rodata")
            assert wanted <= set(sec)
            spans = sorted((v.offset, v.offset + v.size) for v in sec.values())
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans


def test_rodata_refuses_unknown_names_and_overflow() -> None:
    path = object_path("ptwalk")
    with pytest.raises(LibbpfError, match="no const volatile 'nonesuch'") as e:
        BpfObject(path, rodata={"nonesuch": 1}, load=False)
    assert "\n" not in str(e.value)
    with pytest.raises(LibbpfError, match="does not fit max_vmas") as e:
        BpfObject(path, rodata={"max_vmas": 1 << 32}, load=False)
    assert "\n" not in str(e.value)
    BpfObject(path, rodata={"max_vmas": (1 << 32) - 1}, load=False).close()


def test_use_after_close_is_an_error_not_a_fault() -> None:
    """libbpf takes a NULL object or link as a valid one and faults in the caller's process
    (bpf_object__find_map_by_name walks obj->maps): after close, every lookup is an EBADF."""
    import errno

    from pageheat.kernel.libbpf import Link

    obj = BpfObject(object_path("ptwalk"), load=False)
    obj.close()
    obj.close()  # idempotent
    for use in (lambda: obj.map_fd("tables"), lambda: obj.max_entries("vmas"),
                lambda: obj.attach("scan"), lambda: obj.btf):
        with pytest.raises(LibbpfError, match="used after close") as e:
            use()
        assert e.value.errno == errno.EBADF
    link = Link(0)
    link.destroy()
    with pytest.raises(LibbpfError, match="after destroy"):
        link.create_iter()


def shifted(dtype: np.dtype, field: str, by: int) -> np.dtype:
    """``dtype`` with ``field`` moved ``by`` bytes (and the struct grown to hold it)."""
    names = list(dtype.names)
    offsets = [dtype.fields[n][1] + (by if n == field else 0) for n in names]
    formats = [dtype.fields[n][0] for n in names]
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": dtype.itemsize + max(by, 0)})


def one_line_error(btf: Btf, c_name: str, layout) -> str:
    with pytest.raises(BtfMismatch) as e:
        btf.check_struct(c_name, layout)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ptwalk.bpf.o: struct " + c_name), msg
    return msg


def test_wrong_struct_descriptions_are_refused() -> None:
    state = pagetable.BTF_TYPES[0]["ptwalk_state"]
    with BpfObject(object_path("ptwalk"), load=False) as obj:
        btf = obj.btf
        msg = one_line_error(btf, "ptwalk_state", shifted(state, "n_vmas", 8))
        off = state.fields["n_vmas"][1]
        assert f"field n_vmas is u8 at offset {off} in the object, u8 at offset {off + 8}" in msg
        # A field dropped, a field the C struct lacks, a signedness and an array shape wrong.
        fewer = np.dtype([(n, state.fields[n][0]) for n in state.names if n != "last_vm_end"])
        assert "field last_vm_end" in one_line_error(btf, "ptwalk_state", fewer)
        extra = np.dtype([*((n, state.fields[n][0]) for n in state.names), ("bogus", "<u8")])
        assert "no field bogus" in one_line_error(btf, "ptwalk_state", extra)
        vma = np.dtype([("start", "<u8"), ("end", "<u8"), ("kind", "<i4"), ("flags", "<u4"),
                        ("unmonitored", "<u8"), ("ident", "<u8")])
        assert "field kind is u4" in one_line_error(btf, "vma_rec", vma)
        table = np.dtype([("addr", "<u8"), ("pmd", "<u8"), ("vma", "<u4"), ("flags", "<u4"),
                          ("present", "<u4", 16), ("accessed", "<u8", 8), ("written", "<u8", 8)])
        assert "field present is u8[8]" in one_line_error(btf, "table_rec", table)
        with pytest.raises(BtfMismatch, match="has no struct nonesuch"):
            btf.struct("nonesuch")


def test_wrong_ctypes_and_enum_descriptions_are_refused() -> None:
    class OldAgingArgs(C.Structure):  # without the filter field: ret one field early
        _fields_ = [("cgroup_id", C.c_uint64), ("nid", C.c_int32), ("can_swap", C.c_int32),
                    ("ret", C.c_int32)]

    class Flags(enum.IntFlag):
        PTE = 1
        PMD = 4

    with BpfObject(object_path("mglru_hook"), load=False) as obj:
        with pytest.raises(BtfMismatch) as e:
            obj.btf.check_struct("aging_args", OldAgingArgs)
        assert str(e.value) == ("mglru_hook.bpf.o: struct aging_args field filter (i4 at offset 16) "
                                "is missing from the exporter's description")
        with pytest.raises(BtfMismatch) as e:
            obj.btf.check_enum("young_flag", Flags, "YOUNG_")
        assert str(e.value) == ("mglru_hook.bpf.o: enum young_flag: YOUNG_PMD is 2 in the "
                                "object, 4 in the exporter")


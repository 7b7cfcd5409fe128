"""At load, a source checks its Python descriptions of the shared structs against the BTF of
the object it loaded (see tests/test_unit_btf.py for the checks themselves): a description
that disagrees is a one-line SourceError, and nothing stays loaded."""

from __future__ import annotations

import os

import pytest
from pageheat.sources import pagetable
from test_unit_btf import shifted

pytestmark = pytest.mark.kernel


def own_bpf_fds() -> int:
    """This process's BPF program and map descriptors (anon_inode:bpf-prog, bpf-map)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the descriptor listdir itself used
    return sum(link.startswith("anon_inode:bpf") for link in links)


def test_source_refuses_a_wrong_description(ptwalk_ok, monkeypatch) -> None:
    """At load, a description that disagrees with the object is a one-line SourceError."""
    from pageheat.sources.base import SourceError

    before = own_bpf_fds()
    structs, enums = pagetable.BTF_TYPES
    wrong = shifted(structs["table_rec"], "written", 8)
    monkeypatch.setattr(pagetable, "BTF_TYPES", ({**structs, "table_rec": wrong}, enums))
    with pytest.raises(SourceError) as e:
        pagetable.PageTableScan()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ptwalk: ptwalk.bpf.o: struct table_rec field written")
    assert own_bpf_fds() == before, "a refused object stays unloaded"

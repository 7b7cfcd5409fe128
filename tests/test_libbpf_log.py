"""libbpf's messages reach LibbpfError.log whole: a verifier log is one message of kilobytes
to megabytes, and the instruction it rejects is at its end."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, need_kernel

pytestmark = pytest.mark.kernel


def test_verifier_log_keeps_its_end(tmp_path: Path) -> None:
    from pageheat.kernel.libbpf import BpfObject, LibbpfError

    if os.geteuid() != 0:
        need_kernel("not root")
    clang = shutil.which("clang")
    if clang is None:
        pytest.fail("clang is not installed (apt-get install clang)")
    obj = tmp_path / "rejected.bpf.o"
    subprocess.run([clang, "-g", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
                    "-c", str(ROOT / "tests" / "c" / "rejected.bpf.c"), "-o", str(obj)],
                   check=True)
    with pytest.raises(LibbpfError) as e:
        BpfObject(obj)
    log = e.value.log
    begin = log.index("-- BEGIN PROG LOAD LOG --")
    end = log.index("-- END PROG LOAD LOG --")
    # Before, each message was cut at 1 KiB: the log stopped about 15 instructions in.
    assert end - begin > 4096
    assert "invalid mem access 'scalar'" in log[begin:end]
    assert "processed" in log[begin:end]


def test_libbpf_own_error_codes_are_named(tmp_path: Path) -> None:
    """A file that is not an ELF object: libbpf's LIBBPF_ERRNO__FORMAT (4001), named by
    libbpf_strerror, not "Unknown error 4001"."""
    from pageheat.kernel.libbpf import BpfObject, LibbpfError

    bad = tmp_path / "ptwalk.bpf.o"
    bad.write_bytes(b"\x7fELF" + bytes(range(256)) * 8)
    with pytest.raises(LibbpfError) as e:
        BpfObject(bad)
    assert e.value.errno == 4001  # LIBBPF_ERRNO__FORMAT
    assert str(e.value).endswith(f"open {bad}: BPF object format invalid")

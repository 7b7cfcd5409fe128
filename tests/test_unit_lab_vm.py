"""lab/vm.py's reading of a guest's end, on synthetic outputs: a guest that died (vng's 255,
no exit status) against one whose command failed or timed out, and the console shown from
the kernel's own first report of trouble; and the vng command line it builds. A real panic:
tests/lab/test_lab.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.vm import TCG_ACCEL, TIMEOUT_RC, VNG_NO_STATUS_RC, VmResult, vng_command


def test_died_is_no_exit_status_only() -> None:
    assert VmResult(VNG_NO_STATUS_RC, "", "", 1.0).died
    assert not VmResult(1, "", "", 1.0).died
    assert not VmResult(139, "", "Segmentation fault\n", 1.0).died  # the command's own status
    assert not VmResult(TIMEOUT_RC, "", "", 1.0, timed_out=True).died


def test_tail_shows_the_kernel_report_not_the_boot_log() -> None:
    boot = "".join(f"[{i:5d}.0] boot line {i}\n" for i in range(2000))
    trace = "".join(f"[ 5.{i}] trace {i}\n" for i in range(50))
    console = boot + "[ 5.0] BUG: kernel NULL pointer dereference, address: 0\n" + trace + \
        "[ 5.9] Kernel panic - not syncing: Fatal exception\n"
    t = VmResult(VNG_NO_STATUS_RC, "test_x PASSED\n", console, 1.0).tail()
    assert t.startswith("the guest died without an exit status")
    assert "test_x PASSED" in t
    shown = t.split("--- stderr (guest stderr and kernel console) ---\n", 1)[1]
    assert shown.startswith("[ 5.0] BUG: kernel NULL pointer dereference")
    assert "trace 49" in shown and "Kernel panic" in shown and "boot line" not in shown


def test_tail_without_a_kernel_report_is_the_end_of_both_streams() -> None:
    out = "".join(f"out {i}\n" for i in range(1000))
    err = "".join(f"err {i}\n" for i in range(1000))
    t = VmResult(1, out, err, 1.0).tail(2000)
    assert not t.startswith("the guest died")
    assert t.split("\n--- stderr")[0].endswith("out 999\n") and t.endswith("err 999\n")
    assert "out 0\n" not in t and "err 0\n" not in t


def test_tail_of_a_long_report_keeps_its_head_and_its_end() -> None:
    """An oops longer than the space: its first line (what went wrong) and the console's end
    (the panic it led to) are both shown; so are report headers of older kernels."""
    trace = "".join(f"[ 7.{i:04d}] frame {i}\n" for i in range(2000))
    console = "boot\n" * 100 + "[ 7.0] kernel BUG at mm/rmap.c:1234!\n[ 7.0] invalid opcode: 0000\n" + \
        trace + "[ 9.0] Kernel panic - not syncing: Fatal exception\n"
    shown = VmResult(VNG_NO_STATUS_RC, "", console, 1.0).tail(4000).split("kernel console) ---\n")[1]
    assert shown.startswith("[ 7.0] kernel BUG at mm/rmap.c:1234!")
    assert shown.rstrip().endswith("Kernel panic - not syncing: Fatal exception")
    assert "[...]" in shown and "boot" not in shown and len(shown) < 2200


def test_guests_run_single_threaded_tcg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vng is asked to hand QEMU ``-accel tcg,thread=single`` (lab/README.md Pitfalls: an int3
    of kernel text patching, apparently still run by another vCPU under multi-threaded TCG,
    killed or hung guests). That vng passes it on was checked with ``vng --dry-run``."""
    monkeypatch.setattr("lab.vm.vng_binary", lambda: "/usr/bin/vng")
    argv = vng_command(tmp_path / "vmlinuz", tmp_path / "run.sh", memory="2G", cpus=2, numa=None,
                       cwd=str(tmp_path), rwdirs=[])
    assert TCG_ACCEL == "tcg,thread=single"
    i = argv.index("--qemu-opts=-accel")
    assert argv[i + 1] == f"--qemu-opts={TCG_ACCEL}" and argv.index("--") > i + 1


def test_tail_starts_at_a_6_1_die_header() -> None:
    """6.1's die() header has no "Oops:" ("int3: 0000 [#1] ..."): the console is shown from
    there, not from the soft lockup reported after it."""
    boot = "".join(f"[{i:5d}.0] boot line {i}\n" for i in range(3000))
    console = boot + "[ 90.1] int3: 0000 [#1] PREEMPT SMP NOPTI\n[ 90.1] RIP: ptep_test_and_clear_young\n" + \
        "".join(f"[ 9{i}.0] more {i}\n" for i in range(20)) + \
        "[ 288.5] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [python:217]\n"
    t = VmResult(TIMEOUT_RC, "", console, 600.0, timed_out=True).tail(48000)
    shown = t.split("--- stderr (guest stderr and kernel console) ---\n", 1)[1]
    assert shown.startswith("[ 90.1] int3: 0000 [#1]") and "soft lockup" in shown
    assert "boot line" not in shown

"""pytest glue for lab tests: skip markers, a once-per-module VM fixture, guest pytest.

A VM costs 15-30 s to boot under TCG, so a host test module boots *one* VM that
runs a whole guest test file, and its host tests assert on that one result::

    # tests/lab/test_mglru_hook.py  (runs on the host)
    import sys
    from lab.conftest_helpers import requires_lab, vm_fixture, assert_vm_ok

    pytestmark = requires_lab
    guest = vm_fixture("deb-6.12", [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider",
                                    "tests/lab_guest/test_x.py"], numa=["1G,cpus=0", "1G,cpus=1"])

    def test_guest_suite(guest):
        assert_vm_ok(guest)

    # tests/lab_guest/test_x.py  (runs inside the VM)
    from lab.conftest_helpers import guest_only
    pytestmark = guest_only

or directly ``result = run_in_vm(...)`` inside a test.  ``guest_pytest`` builds
the guest pytest command and collects a JUnit report through a shared dir.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from lab.vm import VmResult, run_in_vm, vng_binary

IN_GUEST = os.environ.get("PAGEHEAT_LAB_GUEST") == "1"
REPO_ROOT = Path(__file__).resolve().parent.parent


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None.  Checked without booting anything."""
    if IN_GUEST:
        return "already inside a lab VM"
    if vng_binary() is None:
        return "vng not installed (pip install virtme-ng)"
    for tool in ("qemu-system-x86_64", "busybox", "dpkg-deb", "apt-get", "depmod", "xz"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} not found (see lab/README.md: setup)"
    if os.geteuid() != 0:
        return "the lab needs root (apt-get download into the cache, BPF in the guest)"
    return None


_reason = lab_unavailable_reason()
#: Mark for host-side lab tests: skip where the lab cannot run.
requires_lab = pytest.mark.skipif(_reason is not None, reason=f"kernel lab: {_reason}")
#: Mark for guest-side tests: they only make sense inside a lab VM.
guest_only = pytest.mark.skipif(not IN_GUEST, reason="runs only inside a lab VM (lab/vm.py)")


Scope = Literal["session", "package", "module", "class", "function"]


def vm_fixture(kernel: str, cmd: Sequence[str], *, scope: Scope = "module", **kwargs: Any) -> Any:
    """A pytest fixture that boots ``kernel`` once per ``scope`` and returns its VmResult.

    kwargs go to :func:`lab.vm.run_in_vm`; cwd defaults to the repo root so
    relative test paths work from any pytest invocation directory.
    """
    kwargs.setdefault("cwd", REPO_ROOT)

    def _fixture() -> VmResult:
        return run_in_vm(kernel, list(cmd), **kwargs)

    # pytest registers it under the module attribute it is assigned to (``guest = vm_fixture(...)``).
    fixture: Any = pytest.fixture(scope=scope)(_fixture)
    return fixture


def assert_vm_ok(result: VmResult) -> None:
    """Assert the guest command succeeded, with its output in the failure message."""
    assert not result.timed_out, f"lab VM ({result.kernel}) timed out:\n{result.output}"
    assert result.returncode == 0, (
        f"guest command failed with {result.returncode} on {result.kernel}:\n{result.output}"
    )


@dataclass(frozen=True)
class GuestPytest:
    """A guest pytest run: the VM result plus the JUnit counts (None if no report)."""

    vm: VmResult
    tests: int | None
    failures: int | None
    errors: int | None
    skipped: int | None
    failed_names: tuple[str, ...] = ()


def guest_pytest(kernel: str, args: Sequence[str], **kwargs: Any) -> GuestPytest:
    """Run ``python -m pytest ARGS`` in the guest and read back its JUnit XML.

    The report goes to a host temp dir shared read-write with the guest, since
    the guest's root (and so the checkout) is read-only.
    """
    kwargs.setdefault("cwd", REPO_ROOT)
    report_dir = Path(tempfile.mkdtemp(prefix="pageheat-lab-junit-"))
    try:
        junit = report_dir / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={junit}", *args]
        vm = run_in_vm(kernel, cmd, rwdirs=[report_dir, *kwargs.pop("rwdirs", ())], **kwargs)
        if not junit.exists():
            return GuestPytest(vm, None, None, None, None)
        root = ET.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        assert suite is not None
        failed = tuple(
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        )
        tests, failures, errors, skipped = (
            int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")
        )
        return GuestPytest(vm, tests, failures, errors, skipped, failed)
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)

"""exporter/kernel/cgroups.py and the command `serve -- CMD` launches (launch.Launched).

Parsing is checked on synthetic /proc/self/mountinfo and /proc/self/cgroup text for cgroup v1
and v2 layouts; creating, entering and removing on the real memory hierarchy of this machine
(cgroup v1 here, as root), with real children.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import need_kernel, stop_process
from pageheat.kernel import cgroups
from pageheat.kernel.cgroups import CgroupError, Hierarchy, Mount
from pageheat.serve import launch

# This machine's layout: cgroup v1 controllers, plus a cgroup2 mount without memory.
V1_MOUNTINFO = """\
23 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_CGROUP = """\
9:name=systemd:/
4:memory:/process_api/bf90
2:cpuacct:/
1:cpu:/
0::/
"""
# systemd's unified layout: one cgroup2 mount, optional fields, an escaped space in a path.
V2_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
90 22 0:50 / /mnt/my\\040disk rw,relatime shared:40 master:2 - ext4 /dev/sdb1 rw
"""
V2_CGROUP = "0::/system.slice/pageheat.service\n"


def test_parse_mountinfo_v1() -> None:
    mounts = cgroups.parse_mountinfo(V1_MOUNTINFO)
    assert [(m.fstype, str(m.point)) for m in mounts] == [
        ("cgroup", "/sys/fs/cgroup/cpu"), ("cgroup", "/sys/fs/cgroup/cpuacct"),
        ("cgroup", "/sys/fs/cgroup/memory"), ("cgroup", "/sys/fs/cgroup/systemd"),
        ("cgroup2", "/sys/fs/cgroup/unified")]
    memory = mounts[2]
    assert memory.root == "/" and memory.super_options == {"rw", "memory"}


def test_parse_mountinfo_v2_optional_fields_and_escapes() -> None:
    text = V2_MOUNTINFO + "91 26 0:51 /a\\040b /srv/c\\134d rw - cgroup2 cgroup2 rw\n"
    mounts = cgroups.parse_mountinfo(text)
    assert mounts == [Mount("cgroup2", "/", Path("/sys/fs/cgroup"), frozenset({"rw", "nsdelegate"})),
                      Mount("cgroup2", "/a b", Path("/srv/c\\d"), frozenset({"rw"}))]


def test_parse_proc_cgroup() -> None:
    assert cgroups.parse_proc_cgroup(V1_CGROUP) == {
        "name=systemd": "/", "memory": "/process_api/bf90", "cpuacct": "/", "cpu": "/", "": "/"}
    both = "2:cpu,cpuacct:/x\n0::/system.slice/a:b.service\n"
    assert cgroups.parse_proc_cgroup(both) == {"cpu": "/x", "cpuacct": "/x",
                                               "": "/system.slice/a:b.service"}
    assert cgroups.parse_proc_cgroup(V2_CGROUP) == {"": "/system.slice/pageheat.service"}


def fake_v2(tmp_path: Path, controllers: str) -> str:
    """A cgroup2 mount at a temporary directory whose cgroup.controllers lists ``controllers``."""
    (tmp_path / "cgroup.controllers").write_text(controllers + "\n")
    return f"26 22 0:23 / {tmp_path} rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def test_v2_with_memory_goes_under_the_mount(tmp_path: Path) -> None:
    h = cgroups.find_memory_hierarchy(fake_v2(tmp_path, "cpuset cpu io memory pids"), V2_CGROUP)
    assert (h.version, h.mount.point, h.parent) == (2, tmp_path, tmp_path / "pageheat")


def test_v2_without_memory_falls_back_to_v1(tmp_path: Path) -> None:
    # This machine: the cgroup2 mount only has hugetlb; memory is on the v1 hierarchy.
    text = fake_v2(tmp_path, "hugetlb") + V1_MOUNTINFO
    h = cgroups.find_memory_hierarchy(text, V1_CGROUP)
    assert h.version == 1
    assert h.parent == Path("/sys/fs/cgroup/memory/process_api/bf90/pageheat")


def test_v1_in_the_root_cgroup() -> None:
    h = cgroups.find_memory_hierarchy(V1_MOUNTINFO, "4:memory:/\n")
    assert h.parent == Path("/sys/fs/cgroup/memory/pageheat")


def test_v1_container_mounts_part_of_the_hierarchy() -> None:
    mountinfo = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n"
    h = cgroups.find_memory_hierarchy(mountinfo, "4:memory:/docker/abc/app\n")
    assert h.parent == Path("/sys/fs/cgroup/memory/app/pageheat")
    with pytest.raises(CgroupError, match="outside the hierarchy mounted at /sys/fs/cgroup/memory"):
        cgroups.find_memory_hierarchy(mountinfo, "4:memory:/elsewhere\n")


@pytest.mark.parametrize("mountinfo", [
    V1_MOUNTINFO.replace("rw,memory", "rw,blkio"),  # v1 without memory, cgroup2 unreadable
    "23 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n",  # no cgroups at all
])
def test_no_memory_controller_is_one_clear_error(mountinfo: str) -> None:
    with pytest.raises(CgroupError) as e:
        cgroups.find_memory_hierarchy(mountinfo, V1_CGROUP)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("no memory cgroup controller:")


def test_v1_memory_mount_but_no_memory_line() -> None:
    with pytest.raises(CgroupError, match="no memory line in /proc/self/cgroup"):
        cgroups.find_memory_hierarchy(V1_MOUNTINFO, "0::/\n")


def test_v2_create_enables_memory_for_the_children(tmp_path: Path) -> None:
    # A fake tree: cgroup.subtree_control is a plain file here, so what was written stays.
    (tmp_path / "cgroup.subtree_control").write_text("cpu io\n")
    h = cgroups.find_memory_hierarchy(fake_v2(tmp_path, "cpu io memory"), V2_CGROUP)
    h.parent.mkdir()
    (h.parent / "cgroup.subtree_control").write_text("memory pids\n")  # already on: untouched
    cg = cgroups.create(h, "/usr/bin/my app")
    assert cg.path == tmp_path / "pageheat" / f"my_app-{os.getpid()}" and cg.path.is_dir()
    assert cg.name == f"/pageheat/my_app-{os.getpid()}"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory"
    assert (h.parent / "cgroup.subtree_control").read_text() == "memory pids\n"
    again = cgroups.create(h, "/usr/bin/my app")  # a leftover of the same name is not reused
    assert again.path.name == f"my_app-{os.getpid()}-1"


def test_create_without_own_cgroup_is_one_clear_error(tmp_path: Path) -> None:
    mount = Mount("cgroup", "/", tmp_path, frozenset({"memory"}))
    h = Hierarchy(1, mount, tmp_path / "gone" / "pageheat")  # pageheat's own cgroup is missing
    with pytest.raises(CgroupError) as e:
        cgroups.create(h, "sleep")
    assert str(e.value) == f"cannot create a memory cgroup: {h.parent}: No such file or directory"
    assert not (tmp_path / "gone").exists()  # never created on the way


# -- the real memory hierarchy -----------------------------------------------------------------
@pytest.fixture
def hierarchy() -> Hierarchy:
    if os.geteuid() != 0:
        need_kernel("not root: cannot create memory cgroups")
    try:
        h = cgroups.detect()
    except CgroupError as e:
        need_kernel(str(e))
    if not h.parent.parent.is_dir():
        need_kernel(f"pageheat's own memory cgroup {h.parent.parent} is not mounted here")
    return h


@pytest.fixture
def made(hierarchy: Hierarchy) -> Iterator[list[cgroups.Cgroup]]:
    """Cgroups a test created; whatever the test left behind is removed afterwards."""
    out: list[cgroups.Cgroup] = []
    yield out
    for cg in out:
        if cg.path.exists():
            for pid in cgroups.pids(cg):
                os.kill(pid, 9)
        cgroups.remove(cg)  # also the shared pageheat/ directory, once empty


def memory_cgroup_of(pid: int, h: Hierarchy) -> str:
    own = cgroups.parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    return own["memory" if h.version == 1 else ""]


def open_files(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue  # closed while we looked (sleep reads its locale files at start)
    return out


@pytest.mark.kernel
def test_real_child_runs_in_a_new_memory_cgroup(hierarchy: Hierarchy, made: list) -> None:
    cg = cgroups.create(hierarchy, "sleep")
    made.append(cg)
    assert cg.path.is_dir() and cg.path.parent == hierarchy.parent
    assert cgroups.pids(cg) == []
    with cgroups.entering(cg) as enter:
        child = subprocess.Popen(["sleep", "30"], preexec_fn=enter)
    try:
        # Popen returned after exec: the command is in the cgroup from its first instruction.
        assert memory_cgroup_of(child.pid, hierarchy) == cg.name
        assert cg.name.endswith(f"/pageheat/sleep-{os.getpid()}")
        assert memory_cgroup_of(os.getpid(), hierarchy) != cg.name  # the parent did not move
        assert cgroups.pids(cg) == [child.pid]
        # The descriptor is O_CLOEXEC: the command does not hold cgroup.procs open.
        assert str(cg.procs) not in open_files(child.pid)
    finally:
        stop_process(child)
    assert cgroups.remove(cg)
    assert not cg.path.exists()


@pytest.mark.kernel
def test_remove_of_a_busy_cgroup_warns_and_keeps_it(hierarchy: Hierarchy, made: list,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    cg = cgroups.create(hierarchy, "busy")
    made.append(cg)
    with cgroups.entering(cg) as enter:
        child = subprocess.Popen(["sleep", "30"], preexec_fn=enter)
    try:
        with caplog.at_level(logging.WARNING, logger="pageheat"):
            assert cgroups.remove(cg, timeout=0.2) is False
        assert cg.path.is_dir()
        assert f"cannot remove memory cgroup {cg.path}" in caplog.text
        assert str(child.pid) in caplog.text
    finally:
        stop_process(child)
    assert cgroups.remove(cg)


@pytest.mark.kernel
def test_launched_stop_terminates_reaps_and_removes(hierarchy: Hierarchy, made: list) -> None:
    cg = cgroups.create(hierarchy, "sleep")
    made.append(cg)
    launched = launch.Launched(["sleep", "30"], cg)
    assert memory_cgroup_of(launched.pid, hierarchy) == cg.name
    start = time.monotonic()
    launched.stop()
    assert time.monotonic() - start < 1.5  # sleep dies on SIGTERM: no waiting for the grace
    assert launched.proc.returncode == -15
    assert not Path(f"/proc/{launched.pid}").exists()  # reaped, not a zombie
    assert not cg.path.exists()


@pytest.mark.kernel
def test_launched_stop_kills_a_command_that_ignores_sigterm(hierarchy: Hierarchy, made: list,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "STOP_GRACE_SECONDS", 0.3)
    cg = cgroups.create(hierarchy, "stubborn")
    made.append(cg)
    ready = tmp_path / "ready"
    code = ("import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)")
    launched = launch.Launched([sys.executable, "-c", code, str(ready)], cg)
    deadline = time.monotonic() + 10
    while not ready.exists():  # SIGTERM is ignored from here on
        assert time.monotonic() < deadline
        time.sleep(0.02)
    launched.stop()
    assert launched.proc.returncode == -9
    assert not cg.path.exists()


@pytest.mark.kernel
def test_launched_reaps_a_command_that_exits_and_removes_its_cgroup(hierarchy: Hierarchy,
                                                                    made: list) -> None:
    cg = cgroups.create(hierarchy, "true")
    made.append(cg)
    launched = launch.Launched(["true"], cg)
    deadline = time.monotonic() + 5
    while cg.path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert launched.proc.returncode == 0
    assert not cg.path.exists()  # removed by the reaper, while serve would still run
    launched.stop()  # nothing left to do, and it says so by returning at once
    assert launched.proc.returncode == 0


@pytest.mark.kernel
def test_launched_into_a_removed_cgroup_is_a_cgroup_error(hierarchy: Hierarchy, made: list) -> None:
    cg = cgroups.create(hierarchy, "gone")
    made.append(cg)
    cg.path.rmdir()
    with pytest.raises(CgroupError, match=f"cannot enter memory cgroup {cg.path}"):
        launch.Launched(["true"], cg)


@pytest.mark.kernel
def test_launched_when_the_child_cannot_enter_is_a_cgroup_error(hierarchy: Hierarchy, made: list,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The cgroup vanishes between opening cgroup.procs and the fork: the child's write fails
    # (ENODEV) and Popen raises instead of running the command outside the cgroup.
    real = cgroups.entering

    @contextmanager
    def entering_then_removed(cg: cgroups.Cgroup) -> Iterator:
        with real(cg) as enter:
            cg.path.rmdir()
            yield enter

    monkeypatch.setattr(cgroups, "entering", entering_then_removed)
    cg = cgroups.create(hierarchy, "late")
    made.append(cg)
    with pytest.raises(CgroupError) as e:
        launch.Launched(["touch", str(tmp_path / "never")], cg)
    assert str(e.value) == (f"cannot move touch into memory cgroup {cg.path}: "
                            "the child's write to cgroup.procs failed")
    assert not (tmp_path / "never").exists()  # the command never ran

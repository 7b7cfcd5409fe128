"""Helpers for the guest-side lab tests: workloads (also NUMA-bound or in a cgroup), the
snapshot command with an explicit source, the ground-truth checker, guest-only set-up (a real
file system for file-backed workloads, zram swap) and a results file the host renders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import conftest
from conftest import Truth, need_kernel, run_pageheat, stop_process

__all__ = ["Truth", "need_kernel", "stop_process"]

KERNEL = os.environ.get("PAGEHEAT_LAB_KERNEL_NAME", "host")
OUT = Path(os.environ.get("PAGEHEAT_LAB_OUT", "/tmp"))
# The sources this VM's kernel must run, best first (what --source auto must pick first); set
# per run by tests/lab/test_lab.py. A listed source that fails to load fails its tests.
SOURCES = os.environ.get("PAGEHEAT_LAB_SOURCES", "mglru-fexit,ptwalk").split(",")
# The sources test_accuracy checks (default: all of them); a run can narrow it to save time
# when another run already covers the rest on an equivalent kernel.
TRUTH_SOURCES = (os.environ.get("PAGEHEAT_LAB_TRUTH_SOURCES") or ",".join(SOURCES)).split(",")
MGLRU_SOURCES = [s for s in TRUTH_SOURCES if s.startswith("mglru")]


def start_workload(tmp: Path, *args: str, prefix: Sequence[str] = ()) -> Truth:
    # python + numpy start-up is slow under TCG
    return conftest.start_workload(tmp, *args, prefix=prefix)


def snapshot(t: Truth, source: str, scans: int = 3, aging: str = "1s",
             env: dict[str, str] | None = None) -> tuple[dict, dict[int, dict]]:
    """``pageheat snapshot --pages`` of the workload's region; pages keyed by page index."""
    r = run_pageheat("snapshot", "--source", source, "--pid", str(t.pid), "--aging", aging,
                     "--scans", str(scans), "--range", t.range_arg, "--pages", "--json",
                     timeout=300, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert snap["source"] == source and snap["scans"] == scans, snap
    return snap, {(int(p["addr"], 16) - t.start) // 4096: p for p in snap["pages"]}


def truth_errors(t: Truth, pages: dict[int, dict], scans: int) -> dict[str, int]:
    """Ground truth as in tests/test_ptwalk_accuracy.py, counted instead of asserted:
    hot pages must be accessed in every scan, cold ones never, every page reported."""
    m = conftest.scan_matrix(t, pages, scans)
    hot_i, cold_i = conftest.truth_sets(t, pages)
    return {"pages": t.pages, "hot": len(hot_i), "cold": len(cold_i),
            "not_reported": int((m < 0).any(axis=1).sum()),
            "hot_missed": int((m[hot_i] == 0).any(axis=1).sum()),
            "cold_accessed": int((m[cold_i] == 1).any(axis=1).sum())}


def record(test: str, source: str, result: str, **details: object) -> None:
    """Append one result line for docs/KERNELS.md (rendered on the host by tests/lab/report.py)."""
    line = {"kernel": KERNEL, "uname": os.uname().release, "test": test, "source": source,
            "result": result, **details}
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def sh(cmd: str) -> str:
    return subprocess.run(["sh", "-c", cmd], check=True, capture_output=True, text=True).stdout


def modprobe(module: str) -> None:
    """Load a module in the guest. The guest's /lib/modules lacks most of them and /var/cache
    is a tmpfs there, so tests/lab/test_lab.py stages the modules (with their dependencies,
    in load order) in a host /tmp dir, named by $PAGEHEAT_LAB_MODULES."""
    if Path(f"/sys/module/{module}").exists() or f"\t{module}\n" in \
            Path("/proc/filesystems").read_text():
        return  # built in (the patched lab kernel has no modules at all)
    if subprocess.run(["modprobe", "-q", module], capture_output=True).returncode == 0:
        return
    staged = os.environ.get("PAGEHEAT_LAB_MODULES")
    order = Path(staged or "/nonexistent") / f"{module}.order"
    if not order.exists():
        raise RuntimeError(f"cannot load module {module}: not staged ($PAGEHEAT_LAB_MODULES)")
    for ko in order.read_text().split():
        r = subprocess.run(["insmod", str(order.parent / ko)], capture_output=True, text=True)
        if r.returncode and "File exists" not in r.stderr:
            raise RuntimeError(f"insmod {ko}: {r.stderr.strip()}")


def file_fs(tmp: Path) -> Path:
    """A real (ext4) file system for file-backed workloads. In the VM /var/tmp and /tmp are
    overlays on tmpfs, whose pages are shmem, not file: a loop device gives real page cache."""
    for tool in ("mkfs.ext4", "losetup"):
        if shutil.which(tool) is None:
            need_kernel(f"{tool} not installed in the guest root (e2fsprogs, util-linux)")
    img, mnt = tmp / "fs.img", tmp / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "160M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    modprobe("loop")
    modprobe("ext4")  # a module on Debian kernels
    subprocess.run(["mount", "-t", "ext4", "-o", "loop", str(img), str(mnt)], check=True)
    return mnt


def zram_swap(size: str = "256M") -> None:
    """Swap on zram: with no swap MGLRU never ages anonymous memory on its own."""
    if Path("/proc/swaps").read_text().count("\n") > 1:
        return
    if not Path("/sys/block/zram0").exists():  # built in, it has no /sys/module/zram
        modprobe("zram")
    Path("/sys/block/zram0/disksize").write_text(size)
    subprocess.run(["mkswap", "/dev/zram0"], check=True, capture_output=True)
    subprocess.run(["swapon", "/dev/zram0"], check=True)


def make_cgroup(name: str) -> Path:
    root = Path("/sys/fs/cgroup")
    (root / "cgroup.subtree_control").write_text("+memory")
    cg = root / name
    cg.mkdir(exist_ok=True)
    return cg


def in_cgroup(cg: Path) -> list[str]:
    """A command prefix that joins cgroup ``cg`` before exec: its pages are charged there."""
    return ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh"]


def python() -> str:
    return sys.executable

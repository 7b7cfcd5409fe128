"""Shared by the bench scripts: the ground-truth workload (optionally in a cgroup of its own)
and running a script's guest half in a lab VM."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_cgroup(name: str) -> Path:
    """A cgroup v2 child of the root with the memory controller (inside a lab VM)."""
    root = Path("/sys/fs/cgroup")
    (root / "cgroup.subtree_control").write_text("+memory")
    cg = root / name
    cg.mkdir(exist_ok=True)
    return cg


def start_workload(tmp: Path, *args: str, cgroup: Path | None = None,
                   timeout: float = 180) -> tuple[subprocess.Popen, dict]:
    """``pageheat workload ARGS`` (joining ``cgroup`` before exec); its process and truth."""
    truth = tmp / f"truth-{time.monotonic_ns()}.json"
    prefix = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh"] if cgroup else []
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "pageheat", "workload",
                             "--truth", str(truth), *args])
    deadline = time.monotonic() + timeout
    while not truth.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("workload did not start")
        time.sleep(0.1)
    return proc, json.loads(truth.read_text())


def run_guest(script: str, args: list[str], shared: Path, kernel: str, memory: str,
              timeout: float) -> dict | None:
    """Boot ``kernel`` and run ``script --guest --out SHARED/result.json ARGS`` in it; the
    guest's JSON, or None (with the VM's output on stderr) when it failed."""
    sys.path.insert(0, str(ROOT))
    from lab.vm import run_in_vm

    result = shared / "result.json"
    cmd = [str(ROOT / ".venv/bin/python"), str(Path(script).resolve()), "--guest",
           "--out", str(result), *args]
    vm = run_in_vm(kernel, cmd, memory=memory, timeout=timeout, rwdirs=[shared], cwd=ROOT)
    if vm.returncode != 0 or not result.exists():
        print(vm.output[-6000:], file=sys.stderr)
        print(f"error: the guest run failed ({vm.returncode})", file=sys.stderr)
        return None
    return json.loads(result.read_text())

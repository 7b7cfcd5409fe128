"""Run a command inside a QEMU (TCG) guest booted from a lab kernel, via virtme-ng.

Why virtme-ng: it boots a kernel over *this* machine's filesystem (9p, read-only
plus copy-on-write overlays), so the project's venv, sources and pytest run in
the guest unchanged.  No KVM works here, so every VM costs ~10-20 s of boot:
run one VM per test module, not per test.

Typical use::

    from lab.vm import run_in_vm
    r = run_in_vm("deb-6.12", [sys.executable, "-m", "pytest", "-x", "tests/lab_guest/test_x.py"],
                  numa=["1G,cpus=0", "1G,cpus=1"])
    assert r.returncode == 0, r.stdout + r.stderr

What the guest sees:
  * root fs = host's, read-only; /tmp, /var, /etc, /home, /usr are per-VM
    overlays (writes vanish).  ``rwdirs`` and ``VmResult.outdir`` are shared
    read-write with the host.
  * the command runs as root in ``cwd`` (default: host cwd), through
    lab/guest-init.sh (mounts debugfs, tracefs, bpffs; enables MGLRU on 6.1),
  * env: PATH, VIRTUAL_ENV, PYTHONPATH, PAGEHEAT_*, LANG/LC_* from the host,
    plus ``env``, plus PAGEHEAT_LAB_GUEST=1, PAGEHEAT_LAB_KERNEL_NAME=<kernel>,
    PAGEHEAT_LAB_OUT=<outdir>.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab import kernels

LAB_DIR = Path(__file__).resolve().parent
GUEST_INIT = LAB_DIR / "guest-init.sh"
TIMEOUT_RC = 124  # like timeout(1)
# One host thread for all vCPUs. Guests under multi-threaded TCG died of an int3 that
# text_poke_bp (BPF trampolines, jump labels) puts in and takes out again, apparently still
# run by another vCPU; one hung on a page-table lock, which the same oops would leave held
# (README Pitfalls). Single-threaded TCG runs one vCPU at a time, so a code change is seen by
# the next one that runs.
TCG_ACCEL = "tcg,thread=single"
VNG_NO_STATUS_RC = 255  # vng: the guest gave no exit status
# Between the guest's stdout and its console in VmResult.tail().
CONSOLE_HEADER = "--- stderr (guest stderr and kernel console) ---\n"
# How the kernel's console begins a report of fatal trouble (lib/bug.c, kernel/panic.c,
# arch/x86/kernel/dumpstack.c, mm/oom_kill.c). "[#1]" is the first die() header on every
# version: 6.1 prints "int3: 0000 [#1] PREEMPT SMP", later ones "Oops: int3: 0000 [#1] ...".
KERNEL_REPORTS = ("Kernel panic", "BUG:", "Oops:", "[#1]", "kernel BUG at", "invalid opcode",
                  "Unable to handle kernel", "general protection fault", "Out of memory")

# Host variables the guest needs to find the same Python/venv and project knobs.
PASSTHROUGH_ENV = ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "HOME", "TERM")
PASSTHROUGH_PREFIXES = ("PAGEHEAT_",)


@dataclass(frozen=True)
class VmResult:
    """Outcome of one guest command; returncode is the guest command's own status."""

    returncode: int
    stdout: str
    stderr: str
    boot_seconds: float  # host wall time from starting vng to the guest command starting
    wall_seconds: float = 0.0  # whole run, including shutdown
    timed_out: bool = False
    kernel: str = ""
    outdir: Path | None = None  # host dir the guest could write ($PAGEHEAT_LAB_OUT); kept if keep_outdir

    @property
    def output(self) -> str:
        """stdout then stderr: handy for assertion messages."""
        return self.stdout + ("\n--- stderr ---\n" + self.stderr if self.stderr else "")

    @property
    def died(self) -> bool:
        """The guest ended without an exit status: the kernel panicked or QEMU died. vng
        returns 255 then (virtme/commands/run.py); a command's own status reaches us as is."""
        return self.returncode == VNG_NO_STATUS_RC and not self.timed_out

    def tail(self, chars: int = 6000) -> str:
        """The ends of both streams, for assertion messages: stderr carries the guest
        kernel's console, where a panic or an oops says why a guest died; the console is
        shown from the kernel's first such report, if any."""
        why = "the guest died without an exit status (kernel panic or QEMU exit); " \
              "its console is below\n" if self.died else ""
        err = self.stderr
        first = min((i for i in map(err.find, KERNEL_REPORTS) if i >= 0), default=-1)
        if first >= 0:  # the first report, and the end (a later panic line, the last words)
            err = err[err.rfind("\n", 0, first) + 1:]
            if len(err) > chars // 2:
                err = err[:chars // 4] + "\n[...]\n" + err[-chars // 4:]
        else:
            err = err[-chars // 2:]
        return f"{why}{self.stdout[-chars // 2:]}\n{CONSOLE_HEADER}{err}"


def vng_binary() -> str | None:
    """Path of ``vng`` (PyPI virtme-ng), also next to the running interpreter."""
    here = Path(sys.executable).parent / "vng"
    return shutil.which("vng") or (str(here) if here.exists() else None)


def guest_env(kernel: str, outdir: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
    """Environment for the guest command (virtme-ng itself passes none through)."""
    env = {k: v for k, v in os.environ.items() if k in PASSTHROUGH_ENV or k.startswith(PASSTHROUGH_PREFIXES)}
    # The host PATH replaces virtme's default; append the sbin dirs for depmod, bpftool, mount.
    env["PATH"] = env.get("PATH", "/usr/local/bin:/usr/bin:/bin") + ":/usr/local/sbin:/usr/sbin:/sbin"
    env.update(
        PAGEHEAT_LAB_GUEST="1",
        PAGEHEAT_LAB_KERNEL_NAME=kernel,
        PAGEHEAT_LAB_OUT=str(outdir),
        PYTHONDONTWRITEBYTECODE="1",  # the source tree is read-only in the guest
    )
    env.update(extra or {})
    return env


def _runner_script(cmd: Sequence[str], env: Mapping[str, str], cwd: str, outdir: Path) -> str:
    """Shell script the guest runs; kept in a file because the kernel cmdline is small."""
    lines = ["#!/bin/sh"]
    lines.append(f"touch {shlex.quote(str(outdir / '.started'))}")  # host mtime = guest start
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append(f"cd {shlex.quote(cwd)} || exit 125")
    lines.append("exec /bin/sh " + shlex.join([str(GUEST_INIT), *cmd]))
    return "\n".join(lines) + "\n"


def vng_command(
    vmlinuz: Path,
    script: Path,
    *,
    memory: str,
    cpus: int,
    numa: Sequence[str] | None,
    cwd: str,
    rwdirs: Sequence[str],
    append: Sequence[str] = (),
) -> list[str]:
    """The vng argv.  --user root: BPF needs it; --rwdir: guest-writable host dirs."""
    vng = vng_binary()
    if vng is None:
        raise FileNotFoundError("vng not found: pip install virtme-ng")
    # --verbose: the kernel console goes to stderr (vng otherwise boots "quiet loglevel=0"
    # and a guest that panics leaves no trace); ~35 kB per boot.
    argv = [vng, "-r", str(vmlinuz), "--disable-kvm", "--verbose", "--user", "root"]
    argv += ["--cpus", str(cpus), "--memory", memory, "--cwd", cwd]
    # "=": the value starts with "-". vng adds no accelerator of its own with --disable-kvm.
    argv += ["--qemu-opts=-accel", f"--qemu-opts={TCG_ACCEL}"]
    for node in numa or ():
        argv += ["--numa", node]
    for d in rwdirs:
        argv += ["--rwdir", str(d)]
    for a in append:
        argv += ["--append", a]
    return argv + ["--", f"/bin/sh {shlex.quote(str(script))}"]


def run_in_vm(
    kernel: str,
    cmd: Sequence[str],
    *,
    memory: str = "2G",
    cpus: int = 2,
    numa: Sequence[str] | None = None,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    rwdirs: Sequence[str | os.PathLike[str]] = (),
    append: Sequence[str] = (),
    keep_outdir: bool = False,
) -> VmResult:
    """Boot ``kernel`` (a lab.kernels name), run ``cmd`` as root, return its status and output.

    ``numa``: one ``MEM[,cpus=A[-B]]`` per node; their sizes must add up to ``memory``.
    ``timeout``: wall seconds for boot + command; on expiry the VM is killed and
    returncode is 124 with ``timed_out`` set.
    """
    k = kernels.get(kernel)
    workdir = str(Path(cwd).resolve() if cwd is not None else Path.cwd())
    outdir = Path(tempfile.mkdtemp(prefix="pageheat-lab-"))
    script = outdir / "run.sh"
    script.write_text(_runner_script(cmd, guest_env(kernel, outdir, env), workdir, outdir))
    argv = vng_command(
        k.vmlinuz,
        script,
        memory=memory,
        cpus=cpus,
        numa=numa,
        cwd=workdir,
        rwdirs=[str(outdir), *map(str, rwdirs)],
        append=append,
    )
    start = time.time()
    # Own session so a timeout can kill vng *and* its qemu child by process group.
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    wall = time.time() - start
    started = outdir / ".started"
    boot = started.stat().st_mtime - start if started.exists() else float("nan")
    result = VmResult(
        returncode=TIMEOUT_RC if timed_out else proc.returncode,
        stdout=stdout,
        stderr=stderr,
        boot_seconds=round(boot, 2),
        wall_seconds=round(wall, 2),
        timed_out=timed_out,
        kernel=kernel,
        outdir=outdir if keep_outdir else None,
    )
    if not keep_outdir:
        shutil.rmtree(outdir, ignore_errors=True)
    return result

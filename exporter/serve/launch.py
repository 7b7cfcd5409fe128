"""Launching the command of `serve -- CMD` and `top -- CMD`: start it (optionally inside a
memory cgroup of its own, entered before exec), reap it when it exits, stop it on the way out.

Shared by the daemon and `pageheat top`, so a launched command is started, reaped and stopped
one way.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import signal
import subprocess
import threading
from contextlib import nullcontext

from pageheat.kernel import cgroups

log = logging.getLogger("pageheat")
STOP_GRACE_SECONDS = 2.0  # between SIGTERM and SIGKILL for the command serve launched


def not_runnable(cmd: list[str]) -> str | None:
    """Why ``cmd`` cannot be launched (said the same by serve and top, before anything is
    started), or None."""
    if shutil.which(cmd[0]) is None:
        return f"cannot run {cmd[0]}: no such executable"
    return None


class Launched:
    """A command started by pageheat, optionally in a memory cgroup of its own.

    Whoever launched it follows its pid like any other target and keeps running when it exits.
    A reaper thread waits for it, so it never lingers as a zombie, and then removes its cgroup.
    With a cgroup, start it before starting threads: the cgroup is entered in a preexec_fn.
    stdio: None to inherit stdin, stdout and stderr; subprocess.DEVNULL (top, which owns the
    terminal) to detach them. Raises OSError when the command cannot be run, CgroupError when
    the child could not enter the cgroup.
    """

    def __init__(self, cmd: list[str], cgroup: cgroups.Cgroup | None = None, *,
                 stdio: int | None = None) -> None:
        self.cmd = cmd
        self.cgroup = cgroup
        enter = cgroups.entering(cgroup) if cgroup else nullcontext(None)
        with enter as preexec:
            try:
                self.proc = subprocess.Popen(cmd, preexec_fn=preexec, stdin=stdio, stdout=stdio,
                                             stderr=stdio)
            except subprocess.SubprocessError as e:  # the preexec_fn failed: the cgroup refused us
                where = cgroup.path if cgroup else "?"
                raise cgroups.CgroupError(f"cannot move {cmd[0]} into memory cgroup {where}: the "
                                          "child's write to cgroup.procs failed") from e
        self.pid = self.proc.pid
        where = f" in memory cgroup {cgroup.name}" if cgroup else ""
        log.info("launched pid %d%s: %s", self.pid, where, shlex.join(cmd))
        self._reaper = threading.Thread(target=self._reap, name="reaper", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        code = self.proc.wait()
        how = f"signal {-code}" if code < 0 else f"status {code}"
        log.info("launched pid %d exited with %s", self.pid, how)
        if self.cgroup:
            cgroups.remove(self.cgroup)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, SIGKILL after ``grace`` seconds (None: STOP_GRACE_SECONDS); returns once it
        is reaped and its cgroup is removed."""
        grace = STOP_GRACE_SECONDS if grace is None else grace
        if self.proc.returncode is None:  # set by the reaper once it has reaped the command
            self.proc.send_signal(signal.SIGTERM)  # a no-op if reaped meanwhile: Popen knows
            self._reaper.join(grace)
            if self.proc.returncode is None:
                log.warning("launched pid %d ignored SIGTERM for %gs: SIGKILL", self.pid, grace)
                self.proc.kill()
        self._reaper.join()

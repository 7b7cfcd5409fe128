"""Which Linux capabilities the process has, from /proc/self/status (no libcap needed)."""

from __future__ import annotations

from pathlib import Path

CAP_DAC_OVERRIDE = 1
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
NAMES = {CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE", CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
         CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_PERFMON: "CAP_PERFMON", CAP_BPF: "CAP_BPF"}

# ptwalk: CAP_BPF + CAP_PERFMON to load tracing programs that read kernel memory (and its
# task_vma iterator); CAP_SYS_PTRACE to read other users' /proc/PID/maps; CAP_DAC_OVERRIDE to
# write other users' /proc/PID/clear_refs (mode 0200, owner only). No CAP_SYS_ADMIN: the
# kernel's direct map is found through our own page tables in BPF (find_base in
# bpf/ptwalk.bpf.c), not from PFNs in /proc/self/pagemap. Kernels before 5.8 have no CAP_BPF
# and need CAP_SYS_ADMIN for any BPF; they also lack the task_vma iterator, so ptwalk does
# not run there anyway.
PTWALK = (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_OVERRIDE)
# What loading ptwalk needs. The other two are needed per target: without them pageheat
# follows the processes of its own user only, and says so for each other one
# (targets.check_access for a pid given explicitly, a once-logged warning for a selected one).
LOAD = (CAP_BPF, CAP_PERFMON)
# The mglru sources take their resident set from ptwalk's scan (no pagemap PFNs any more), but
# attach fexit/fmod_ret programs and write /sys/kernel/debug/lru_gen; CAP_SYS_ADMIN stays
# required until the lab shows which of those still need it.
MGLRU = (CAP_SYS_ADMIN, *PTWALK)
MGLRU_LOAD = (CAP_SYS_ADMIN, *LOAD)


def effective(status: Path = Path("/proc/self/status")) -> int:
    for line in status.read_bytes().split(b"\n"):  # bytes: Name: is the raw comm
        if line.startswith(b"CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing(required: tuple[int, ...], eff: int | None = None) -> list[str]:
    have = effective() if eff is None else eff
    return [NAMES[c] for c in required if not have >> c & 1]

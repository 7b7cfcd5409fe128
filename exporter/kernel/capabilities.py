"""Which Linux capabilities the process has, from /proc/self/status (no libcap needed)."""

from __future__ import annotations

from pathlib import Path

CAP_DAC_OVERRIDE = 1
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
# Every capability by number (include/uapi/linux/capability.h, up to CAP_CHECKPOINT_RESTORE).
ALL_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
NAMES = {c: ALL_NAMES[c] for c in (CAP_DAC_OVERRIDE, CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF)}

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


def effective(status: Path = Path("/proc/self/status"), field: bytes = b"CapEff:") -> int:
    """A capability set of a process as a bit mask (CapEff, or ``field``: CapPrm, ...); 0
    when the line is missing. Raises OSError when the file cannot be read."""
    for line in status.read_bytes().split(b"\n"):  # bytes: Name: is the raw comm
        if line.startswith(field):
            return int(line.split()[1], 16)
    return 0


def names(mask: int) -> list[str]:
    """Names of the capabilities in a bit mask (CAP_<number> for one this table lacks)."""
    return [ALL_NAMES[c] if c < len(ALL_NAMES) else f"CAP_{c}" for c in range(mask.bit_length())
            if mask >> c & 1]


def missing(required: tuple[int, ...], eff: int | None = None) -> list[str]:
    have = effective() if eff is None else eff
    return [NAMES[c] for c in required if not have >> c & 1]

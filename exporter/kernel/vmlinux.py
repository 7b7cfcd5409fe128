"""What the running kernel's BTF (/sys/kernel/btf/vmlinux) names: which functions and
tracepoints a BPF program may hook here, checked before a load."""

from __future__ import annotations

from pathlib import Path

BTF = Path("/sys/kernel/btf/vmlinux")


def kernel_functions(names: list[str], btf: Path = BTF) -> set[str]:
    """Which of ``names`` the kernel's BTF knows. A cheap check on the string table: libbpf
    would otherwise fail the load with a bare ESRCH. An unreadable BTF knows none."""
    try:
        data = btf.read_bytes()
    except OSError:
        return set()
    return {n for n in names if b"\0" + n.encode() + b"\0" in data}

"""`pageheat doctor`: for each source, can it run on this kernel, and if not, why not."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pageheat.kernel import capabilities, procfs
from pageheat.sources import IMPLEMENTED, NAMES
from pageheat.sources.base import SourceError

if TYPE_CHECKING:
    from pageheat.sources.mglru import YoungPagesSource


@dataclass
class Verdict:
    source: str
    ok: bool
    detail: str


def _mglru_state() -> str:
    enabled = Path("/sys/kernel/mm/lru_gen/enabled")
    if not enabled.exists():
        return "MGLRU not built into this kernel (CONFIG_LRU_GEN)"
    try:
        value = int(enabled.read_bytes().strip(), 16)
    except (OSError, ValueError) as e:
        return f"cannot read {enabled}: {e}"
    return "MGLRU enabled" if value else "MGLRU built in but disabled"


def check_ptwalk() -> Verdict:
    if platform.machine() != "x86_64":
        return Verdict("ptwalk", False, f"page-table layout not supported on {platform.machine()}")
    lacking = capabilities.missing(capabilities.LOAD)
    if lacking:
        return Verdict("ptwalk", False, f"missing {', '.join(lacking)} (run as root)")
    per_target = capabilities.missing(capabilities.PTWALK)
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return Verdict("ptwalk", False, "no kernel BTF (/sys/kernel/btf/vmlinux; CONFIG_DEBUG_INFO_BTF)")
    if not Path("/proc/self/clear_refs").exists():
        return Verdict("ptwalk", False, "no /proc/PID/clear_refs (CONFIG_PROC_PAGE_MONITOR)")
    from pageheat.sources.ptwalk import PtwalkSource

    try:
        src = PtwalkSource()
    except SourceError as e:
        return Verdict("ptwalk", False, str(e).removeprefix("ptwalk: "))
    levels = int(src._state["pgtable_levels"][0])
    src.close()
    only_own = (f"; without {', '.join(per_target)}: only processes it may read and age without "
                "them (its own user's)") if per_target else ""
    return Verdict("ptwalk", True,
                   f"BTF, task_vma iterator, clear_refs, {levels}-level page tables{only_own}")


def _check_young_source(name: str, why: str | None, open_source: Callable[[], YoungPagesSource],
                        works: str) -> Verdict:
    """An mglru source: ``why`` it cannot run if known up front; otherwise load and attach its
    programs for real, since only that shows what this kernel allows."""
    if why:
        return Verdict(name, False, why)
    try:
        src = open_source()
    except SourceError as e:
        return Verdict(name, False, str(e).removeprefix(f"{name}: "))
    mode, flush = src.aging, "TLB flush" if src.tlb_flush else "no TLB flush"
    src.close()
    return Verdict(name, True, works.format(mode=mode, flush=flush))


def check_mglru_fexit(**settings: str) -> Verdict:
    """``settings``: the Config's ``aging`` (mglru_aging) and ``tlb_flush`` for the source."""
    from pageheat.kernel import lrugen
    from pageheat.sources.mglru_fexit import NAME, MglruFexitSource

    return _check_young_source(NAME, lrugen.mglru_state(), partial(MglruFexitSource, **settings),
                               "MGLRU enabled, fexit attached, {mode} aging via "
                               f"{lrugen.LRU_GEN}, {{flush}}")


def check_mglru_hook(**settings: str) -> Verdict:
    from pageheat.kernel import lrugen
    from pageheat.sources.mglru_hook import NAME, MglruHookSource, kernel_support

    return _check_young_source(NAME, kernel_support() or lrugen.mglru_state(),
                               partial(MglruHookSource, **settings),
                               "kernel-patch/ tracepoints attached, {mode} aging via "
                               "bpf_lru_gen_run_aging() walking only the targets, {flush}")


def verdicts(**settings: str) -> list[Verdict]:
    """In --source auto's order of preference; ``settings`` as for check_mglru_fexit."""
    out = [check_mglru_hook(**settings), check_mglru_fexit(**settings), check_ptwalk()]
    mglru = _mglru_state()
    for name in NAMES:
        if name not in IMPLEMENTED:
            extra = f" ({mglru})" if name.startswith("mglru") else ""
            out.append(Verdict(name, False, f"not implemented yet{extra}"))
    return out


def run(as_json: bool = False, **settings: str) -> int:
    """Exit 1 when no source can run, or when pageheat is not in the host PID namespace (then
    every source would load, and follow nothing: see procfs.pid_namespace_problem)."""
    vs = verdicts(**settings)
    usable = [v.source for v in vs if v.ok]
    namespace = procfs.pid_namespace_problem()
    if as_json:
        json.dump({"kernel": platform.release(), "sources": [asdict(v) for v in vs],
                   "auto": usable[0] if usable and not namespace else None,
                   "pid_namespace": {"ok": namespace is None, "detail": namespace or "host"}},
                  sys.stdout)
        print()
    else:
        print(f"pageheat doctor: kernel {platform.release()} ({platform.machine()})")
        for v in vs:
            print(f"  {v.source:<12} {'yes' if v.ok else 'no ':<4} {v.detail}")
        if namespace:
            print(f"--source auto picks: nothing: {namespace}")
        else:
            print(f"--source auto picks: {usable[0] if usable else 'nothing: no source can run'}")
    return 0 if usable and not namespace else 1

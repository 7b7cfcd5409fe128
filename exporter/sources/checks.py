"""``pageheat doctor``'s check of each source: can it run on this kernel, and if not, why not.

Each check loads (and for the mglru sources attaches) the source for real, since only that
shows what this kernel allows, then closes it. The registry (``pageheat.sources.SOURCES``)
names one check per source; ``commands/doctor.py`` prints them.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pageheat.kernel import capabilities, vmlinux
from pageheat.sources import DEFAULT_OPTIONS, SourceOptions
from pageheat.sources.base import SourceError

if TYPE_CHECKING:
    from pageheat.sources.mglru import YoungPagesSource


@dataclass
class Verdict:
    source: str
    ok: bool
    detail: str


def check_ptwalk(options: SourceOptions = DEFAULT_OPTIONS) -> Verdict:
    if platform.machine() != "x86_64":
        return Verdict("ptwalk", False, f"page-table layout not supported on {platform.machine()}")
    lacking = capabilities.missing(capabilities.LOAD)
    if lacking:
        return Verdict("ptwalk", False, f"missing {', '.join(lacking)} (run as root)")
    per_target = capabilities.missing(capabilities.PTWALK)
    if not vmlinux.BTF.exists():
        return Verdict("ptwalk", False, "no kernel BTF (/sys/kernel/btf/vmlinux; CONFIG_DEBUG_INFO_BTF)")
    if not Path("/proc/self/clear_refs").exists():
        return Verdict("ptwalk", False, "no /proc/PID/clear_refs (CONFIG_PROC_PAGE_MONITOR)")
    from pageheat.sources.ptwalk import PtwalkSource

    try:
        src = PtwalkSource(bpf_dir=options.bpf_dir)
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


def _settings(options: SourceOptions) -> dict:
    return {"aging": options.mglru_aging, "tlb_flush": options.tlb_flush, "bpf_dir": options.bpf_dir}


def check_mglru_fexit(options: SourceOptions = DEFAULT_OPTIONS) -> Verdict:
    from pageheat.kernel import lrugen
    from pageheat.sources.mglru_fexit import NAME, MglruFexitSource

    return _check_young_source(NAME, lrugen.mglru_state(),
                               partial(MglruFexitSource, **_settings(options)),
                               "MGLRU enabled, fexit attached, {mode} aging via "
                               f"{lrugen.LRU_GEN}, {{flush}}")


def check_mglru_hook(options: SourceOptions = DEFAULT_OPTIONS) -> Verdict:
    from pageheat.kernel import lrugen
    from pageheat.sources.mglru_hook import NAME, MglruHookSource, kernel_support

    return _check_young_source(NAME, kernel_support() or lrugen.mglru_state(),
                               partial(MglruHookSource, **_settings(options)),
                               "kernel-patch/ tracepoints attached, {mode} aging via "
                               "bpf_lru_gen_run_aging() walking only the targets, {flush}")

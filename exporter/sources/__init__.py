"""Harvesting sources: one module per source, all with the interface in ``base``.

This module is the one registry of sources: ``SOURCES`` maps each name to how it is opened,
how ``pageheat doctor`` checks it, and the capabilities loading it needs. The CLI's
``--source`` choices, ``Config.source`` and doctor all read it, so a new source is one entry
here. It also holds the sources' options (``SourceOptions``), parsed once by ``config``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from pageheat.kernel import capabilities
from pageheat.sources.base import Source, SourceError

if TYPE_CHECKING:
    from pageheat.sources.checks import Verdict

log = logging.getLogger(__name__)


class TlbFlush(StrEnum):
    """The TLB flush after each aging (docs/ACCURACY.md), shared by every source."""

    AUTO = "auto"  # only where the kernel tracks no soft-dirty bits
    ALWAYS = "always"  # also resets soft-dirty bits: fine in a test VM, not next to CRIU
    NEVER = "never"

    def wanted(self, soft_dirty_tracking: Callable[[], bool]) -> bool:
        """Whether to flush. The flush is ``clear_refs`` 4, which also clears the soft-dirty
        bits (fs/proc/task_mmu.c, clear_refs_write), so ``auto`` flushes only where
        ``soft_dirty_tracking()`` (called only for auto) says the kernel keeps none."""
        return self is TlbFlush.ALWAYS or (self is TlbFlush.AUTO and not soft_dirty_tracking())


class MglruAging(StrEnum):
    """The mglru sources: request agings (active) or only watch the kernel's own (passive)."""

    ACTIVE = "active"
    PASSIVE = "passive"


@dataclass(frozen=True)
class SourceOptions:
    """What a source is opened with, from the Config (``tlb_flush``, ``mglru_aging``,
    ``bpf_dir``). ``pfns``: ptwalk also reads each page's frame number (Pages.pfn), for
    per-cgroup numbers that count a shared page once; the mglru sources ignore it.
    ``lazy_pages``: ptwalk hands out its harvests' pages as per-table bitmaps that the reader
    decodes a chunk at a time (pagetable.TablePages), for the daemon, whose aggregator never
    needs every page at once, and snapshot, whose per-mapping counts are table popcounts;
    its harvest_seconds then leave the decode out."""

    tlb_flush: TlbFlush = TlbFlush.AUTO
    mglru_aging: MglruAging = MglruAging.ACTIVE
    pfns: bool = False
    bpf_dir: Path | None = None  # None: the package's own bpf/ folder
    lazy_pages: bool = False


DEFAULT_OPTIONS = SourceOptions()


@dataclass(frozen=True)
class SourceInfo:
    """One registered source. ``open`` and ``check`` import the source's module only when
    called (loading libbpf and numpy-heavy modules is not free for `--help`)."""

    name: str
    open: Callable[[SourceOptions], Source]  # raises SourceError
    check: Callable[[SourceOptions], Verdict]  # never raises: why not, as a Verdict
    capabilities: tuple[int, ...]  # needed to load it (kernel.capabilities)
    preference: int  # --source auto tries the lowest first


def _open_ptwalk(o: SourceOptions) -> Source:
    from pageheat.sources.ptwalk import PtwalkSource

    _need_capabilities("ptwalk")
    return PtwalkSource(tlb_flush=o.tlb_flush, pfns=o.pfns, bpf_dir=o.bpf_dir, lazy_pages=o.lazy_pages)


def _open_mglru_fexit(o: SourceOptions) -> Source:
    from pageheat.sources.mglru_fexit import MglruFexitSource

    _need_capabilities("mglru-fexit")
    return MglruFexitSource(aging=o.mglru_aging, tlb_flush=o.tlb_flush, bpf_dir=o.bpf_dir)


def _open_mglru_hook(o: SourceOptions) -> Source:
    from pageheat.sources.mglru_hook import MglruHookSource

    _need_capabilities("mglru-hook")
    return MglruHookSource(aging=o.mglru_aging, tlb_flush=o.tlb_flush, bpf_dir=o.bpf_dir)


def _check(function: str) -> Callable[[SourceOptions], Verdict]:
    """``pageheat.sources.checks.<function>``, imported when called (it imports this module)."""
    def check(o: SourceOptions) -> Verdict:
        from pageheat.sources import checks

        return getattr(checks, function)(o)

    return check


# In the order the CLI, the Config and the README list them. --source auto prefers the mglru
# sources where MGLRU runs, since they read the kernel's own aging: mglru-hook (kernel-patch/'s
# tracepoints, an aging that walks only the targets) over mglru-fexit (stock kernels with
# fexit); ptwalk, which runs almost anywhere, is the fallback.
SOURCES: dict[str, SourceInfo] = {s.name: s for s in (
    SourceInfo("ptwalk", _open_ptwalk, _check("check_ptwalk"), capabilities.LOAD, preference=2),
    SourceInfo("mglru-fexit", _open_mglru_fexit, _check("check_mglru_fexit"), capabilities.MGLRU_LOAD,
               preference=1),
    SourceInfo("mglru-hook", _open_mglru_hook, _check("check_mglru_hook"), capabilities.MGLRU_LOAD,
               preference=0),
)}
NAMES = tuple(SOURCES)
AUTO_ORDER = tuple(sorted(SOURCES, key=lambda n: SOURCES[n].preference))
# Named in README.md's table of sources but not written: doctor says so.
PLANNED = ("damon",)


def _need_capabilities(name: str) -> None:
    lacking = capabilities.missing(SOURCES[name].capabilities)
    if lacking:
        raise SourceError(f"{name} needs {', '.join(lacking)} (run as root or grant them)")


def open_source(name: str, options: SourceOptions = DEFAULT_OPTIONS) -> Source:
    """Load the named source (``auto``: the best one this kernel supports) with the Config's
    options (Config.source_options). Raises SourceError."""
    if name == "auto":
        why = []
        *preferred, fallback = AUTO_ORDER
        for first in preferred:
            try:
                return SOURCES[first].open(options)
            except SourceError as e:
                why.append(str(e))
        # Said only once the fallback has opened: if it fails too, its error stays the one line.
        source = SOURCES[fallback].open(options)
        log.info("source auto: %s, because %s", fallback, "; ".join(why))
        return source
    if name not in SOURCES:
        raise SourceError(f"source {name} is not implemented yet; use --source ptwalk")
    return SOURCES[name].open(options)

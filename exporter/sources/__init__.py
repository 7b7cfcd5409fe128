"""Harvesting sources: one module per source, all with the interface in ``base``."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pageheat.sources.base import Source, SourceError

NAMES = ("ptwalk", "mglru-fexit", "mglru-hook", "damon")
IMPLEMENTED = ("ptwalk", "mglru-fexit", "mglru-hook")

log = logging.getLogger(__name__)


def open_source(name: str, tlb_flush: str = "auto", mglru_aging: str = "active",
                pfns: bool = False) -> Source:
    """Load the named source (``auto``: the best one this kernel supports), with the TLB flush
    policy and the mglru sources' aging mode from the Config; ``pfns``: ptwalk also reads each
    page's frame number (Pages.pfn), for per-cgroup numbers that count a shared page once.
    Raises SourceError."""
    from pageheat.kernel import capabilities

    if name == "auto":
        # The mglru sources read the kernel's own aging, so they are preferred where MGLRU
        # runs: mglru-hook (kernel-patch/'s tracepoints, an aging that walks only the targets)
        # over mglru-fexit (stock kernels with fexit). Anything else falls back to ptwalk, and
        # the log says why.
        why = []
        for opener in (_open_mglru_hook, _open_mglru_fexit):
            try:
                return opener(tlb_flush, mglru_aging)
            except SourceError as e:
                why.append(str(e))
        # Said only once ptwalk has opened: if it fails too, its error stays the one line.
        source = open_source("ptwalk", tlb_flush, mglru_aging, pfns)
        log.info("source auto: ptwalk, because %s", "; ".join(why))
        return source
    if name not in IMPLEMENTED:
        raise SourceError(f"source {name} is not implemented yet; use --source ptwalk")
    if name == "mglru-fexit":
        return _open_mglru_fexit(tlb_flush, mglru_aging)
    if name == "mglru-hook":
        return _open_mglru_hook(tlb_flush, mglru_aging)
    lacking = capabilities.missing(capabilities.LOAD)
    if lacking:
        raise SourceError(f"ptwalk needs {', '.join(lacking)} (run as root or grant them)")
    from pageheat.sources.ptwalk import PtwalkSource

    # The TLB flush policy shared by the sources (see docs/ACCURACY.md), from the Config.
    return PtwalkSource(tlb_flush=tlb_flush, pfns=pfns)


def _open_mglru_fexit(tlb_flush: str, mglru_aging: str) -> Source:
    from pageheat.sources.mglru_fexit import MglruFexitSource

    return _open_mglru("mglru-fexit", lambda: MglruFexitSource(aging=mglru_aging, tlb_flush=tlb_flush))


def _open_mglru_hook(tlb_flush: str, mglru_aging: str) -> Source:
    from pageheat.sources.mglru_hook import MglruHookSource

    return _open_mglru("mglru-hook", lambda: MglruHookSource(aging=mglru_aging, tlb_flush=tlb_flush))


def _open_mglru(name: str, cls: Callable[[], Source]) -> Source:
    from pageheat.kernel import capabilities

    lacking = capabilities.missing(capabilities.MGLRU_LOAD)  # see capabilities.MGLRU
    if lacking:
        raise SourceError(f"{name} needs {', '.join(lacking)} (run as root or grant them)")
    return cls()

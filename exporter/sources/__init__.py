"""Harvesting sources: one module per source, all with the interface in ``base``."""

from __future__ import annotations

import logging
import os

from .base import Source, SourceError

NAMES = ("ptwalk", "mglru-fexit", "mglru-hook", "damon")
IMPLEMENTED = ("ptwalk", "mglru-fexit")

log = logging.getLogger(__name__)


def open_source(name: str) -> Source:
    """Load the named source (``auto``: the best one this kernel supports). Raises SourceError."""
    from .. import capabilities

    if name == "auto":
        # mglru-fexit reads the kernel's own aging, so it is preferred where MGLRU runs and
        # fexit attaches; anything else falls back to ptwalk, and the log says why.
        try:
            return _open_mglru_fexit()
        except SourceError as e:
            why = e
        # Said only once ptwalk has opened: if it fails too, its error stays the one line.
        source = open_source("ptwalk")
        log.info("source auto: ptwalk, because %s", why)
        return source
    if name not in IMPLEMENTED:
        raise SourceError(f"source {name} is not implemented yet; use --source ptwalk")
    if name == "mglru-fexit":
        return _open_mglru_fexit()
    lacking = capabilities.missing(capabilities.PTWALK)
    if lacking:
        raise SourceError(f"ptwalk needs {', '.join(lacking)} (run as root or grant them)")
    from .ptwalk import PtwalkSource

    # Read here, once: the TLB flush policy shared by the sources (see docs/ACCURACY.md).
    return PtwalkSource(tlb_flush=os.environ.get("PAGEHEAT_TLB_FLUSH", "auto").lower())


def _open_mglru_fexit() -> Source:
    from .. import capabilities
    from .mglru_fexit import MglruFexitSource

    lacking = capabilities.missing(capabilities.PTWALK)  # the same: BPF, pagemap PFNs, /proc
    if lacking:
        raise SourceError(f"mglru-fexit needs {', '.join(lacking)} (run as root or grant them)")
    return MglruFexitSource()

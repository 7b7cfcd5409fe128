"""Harvesting sources: one module per source, all with the interface in ``base``."""

from __future__ import annotations

from .base import Source, SourceError

NAMES = ("ptwalk", "mglru-fexit", "mglru-hook", "damon")
IMPLEMENTED = ("ptwalk",)


def open_source(name: str) -> Source:
    """Load the named source (``auto``: the best one this kernel supports). Raises SourceError."""
    from .. import capabilities

    if name == "auto":
        name = "ptwalk"  # the MGLRU sources, once implemented, are preferred where they run
    if name not in IMPLEMENTED:
        raise SourceError(f"source {name} is not implemented yet; use --source ptwalk")
    lacking = capabilities.missing(capabilities.PTWALK)
    if lacking:
        raise SourceError(f"ptwalk needs {', '.join(lacking)} (run as root or grant them)")
    from .ptwalk import PtwalkSource

    return PtwalkSource()

"""What pageheat_build_info says about the build: version, revision, Python version."""

from __future__ import annotations

import functools
import platform
import re
import subprocess
from pathlib import Path

from pageheat import __version__

_HERE = Path(__file__).resolve().parent
# Written when a wheel or an image is built from a checkout (`git rev-parse HEAD >
# exporter/REVISION`) and shipped as package data; absent in a plain checkout.
REVISION_FILE = _HERE / "REVISION"


@functools.cache
def revision() -> str:
    """The git commit pageheat was built from: the REVISION file if the build wrote one, else
    the commit of the checkout it runs from, else "unknown". Computed once per process."""
    try:
        text = REVISION_FILE.read_text().strip()
    except OSError:
        text = ""
    if not text and (_HERE.parent / ".git").exists():
        try:
            text = subprocess.run(["git", "-C", str(_HERE.parent), "rev-parse", "HEAD"],
                                  capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            text = ""
    return text if re.fullmatch(r"[0-9a-f]{7,64}", text) else "unknown"


def labels(source: str) -> dict[str, str]:
    """The labels of pageheat_build_info (public API: add, never rename)."""
    return {"version": __version__, "revision": revision(), "source": source,
            "kernel": platform.release(), "python_version": platform.python_version()}

"""Where the compiled BPF objects are: built by bpf/build.sh into the package's bpf/ folder."""

from __future__ import annotations

import os
from pathlib import Path

from pageheat.sources.base import SourceError

_HERE = Path(__file__).resolve().parent.parent / "bpf"  # pageheat/bpf/


def object_path(name: str) -> Path:
    """Path of ``NAME.bpf.o``; $PAGEHEAT_BPF_DIR overrides the package's own folder."""
    folder = Path(os.environ.get("PAGEHEAT_BPF_DIR", _HERE))
    path = folder / f"{name}.bpf.o"
    if not path.is_file():
        raise SourceError(f"{path} is missing: build the BPF objects with bpf/build.sh")
    return path

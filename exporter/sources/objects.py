"""Where the compiled BPF objects are: built by bpf/build.sh into the package's bpf/ folder."""

from __future__ import annotations

from pathlib import Path

from pageheat.sources.base import SourceError

_HERE = Path(__file__).resolve().parent.parent / "bpf"  # pageheat/bpf/


def object_path(name: str, folder: Path | None = None) -> Path:
    """Path of ``NAME.bpf.o`` in ``folder`` (the Config's bpf_dir, PAGEHEAT_BPF_DIR), by
    default the package's own bpf/ folder. Raises SourceError when it is missing."""
    path = (folder or _HERE) / f"{name}.bpf.o"
    if not path.is_file():
        raise SourceError(f"{path} is missing: build the BPF objects with bpf/build.sh")
    return path

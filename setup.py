"""Build hook: every wheel carries the compiled BPF objects (``pageheat/bpf/*.bpf.o``), so that a
host installing it needs no clang. The metadata is in pyproject.toml; this file only adds the
hook to ``build_py`` (which both ``pip wheel .`` and ``python -m build`` run).

In a checkout (bpf/ present) the objects must exist and be newer than every file in bpf/: if
they are not, they are built with bpf/build.sh when clang, llvm-strip and bpftool are on PATH,
and the build fails with one line saying what to do when they are not. From an sdist (no bpf/)
the objects that came with it are used, and their absence fails the build the same way.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BPF_SRC = ROOT / "bpf"
BPF_OUT = ROOT / "exporter" / "bpf"  # the package's bpf/ folder, where sources/objects.py looks
TOOLS = ("clang", "llvm-strip", "bpftool")


def stale_objects() -> list[Path]:
    """Objects that are missing or older than a file they are built from (sources, headers,
    the build script)."""
    sources = sorted(BPF_SRC.glob("*.bpf.c"))
    if not sources:  # an sdist: no sources, the objects are what it shipped
        return [] if any(BPF_OUT.glob("*.bpf.o")) else [BPF_OUT / "*.bpf.o"]
    inputs = [p for p in BPF_SRC.iterdir() if p.is_file()]
    newest = max(p.stat().st_mtime for p in inputs)
    objects = [BPF_OUT / f"{s.name.removesuffix('.c')}.o" for s in sources]
    return [o for o in objects if not o.is_file() or o.stat().st_mtime < newest]


def ensure_bpf_objects() -> None:
    stale = stale_objects()
    if not stale:
        return
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing or not BPF_SRC.is_dir():
        names = ", ".join(o.name for o in stale)
        raise SystemExit(f"pageheat: BPF objects missing or out of date ({names}) and "
                         f"{', '.join(missing) or 'bpf/'} not found: run `bash bpf/build.sh` "
                         "on a machine with clang, llvm and bpftool, then build again")
    subprocess.run(["bash", str(BPF_SRC / "build.sh"), str(BPF_OUT)], check=True)


class BuildPyWithBpf(build_py):
    def run(self) -> None:
        ensure_bpf_objects()
        super().run()


setup(cmdclass={"build_py": BuildPyWithBpf})

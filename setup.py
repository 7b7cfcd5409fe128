"""Build hook: every wheel carries the compiled BPF objects (``pageheat/bpf/*.bpf.o``), so that a
host installing it needs no clang. The metadata is in pyproject.toml; this file only adds the
hook to ``build_py`` (which both ``pip wheel .`` and ``python -m build`` run).

In a checkout (bpf/ present) the objects must exist and be newer than every file in bpf/: if
they are not, they are built with bpf/build.sh when clang, llvm-strip and bpftool are on PATH,
and the build fails with one line saying what to do when they are not. From an sdist (no bpf/)
the objects that came with it are used, and their absence fails the build the same way.

Both hooks also record the git commit the package is built from, for the ``revision`` label of
``pageheat_build_info`` (exporter/buildinfo.py): ``build_py`` writes ``pageheat/REVISION`` into
the build directory (never into the source tree), ``sdist`` writes ``exporter/REVISION`` into the
release tree, so a wheel built from that sdist (``python -m build``) carries it as package data.
Outside a git checkout, or without git, there is no REVISION file and no error: the label says
"unknown".
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

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


def git_revision() -> str | None:
    """HEAD of the checkout this file is in, or None when it is not one (an unpacked sdist,
    which must not pick up the commit of a repository it happens to sit in) or git fails."""
    if not (ROOT / ".git").exists():  # a directory, or a file in a worktree
        return None
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = r.stdout.strip()
    return rev if r.returncode == 0 and rev else None


class BuildPyWithBpf(build_py):
    def run(self) -> None:
        ensure_bpf_objects()
        super().run()
        out = Path(self.build_lib) / "pageheat" / "REVISION"
        rev = git_revision()
        if rev is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(rev + "\n")
        elif not (ROOT / "exporter" / "REVISION").is_file():
            out.unlink(missing_ok=True)  # left by an earlier build in the same build directory


class SdistWithRevision(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        rev = git_revision()
        if rev is not None:
            out = Path(base_dir) / "exporter" / "REVISION"
            out.unlink(missing_ok=True)  # the tree's files may be hard links to the checkout's
            out.write_text(rev + "\n")


setup(cmdclass={"build_py": BuildPyWithBpf, "sdist": SdistWithRevision})

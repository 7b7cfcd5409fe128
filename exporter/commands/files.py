"""Writing a file the user named, whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def replace_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a new temporary file in its folder, renamed over it at the end:
    a reader never sees half a file, a failure leaves ``path`` as it was (and no temporary
    file), and no other file is touched. A symbolic link is written through, to its target.
    The file gets the mode of the one it replaces, or what open() would have made. Raises
    OSError (IsADirectoryError for a directory)."""
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise IsADirectoryError(21, os.strerror(21), str(path))
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    """This process's umask (from /proc: setting it to read it would race with threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022

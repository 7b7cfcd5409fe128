"""The kernel series still applies to Debian's 6.12 source and the touched objects compile
(kernel-patch/check.sh: checkpatch --strict, apply, build mm/vmscan.o and friends)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_series_applies_and_compiles() -> None:
    r = subprocess.run(["bash", str(ROOT / "kernel-patch/check.sh")], capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "check passed" in r.stdout + r.stderr

"""pageheat_build_info's labels: the revision comes from the build or the checkout."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import pytest
from pageheat import __version__, buildinfo

ROOT = Path(__file__).resolve().parent.parent


def test_labels_add_revision_and_python_version_to_the_old_ones() -> None:
    labels = buildinfo.labels("ptwalk")
    assert {"version", "source", "kernel"} <= set(labels)  # the old labels stay (public API)
    assert labels["version"] == __version__ and labels["source"] == "ptwalk"
    assert labels["kernel"] == platform.release()
    assert labels["python_version"] == platform.python_version()


def test_revision_of_a_checkout_is_its_head_commit() -> None:
    if buildinfo.REVISION_FILE.exists():
        pytest.fail(f"{buildinfo.REVISION_FILE} is a build product; a checkout has none")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    buildinfo.revision.cache_clear()
    assert buildinfo.revision() == head


def test_revision_file_wins_and_garbage_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "REVISION"
    monkeypatch.setattr(buildinfo, "REVISION_FILE", f)
    f.write_text("0123456789abcdef0123456789abcdef01234567\n")
    buildinfo.revision.cache_clear()
    assert buildinfo.revision() == "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(buildinfo, "_HERE", tmp_path / "pkg")  # not in a checkout
    f.write_text("not a commit\n")
    buildinfo.revision.cache_clear()
    assert buildinfo.revision() == "unknown"
    buildinfo.revision.cache_clear()

"""Ground truth: `pageheat snapshot --pages` against a workload whose every page is known.

Hot pages are read every 10 ms, so they must be accessed in every scan; cold pages are never
touched after populating, so they must never be. Zero errors are allowed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import Truth, need_kernel, run_pageheat, scan_matrix, truth_sets

pytestmark = pytest.mark.kernel


def snapshot_pages(t: Truth, scans: int = 4, aging: str = "500ms") -> tuple[dict, dict[int, dict]]:
    r = run_pageheat("snapshot", "--pid", str(t.pid), "--aging", aging, "--scans", str(scans),
                     "--range", t.range_arg, "--pages", "--json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    pages = {(int(p["addr"], 16) - t.start) // 4096: p for p in snap["pages"]}
    return snap, pages


def check_truth(t: Truth, pages: dict[int, dict], scans: int) -> tuple[np.ndarray, np.ndarray]:
    m = scan_matrix(t, pages, scans)
    assert (m >= 0).all(), f"{int((m < 0).any(axis=1).sum())} resident pages not reported"
    hot, cold = truth_sets(t, pages)
    missed = hot[(m[hot] == 0).any(axis=1)]
    false_hot = cold[(m[cold] == 1).any(axis=1)]
    assert len(missed) == 0, f"{len(missed)} hot pages not seen accessed, e.g. {missed[:5]}"
    assert len(false_hot) == 0, f"{len(false_hot)} cold pages seen accessed, e.g. {false_hot[:5]}"
    return hot, cold


@pytest.mark.parametrize("backing", ["anon", "file", "shmem"])
def test_hot_always_cold_never(ptwalk_ok, workload, backing: str, tmp_path: Path) -> None:
    t = workload("--backing", backing, "--dir", str(tmp_path))
    snap, pages = snapshot_pages(t)
    assert snap["source"] == "ptwalk" and snap["scans"] == 4
    hot, cold = check_truth(t, pages, 4)
    assert len(cold) == len(t.cold)  # 4 KiB mappings: the truth is per page
    assert {p["type"] for p in pages.values()} == {backing}
    assert not any(p["thp"] for p in pages.values())
    region = [v for v in snap["vmas"] if int(v["start"], 16) <= t.start < int(v["end"], 16)]
    assert region and region[0]["kind"] == backing
    # The per-VMA counts agree with the pages: every scan saw the whole hot set in the region.
    assert all(a >= len(t.hot) for a in region[0]["accessed"])


def test_thp_truth_is_per_huge_page(ptwalk_ok, workload) -> None:
    enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not enabled.exists() or "[never]" in enabled.read_text():
        need_kernel("transparent huge pages are disabled")
    # A contiguous hot band and no warm set, so some huge pages hold no hot byte at all.
    t = workload("--thp", "--layout", "contiguous", "--warm", "0")
    snap, pages = snapshot_pages(t)
    thp = np.array([pages.get(i, {}).get("thp", False) for i in range(t.pages)])
    assert thp.mean() > 0.5, "THP did not back the region (no huge pages available?)"
    hot, cold = check_truth(t, pages, 4)
    assert len(cold) > t.pages // 4 and len(hot) > len(t.hot)


def test_snapshot_counts_only_after_start(ptwalk_ok, workload) -> None:
    """Pages written while populating (before the command) are not counted in scan 1."""
    t = workload("--size", "32MiB")
    snap, pages = snapshot_pages(t, scans=1)
    check_truth(t, pages, 1)
    assert snap["harvest_ms"][0] > 0 and snap["aging_cost_ms"][0] > 0

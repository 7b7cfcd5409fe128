"""NUMA in a 2-node lab VM: half the workload memory bound to node 0, half to node 1
(two workloads under ``numactl --membind``); every page's node must be right, for both
sources (guestlib.SOURCES), and the mglru sources' per-node aging must still meet the
ground truth."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .guestlib import SOURCES, need_kernel, record, snapshot, start_workload, stop_process, truth_errors

SIZE = "32MiB"
SCANS = 2


@pytest.fixture(scope="module")
def bound(tmp_path_factory: pytest.TempPathFactory):
    nodes = sorted(Path("/sys/devices/system/node").glob("node[0-9]*"))
    if len(nodes) < 2 or shutil.which("numactl") is None:
        need_kernel("needs two NUMA nodes and numactl")
    tmp = tmp_path_factory.mktemp("numa")
    started = []
    try:
        for node in (0, 1):
            started.append((node, start_workload(tmp, "--size", SIZE,
                                                 prefix=["numactl", f"--membind={node}"])))
        yield started
    finally:
        for _, t in started:
            stop_process(t.proc)


@pytest.mark.parametrize("source", SOURCES)
def test_node_attribution(bound, source: str) -> None:
    for node, t in bound:
        snap, pages = snapshot(t, source, SCANS)
        wrong = sum(p["node"] != node for p in pages.values())
        err = truth_errors(t, pages, SCANS)
        ok = wrong == 0 and len(pages) == t.pages and err["hot_missed"] == 0 \
            and err["cold_accessed"] == 0
        record("numa", source, "pass" if ok else "FAIL", node=node, wrong_node=wrong,
               reported=len(pages), **err)
        assert len(pages) == t.pages, err
        assert wrong == 0, f"{wrong} of {len(pages)} pages attributed to the wrong node"
        assert err["hot_missed"] == 0 and err["cold_accessed"] == 0, err

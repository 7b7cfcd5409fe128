"""Fleet view on real cgroups (issue 14): processes in kubelet-named memory cgroups, followed by
``targets.cgroups``; their identity, their cgroup's aggregates against the truth, pid churn."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import start_workload, stop_process
from fleet_helpers import kube_cgroups, resident_frames, start_forked_pair, stop_group, vdso_rss_pages
from pageheat.kernel import cgroups
from prometheus_client.parser import text_string_to_metric_families
from realworld import Serve, sample, smaps_rss_pages, wait_for

pytestmark = pytest.mark.kernel
PAGE = 4096
WINDOW = 5.0  # a bound of pageheat_idle_pages: the working-set window checked here


def series(text: str, name: str, **labels: str) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def cgroup_total(text: str, name: str, cgroup: str) -> float:
    return sum(s.value for s in series(text, name, cgroup=cgroup))


def test_kubelet_cgroups_identity_aggregates_and_churn(ptwalk_ok, tmp_path: Path) -> None:
    with kube_cgroups(("systemd", "burstable", "cri-containerd"), ("cgroupfs", "besteffort", "")) as (a, b):
        started = []
        try:
            # Two processes in the systemd-driver container, one in the cgroupfs one.
            args = ("--size", "16MiB", "--hot", "0.1", "--warm", "0", "--hot-period", "20ms")
            wa1 = start_workload(tmp_path, *args, "--seed", "1", prefix=a.prefix)
            wa2 = start_workload(tmp_path, *args, "--seed", "2", prefix=a.prefix)
            wb = start_workload(tmp_path, *args, "--seed", "3", prefix=b.prefix)
            started += [wa1, wa2, wb]
            for w, cg in ((wa1, a), (wa2, a), (wb, b)):
                assert cgroups.read_cgroup(w.pid) == cg.path
            populated = time.monotonic()
            serve = Serve(tmp_path, "aging: 300ms\ndiscovery_interval: 300ms\n"
                          "working_set_windows: [5s, 1m]\n"
                          "targets: {top_rss: 0, cgroups: ['/kubepods.slice/**', '/kubepods/**']}\n")
            try:
                serve.ready()
                pids = {wa1.pid, wa2.pid, wb.pid}
                wait_for(lambda: pids <= {t["pid"] for t in serve.targets() if t["harvests"] >= 3},
                         30, "the three workloads followed and harvested")
                # the working set over WINDOW needs the populate pass to be older than WINDOW
                time.sleep(max(0.0, populated + WINDOW + 1.5 - time.monotonic()))
                text = serve.metrics()
                followed = {int(s.labels["pid"]) for s in series(text, "pageheat_process_info")}
                assert pids == followed, "only the processes of the matching cgroups"
                for w, cg in ((wa1, a), (wa2, a), (wb, b)):
                    [info] = series(text, "pageheat_process_info", pid=str(w.pid))
                    assert info.labels["cgroup"] == cg.path
                    assert info.labels["container_id"] == cg.container_id
                    assert info.labels["pod_uid"] == cg.pod_uid
                    assert info.value == 1
                for cg, ws in ((a, (wa1, wa2)), (b, (wb,))):
                    resident = cgroup_total(text, "pageheat_cgroup_resident_bytes", cg.path)
                    per_process = sum(sample(text, "pageheat_process_resident_pages", pid=str(w.pid))
                                      for w in ws)
                    # Each process's count is its smaps Rss; the cgroup's, the distinct frames
                    # of its processes (they share the interpreter's and libraries' pages).
                    for w in ws:
                        own = sample(text, "pageheat_process_resident_pages", pid=str(w.pid))
                        assert abs(own - smaps_rss_pages(w.pid)) <= 16, (own, smaps_rss_pages(w.pid))
                    frames = np.unique(np.concatenate([resident_frames(w.pid) for w in ws]))
                    assert abs(resident / PAGE - len(frames)) <= 16 * len(ws), (resident / PAGE, len(frames))
                    assert resident <= per_process * PAGE
                    inf = [s.value for s in series(text, "pageheat_cgroup_idle_bytes_bucket",
                                                   cgroup=cg.path, le="+Inf")]
                    assert sum(inf) == resident
                    # Working set over 5s: every hot page of the regions, none of the pages
                    # touched only when populated (> 5s ago); the rest of the process (the
                    # interpreter) in between.
                    [wss] = series(text, "pageheat_cgroup_working_set_bytes", cgroup=cg.path,
                                   window="5s")
                    hot = sum(len(w.hot) for w in ws)
                    untouched = sum(len(w.cold) for w in ws)
                    assert hot * PAGE <= wss.value <= resident - untouched * PAGE, \
                        (wss.value / PAGE, hot, resident / PAGE, untouched)
                    # Promotions (pages accessed again after being idle): the cgroup's counter
                    # is its processes' pageheat_promoted_pages, in bytes.
                    [prom] = series(text, "pageheat_cgroup_promoted_bytes_bucket", cgroup=cg.path, le="+Inf")
                    own = sum(s.value for w in ws  # every (node, type) of every process
                              for s in series(text, "pageheat_promoted_pages_count", pid=str(w.pid)))
                    assert prom.value == own * PAGE > 0
                    # Pages pageheat cannot monitor (the vDSO, every process maps it): the
                    # cgroup's are its processes' (smaps' Rss of [vdso]), in bytes.
                    unmon = {s.labels["reason"]: s.value
                             for s in series(text, "pageheat_cgroup_unmonitored_bytes", cgroup=cg.path)}
                    vdso = sum(vdso_rss_pages(w.pid) for w in ws)
                    assert vdso > 0 and unmon.get("vdso") == vdso * PAGE, (unmon, vdso)
                [promoted_a] = [s.value for s in series(text, "pageheat_cgroup_promoted_bytes_bucket",
                                                        cgroup=a.path, le="+Inf")]
                # pid churn: one of a's processes exits, a's series stay; b's last exits, b's go
                stop_process(wa1.proc)
                stop_process(wb.proc)

                def both_exits_seen() -> bool:
                    # Each exit is noticed on its own (at that process's next harvest or the
                    # next discovery): wb's may come first.
                    text = serve.metrics()
                    return (not series(text, "pageheat_cgroup_resident_bytes", cgroup=b.path)
                            and not series(text, "pageheat_process_info", pid=str(wa1.pid)))

                wait_for(both_exits_seen, 10, "b's series and wa1's gone")
                text = serve.metrics()
                assert not series(text, "pageheat_process_info", pid=str(wb.pid))
                assert not series(text, "pageheat_cgroup_working_set_bytes", cgroup=b.path)
                assert not [s for s in series(text, "pageheat_cgroup_idle_bytes_bucket")
                            if s.labels["cgroup"] == b.path]
                left = cgroup_total(text, "pageheat_cgroup_resident_bytes", a.path) / PAGE
                assert abs(left - len(resident_frames(wa2.pid))) <= 16, left  # wa2's pages only
                assert series(text, "pageheat_cgroup_working_set_bytes", cgroup=a.path)
                # a's promotion counter keeps wa1's counts: it never goes down while a lives
                [after] = series(text, "pageheat_cgroup_promoted_bytes_bucket", cgroup=a.path, le="+Inf")
                assert after.value >= promoted_a
            except BaseException:
                print(serve.log()[-4000:])  # what the daemon saw, in pytest's captured output
                raise
            finally:
                assert serve.stop() == 0
            log = serve.log()
            assert "Traceback" not in log
            assert re.search(rf"stopped following pid {wb.pid} .*exited", log)
        finally:
            for w in started:
                stop_process(w.proc)


def test_pages_shared_by_a_cgroups_processes_count_once(ptwalk_ok, tmp_path: Path) -> None:
    """A parent and its child share a 32 MiB region copy-on-write (and much of the
    interpreter): the cgroup's resident bytes are the distinct frames of both (pagemap),
    not the sum of the two processes."""
    size = 32 << 20
    with kube_cgroups(("cgroupfs", "burstable", "")) as (cg,):
        proc, parent, child = start_forked_pair(tmp_path, size, cg.prefix)
        try:
            serve = Serve(tmp_path, "aging: 300ms\ndiscovery_interval: 300ms\n"
                          f"targets: {{top_rss: 0, cgroups: ['{cg.path}']}}\n")
            try:
                serve.ready()
                wait_for(lambda: {parent, child} <= {t["pid"] for t in serve.targets()
                                                     if t["harvests"] >= 2}, 30, "both followed")
                text = serve.metrics()
                truth = np.union1d(resident_frames(parent), resident_frames(child))
                resident = cgroup_total(text, "pageheat_cgroup_resident_bytes", cg.path) / PAGE
                per_process = sum(sample(text, "pageheat_process_resident_pages", pid=str(p))
                                  for p in (parent, child))
                print(f"\ndistinct frames {len(truth)}, cgroup {resident:.0f}, sum {per_process:.0f}")
                assert abs(resident - len(truth)) <= 64, (resident, len(truth))
                assert per_process - resident >= size // PAGE, "the shared region counted twice"
                inf = [s.value for s in series(text, "pageheat_cgroup_idle_bytes_bucket",
                                               cgroup=cg.path, le="+Inf")]
                assert sum(inf) == resident * PAGE
            finally:
                assert serve.stop() == 0
            assert "Traceback" not in serve.log()
        finally:
            stop_group(proc)


def test_ptwalk_frame_numbers_equal_pagemap(ptwalk_ok, workload) -> None:
    """PtwalkSource(pfns=True): each page's frame number, from the raw PTEs the BPF walk
    copies, is the one /proc/PID/pagemap gives for that address (4 KiB and THP pages)."""
    import os

    from pageheat.sources.ptwalk import PtwalkSource

    for args in (("--size", "8MiB"), ("--size", "8MiB", "--thp")):
        t = workload(*args)
        src = PtwalkSource(pfns=True)
        try:
            src.attach(t.pid)
            h = src.cycle(t.pid)
        finally:
            src.close()
        p = h.pages
        assert p.pfn is not None and p.pfn.dtype == np.uint64 and len(p.pfn) == len(p)
        fd = os.open(f"/proc/{t.pid}/pagemap", os.O_RDONLY)
        try:
            # the region is one mapping: one read of its pagemap entries
            raw = os.pread(fd, t.pages * 8, (t.start >> 12) * 8)
            entries = np.frombuffer(raw, dtype=np.uint64)
        finally:
            os.close(fd)
        region = (p.vpn >= t.start >> 12) & (p.vpn < (t.start + t.size) >> 12)
        assert region.sum() == t.pages
        present = (entries >> np.uint64(63)) & np.uint64(1) == 1
        assert present.all()
        np.testing.assert_array_equal(p.pfn[region], entries & np.uint64((1 << 55) - 1))

"""Fleet view on cgroup v2 (issue 14, the lab half of tests/test_fleet.py, which runs on the
host's cgroup v1): kubelet-named cgroups (systemd driver) in the unified hierarchy, ground-truth
workloads inside, ``serve`` with targets.cgroups; identity labels, the cgroup aggregates
against the truth (a page two processes of the cgroup share counted once), aggregated-only
processes in their cgroup's numbers, a cgroup's series gone after its last process."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
from conftest import wait_http
from fleet_helpers import kube_cgroups, resident_frames, start_forked_pair, stop_group, vdso_rss_pages
from pageheat.kernel import cgroups
from prometheus_client.parser import text_string_to_metric_families
from realworld import Serve, wait_for

from .guestlib import SOURCES, record, start_workload, stop_process

PAGE = 4096
WINDOW = 5.0  # a bound of pageheat_idle_pages: the working-set window checked here
SHARED = 16 << 20  # the forked pair's copy-on-write region


def series(text: str, name: str, **labels: str) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def total(text: str, name: str, cgroup: str) -> float:
    return sum(s.value for s in series(text, name, cgroup=cgroup))


def test_kubelet_cgroups_on_cgroup_v2(tmp_path: Path) -> None:
    assert "ptwalk" in SOURCES  # frame numbers (shared pages once) come from ptwalk
    h = cgroups.detect()
    assert h.version == 2, f"the lab VM should run cgroup v2, found v{h.version}"
    specs = (("systemd", "burstable", "cri-containerd"), ("systemd", "besteffort", "crio"))
    with kube_cgroups(*specs) as (a, b):
        started, pair = [], None
        try:
            args = ("--size", "16MiB", "--hot", "0.1", "--warm", "0", "--hot-period", "20ms")
            wa = start_workload(tmp_path, *args, "--seed", "1", prefix=a.prefix)
            started.append(wa)
            pair, parent, child = start_forked_pair(tmp_path, SHARED, a.prefix)
            wb = start_workload(tmp_path, *args, "--seed", "3", prefix=b.prefix)
            started.append(wb)
            populated = time.monotonic()
            members = {a.path: (wa.pid, parent, child), b.path: (wb.pid,)}
            for cg, pids in members.items():
                for pid in pids:
                    assert cgroups.read_cgroup(pid) == cg, (pid, cgroups.read_cgroup(pid), cg)
            # ptwalk explicitly (auto picks mglru-fexit here, which reads no frame numbers);
            # a large budget: under TCG the default 2% would stretch the intervals past WINDOW.
            # per_process_series_top 1: the others are counted only in their cgroup.
            serve = Serve(tmp_path, "source: ptwalk\naging: 500ms\ndiscovery_interval: 500ms\n"
                          "cpu_budget: 0.5\nper_process_series_top: 1\n"
                          "working_set_windows: [5s, 1m]\n"
                          "targets: {top_rss: 0, cgroups: ['/kubepods.slice/**']}\n")
            try:
                # start-up (Python, numpy, the BPF load) takes long under TCG
                wait_http(serve.url("/healthz"), timeout=300)
                every = {p for pids in members.values() for p in pids}
                wait_for(lambda: every <= {t["pid"] for t in serve.targets() if t["harvests"] >= 3},
                         180, "the four processes followed and harvested")
                time.sleep(max(0.0, populated + WINDOW + 2 - time.monotonic()))
                targets = {t["pid"]: t for t in serve.targets()}
                text = serve.metrics()
                info = {int(s.labels["pid"]): s.labels for s in series(text, "pageheat_process_info")}
                assert set(info) == every, "only the processes of the matching cgroups"
                for cg in (a, b):
                    for pid in members[cg.path]:
                        assert (info[pid]["cgroup"], info[pid]["container_id"], info[pid]["pod_uid"]) \
                            == (cg.path, cg.container_id, cg.pod_uid)
                with_series = {s.labels["pid"] for s in series(text, "pageheat_process_resident_pages")}
                assert len(with_series) == 1  # per_process_series_top
                for cg in (a, b):
                    pids = members[cg.path]
                    resident = total(text, "pageheat_cgroup_resident_bytes", cg.path) / PAGE
                    truth = np.unique(np.concatenate([resident_frames(p) for p in pids]))
                    per_process = sum(targets[p]["resident_pages"] for p in pids)
                    print(f"\n{cg.path}: distinct frames {len(truth)}, cgroup {resident:.0f}, "
                          f"sum of processes {per_process}")
                    assert abs(resident - len(truth)) <= 64 * len(pids), (resident, len(truth))
                    inf = [s.value for s in series(text, "pageheat_cgroup_idle_bytes_bucket",
                                                   cgroup=cg.path, le="+Inf")]
                    assert sum(inf) == resident * PAGE
                    # the workload's hot pages were accessed within WINDOW; its untouched
                    # pages (populated more than WINDOW ago) were not
                    [wss] = series(text, "pageheat_cgroup_working_set_bytes", cgroup=cg.path, window="5s")
                    w = wa if cg is a else wb
                    assert len(w.hot) * PAGE <= wss.value <= (resident - len(w.cold)) * PAGE, \
                        (wss.value / PAGE, len(w.hot), resident, len(w.cold))
                    # every process's vDSO, those without per-process series too
                    unmon = {s.labels["reason"]: s.value
                             for s in series(text, "pageheat_cgroup_unmonitored_bytes", cgroup=cg.path)}
                    vdso = sum(vdso_rss_pages(p) for p in pids)
                    assert vdso > 0 and unmon.get("vdso") == vdso * PAGE, (unmon, vdso)
                # the pair's shared region counted once in a, twice in the per-process sum
                a_resident = total(text, "pageheat_cgroup_resident_bytes", a.path) / PAGE
                a_sum = sum(targets[p]["resident_pages"] for p in members[a.path])
                assert a_sum - a_resident >= SHARED // PAGE, (a_sum, a_resident)
                # churn: a's workload exits (a keeps the pair), b's only process exits (b goes)
                stop_process(wa.proc)
                stop_process(wb.proc)
                wait_for(lambda: not series(serve.metrics(), "pageheat_cgroup_resident_bytes",
                                            cgroup=b.path), 30, "b's series gone")
                text = serve.metrics()
                assert not series(text, "pageheat_process_info", pid=str(wb.pid))
                assert not series(text, "pageheat_cgroup_working_set_bytes", cgroup=b.path)
                assert not series(text, "pageheat_cgroup_unmonitored_bytes", cgroup=b.path)
                wait_for(lambda: not series(serve.metrics(), "pageheat_process_info", pid=str(wa.pid)),
                         30, "a's workload no longer followed")
                left = total(serve.metrics(), "pageheat_cgroup_resident_bytes", a.path) / PAGE
                truth = np.union1d(resident_frames(parent), resident_frames(child))
                assert abs(left - len(truth)) <= 128, (left, len(truth))  # the pair's pages only
            except BaseException:
                print(serve.log()[-4000:])
                raise
            finally:
                assert serve.stop() == 0, serve.log()[-4000:]
            log = serve.log()
            assert "Traceback" not in log
            assert re.search(rf"stopped following pid {wb.pid} .*exited", log)
            record("fleet-cgroup-v2", "ptwalk", "pass", cgroups=2, processes=len(every),
                   shared_pages=int(a_sum - a_resident))
        except Exception:
            record("fleet-cgroup-v2", "ptwalk", "FAIL")
            raise
        finally:
            for w in started:
                stop_process(w.proc)
            if pair is not None:
                stop_group(pair)

"""Two pageheats on one process would clear each other's Accessed bits (each seeing only what
was touched since the other's last clear_refs write): the second one is refused, with one
line, until the first lets go (procfs.ClearRefs' flock on /proc/PID/clear_refs)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import PAGEHEAT, run_pageheat

pytestmark = pytest.mark.kernel


def wait_until_aged_by_another(pid: int, timeout: float = 30) -> None:
    """Until some process holds the flock of /proc/PID/clear_refs (a line of /proc/locks:
    "N: FLOCK ADVISORY WRITE HOLDER MAJ:MIN:INODE START END")."""
    ino = os.stat(f"/proc/{pid}/clear_refs").st_ino
    deadline = time.monotonic() + timeout
    while not any(f[1] == "FLOCK" and int(f[5].rsplit(":", 1)[1]) == ino
                  for f in (line.split() for line in open("/proc/locks"))):
        assert time.monotonic() < deadline, f"nobody locked pid {pid}'s clear_refs"
        time.sleep(0.05)


def test_a_second_source_is_refused_until_the_first_detaches(ptwalk_ok, workload) -> None:
    from pageheat.kernel.procfs import TargetBusy
    from pageheat.sources.ptwalk import PtwalkSource

    t = workload("--size", "8MiB")
    first, second = PtwalkSource(), PtwalkSource()
    try:
        first.attach(t.pid)
        with pytest.raises(TargetBusy, match=f"another pageheat already ages process {t.pid}"):
            second.attach(t.pid)
        first.cycle(t.pid)  # the first goes on undisturbed
        first.detach(t.pid)
        second.attach(t.pid)
        assert second.cycle(t.pid).pid == t.pid
    finally:
        first.close()
        second.close()


def test_snapshot_beside_a_snapshot_of_the_same_process(ptwalk_ok, workload) -> None:
    """The truth: the workload reads its warm pages (half of 16 MiB) every second. The first
    snapshot sees them in every scan; the second is refused instead of wiping them."""
    t = workload("--size", "16MiB", "--hot", "0", "--warm", "0.5", "--warm-period", "1s")
    first = subprocess.Popen([*PAGEHEAT, "snapshot", "--pid", str(t.pid), "--scans", "4", "--aging", "1s"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_aged_by_another(t.pid)
        second = run_pageheat("snapshot", "--pid", str(t.pid), "--scans", "4", "--aging", "1s")
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert second.returncode == 1 and second.stdout == ""
    lines = [x for x in second.stderr.splitlines() if "level=" not in x]
    assert lines == [f"pageheat: another pageheat already ages process {t.pid} (its clear_refs is "
                     "locked): two would clear each other's Accessed bits"], second.stderr
    snap = json.loads(out)
    warm = (16 << 20 >> 12) // 2
    big = max(snap["vmas"], key=lambda v: v["resident"])
    assert all(n >= warm for n in big["accessed"][1:]), big["accessed"]  # nothing wiped


def test_serve_follows_the_process_once_the_other_lets_go(ptwalk_ok, workload, tmp_path) -> None:
    from realworld import Serve, wait_for

    t = workload("--size", "8MiB")
    snap = subprocess.Popen([*PAGEHEAT, "snapshot", "--pid", str(t.pid), "--scans", "3", "--aging", "1s"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_aged_by_another(t.pid)
    serve = Serve(tmp_path, f"aging: 300ms\ndiscovery_interval: 300ms\ntargets: {{pids: [{t.pid}]}}\n")
    try:
        serve.ready()
        wait_for(lambda: "another pageheat already ages" in serve.log(), 30, "serve to be refused")
        assert snap.wait(30) == 0
        wait_for(lambda: [x for x in serve.targets() if x["pid"] == t.pid], 60, "serve to follow it")
    finally:
        snap.kill()
        assert serve.stop() == 0
    assert f"following pid {t.pid}" in serve.log() and "Traceback" not in serve.log()


def test_processes_sharing_one_address_space_are_followed_once(ptwalk_ok, tmp_path) -> None:
    """clone(CLONE_VM): two pids, one mm. Followed both, each pid's aging cleared the other's
    bits (measured: the second pid showed a working set of 0 in 7 of 8 scrapes). Only the one
    followed first is, and its working set is both readers' pages: the truth of the mm."""
    from realworld import Serve, build, sample, wait_for

    exe = build("shared_mm", tmp_path)
    hot = 64
    proc = subprocess.Popen([str(exe), "4096", str(hot)], stdout=subprocess.PIPE, text=True)
    try:
        word, parent, child = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert word == "ready"
        serve = Serve(tmp_path, "aging: 500ms\ndiscovery_interval: 300ms\n"
                                f"targets: {{pids: [{parent}, {child}], top_rss: 0}}\n")
        try:
            serve.ready()
            wait_for(lambda: "shares its address space" in serve.log(), 30, "the shared mm to be seen")
            followed = [t["pid"] for t in wait_for(serve.targets, 30, "a harvest")]
            assert len(followed) == 1 and str(followed[0]) in (parent, child)
            wait_for(lambda: (sample(serve.metrics(), "pageheat_harvests_total", pid=str(followed[0]))
                              or 0) >= 4, 30, "four harvests")
            wss = [sample(serve.metrics(), "pageheat_working_set_pages", pid=str(followed[0]))
                   for _ in range(3) if time.sleep(0.6) is None]
            # Both readers' pages every interval, plus the few code and stack pages they run on.
            assert all(2 * hot <= w <= 2 * hot + 32 for w in wss), wss
        finally:
            assert serve.stop() == 0
        log = serve.log()
        assert log.count("shares its address space") == 1 and "Traceback" not in log, log
    finally:
        proc.kill()
        proc.wait()

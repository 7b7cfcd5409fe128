"""Issue 11: what real hosts' processes contain, on the real kernel with real BPF.

kind1: names that are not UTF-8 and file names with bytes that str.splitlines() breaks at;
kind3: a process whose thread-group leader is a zombie (main thread called pthread_exit);
kind4: which process a pid stands for (a thread id, a kernel thread, a pid that cannot be
read, a PID namespace of our own, a wrapper that execs).
Every expected value comes from the truth: what the helper process touched, what the kernel
shows through a live thread, the bytes the names were made of.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PAGEHEAT, free_port, need_kernel, run_pageheat
from realworld import (
    Serve,
    build,
    fs_kind,
    kernel_map_name,
    kernel_thread_pid,
    named_process,
    sample,
    smaps_rss_pages,
    state,
    wait_for,
    zombie_leader,
)

pytestmark = pytest.mark.kernel

BAD_COMM = b"job-\xe5\x90"  # cut inside a three-byte UTF-8 character
# File names with every kind of byte str.splitlines() ends a line at, and worse.
FILE_NAMES = [
    b"gone \x0c (deleted) soon",  # unlinked after mapping: the kernel appends " (deleted)"
    b"form\x0cfeed",
    b"file\x1csep",
    b"nel\xc2\x85x",  # U+0085 in UTF-8
    b"line\xe2\x80\xa8sep",  # U+2028
    b"bad\xe5\x90utf8",
    b"new\nline",  # the only byte the kernel escapes (as \012)
    b"sp ace) (x",
]
PAGES = 1024  # per file: more than any of python's own mappings, so each is shown by name
NO_CAP_DAC = ("setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override")
NO_CAP_PTRACE = ("setpriv", "--inh-caps=-sys_ptrace,-dac_override",
                 "--bounding-set=-sys_ptrace,-dac_override")


def one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("pageheat: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def snapshot(pid: int, *args: str, prefix: tuple[str, ...] = ()) -> tuple[dict, str]:
    r = subprocess.run([*prefix, *PAGEHEAT, "snapshot", "--pid", str(pid), "--source", "ptwalk",
                        "--json", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout), r.stderr


def maps_by_start(path: str) -> dict[int, str]:
    """start -> name from a maps file, read the way the kernel means it (lines end at \\n)."""
    out = {}
    for line in Path(path).read_bytes().split(b"\n"):
        if line:
            parts = line.split(b" ", 5)
            out[int(parts[0].split(b"-")[0], 16)] = (parts[5].lstrip(b" ") if len(parts) > 5
                                                     else b"").decode("utf-8", "replace")
    return out


@pytest.fixture(scope="module")
def zl_exe(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is not installed: it builds tests/c/zombie_leader.c")
    return build("zombie_leader", tmp_path_factory.mktemp("c"))


# --- kind 1: untrusted bytes ---------------------------------------------------------------------


@pytest.mark.kind1
def test_names_that_break_lines_or_utf8_snapshot_and_doctor(ptwalk_ok, tmp_path) -> None:
    pages = 16
    kind = fs_kind(tmp_path)
    with named_process(tmp_path, BAD_COMM, FILE_NAMES, pages) as p:
        raw = Path(f"/proc/{p.pid}/comm").read_bytes()
        assert raw == BAD_COMM + b"\n"  # the kernel took the bytes as they are
        truth = maps_by_start(f"/proc/{p.pid}/maps")

        got, _ = snapshot(p.pid, "--scans", "1")
        assert got["scans"] == 1 and not got["exited"]
        vmas = {int(v["start"], 16): v for v in got["vmas"]}
        for i, (name, start) in enumerate(zip(p.files, p.starts, strict=True)):
            want = kernel_map_name(os.fsencode(tmp_path) + b"/" + name, deleted=i == 0)
            assert truth[start] == want  # the test's model of the kernel holds
            v = vmas[start]
            assert (v["name"], v["kind"], v["resident"]) == (want, kind, pages)
        # Every mapping the iterator saw got its name from maps, none lost to a broken line.
        assert all(v["name"] == truth[s] for s, v in vmas.items() if s in truth)

        r = run_pageheat("doctor")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert "ptwalk       yes" in r.stdout


@pytest.mark.kind1
def test_comm_with_parentheses_spaces_and_line_breaks(tmp_path) -> None:
    from pageheat.config import Targets
    from pageheat.kernel import procfs
    from pageheat.serve import targets

    comm = b"x) Z 1 (\n\xc2\x85\x0c"  # looks like the end of the comm field, then breaks lines
    with named_process(tmp_path, comm, [], 1) as p:
        assert Path(f"/proc/{p.pid}/comm").read_bytes() == comm + b"\n"
        st = procfs.read_stat(p.pid)
        assert st.ppid == os.getpid() and st.state in "RS"  # the truth: we started it
        assert procfs.read_comm(p.pid) == comm.decode("utf-8", "replace")
        got = [t for t in targets.select(Targets(comm_regex=r"^x\) Z 1 \(\n", top_rss=0))]
        assert [t.pid for t in got] == [p.pid] and got[0].start_time == st.start_time
        assert procfs.shown(got[0].comm) == "x) Z 1 (\\x0a\\x85\\x0c"


@pytest.mark.kind1
def test_serve_follows_a_name_that_is_not_utf8_and_metrics_stay_valid(ptwalk_ok, tmp_path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    serve = Serve(tmp_path, "aging: 200ms\ndiscovery_interval: 300ms\n"
                            "targets: {comm_regex: '^job-', top_rss: 0}\n")
    try:
        serve.ready()
        # Started after serve: discovery must see it, not skip it over its name.
        with named_process(tmp_path, BAD_COMM, FILE_NAMES, PAGES) as p:
            comm = BAD_COMM.decode("utf-8", "replace")
            t = wait_for(lambda: [t for t in serve.targets() if t["pid"] == p.pid], 30,
                         "serve to follow the process")
            assert t[0]["comm"] == comm
            wait_for(lambda: sample(serve.metrics(), "pageheat_process_resident_pages",
                                    pid=str(p.pid)), 30, "its first harvest")
            text = serve.metrics()
            exposition = tmp_path / "metrics.prom"
            exposition.write_text(text)
            r = subprocess.run([promtool, "check", "metrics"], stdin=open(exposition),
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            # The file-backed pages were written before the first aging and never again:
            # each file shows up, under its decoded base name, as never accessed.
            for i, name in enumerate(FILE_NAMES[1:], 1):
                label = kernel_map_name(name, deleted=i == 0)
                got = sample(text, "pageheat_never_accessed_pages", pid=str(p.pid), comm=comm,
                             mapping=label)
                assert got == PAGES, (label, got)
    finally:
        assert serve.stop() == 0
    log = serve.log()
    assert "Traceback" not in log and "cannot follow" not in log
    assert f"following pid {p.pid} (job-\ufffd)" in log


@pytest.mark.kind1
def test_top_shows_a_name_that_is_not_utf8(ptwalk_ok, tmp_path) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed")
    sock = f"pageheat-rw-{os.getpid()}"
    done = tmp_path / "exit"
    with named_process(tmp_path, BAD_COMM, FILE_NAMES, PAGES) as p:
        # Textual draws on stderr: it stays on the pane, which stays open after top quits.
        cmd = " ".join([*PAGEHEAT, "top", "--pid", str(p.pid), "--source", "ptwalk", ";",
                        "echo", "$?", ">", str(done), ";", "sleep", "30"])
        tmux = ["tmux", "-L", sock]
        subprocess.run([*tmux, "new-session", "-d", "-x", "200", "-y", "50", cmd], check=True,
                       timeout=10)
        try:
            def pane() -> str:
                return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True,
                                      text=True, timeout=10).stdout

            def shows_mappings() -> str | None:
                s = pane()
                return s if "form\\x0cfeed" in s else None

            screen = wait_for(shows_mappings, 60, "top to show the mappings")
            assert f"pid {p.pid} (job-\ufffd)" in screen
            subprocess.run([*tmux, "send-keys", "q"], check=True, timeout=10)
            wait_for(lambda: done.exists() and done.read_text().strip(), 20, "top to quit")
            after = pane()
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)
    assert done.read_text().strip() == "0", after
    assert "Traceback" not in after and "Error" not in after, after


# --- kind 3: a zombie thread-group leader --------------------------------------------------------


@pytest.mark.kind3
def test_zombie_leader_is_aged_and_read_through_a_live_thread(ptwalk_ok, zl_exe) -> None:
    with zombie_leader(zl_exe, 1024, 256) as z:
        assert state(z.pid) == "Z" and state(z.pid, z.worker) != "Z"
        assert Path(f"/proc/{z.pid}/maps").read_bytes() == b""  # what went wrong before
        got, _ = snapshot(z.pid, "--scans", "3", "--range", z.range_arg, "--pages")
        assert got["scans"] == 3 and not got["exited"]
        scans = np.array([p["scans"] for p in got["pages"]])
        assert scans.shape == (z.pages, 3)  # every page of the region resident
        # Truth: the worker reads exactly the first `hot` pages; the rest were written once,
        # before pageheat started.
        hot = np.zeros(z.pages, bool)
        hot[:z.hot] = True
        addrs = np.array([int(p["addr"], 16) for p in got["pages"]])
        assert np.array_equal((addrs - z.addr) // 4096, np.arange(z.pages))
        for i in range(3):
            assert np.array_equal(scans[:, i].astype(bool), hot), f"scan {i}"
        truth = maps_by_start(f"/proc/{z.pid}/task/{z.worker}/maps")
        named = [v for v in got["vmas"] if int(v["start"], 16) in truth]
        assert len(named) == len(got["vmas"])
        assert all(v["name"] == truth[int(v["start"], 16)] for v in named)
        assert any(v["name"].endswith("zombie_leader") for v in named)


@pytest.mark.kind3
def test_is_running_on_real_processes(zl_exe) -> None:
    """A zombie leader whose thread lives is running; a child that exited and is not yet reaped
    (/proc/PID still reads, state Z) is not: serve says the latter exited."""
    from pageheat.kernel import procfs
    with zombie_leader(zl_exe, 16, 4) as z:
        assert procfs.is_running(z.pid, procfs.read_start_time(z.pid))
    child = subprocess.Popen(["sleep", "60"])
    try:
        start = procfs.read_start_time(child.pid)
        assert procfs.is_running(child.pid, start)
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: state(child.pid) == "Z", 10, "the child a zombie")
        assert not procfs.is_running(child.pid, start)
    finally:
        child.kill()
        child.wait()
    assert not procfs.is_running(child.pid, start)


@pytest.mark.kind3
def test_zombie_leader_is_selected_by_rss_and_comm_and_followed(ptwalk_ok, zl_exe, tmp_path) -> None:
    from pageheat.config import Targets
    from pageheat.kernel import procfs
    from pageheat.serve import targets

    with zombie_leader(zl_exe, 4096, 256) as z:
        rss = procfs.rss_pages(z.pid)
        truth = smaps_rss_pages(z.pid, z.worker)
        assert rss >= z.pages and abs(rss - truth) <= 16, (rss, truth)
        chosen = {p.pid: p for p in targets.select(Targets(comm_regex="^zombie_leader$", top_rss=0))}
        assert chosen[z.pid].rss_pages >= z.pages
        by_rss = targets.select(Targets(top_rss=10_000, min_rss=(z.pages - 1) * 4096))
        assert z.pid in [p.pid for p in by_rss]

        serve = Serve(tmp_path, "aging: 300ms\ndiscovery_interval: 300ms\n"
                                "targets: {comm_regex: '^zombie_leader$', top_rss: 0}\n")
        try:
            serve.ready()
            wait_for(lambda: (sample(serve.metrics(), "pageheat_harvests_total", pid=str(z.pid))
                              or 0) >= 3, 30, "three harvests")
            text = serve.metrics()
            resident = sample(text, "pageheat_process_resident_pages", pid=str(z.pid))
            wss = sample(text, "pageheat_working_set_pages", pid=str(z.pid))
            truth = smaps_rss_pages(z.pid, z.worker)
            assert abs(resident - truth) <= 16, (resident, truth)
            # The worker's hot pages, plus the few code and stack pages its loop runs on;
            # never the whole resident set, which is what a write to a zombie's clear_refs gave.
            assert z.hot <= wss <= z.hot + 32, wss
        finally:
            assert serve.stop() == 0
        assert "Traceback" not in serve.log()


@pytest.mark.kind3
def test_aging_moves_to_a_live_thread_when_the_leader_exits_later(ptwalk_ok, zl_exe) -> None:
    """clear_refs opened while the leader lived, the leader exits afterwards. On 6.18 such a
    descriptor keeps aging the mm (measured: only one opened after the leader's exit ages
    nothing), so this passes without procfs.ClearRefs' re-check too; it pins the behaviour for
    kernels whose clear_refs_write() looks the mm up through the task at each write."""
    from pageheat.sources.ptwalk import PtwalkSource

    src = PtwalkSource()
    with zombie_leader(zl_exe, 1024, 128, "late") as z:
        lo, hi = z.addr >> 12, (z.addr >> 12) + z.pages

        def accessed_in_region() -> int:
            h = src.cycle(z.pid)
            sel = (h.pages.vpn >= lo) & (h.pages.vpn < hi)
            assert sel.sum() == z.pages
            return int(h.pages.accessed[sel].sum())

        try:
            src.attach(z.pid)  # clear_refs opened while the leader lives
            time.sleep(0.3)
            assert accessed_in_region() == z.hot
            os.kill(z.pid, signal.SIGUSR1)  # now the leader calls pthread_exit
            wait_for(lambda: state(z.pid) == "Z", 10, "the leader to become a zombie")
            for _ in range(3):
                time.sleep(0.3)
                assert accessed_in_region() == z.hot
        finally:
            src.close()


# --- kind 4: which process -----------------------------------------------------------------------


@pytest.mark.kind4
def test_thread_id_given_to_snapshot_follows_its_process(ptwalk_ok, zl_exe) -> None:
    with zombie_leader(zl_exe, 512, 64, "late") as z:  # the leader lives: an ordinary process
        got, err = snapshot(z.worker, "--scans", "2", "--range", z.range_arg, "--pages")
        assert got["pid"] == z.pid and got["scans"] == 2 and not got["exited"]
        note = f"pid {z.worker} is a thread of process {z.pid}"
        assert err.count(note) == 1, err
        scans = np.array([p["scans"] for p in got["pages"]])
        assert scans.sum(axis=0).tolist() == [z.hot, z.hot]


@pytest.mark.kind4
def test_thread_id_given_to_serve_follows_its_process_and_says_so_once(ptwalk_ok, zl_exe,
                                                                       tmp_path) -> None:
    with zombie_leader(zl_exe, 512, 64, "late") as z:
        serve = Serve(tmp_path, f"aging: 200ms\ndiscovery_interval: 200ms\n"
                                f"targets: {{pids: [{z.worker}], top_rss: 0}}\n")
        try:
            serve.ready()
            wait_for(lambda: [t for t in serve.targets() if t["pid"] == z.pid], 30,
                     "serve to follow the process")
            time.sleep(2)  # ten discoveries
            assert [t["pid"] for t in serve.targets()] == [z.pid]
        finally:
            assert serve.stop() == 0
        log = serve.log()
        assert log.count(f"pid {z.worker} is a thread of process {z.pid}") == 1, log
        assert log.count(f'level=info logger=pageheat msg="following pid {z.pid} ') == 1, log
        assert set(re.findall(r"stopped following pid \d+ \(.*\): ([^\"]*)", log)) == {"shutting down"}


@pytest.mark.kind4
def test_pids_that_name_no_followable_process_exit_2_at_start(ptwalk_ok) -> None:
    kthread = kernel_thread_pid()
    name = Path(f"/proc/{kthread}/comm").read_text().strip()
    zombie = subprocess.Popen(["true"])
    other = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              "sleep", "60"])
    wait_for(lambda: state(zombie.pid) == "Z", 10, "an unreaped child")
    wait_for(lambda: Path(f"/proc/{other.pid}/comm").read_text() == "sleep\n", 10, "nobody's sleep")
    try:
        cases = [(kthread, (), f"pid {kthread} is a kernel thread ({name})"),
                 (zombie.pid, (), f"process {zombie.pid} (true) has exited"),
                 (4194304, (), "no such process: 4194304")]
        # pid 1 may not be read without CAP_SYS_PTRACE (it holds capabilities we do not):
        probe = subprocess.run([*NO_CAP_PTRACE, "cat", "/proc/1/maps"], capture_output=True)
        assert probe.returncode != 0, "setpriv did not take away the right to read pid 1"
        cases.append((1, NO_CAP_PTRACE, "cannot follow process 1 ("))
        # Another user's process: its clear_refs is writable by its owner only.
        cases.append((other.pid, NO_CAP_DAC, f"/proc/{other.pid}/clear_refs: permission denied "
                                             "(needs CAP_DAC_OVERRIDE"))
        for pid, prefix, says in cases:
            for cmd in (["snapshot", "--pid", str(pid), "--json"],
                        ["serve", "--pid", str(pid), "--listen", f"127.0.0.1:{free_port()}"]):
                r = subprocess.run([*prefix, *PAGEHEAT, *cmd], capture_output=True, text=True,
                                   timeout=60)
                assert r.returncode == 2, (cmd, r.stderr)
                assert says in one_line_error(r), (cmd, r.stderr)
                assert r.stdout == ""
    finally:
        zombie.wait()
        other.kill()
        other.wait()


@pytest.mark.kind4
def test_selected_process_that_cannot_be_followed_is_retried_with_back_off(ptwalk_ok,
                                                                           tmp_path) -> None:
    comm = Path("/proc/1/comm").read_bytes()[:-1].decode("utf-8", "replace")
    interval, run_for = 0.2, 6.0
    serve = Serve(tmp_path, f"aging: 200ms\ndiscovery_interval: {interval}s\n"
                            f"targets: {{comm_regex: {json.dumps('^' + re.escape(comm) + '$')}, "
                            f"top_rss: 0}}\n", "--log-level", "debug", prefix=NO_CAP_PTRACE)
    try:
        serve.ready()
        wait_for(lambda: sample(serve.metrics(), "pageheat_errors_total", kind="attach"), 30,
                 "the first refusal")
        time.sleep(run_for / 2)
        first = sample(serve.metrics(), "pageheat_errors_total", kind="attach")
        time.sleep(run_for / 2)
        second = sample(serve.metrics(), "pageheat_errors_total", kind="attach")
    finally:
        assert serve.stop() == 0
    log = serve.log()
    warned = re.findall(r'level=warning logger=pageheat msg="cannot follow pid (\d+) ', log)
    assert warned.count("1") == 1, log
    assert first == second == len(warned)  # once per process, not once per attempt
    tries = len(re.findall(r"cannot follow pid 1 .*attempt", log)) + 1
    # Back-off doubling from the discovery interval: about log2(run/interval) tries, where a
    # retry at every discovery would make run/interval = 30.
    assert tries <= math.log2(run_for / interval) + 2, tries


@pytest.mark.kind4
@pytest.mark.parametrize("mount_proc", [True, False], ids=["mount-proc", "host-proc"])
def test_every_command_says_it_needs_the_host_pid_namespace(ptwalk_ok, mount_proc) -> None:
    if shutil.which("unshare") is None:
        need_kernel("unshare (util-linux) is missing")
    ns = ["unshare", "--pid", "--fork", *(["--mount-proc"] if mount_proc else [])]
    for cmd in (["doctor"], ["snapshot", "--pid", "1", "--json"], ["serve", "--pid", "1"],
                ["top", "--pid", "1"]):
        r = subprocess.run([*ns, *PAGEHEAT, *cmd], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        out = r.stdout if cmd == ["doctor"] else one_line_error(r)
        assert "needs the host's: its BPF programs see host pids" in out, (cmd, out)


@pytest.mark.kind4
def test_comm_follows_a_wrapper_that_execs(ptwalk_ok, tmp_path) -> None:
    real = os.path.basename(sys.executable)[:15]
    go = tmp_path / "exec"  # the wrapper execs once the test has seen it followed as sh
    script = ('while [ ! -e "$1" ]; do sleep 0.05; done; '
              'exec "$0" -c "import sys, time; x = bytearray(16 << 20); sys.stdin.read()"')
    serve = Serve(tmp_path, "aging: 200ms\ndiscovery_interval: 200ms\ntargets: {top_rss: 0}\n",
                  command=("sh", "-c", script, sys.executable, str(go)))
    try:
        serve.ready()
        first = wait_for(serve.targets, 30, "the wrapper to be followed")
        pid = first[0]["pid"]
        assert first[0]["comm"] == "sh", first
        go.touch()
        wait_for(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == real, 30, "the exec")
        wait_for(lambda: [t for t in serve.targets() if t["comm"] == real], 10,
                 "comm to follow the exec")
        def renamed() -> str | None:
            m = serve.metrics()
            return m if sample(m, "pageheat_process_resident_pages", pid=str(pid), comm=real) \
                else None

        text = wait_for(renamed, 10, "series with the new comm")
        assert sample(text, "pageheat_process_resident_pages", pid=str(pid), comm="sh") is None
        assert 'comm="sh"' not in text
    finally:
        assert serve.stop() == 0
    log = serve.log()
    assert f"pid {pid} is now {real} (was sh)" in log, log


@pytest.mark.kind3
def test_zombie_leader_is_in_its_threads_cgroup(zl_exe) -> None:
    """cgroup v1 shows an exited task in the root (/): the cgroup of a process whose leader
    exited is read through a live thread, as its maps and clear_refs are."""
    from fleet_helpers import plain_cgroup
    from pageheat.kernel import cgroups

    with plain_cgroup("zombie-leader") as cg, zombie_leader(zl_exe, 16, 4) as z:
        (cg.dir / "cgroup.procs").write_text(str(z.pid))  # moves every thread of the process
        truth = cgroups.cgroup_of(Path(f"/proc/{z.pid}/task/{z.worker}/cgroup").read_text())
        assert truth == cg.path != "/"
        assert cgroups.read_cgroup(z.pid) == truth


@pytest.mark.kind4
def test_a_cgroup_namespace_of_its_own_is_said(ptwalk_ok, tmp_path) -> None:
    """unshare --cgroup: other processes' cgroups read as /../.. paths there. serve refuses
    targets.cgroups (they could match nothing), warns otherwise; doctor warns."""
    if shutil.which("unshare") is None:
        need_kernel("unshare (util-linux) is missing")
    ns = ["unshare", "--cgroup"]
    # The truth this is about: inside, a process's own cgroup is the root of every hierarchy.
    inside = subprocess.run([*ns, "cat", "/proc/self/cgroup"], capture_output=True, text=True,
                            timeout=30).stdout
    assert {line.rsplit(":", 1)[1] for line in inside.splitlines()} == {"/"}, inside
    cfg = tmp_path / "c.yml"
    cfg.write_text("targets: {cgroups: ['/system.slice/**']}\n")
    r = subprocess.run([*ns, *PAGEHEAT, "serve", "--config", str(cfg), "--listen",
                        f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "targets.cgroups: pageheat runs in a cgroup namespace of its own" \
        in one_line_error(r), r.stderr
    d = subprocess.run([*ns, *PAGEHEAT, "doctor", "--json"], capture_output=True, text=True, timeout=60)
    got = json.loads(d.stdout)["cgroup_namespace"]
    assert not got["ok"] and "--cgroupns=host" in got["detail"]
    host = json.loads(run_pageheat("doctor", "--json").stdout)["cgroup_namespace"]
    assert host == {"ok": True, "detail": "host"}


@pytest.mark.kind4
def test_a_process_refused_despite_cap_sys_ptrace_says_why(ptwalk_ok) -> None:
    """Where the kernel refuses a process although pageheat has CAP_SYS_PTRACE (pid 1 on these
    machines: it holds CAP_SYS_RESOURCE, outside our bounding set), the message names the
    capabilities it holds that pageheat lacks, not CAP_SYS_PTRACE."""
    from pageheat.kernel import capabilities

    try:
        Path("/proc/1/maps").read_bytes()
        readable = True
    except PermissionError:
        readable = False
    assert not capabilities.missing((capabilities.CAP_SYS_PTRACE,))
    extra = capabilities.effective(Path("/proc/1/status"), b"CapPrm:") & ~capabilities.effective()
    r = run_pageheat("snapshot", "--pid", "1", "--scans", "1")
    if readable:  # a machine whose pid 1 nothing guards: it is followed like any other
        assert r.returncode == 0 and json.loads(r.stdout)["pid"] == 1, r.stderr
        return
    assert r.returncode == 2 and r.stdout == ""
    line = one_line_error(r)
    assert "although pageheat has CAP_SYS_PTRACE" in line and "(needs CAP_SYS_PTRACE" not in line, line
    if extra:
        assert f"it holds capabilities pageheat lacks ({', '.join(capabilities.names(extra))})" in line

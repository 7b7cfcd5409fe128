"""The command line: bad input gets one line and a non-zero exit; SIGTERM stops serve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import PAGEHEAT, free_port, need_kernel, run_pageheat, stop_process, wait_http


def one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pageheat: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_snapshot_of_missing_pid() -> None:
    r = run_pageheat("snapshot", "--pid", "4194304", "--json")
    assert r.returncode == 2
    assert "no such process: 4194304" in one_line_error(r)
    assert r.stdout == ""


@pytest.mark.parametrize("arg", ["0", "-3", "abc"])
def test_bad_pid_argument(arg: str) -> None:
    r = run_pageheat("snapshot", "--pid", arg, "--json")
    assert r.returncode == 2
    assert "not a process id" in r.stderr


def test_pages_requires_range() -> None:
    r = run_pageheat("snapshot", "--pid", "1", "--pages", "--json")
    assert r.returncode == 2
    assert "--pages requires --range" in one_line_error(r)


@pytest.mark.parametrize("body, field", [
    ("bins: 1\n", "bins"),
    ("aging: 10ms\n", "aging"),
    ("binz: 3\n", "binz"),
    ("targets: {comm_regex: '(unclosed'}\n", "targets.comm_regex"),
    ("listen: nowhere\n", "listen"),
    ("cgroup: private\n", "cgroup"),
])
def test_bad_config_names_the_field(tmp_path, body: str, field: str) -> None:
    cfg = tmp_path / "bad.yml"
    cfg.write_text(body)
    r = run_pageheat("serve", "--config", str(cfg))
    assert r.returncode == 2
    assert f"bad configuration: {field}:" in one_line_error(r)


def test_serve_with_missing_pid() -> None:
    r = run_pageheat("serve", "--pid", "4194304")
    assert r.returncode == 2
    assert "no such process" in one_line_error(r)


def test_missing_config_file(tmp_path) -> None:
    r = run_pageheat("serve", "--config", str(tmp_path / "nope.yml"))
    assert r.returncode == 2
    assert "nope.yml" in one_line_error(r)


@pytest.mark.kernel
@pytest.mark.least_privilege
def test_without_capabilities_says_what_is_missing(ptwalk_ok, workload) -> None:
    t = workload("--size", "16MiB")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "--inh-caps=-all", *PAGEHEAT, "snapshot", "--pid", str(t.pid), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    line = one_line_error(r)
    # ptwalk (what auto falls back to here) does not need CAP_SYS_ADMIN any more.
    assert "CAP_BPF" in line and "CAP_SYS_ADMIN" not in line


@pytest.mark.kernel
def test_doctor_reports_every_source(ptwalk_ok) -> None:
    r = run_pageheat("doctor", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    names = [s["source"] for s in report["sources"]]
    assert set(names) == {"ptwalk", "mglru-fexit", "mglru-hook", "damon"}
    assert report["auto"] == "ptwalk"
    assert all(s["detail"] for s in report["sources"])


@pytest.mark.kernel
def test_sigterm_stops_serve_quickly(ptwalk_ok, workload) -> None:
    t = workload("--size", "64MiB")
    port = free_port()
    proc = subprocess.Popen([*PAGEHEAT, "serve", "--pid", str(t.pid), "--listen", f"127.0.0.1:{port}",
                             "--aging", "200ms"], stderr=subprocess.PIPE, text=True)
    wait_http(f"http://127.0.0.1:{port}/metrics")
    time.sleep(1)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
    assert time.monotonic() - start < 2.0
    assert "Traceback" not in proc.stderr.read()


def test_serve_cgroup_own_needs_a_command() -> None:
    for args in (["--cgroup", "own"], ["--cgroup", "own", "--"]):
        r = run_pageheat("serve", *args)
        assert r.returncode == 2
        assert "--cgroup own needs a command to launch" in one_line_error(r)


def test_serve_of_a_missing_command(tmp_path) -> None:
    r = run_pageheat("serve", "--cgroup", "own", "--", str(tmp_path / "nope"), "--flag")
    assert r.returncode == 2
    assert one_line_error(r) == f"pageheat: cannot run {tmp_path / 'nope'}: no such executable"


@pytest.fixture
def memory_cgroups():
    """The memory cgroup hierarchy serve --cgroup own creates in, if this machine has one."""
    from pageheat.kernel import cgroups

    if os.geteuid() != 0:
        need_kernel("not root: cannot create memory cgroups")
    try:
        return cgroups.detect()
    except cgroups.CgroupError as e:
        need_kernel(str(e))


def pid_series(port: int, pid: int) -> set[str]:
    """Names of the metric samples of one process in a scrape of serve."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.labels.get("pid") == str(pid)}


def api_targets(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as r:
        return json.load(r)


def memory_cgroup_dir(pid: int, hierarchy) -> Path:
    from pageheat.kernel import cgroups

    own = cgroups.parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    path = own["memory" if hierarchy.version == 1 else ""]
    return hierarchy.mount.point / path.removeprefix(hierarchy.mount.root.rstrip("/")).lstrip("/")


def only_launched(tmp_path: Path) -> Path:
    """A config that follows nothing but the launched command (no top-N by RSS)."""
    cfg = tmp_path / "only-launched.yml"
    cfg.write_text("targets: {top_rss: 0}\naging: 200ms\ndiscovery_interval: 200ms\n")
    return cfg


@pytest.mark.kernel
@pytest.mark.parametrize(("how", "sig"), [("flag", signal.SIGTERM), ("config", signal.SIGTERM),
                                         ("flag", signal.SIGHUP), ("flag", signal.SIGUSR1)])
def test_serve_launches_command_in_its_own_cgroup(ptwalk_ok, memory_cgroups, tmp_path, how, sig) -> None:
    """... and stops it, and removes its cgroup, on TERM and on the signals whose default
    action would kill serve without that (HUP, USR1)."""
    port = free_port()
    truth = tmp_path / "truth.json"
    cfg = only_launched(tmp_path)
    if how == "config":
        cfg.write_text(cfg.read_text() + "cgroup: own\n")
    own = ["--cgroup", "own"] if how == "flag" else []
    serve = subprocess.Popen([*PAGEHEAT, "serve", "--config", str(cfg),
                              "--listen", f"127.0.0.1:{port}", *own, "--",
                              *PAGEHEAT, "workload", "--size", "16MiB", "--truth", str(truth)],
                             stderr=subprocess.PIPE, text=True)
    child = None
    try:
        deadline = time.monotonic() + 60
        while not truth.exists():
            assert serve.poll() is None, serve.stderr.read()
            assert time.monotonic() < deadline, "the workload did not start"
            time.sleep(0.05)
        child = json.loads(truth.read_text())["pid"]
        wait_http(f"http://127.0.0.1:{port}/metrics")
        while "pageheat_process_resident_pages" not in pid_series(port, child):
            assert time.monotonic() < deadline, "the launched process's series never appeared"
            time.sleep(0.2)
        assert "pageheat_accessed_pages_bucket" in pid_series(port, child)

        cgdir = memory_cgroup_dir(child, memory_cgroups)
        assert cgdir.parent == memory_cgroups.parent  # a fresh cgroup under pageheat/
        assert cgdir.name.startswith(f"python-{serve.pid}")
        assert cgdir != memory_cgroup_dir(os.getpid(), memory_cgroups)
        assert (cgdir / "cgroup.procs").read_text().split() == [str(child)]

        start = time.monotonic()
        serve.send_signal(sig)
        assert serve.wait(10) == 0
        assert time.monotonic() - start < 5.0
        assert not Path(f"/proc/{child}").exists()  # terminated and reaped
        assert not cgdir.exists()
        err = serve.stderr.read()
        assert "Traceback" not in err and f"launched pid {child} exited" in err
    finally:
        stop_process(serve)
        if child is not None and Path(f"/proc/{child}").exists():
            os.kill(child, signal.SIGKILL)


@pytest.mark.kernel
def test_serve_keeps_running_after_the_command_exits(ptwalk_ok, memory_cgroups, tmp_path) -> None:
    port = free_port()
    done = tmp_path / "done"  # the command runs until the test has looked at it, then exits
    serve = subprocess.Popen([*PAGEHEAT, "serve", "--config", str(only_launched(tmp_path)),
                              "--listen", f"127.0.0.1:{port}", "--cgroup", "own", "--",
                              PAGEHEAT[0], "-c", "import os, sys, time\n"
                              "while not os.path.exists(sys.argv[1]): time.sleep(0.05)", str(done)],
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        deadline = time.monotonic() + 30
        while not (targets := api_targets(port)):
            assert time.monotonic() < deadline, "the launched command was never followed"
            time.sleep(0.2)
        child = targets[0]["pid"]
        assert pid_series(port, child)
        cgdir = memory_cgroup_dir(child, memory_cgroups)
        assert cgdir.parent == memory_cgroups.parent
        done.touch()
        while Path(f"/proc/{child}").exists() or cgdir.exists() or pid_series(port, child):
            assert serve.poll() is None, serve.stderr.read()
            assert time.monotonic() < deadline + 10, "the series or the cgroup outlived the command"
            time.sleep(0.2)
        time.sleep(1)
        assert serve.poll() is None  # still serving after the command exited
        wait_http(f"http://127.0.0.1:{port}/healthz")
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(10) == 0
        err = serve.stderr.read()
        assert "Traceback" not in err and f"launched pid {child} exited with status 0" in err
    finally:
        stop_process(serve)


@pytest.mark.kernel
def test_serve_cgroup_own_on_a_read_only_hierarchy(memory_cgroups, tmp_path) -> None:
    # A private mount namespace, where only this test's view of the memory hierarchy is read-only.
    marker = tmp_path / "ran"
    script = (f"mount -o remount,bind,ro {memory_cgroups.mount.point} && "
              f'exec "$@"')
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                        *PAGEHEAT, "serve", "--listen", f"127.0.0.1:{free_port()}", "--cgroup", "own",
                        "--", "touch", str(marker)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    line = one_line_error(r)
    assert line.startswith("pageheat: cannot create a memory cgroup: ")
    assert line.endswith(": Read-only file system")
    assert not marker.exists()  # nothing was started


@pytest.mark.parametrize("args", [["doctor"], ["snapshot", "--pid", "1"], ["completion", "bash"]])
def test_closed_standard_output_is_an_error(args: list[str]) -> None:
    """`cmd >&-`: Python makes sys.stdout None and print() drops everything silently."""
    import shlex

    r = subprocess.run(["sh", "-c", " ".join(map(shlex.quote, [*PAGEHEAT, *args])) + " >&-"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == f"pageheat: {args[0]}: standard output is closed"


@pytest.mark.parametrize("args", [["snapshot", "--pid", "abc"], ["serve", "--bins"], ["bogus"], []])
def test_argument_errors_are_one_line(args: list[str]) -> None:
    r = run_pageheat(*args)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pageheat: ") and "--help)" in lines[0], r.stderr

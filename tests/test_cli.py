"""The command line: bad input gets one line and a non-zero exit; SIGTERM stops serve."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from conftest import PAGEHEAT, free_port, run_pageheat, wait_http


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
def test_without_capabilities_says_what_is_missing(ptwalk_ok, workload) -> None:
    t = workload("--size", "16MiB")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "--inh-caps=-all", *PAGEHEAT, "snapshot", "--pid", str(t.pid), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    line = one_line_error(r)
    assert "CAP_SYS_ADMIN" in line and "CAP_BPF" in line


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

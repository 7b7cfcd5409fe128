"""The command line's configuration edges (issue 11 kind 5, issue 15's exporter conventions):
one-line errors with exit 2, precedence, --config.check, log options anywhere, completion,
and what serve follows and exports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from cli_helpers import clean_env, scrape
from conftest import PAGEHEAT, free_port, run_pageheat, stop_process, wait_http

ROOT = Path(__file__).resolve().parent.parent


def one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pageheat: "), r.stderr
    assert "Traceback" not in r.stderr and "errors.pydantic.dev" not in r.stderr
    return lines[0]


def yaml_mark(text: str) -> tuple[int, int]:
    """Line and column (1-based) where PyYAML itself locates the syntax error in ``text``."""
    try:
        yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        return e.problem_mark.line + 1, e.problem_mark.column + 1
    raise AssertionError(f"{text!r} is valid YAML")


@pytest.mark.kind5
@pytest.mark.parametrize(("flag", "text"), [
    ("--config", "aging: 1s\ntargets: {top_rss: 3\n"),
    ("--config", "aging: 1s\nbins: 16: 32\n"),
    ("--web.config.file", "basic_auth_users:\n  alice: [1\n"),
    ("--web-config", "tls_server_config:\n\tcert_file: a\n"),
])
def test_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path: Path, flag: str,
                                                                    text: str) -> None:
    f = tmp_path / "bad.yml"
    f.write_text(text)
    r = run_pageheat("serve", flag, str(f), env=clean_env(), timeout=60)
    assert r.returncode == 2
    line, column = yaml_mark(text)
    assert f"{f}:{line}:{column}: YAML syntax error" in one_line_error(r)


@pytest.mark.kind5
def test_web_config_validation_error_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "web.yml"
    f.write_text("basic_auth_user:\n  x: y\ntls_server_config:\n  cert_file: a.pem\n"
                 "  prefer_server_cipher_suites: maybe\n")
    r = run_pageheat("serve", "--web.config.file", str(f), env=clean_env(), timeout=60)
    assert r.returncode == 2
    line = one_line_error(r)
    assert str(f) in line and "basic_auth_user:" in line \
        and "tls_server_config.prefer_server_cipher_suites:" in line


@pytest.mark.kind5
@pytest.mark.parametrize(("how", "value"), [
    ("file", ".inf"), ("file", ".nan"), ("file", "-.inf"), ("file", "1.0e+400"), ("env", "inf"),
    ("env", "1e400"), ("flag", "inf"), ("flag", "99999999999h"),
])
def test_non_finite_aging_is_rejected(tmp_path: Path, how: str, value: str) -> None:
    args, env = ["serve"], clean_env()
    if how == "file":
        f = tmp_path / "c.yml"
        f.write_text(f"aging: {value}\n")
        args += ["--config", str(f)]
    elif how == "env":
        env["PAGEHEAT_AGING"] = value
    else:
        args += ["--aging", value]
    r = run_pageheat(*args, env=env, timeout=60)
    assert r.returncode == 2
    assert one_line_error(r).startswith("pageheat: bad configuration: aging: ")


@pytest.mark.kind5
@pytest.mark.parametrize("field, value", [("cpu_budget", ".nan"), ("cold_after", ".inf"),
                                          ("discovery_interval", ".inf"), ("targets", "{min_rss: .inf}")])
def test_other_non_finite_values_are_rejected(tmp_path: Path, field: str, value: str) -> None:
    f = tmp_path / "c.yml"
    f.write_text(f"{field}: {value}\n")
    r = run_pageheat("serve", "--config", str(f), env=clean_env(), timeout=60)
    assert r.returncode == 2
    assert f"bad configuration: {field}" in one_line_error(r)


@pytest.mark.kind5
@pytest.mark.parametrize("command", [["serve"], ["snapshot", "--pid", str(os.getpid()), "--json"],
                                     ["top", "--pid", str(os.getpid())], ["doctor", "--json"]])
def test_bad_tlb_flush_is_a_configuration_error(command: list[str]) -> None:
    r = run_pageheat(*command, env=clean_env(PAGEHEAT_TLB_FLUSH="bogus"), timeout=60)
    assert r.returncode == 2
    assert one_line_error(r).startswith("pageheat: bad configuration: tlb_flush: ")
    assert r.stdout == ""


@pytest.mark.kind5
@pytest.mark.parametrize("command", [["serve"], ["snapshot", "--pid", str(os.getpid()), "--json"]])
def test_misspelt_pageheat_variable_is_an_error(command: list[str]) -> None:
    r = run_pageheat(*command, env=clean_env(PAGEHEAT_AGEING="2s"), timeout=60)
    assert r.returncode == 2
    line = one_line_error(r)
    assert "unknown environment variable PAGEHEAT_AGEING" in line and "PAGEHEAT_AGING" in line


def effective(*args: str, env: dict[str, str] | None = None) -> dict:
    r = run_pageheat("serve", *args, "--config.check", env=env or clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


@pytest.mark.kind5
def test_precedence_flags_environment_file_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("aging: 2s\nbins: 16\ncold_after: 5m\ntargets: {comm_regex: '^db', top_rss: 9}\n")
    env = clean_env(PAGEHEAT_AGING="3s", PAGEHEAT_BINS="8", PAGEHEAT_TARGETS__TOP_RSS="2")
    got = effective("--config", str(f), "--aging", "4s", env=env)
    assert got["aging"] == 4.0  # flag
    assert got["bins"] == 8  # environment over file
    assert got["targets"]["top_rss"] == 2  # nested environment variable over file
    assert got["targets"]["comm_regex"] == "^db"  # the rest of the file's targets stays
    assert got["cold_after"] == 300.0  # file over default
    assert got["max_series"] == 20000  # default (README, Cardinality)


@pytest.mark.kind5
@pytest.mark.parametrize("args", [
    ["--log-level", "debug", "serve", "--config.check"],
    ["serve", "--log-level", "debug", "--config.check"],
    ["serve", "--config.check", "--log.level", "debug"],
    ["--log.format", "json", "serve", "--log.level", "warning", "--config.check"],
    ["serve", "--log.format", "logfmt", "--config.check"],
])
def test_log_options_anywhere_on_the_command_line(args: list[str]) -> None:
    r = run_pageheat(*args, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["listen"]


@pytest.mark.kind5
@pytest.mark.parametrize("command", [["snapshot", "--pid", "4194304", "--json"], ["top", "--pid", "4194304"]])
def test_log_level_after_other_subcommands(command: list[str]) -> None:
    r = run_pageheat(*command, "--log-level", "debug", env=clean_env(), timeout=60)
    assert r.returncode == 2
    assert "no such process: 4194304" in one_line_error(r)


@pytest.mark.kind5
@pytest.mark.parametrize("args", [["--seconds", "inf"], ["--seconds", "nan"], ["--listen", "nope"],
                                  ["--listen", "127.0.0.1:99999"]])
def test_demo_rejects_bad_values_before_starting(args: list[str]) -> None:
    r = run_pageheat("demo", *args, env=clean_env(), timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = one_line_error(r)  # argparse's errors are one line too, without the usage
    assert line.startswith("pageheat: argument") and line.endswith("(see pageheat demo --help)")


@pytest.mark.kind5
@pytest.mark.parametrize(("args", "said"), [
    (["--hot", "nan"], "argument --hot: expected a fraction from 0 to 1"),
    (["--hot", "-0.5"], "argument --hot: expected a fraction from 0 to 1"),
    (["--hot", "2"], "argument --hot: expected a fraction from 0 to 1"),
    (["--warm", "inf"], "argument --warm: expected a fraction from 0 to 1"),
    (["--warm", "1.5"], "argument --warm: expected a fraction from 0 to 1"),
    (["--size", "5000"], "argument --size: expected a size of whole 4096-byte pages"),
    (["--size", "0"], "argument --size: expected a size of whole 4096-byte pages"),
    (["--seed", "-1"], "argument --seed: expected a seed from 0 up"),
])
def test_workload_rejects_bad_values_before_starting(tmp_path: Path, args: list[str], said: str) -> None:
    r = run_pageheat("workload", "--truth", str(tmp_path / "t.json"), *args, env=clean_env(), timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert one_line_error(r).startswith(f"pageheat: {said}"), r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.kind5
def test_workload_hot_and_warm_together_at_most_all_pages(tmp_path: Path) -> None:
    r = run_pageheat("workload", "--truth", str(tmp_path / "t.json"), "--hot", "0.7", "--warm", "0.5",
                     env=clean_env(), timeout=60)
    assert r.returncode == 2
    assert "--hot 0.7 and --warm 0.5 are more than all pages" in one_line_error(r)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.kind5
def test_workload_truth_file_and_its_folder(tmp_path: Path) -> None:
    """--truth a directory: refused before anything starts, no DIR.tmp beside it. A truth file
    goes in whole through a temporary file of its own: a sibling X.tmp is left as it was."""
    d = tmp_path / "truth"
    d.mkdir()
    r = run_pageheat("workload", "--size", "1MiB", "--truth", str(d), env=clean_env(), timeout=60)
    assert r.returncode == 2, r.stderr
    assert one_line_error(r) == f"pageheat: argument --truth: {d} is a directory (the truth is a " \
        "file) (see pageheat workload --help)"
    r = run_pageheat("workload", "--size", "1MiB", "--truth", str(tmp_path / "no" / "t.json"),
                     env=clean_env(), timeout=60)
    assert r.returncode == 2 and "no such directory" in one_line_error(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truth"]

    (tmp_path / "t.tmp").write_text("a sibling")
    truth = tmp_path / "t.json"
    truth.write_text("an older truth")
    proc = subprocess.Popen([*PAGEHEAT, "workload", "--size", "1MiB", "--hot", "0.25", "--warm", "0.5",
                             "--truth", str(truth)], env=clean_env())
    try:
        deadline = time.monotonic() + 60
        while truth.read_text() == "an older truth":
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        t = json.loads(truth.read_text())
    finally:
        stop_process(proc)
    pages = (1 << 20) // 4096
    assert t["pid"] == proc.pid and len(t["hot"]) == int(pages * 0.25) and len(t["warm"]) == int(pages * 0.5)
    assert (tmp_path / "t.tmp").read_text() == "a sibling"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.tmp", "truth"]


@pytest.mark.parametrize(("listen", "url"), [
    (":9100", "http://127.0.0.1:9100/metrics"), ("0.0.0.0:9100", "http://127.0.0.1:9100/metrics"),
    ("[::]:9100", "http://[::1]:9100/metrics"), ("127.0.0.2:9100", "http://127.0.0.2:9100/metrics"),
    ("[::1]:9100", "http://[::1]:9100/metrics"), ("localhost:9100", "http://localhost:9100/metrics"),
    ("[fe80::1%eth0]:9100", "http://[fe80::1%25eth0]:9100/metrics"),
])
def test_demo_scrapes_an_address_it_can_connect_to(listen: str, url: str) -> None:
    from pageheat.commands.demo import scrape_url

    assert scrape_url(listen) == url


def bind_error(host: str, port: int) -> str | None:
    """What the kernel says when this host:port cannot be bound (None: it can)."""
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror
    return None


def demo_cannot_listen(host: str, port: int, seconds: str) -> None:
    """`demo --listen HOST:PORT`, where its serve cannot bind: serve's one line, naming the
    error the kernel gives a bind there (the truth), exit 1, nothing on stdout."""
    why = bind_error(host, port)
    assert why is not None, f"{host}:{port} can be bound here: the test needs one that cannot"
    r = run_pageheat("demo", "--listen", f"{host}:{port}", "--seconds", seconds, env=clean_env(),
                     timeout=90)
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = one_line_error(r)
    assert line.startswith(f"pageheat: cannot listen on {host}:{port}: "), line
    assert line.lower().endswith(why.lower()), (line, why)
    assert r.stdout == ""


@pytest.mark.kernel
@pytest.mark.kind5
def test_demo_on_a_port_another_exporter_holds(ptwalk_ok, workload) -> None:
    """Its own serve cannot listen: serve's one line and its exit status, not the heat of the
    other exporter's process."""
    t = workload("--size", "16MiB")
    port = free_port()
    other = subprocess.Popen([*PAGEHEAT, "serve", "--pid", str(t.pid), "--listen", f"127.0.0.1:{port}"],
                             stderr=subprocess.DEVNULL, env=clean_env())
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        demo_cannot_listen("127.0.0.1", port, "4")
        assert other.poll() is None  # the other exporter is untouched
    finally:
        stop_process(other)


@pytest.mark.kernel
@pytest.mark.kind5
def test_demo_on_an_address_not_of_this_host(ptwalk_ok) -> None:
    # TEST-NET-1 (RFC 5737): documentation only, no host's address.
    demo_cannot_listen("192.0.2.1", free_port(), "2")


@pytest.mark.kernel
@pytest.mark.kind5
def test_demo_on_all_addresses(ptwalk_ok) -> None:
    """':PORT' listens on all addresses; the demo scrapes it on 127.0.0.1 and prints its heat:
    the hot band (the middle fifth of the region) the hottest rows."""
    port = free_port()
    r = run_pageheat("demo", "--listen", f":{port}", "--seconds", "4", env=clean_env(), timeout=90)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    head, _, body = r.stdout.partition("\n\n")
    assert f"exporting http://127.0.0.1:{port}/metrics" in head
    rows = [line.split() for line in body.splitlines() if line.strip()]
    rates = {int(row[0]): float(next(w for w in row if w.endswith("/s"))[:-2]) for row in rows}
    assert rates and max(rates.values()) > 0, r.stdout


def test_config_check_prints_the_exporter_flags(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\n")
    got = effective("--web.listen-address", "127.0.0.1:9001", "--web.listen-address", "[::1]:9002",
                    "--web.telemetry-path", "/prom", "--web.config.file", str(web))
    assert got["listen"] == ["127.0.0.1:9001", "[::1]:9002"]
    assert got["telemetry_path"] == "/prom" and got["web_config_file"] == str(web)
    assert effective("--listen", "127.0.0.1:9003")["listen"] == "127.0.0.1:9003"  # the old alias


def test_config_check_of_a_bad_configuration(tmp_path: Path) -> None:
    r = run_pageheat("serve", "--config.check", "--web.telemetry-path", "metrics", env=clean_env())
    assert r.returncode == 2
    assert one_line_error(r).startswith("pageheat: bad configuration: telemetry_path: ")
    assert r.stdout == ""


def test_completion_scripts() -> None:
    from pageheat.cli import parser

    subcommands = set(parser()._subparsers._group_actions[0].choices)
    assert {"serve", "snapshot", "doctor", "completion"} <= subcommands
    for shell in ("bash", "zsh"):
        r = run_pageheat("completion", shell, timeout=60)
        assert r.returncode == 0, r.stderr
        assert all(name in r.stdout for name in subcommands), shell
        assert "--web.listen-address" in r.stdout and "--log.level" in r.stdout
        if shell == "bash":
            check = subprocess.run(["bash", "-n"], input=r.stdout, text=True, capture_output=True)
            assert check.returncode == 0, check.stderr
            # Sourcing it defines the completion function and registers it for pageheat.
            src = subprocess.run(["bash", "-c", 'source /dev/stdin; complete -p pageheat'],
                                 input=r.stdout, text=True, capture_output=True)
            assert src.returncode == 0 and "pageheat" in src.stdout, src.stderr


# -- serve, for real ---------------------------------------------------------------------------

def api_pids(port: int) -> set[int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as r:
        return {t["pid"] for t in json.load(r)}


@pytest.mark.kernel
@pytest.mark.kind4
def test_serve_with_a_command_follows_only_the_command(ptwalk_ok, workload, tmp_path: Path) -> None:
    """With no targets configured, `serve -- CMD` follows CMD, not also the top 5 by RSS."""
    big = workload("--size", "128MiB")  # what the default top-5-by-RSS selector would pick
    port = free_port()
    truth = tmp_path / "truth.json"
    env = clean_env(PAGEHEAT_DISCOVERY_INTERVAL="200ms", PAGEHEAT_AGING="200ms")
    serve = subprocess.Popen([*PAGEHEAT, "serve", "--web.listen-address", f"127.0.0.1:{port}", "--",
                              *PAGEHEAT, "workload", "--size", "16MiB", "--truth", str(truth)],
                             env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not truth.exists():
            assert serve.poll() is None, serve.stderr.read()
            assert time.monotonic() < deadline, "the workload did not start"
            time.sleep(0.05)
        child = json.loads(truth.read_text())["pid"]
        wait_http(f"http://127.0.0.1:{port}/metrics")
        while not api_pids(port):
            assert time.monotonic() < deadline, "the command was never followed"
            time.sleep(0.2)
        for _ in range(10):  # ten discovery intervals: nothing else is picked up
            assert api_pids(port) == {child}
            time.sleep(0.2)
        assert big.pid not in api_pids(port)
    finally:
        stop_process(serve)


@pytest.mark.kernel
@pytest.mark.kind5
def test_serve_exports_errors_at_zero_self_metrics_and_build_info(ptwalk_ok, workload) -> None:
    from pageheat.serve.stats import ERROR_KINDS

    t = workload("--size", "16MiB")
    port = free_port()
    serve = subprocess.Popen([*PAGEHEAT, "serve", "--log.format", "json", "--pid", str(t.pid),
                              "--listen", f"127.0.0.1:{port}", "--aging", "200ms"],
                             env=clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        fams = scrape(port)
        errors = {s.labels["kind"]: s.value for s in fams["pageheat_errors_total"]}
        assert errors == dict.fromkeys(ERROR_KINDS, 0.0)  # before any error
        # process_* for serve itself: its pid's /proc/PID/stat says how much it has resident.
        rss = int(Path(f"/proc/{serve.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        got = fams["process_resident_memory_bytes"][0].value
        assert 0.5 * rss < got < 2 * rss
        assert fams["process_cpu_seconds_total"][0].value > 0
        build = fams["pageheat_build_info"][0].labels
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert build["revision"] == head and build["source"] == "ptwalk"
        assert {"version", "kernel", "python_version"} <= set(build)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(10) == 0
        lines = serve.stderr.read().splitlines()
        records = [json.loads(line) for line in lines]  # --log.format json: every line is JSON
        assert any(f"following pid {t.pid}" in r["msg"] for r in records)
        assert all({"ts", "level", "msg"} <= set(r) for r in records)
    finally:
        stop_process(serve)


@pytest.mark.kind5
def test_config_check_works_outside_the_host_pid_namespace(tmp_path: Path) -> None:
    """Checking a configuration follows no process, so it also works where serve itself would
    refuse to start (a container without hostPID)."""
    f = tmp_path / "c.yml"
    f.write_text("aging: 2s\n")
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", *PAGEHEAT, "serve",
                        "--config.file", str(f), "--config.check"], capture_output=True, text=True,
                       env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["aging"] == 2.0


@pytest.mark.kind5
def test_bad_web_config_does_not_echo_values(tmp_path: Path) -> None:
    """A plaintext password where the bcrypt hash belongs must not be printed back."""
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: 12345678\n")
    r = run_pageheat("serve", "--web.config.file", str(web), "--config.check", env=clean_env(),
                     timeout=60)
    assert r.returncode == 2
    line = one_line_error(r)
    assert "basic_auth_users.alice" in line and "12345678" not in line

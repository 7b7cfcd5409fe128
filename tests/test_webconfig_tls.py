"""Secure /metrics: `pageheat serve --web-config` with TLS and bcrypt basic auth, checked with
urllib and scraped by a real Prometheus (https, CA-verified, basic_auth)."""

from __future__ import annotations

import base64
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PAGEHEAT, free_port, stop_process, wait_http
from test_exporter_prometheus import wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.prometheus]

USER, PASSWORD = "prometheus", "s3cret pass:word"


@dataclass
class Secured:
    url: str  # https://127.0.0.1:PORT
    ca: Path  # the self-signed certificate, to verify the server with
    context: ssl.SSLContext
    log: Path


def make_cert(d: Path) -> tuple[Path, Path]:
    cert, key = d / "pageheat.crt", d / "pageheat.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=pageheat-test", "-keyout", str(key),
                    "-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def secured(ptwalk_ok, workload, tmp_path):
    """`pageheat serve` behind TLS and basic auth, following a small workload."""
    import bcrypt

    cert, key = make_cert(tmp_path)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    web = tmp_path / "web.yml"
    # Relative paths: resolved against the web-config file's directory.
    web.write_text(f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n"
                   f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    t = workload("--size", "32MiB", "--layout", "contiguous", "--hot", "0.25")
    cfg = tmp_path / "pageheat.yml"
    cfg.write_text(f"targets: {{pids: [{t.pid}], top_rss: 0}}\naging: 500ms\ncpu_budget: 0.5\n"
                   "discovery_interval: 500ms\n")
    # test_exporter_prometheus.start_serve waits on plain http://, which a TLS port never
    # answers: start it here the same way, and wait over https.
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([*PAGEHEAT, "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}",
                             "--web-config", str(web)], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", context=ctx)
        yield Secured(url, cert, ctx, log)
    finally:
        stop_process(proc)
    assert "Traceback" not in log.read_text(), log.read_text()


def get(s: Secured, path: str, user: str | None = None, password: str | None = None,
        ) -> tuple[int, dict, str]:
    req = urllib.request.Request(s.url + path)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=s.context) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_basic_auth_over_tls(secured):
    s = secured
    assert get(s, "/metrics")[0] == 401
    assert get(s, "/metrics", USER, "wrong")[0] == 401
    assert get(s, "/metrics", USER, PASSWORD + "x")[0] == 401
    assert get(s, "/metrics", "nobody", PASSWORD)[0] == 401
    assert get(s, "/metrics", USER, "")[0] == 401
    assert get(s, "/api/v1/targets")[0] == 401
    assert get(s, "/")[0] == 401
    assert get(s, "/no/such/path")[0] == 401  # not 404: unknown paths say nothing without credentials
    # Liveness probes need no credentials (the documented choice: README, Configuration,
    # "TLS and basic auth").
    assert get(s, "/healthz")[0] == 200
    assert get(s, "/", USER, PASSWORD)[0] == 200

    def metrics() -> str:
        status, _, body = get(s, "/metrics", USER, PASSWORD)
        assert status == 200
        return body if "pageheat_address_bin_info{" in body else ""

    body = wait_for(metrics, 30, "the first harvest in /metrics")
    assert "pageheat_accessed_pages_bucket{" in body
    # Bins carry numbers, not addresses, unless expose_addresses is set.
    info = [line for line in body.splitlines() if line.startswith("pageheat_address_bin_info{")]
    assert info
    for line in info:
        assert "start=" not in line and "end=" not in line, line
    # A cached good credential does not let a wrong one through afterwards.
    assert get(s, "/metrics", USER, "wrong")[0] == 401

    # No plain-HTTP fallback on the TLS port.
    with pytest.raises(OSError):
        urllib.request.urlopen(s.url.replace("https", "http") + "/metrics", timeout=5).read()
    # A client that does not trust the certificate is refused by its own verification.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(s.url + "/healthz", timeout=5,
                               context=ssl.create_default_context()).read()


def test_401_asks_for_basic_auth(secured):
    # RFC 7235: a 401 response carries a WWW-Authenticate challenge (browsers and curl
    # --anyauth need it).
    status, headers, _ = get(secured, "/metrics")
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Basic ")


def test_overlong_password_gets_401(secured):
    # bcrypt >= 5 raises ValueError for passwords over 72 bytes: that must be a 401, not a
    # dropped connection.
    assert get(secured, "/metrics", USER, "x" * 100)[0] == 401


def test_prometheus_scrapes_over_tls_with_basic_auth(secured, prometheus_server, tmp_path):
    s = secured
    host = s.url.removeprefix("https://")
    pw = tmp_path / "password"
    pw.write_text(PASSWORD)
    prom = prometheus_server(f"""
  - job_name: pageheat-tls
    scheme: https
    tls_config: {{ca_file: '{s.ca}'}}
    basic_auth: {{username: {USER}, password_file: '{pw}'}}
    static_configs: [{{targets: ['{host}']}}]
  - job_name: pageheat-wrong-password
    scheme: https
    tls_config: {{insecure_skip_verify: true}}
    basic_auth: {{username: {USER}, password: wrong}}
    static_configs: [{{targets: ['{host}']}}]
  - job_name: pageheat-plain-http
    static_configs: [{{targets: ['{host}']}}]
""")
    wait_for(lambda: prom.query('up{job="pageheat-tls"} == 1'), 30, "the TLS job to be up")
    wait_for(lambda: prom.query('pageheat_targets{job="pageheat-tls"} == 1'), 30,
             "pageheat_targets scraped over TLS")
    wait_for(lambda: prom.query('pageheat_address_bin_info{job="pageheat-tls"}'), 30,
             "bin info scraped over TLS")
    for r in prom.query('pageheat_address_bin_info{job="pageheat-tls"}'):
        assert "start" not in r["metric"] and "end" not in r["metric"], r["metric"]
    # The wrong password and plain HTTP scrape nothing.
    for job in ("pageheat-wrong-password", "pageheat-plain-http"):
        wait_for(lambda job=job: prom.query(f'up{{job="{job}"}} == 0'), 30, f"{job} to be down")
        assert not prom.query(f'pageheat_targets{{job="{job}"}}')


def test_shutdown_during_auth_is_clean(ptwalk_ok, workload, tmp_path) -> None:
    """SIGTERM while a request waits for bcrypt (cost 15: about a second here): serve exits 0
    and logs no traceback (a cancelled handler once made asyncio log one)."""
    import socket
    import time

    import bcrypt

    cert, key = make_cert(tmp_path)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=15)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n"
                   f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    t = workload("--size", "16MiB")
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([*PAGEHEAT, "serve", "--pid", str(t.pid), "--listen", f"127.0.0.1:{port}",
                             "--web-config", str(web)], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        wait_http(f"https://127.0.0.1:{port}/healthz", context=ctx)
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n"
                      .encode())
            time.sleep(0.3)  # the request is now in bcrypt's hands
            proc.terminate()
            assert proc.wait(15) == 0
    finally:
        stop_process(proc)
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text, text


@pytest.mark.kind5
def test_malformed_request_over_tls_gets_400(secured):
    """Below TLS, the same HTTP parser: garbage after the handshake is a 400, not a silent close."""
    import socket

    host, port = secured.url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            secured.context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"\x00\x01garbage\xff\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.rstrip().endswith(b"bad request: illegal request line")


def _feed_sees_workload(url: str, **kw):
    from pageheat.top.feed import RemoteFeed

    def attached():
        feed = RemoteFeed(url, **kw)
        try:
            feed.attach()
        except LookupError:  # no harvest yet
            return None
        return feed
    return wait_for(attached, 30, "the workload in /api/v1/heat over TLS")


@pytest.mark.kind5
def test_top_connect_feed_with_basic_auth_and_ca(secured, tmp_path, monkeypatch):
    """`top --connect` to a TLS + basic auth serve: credentials in the URL, or a user flag with
    the password from a file or the environment; the private CA from --ca-file."""
    from urllib.parse import quote

    from pageheat.config import CONNECT_PASSWORD_ENV
    from pageheat.top.feed import ConnectError, RemoteFeed

    s = secured
    hostport = s.url.removeprefix("https://")
    in_url = f"https://{quote(USER, safe='')}:{quote(PASSWORD, safe='')}@{hostport}"
    feed = _feed_sees_workload(in_url, ca_file=str(s.ca))
    assert feed.source_name == "ptwalk" and feed.base == s.url and feed.comm
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    assert _feed_sees_workload(s.url, user=USER, password_file=str(pw), ca_file=str(s.ca)).pid == feed.pid
    monkeypatch.setenv(CONNECT_PASSWORD_ENV, PASSWORD)
    assert _feed_sees_workload(s.url, user=USER, ca_file=str(s.ca)).pid == feed.pid

    monkeypatch.setenv(CONNECT_PASSWORD_ENV, "Xq7-not-it")
    with pytest.raises(ConnectError, match="401 Unauthorized.*--connect-user") as e:
        RemoteFeed(s.url, user=USER, ca_file=str(s.ca)).attach()
    assert "Xq7-not-it" not in str(e.value)
    with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED.*--ca-file"):
        RemoteFeed(in_url).attach()
    with pytest.raises(ConnectError, match="401"):
        RemoteFeed(s.url, ca_file=str(s.ca)).attach()


@pytest.mark.kind5
def test_top_connect_cli_in_a_terminal(secured, tmp_path):
    """The real `pageheat top --connect` in tmux: the flags reach the feed and the screen shows the
    server's target; a wrong password is one line and exit 1, without the password."""
    import os
    import shutil
    import time

    from test_top_tmux import Tmux

    assert shutil.which("tmux"), "tmux is not installed (apt-get install tmux)"
    s = secured
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    rc = tmp_path / "rc"
    # Without --pid, top follows the server's first target: wait for its first harvest (a
    # loaded machine may take longer than top's start-up).
    _feed_sees_workload(s.url, user=USER, password_file=str(pw), ca_file=str(s.ca))
    tmux = Tmux(tmp_path)
    top = " ".join([*PAGEHEAT, "top", "--connect", s.url, "--connect-user", USER,
                    "--connect-password-file", str(pw), "--ca-file", str(s.ca)])
    env = "env -u COLUMNS -u LINES TERM=xterm-256color"
    try:
        tmux("-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "40",
             f"{env} {top}; echo $? > {rc}; sleep 60")
        deadline = time.monotonic() + 40
        while "source ptwalk" not in (screen := tmux("capture-pane", "-p")):
            assert time.monotonic() < deadline and not rc.exists(), screen
            time.sleep(0.2)
        assert "(server)" in screen
        tmux("send-keys", "q")
        while not rc.exists():
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)
        assert rc.read_text().strip() == "0"
    finally:
        tmux.kill()
    # top refuses a non-terminal before it connects: the wrong password is checked in one too.
    rc.unlink()
    tmux = Tmux(tmp_path)
    env_pw = f"PAGEHEAT_CONNECT_PASSWORD=not-{os.getpid()}"
    top = " ".join([*PAGEHEAT, "top", "--connect", s.url, "--connect-user", USER, "--ca-file", str(s.ca)])
    try:
        tmux("-f", "/dev/null", "new-session", "-d", "-x", "200", "-y", "20",
             f"env {env_pw} TERM=xterm {top}; echo $? > {rc}; sleep 60")
        deadline = time.monotonic() + 30
        while not rc.exists():
            assert time.monotonic() < deadline, tmux("capture-pane", "-p")
            time.sleep(0.1)
        assert rc.read_text().strip() == "1"
        lines = [x for x in tmux("capture-pane", "-p").splitlines() if x.strip()]
        assert len(lines) == 1 and "401 Unauthorized" in lines[0] and s.url in lines[0], lines
        assert f"not-{os.getpid()}" not in lines[0]
    finally:
        tmux.kill()

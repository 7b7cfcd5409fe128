"""Unit tests for `pageheat top --connect`'s endpoint: credentials from the URL, a flag plus a
password file, or the environment; a private CA; one-line errors that never show the password."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
from pageheat.config import CONNECT_PASSWORD_ENV
from pageheat.top.feed import ConnectError, Endpoint


def creds(e: Endpoint) -> tuple[str, str]:
    assert e.authorization and e.authorization.startswith("Basic ")
    user, _, password = base64.b64decode(e.authorization[6:]).decode().partition(":")
    return user, password


def test_url_credentials_are_taken_out_of_the_url() -> None:
    e = Endpoint.parse("http://prom:s3cret%20pass%3Aword@127.0.0.1:9500/", env={})
    assert e.base == "http://127.0.0.1:9500"
    assert creds(e) == ("prom", "s3cret pass:word")
    assert e.context is None


def test_no_credentials() -> None:
    e = Endpoint.parse("http://localhost:9500", env={CONNECT_PASSWORD_ENV: "unused"})
    assert e.authorization is None and e.base == "http://localhost:9500"


def test_user_flag_with_password_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("p:ss word\nsecond line ignored\n")
    e = Endpoint.parse("https://[::1]:9500", user="alice", password_file=str(pw), env={})
    assert creds(e) == ("alice", "p:ss word") and e.base == "https://[::1]:9500"
    assert isinstance(e.context, ssl.SSLContext) and e.context.verify_mode == ssl.CERT_REQUIRED


def test_user_flag_with_password_from_environment() -> None:
    e = Endpoint.parse("http://h:1", user="alice", env={CONNECT_PASSWORD_ENV: "from-env"})
    assert creds(e) == ("alice", "from-env")


def test_url_password_wins_over_file_and_environment(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    e = Endpoint.parse("http://bob:from-url@h:1", user="alice", password_file=str(pw),
                       env={CONNECT_PASSWORD_ENV: "from-env"})
    assert creds(e) == ("bob", "from-url")


def test_ca_file_is_loaded(tmp_path: Path) -> None:
    from test_webconfig_tls import make_cert

    cert, _ = make_cert(tmp_path)
    e = Endpoint.parse("https://127.0.0.1:9500", ca_file=str(cert), env={})
    assert e.context is not None and e.context.cert_store_stats()["x509_ca"] >= 1


@pytest.mark.parametrize(("kw", "match"), [
    ({"url": "127.0.0.1:9500"}, "expected http://HOST:PORT"),
    ({"url": "ftp://h:1"}, "expected http://HOST:PORT"),
    ({"url": "http://h:99999"}, "not a URL"),
    ({"url": "http://h:1", "user": "alice"}, "without a password"),
    ({"url": "http://h:1", "password_file": "/etc/hostname"}, "without a user"),
    ({"url": "http://h:1", "user": "a", "password_file": "/nonexistent/pw"}, "--connect-password-file"),
    ({"url": "http://h:1", "ca_file": "/etc/hostname"}, "needs an https"),
    ({"url": "https://h:1", "ca_file": "/nonexistent/ca.pem"}, "--ca-file"),
])
def test_bad_options_are_one_line_errors(kw: dict, match: str) -> None:
    with pytest.raises(ConnectError, match=match) as e:
        Endpoint.parse(**kw, env={})
    assert "\n" not in str(e.value)


def test_errors_do_not_show_the_password() -> None:
    e = Endpoint.parse("http://u:topsecret@127.0.0.1:1", env={})  # nothing listens on port 1
    with pytest.raises(ConnectError) as err:
        e.get_json("/api/v1/heat", timeout=2)
    assert "topsecret" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_refused_and_the_credentials_go_nowhere_else(code: int) -> None:
    """A server that answers with a redirect (to another port, as an attacker's host would be)
    gets a one-line ConnectError; the redirect's target never sees a request, so never the
    Authorization header (urllib would copy it into the redirected request)."""
    import http.server
    import threading

    seen: list[dict[str, str]] = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    target = http.server.HTTPServer(("127.0.0.1", 0), Target)

    class Redirector(Target):
        def do_GET(self) -> None:
            self.send_response(code)
            self.send_header("Location", f"http://127.0.0.1:{target.server_port}/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()

    redirector = http.server.HTTPServer(("127.0.0.1", 0), Redirector)
    for server in (target, redirector):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        e = Endpoint.parse(f"http://alice:s3cret@127.0.0.1:{redirector.server_port}", env={})
        with pytest.raises(ConnectError) as err:
            e.get_json("/api/v1/targets", timeout=5)
        msg = str(err.value)
        assert f"HTTP {code}" in msg and "not followed" in msg and "\n" not in msg
        assert f"http://127.0.0.1:{target.server_port}/steal" in msg
        assert "s3cret" not in msg
        assert seen == []
    finally:
        for server in (target, redirector):
            server.shutdown()
            server.server_close()

"""The rest of exporter-toolkit's web-config format on real TLS handshakes and real sockets:
client_allowed_sans, cipher_suites and versions, curve_preferences, inline PEM, response
headers and rate_limit. A fleet's node_exporter web-config file works for pageheat unchanged.

The server is the real HttpServer (tests/httpserver_helpers.py); certificates are made by the
openssl command, as in test_webconfig_tls.py."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from httpserver_helpers import parse, raw, serve, synthetic_view
from pageheat.serve.webconfig import WebConfig

DATA = Path(__file__).parent / "data"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, and two client certificates it signed: SAN DNS:scraper.example and DNS:other.example."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=test-ca", "-keyout", str(d / "ca.key"),
            "-out", str(d / "ca.crt"))
    for name in ("scraper", "other"):
        openssl("req", *ec, "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{name}.example\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))
    return d


def web_config(tmp_path: Path, text: str) -> WebConfig:
    f = tmp_path / "web.yml"
    f.write_text(f"tls_server_config:\n  cert_file: {DATA}/unit_tls_cert.pem\n"
                 f"  key_file: {DATA}/unit_tls_key.pem\n" + text)
    return WebConfig.load(f)


def client(cert: str | None = None, *, minimum: ssl.TLSVersion | None = None,
           maximum: ssl.TLSVersion | None = None, ciphers: str | None = None,
           curve: str | None = None):
    """A wrap function for raw(): a TLS client that trusts the test server's certificate."""
    ctx = ssl.create_default_context(cafile=str(DATA / "unit_tls_cert.pem"))
    if cert:
        ctx.load_cert_chain(f"{cert}.crt", f"{cert}.key")
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    if curve:
        ctx.set_ecdh_curve(curve)
    return lambda sock: ctx.wrap_socket(sock, server_hostname="localhost")


def healthz(port: int, wrap) -> bytes | str:
    """The answer to GET /healthz, or the name of the TLS error the client saw."""
    try:
        return raw(port, HEALTHZ, wrap=wrap)
    except ssl.SSLError as e:
        return e.reason or type(e).__name__


@pytest.fixture(scope="module")
def views():
    return {100: synthetic_view(100)}


def refused(answer: bytes | str) -> bool:
    """No HTTP answer: a TLS error, or a connection closed without a byte (with TLS 1.3 the
    server's verdict on the client's certificate may arrive after the client's handshake)."""
    return isinstance(answer, str) or answer == b""


def test_client_allowed_sans_over_real_handshakes(views, pki, tmp_path, caplog) -> None:
    web = web_config(tmp_path, f"  client_auth_type: RequireAndVerifyClientCert\n"
                               f"  client_ca_file: {pki}/ca.crt\n"
                               "  client_allowed_sans: [scraper.example]\n")
    with serve(views, web=web) as s:
        ok = healthz(s.server.port, client(str(pki / "scraper")))
        assert isinstance(ok, bytes) and parse(ok)[0] == 200
        # A certificate the CA signed, with another SAN: the handshake passes, the connection
        # is closed before any answer.
        assert refused(healthz(s.server.port, client(str(pki / "other"))))
        assert "no subject alternative name in client_allowed_sans" in caplog.text
        # No certificate at all: refused by the TLS layer itself.
        assert refused(healthz(s.server.port, client()))


def test_cipher_suites_and_max_version_are_what_is_negotiated(views, tmp_path) -> None:
    web = web_config(tmp_path, "  max_version: TLS12\n"
                               "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n")
    with serve(views, web=web) as s:
        seen = {}

        def wrap(sock):
            tls = client()(sock)
            seen.update(version=tls.version(), cipher=tls.cipher()[0])
            return tls

        assert parse(healthz(s.server.port, wrap))[0] == 200
        assert seen == {"version": "TLSv1.2", "cipher": "ECDHE-ECDSA-AES256-GCM-SHA384"}
        # A client offering only another suite, or only TLS 1.3, gets no connection.
        assert refused(healthz(s.server.port, client(maximum=ssl.TLSVersion.TLSv1_2,
                                                     ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")))
        assert refused(healthz(s.server.port, client(minimum=ssl.TLSVersion.TLSv1_3)))


@pytest.mark.parametrize(("curve", "ok"), [("secp384r1", True), ("prime256v1", False)])
def test_curve_preferences(views, tmp_path, curve: str, ok: bool) -> None:
    web = web_config(tmp_path, "  curve_preferences: [CurveP384]\n")
    with serve(views, web=web) as s:
        answer = healthz(s.server.port, client(curve=curve))
        assert (isinstance(answer, bytes) and parse(answer)[0] == 200) is ok, answer


def test_inline_cert_and_key_serve(views, tmp_path) -> None:
    def block(path: Path) -> str:
        return "|\n" + "".join(f"    {line}\n" for line in path.read_text().splitlines())

    f = tmp_path / "web.yml"
    f.write_text(f"tls_server_config:\n  cert: {block(DATA / 'unit_tls_cert.pem')}"
                 f"  key: {block(DATA / 'unit_tls_key.pem')}")
    with serve(views, web=WebConfig.load(f)) as s:
        assert parse(healthz(s.server.port, client()))[0] == 200


def test_headers_on_every_answer_and_rate_limit(views, tmp_path) -> None:
    f = tmp_path / "web.yml"
    f.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
                 "    Strict-Transport-Security: max-age=63072000\n"
                 "rate_limit:\n  interval: 1h\n  burst: 3\n")
    with serve(views, web=WebConfig.load(f)) as s:
        answers = [parse(raw(s.server.port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                                 .encode())) for path in ("/metrics", "/healthz", "/nope", "/metrics")]
        assert [a[0] for a in answers] == [200, 200, 404, 429]  # a burst of 3, then one an hour
        for _, headers, _ in answers:
            assert headers["x-frame-options"] == "deny"
            assert headers["strict-transport-security"] == "max-age=63072000"
        # Keep-alive: each request on one connection takes a token too.
        with socket.create_connection(("127.0.0.1", s.server.port), timeout=10) as c:
            c.sendall(HEALTHZ)
            assert c.recv(65536).startswith(b"HTTP/1.1 429 ")

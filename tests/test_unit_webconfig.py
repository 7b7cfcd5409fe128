"""Unit tests for exporter/serve/webconfig.py: basic auth with bcrypt hashes, TLS settings."""

from __future__ import annotations

import base64
import shutil
import ssl
from pathlib import Path

import bcrypt
import pytest
from pageheat.serve.webconfig import WebConfig
from pydantic import ValidationError

DATA = Path(__file__).parent / "data"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture
def web() -> WebConfig:
    return WebConfig(users={"alice": hashed("s3cret").encode(), "bob": hashed("pa:ss").encode()})


def test_no_users_means_no_auth() -> None:
    w = WebConfig()
    assert w.authorized(None) and w.authorized("") and w.authorized(basic("x", "y"))


def test_right_password_is_accepted(web: WebConfig) -> None:
    assert web.authorized(basic("alice", "s3cret"))
    # The scheme is case-insensitive (RFC 9110 11.1), as Go's Request.BasicAuth takes it.
    for scheme in ("basic", "BASIC", "bAsIc"):
        assert web.authorized(scheme + basic("alice", "s3cret")[5:])
    assert web.authorized(basic("bob", "pa:ss"))  # only the first colon separates user and password


@pytest.mark.parametrize("header", [
    None, "", "Basic", "Basic ", "Bearer abc", "Basicx " + base64.b64encode(b"alice:s3cret").decode(),
    "Basic !!!not-base64!!!", "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "Basic é",
    "Basic " + base64.b64encode(b"alice").decode(),
])
def test_malformed_headers_are_rejected(web: WebConfig, header: str | None) -> None:
    assert web.authorized(header) is False


@pytest.mark.parametrize(("user", "password"), [
    ("alice", "wrong"), ("alice", "S3cret"), ("alice", "s3cret "), ("alice", ""), ("bob", "s3cret"),
    ("mallory", "s3cret"), ("", "s3cret"),
])
def test_wrong_credentials_are_rejected(web: WebConfig, user: str, password: str) -> None:
    assert web.authorized(basic(user, password)) is False


def test_wrong_password_longer_than_bcrypt_limit_is_rejected(web: WebConfig) -> None:
    # bcrypt only looks at 72 bytes; a longer password must simply be "not authorized".
    assert web.authorized(basic("alice", "x" * 100)) is False


def test_2y_prefix_is_accepted() -> None:
    h = hashed("htpasswd")
    assert h.startswith("$2b$")
    w = WebConfig(users={"carol": ("$2y$" + h[4:]).encode()})
    assert w.authorized(basic("carol", "htpasswd"))
    assert not w.authorized(basic("carol", "htpasswd2"))


def test_verified_credentials_are_cached_but_failures_are_not(web: WebConfig,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = bcrypt.checkpw

    def counting(pw: bytes, h: bytes) -> bool:
        calls.append(pw)
        return real(pw, h)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    for _ in range(3):
        assert web.authorized(basic("alice", "s3cret"))
    assert len(calls) == 1
    for _ in range(2):
        assert not web.authorized(basic("alice", "nope"))
    assert len(calls) == 3
    assert b"s3cret" not in b"".join(web._ok)  # remembered by digest, not in clear
    # A verified password for alice does not open bob's account.
    assert not web.authorized(basic("bob", "s3cret"))


# --- loading the file ------------------------------------------------------------------------------


def test_load_none() -> None:
    w = WebConfig.load(None)
    assert w.ssl_context is None and w.users == {}


def test_load_basic_auth_users(tmp_path: Path) -> None:
    h = hashed("pw")
    f = tmp_path / "web.yml"
    f.write_text(f"basic_auth_users:\n  dave: '{h}'\n")
    w = WebConfig.load(f)
    assert w.ssl_context is None
    assert w.users == {"dave": h.encode()}
    assert w.authorized(basic("dave", "pw")) and not w.authorized(basic("dave", "pw!"))


def test_load_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "web.yml"
    f.write_text("")
    w = WebConfig.load(f)
    assert w.ssl_context is None and w.users == {}


def tls_dir(tmp_path: Path) -> Path:
    d = tmp_path / "conf"
    (d / "certs").mkdir(parents=True)
    shutil.copy(DATA / "unit_tls_cert.pem", d / "certs/cert.pem")
    shutil.copy(DATA / "unit_tls_key.pem", d / "certs/key.pem")
    return d


@pytest.mark.parametrize(("version", "minimum"), [("TLS12", ssl.TLSVersion.TLSv1_2),
                                                  ("TLS13", ssl.TLSVersion.TLSv1_3)])
def test_load_tls_paths_relative_to_the_file(tmp_path: Path, version: str, minimum: ssl.TLSVersion) -> None:
    d = tls_dir(tmp_path)
    f = d / "web.yml"
    f.write_text("tls_server_config:\n  cert_file: certs/cert.pem\n  key_file: certs/key.pem\n"
                 f"  min_version: {version}\n")
    w = WebConfig.load(f)
    assert isinstance(w.ssl_context, ssl.SSLContext)
    assert w.ssl_context.minimum_version == minimum
    assert w.ssl_context.verify_mode == ssl.CERT_NONE


def test_load_tls_with_absolute_paths_and_client_certs(tmp_path: Path) -> None:
    d = tls_dir(tmp_path)
    f = tmp_path / "elsewhere.yml"
    f.write_text(f"tls_server_config:\n  cert_file: {d}/certs/cert.pem\n  key_file: {d}/certs/key.pem\n"
                 f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {d}/certs/cert.pem\n")
    w = WebConfig.load(f)
    assert w.ssl_context is not None and w.ssl_context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("missing", ["cert_file", "key_file", "client_ca_file"])
def test_load_tls_names_the_file_that_is_missing(tmp_path: Path, missing: str) -> None:
    d = tls_dir(tmp_path)
    files = {"cert_file": "certs/cert.pem", "key_file": "certs/key.pem", "client_ca_file": "certs/cert.pem"}
    files[missing] = "certs/nope.pem"
    f = d / "web.yml"
    f.write_text("tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n"
                 + "".join(f"  {k}: {v}\n" for k, v in files.items()))
    with pytest.raises(ValueError, match=rf"^tls_server_config\.{missing} {d}/certs/nope\.pem: No such file"):
        WebConfig.load(f)


def test_load_tls_key_of_another_certificate_is_named(tmp_path: Path) -> None:
    d = tls_dir(tmp_path)
    (d / "certs/other.pem").write_text("not a key\n")
    f = d / "web.yml"
    f.write_text("tls_server_config:\n  cert_file: certs/cert.pem\n  key_file: certs/other.pem\n")
    with pytest.raises(ValueError, match="cert_file .*cert.pem with key_file .*other.pem: "):
        WebConfig.load(f)


@pytest.mark.parametrize("user", ["a:b", ""])
def test_load_refuses_a_user_basic_auth_cannot_send(tmp_path: Path, user: str) -> None:
    f = tmp_path / "web.yml"
    f.write_text(f"basic_auth_users:\n  '{user}': {hashed('x')}\n")
    with pytest.raises(ValueError, match="cannot log in"):
        WebConfig.load(f)


def test_load_refuses_a_user_given_twice(tmp_path: Path) -> None:
    from pageheat.config import ConfigError

    f = tmp_path / "web.yml"
    f.write_text(f"basic_auth_users:\n  u: {hashed('x')}\n  u: {hashed('y')}\n")
    with pytest.raises(ConfigError, match=r"web.yml:3:3: .*key 'u' given twice \(first at line 2\)"):
        WebConfig.load(f)


def test_load_tls_client_certs_need_a_ca(tmp_path: Path) -> None:
    d = tls_dir(tmp_path)
    f = d / "web.yml"
    f.write_text("tls_server_config:\n  cert_file: certs/cert.pem\n  key_file: certs/key.pem\n"
                 "  client_auth_type: RequireAndVerifyClientCert\n")
    with pytest.raises(ValueError, match="client_ca_file"):
        WebConfig.load(f)


@pytest.mark.parametrize(("policy", "match"), [
    ("RequestClientCert", "RequestClientCert: not supported .*verifies every client certificate"),
    ("RequireAnyClientCert", "RequireAnyClientCert: not supported"),
    ("requireandverifyclientcert", "unsupported client_auth_type .*expected one of NoClientCert"),
])
def test_load_tls_unsupported_client_auth_type(tmp_path: Path, policy: str, match: str) -> None:
    d = tls_dir(tmp_path)
    f = d / "web.yml"
    f.write_text("tls_server_config:\n  cert_file: certs/cert.pem\n  key_file: certs/key.pem\n"
                 f"  client_auth_type: {policy}\n  client_ca_file: certs/cert.pem\n")
    with pytest.raises(ValueError, match=match):
        WebConfig.load(f)


@pytest.mark.parametrize("version", ["TLS11", "tls12"])
def test_load_tls_unknown_min_version_is_a_value_error(tmp_path: Path, version: str) -> None:
    # The CLI turns OSError and ValueError from WebConfig.load into a one-line usage error.
    d = tls_dir(tmp_path)
    f = d / "web.yml"
    f.write_text("tls_server_config:\n  cert_file: certs/cert.pem\n  key_file: certs/key.pem\n"
                 f"  min_version: {version}\n")
    with pytest.raises(ValueError):
        WebConfig.load(f)


def test_load_rejects_unknown_fields(tmp_path: Path) -> None:
    f = tmp_path / "web.yml"
    f.write_text("basic_auth_user:\n  x: y\n")
    with pytest.raises(ValidationError):
        WebConfig.load(f)
    f.write_text("tls_server_config:\n  cert_file: a\n  key_file: b\n  ciphers: []\n")
    with pytest.raises(ValidationError):
        WebConfig.load(f)
    f.write_text("http_server_config:\n  headers:\n    X-Powered-By: pageheat\n")
    with pytest.raises(ValidationError):
        WebConfig.load(f)


# --- the rest of exporter-toolkit's format ------------------------------------------------------


def load_tls(tmp_path: Path, extra: str) -> WebConfig:
    d = tls_dir(tmp_path)
    f = d / "web.yml"
    f.write_text("tls_server_config:\n  cert_file: certs/cert.pem\n  key_file: certs/key.pem\n" + extra)
    return WebConfig.load(f)


def test_load_a_node_exporter_style_file(tmp_path: Path) -> None:
    """Every field of exporter-toolkit's documented format at once: a fleet's existing file."""
    w = load_tls(tmp_path, "  client_auth_type: RequireAndVerifyClientCert\n"
                           "  client_ca_file: certs/cert.pem\n"
                           "  client_allowed_sans: [scraper.example, 10.0.0.1]\n"
                           "  min_version: TLS12\n  max_version: TLS13\n"
                           "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,"
                           " TLS_AES_128_GCM_SHA256]\n"
                           "  prefer_server_cipher_suites: true\n  curve_preferences: [CurveP256]\n"
                           "http_server_config:\n  http2: true\n  headers:\n"
                           "    Strict-Transport-Security: max-age=31536000\n    X-Frame-Options: deny\n"
                           "    X-Content-Type-Options: nosniff\n"
                           f"basic_auth_users:\n  u: '{hashed('p')}'\n"
                           "rate_limit:\n  interval: 100ms\n  burst: 5\n")
    ctx = w.ssl_context
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-ECDSA-AES128-GCM-SHA256"}
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert w.headers == [("X-Frame-Options", "deny"), ("X-Content-Type-Options", "nosniff"),
                         ("Strict-Transport-Security", "max-age=31536000")]
    assert w.allowed_sans == {"scraper.example", "10.0.0.1"}
    assert (w.rate_limit.interval, w.rate_limit.burst) == (0.1, 5)
    assert set(w.users) == {"u"}


def test_load_inline_cert_key_and_ca(tmp_path: Path) -> None:
    cert, key = (DATA / "unit_tls_cert.pem").read_text(), (DATA / "unit_tls_key.pem").read_text()
    f = tmp_path / "web.yml"

    def block(pem: str) -> str:
        return "|\n" + "".join(f"    {line}\n" for line in pem.splitlines())

    f.write_text(f"tls_server_config:\n  cert: {block(cert)}  key: {block(key)}"
                 f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca: {block(cert)}")
    w = WebConfig.load(f)
    assert w.ssl_context is not None and w.ssl_context.verify_mode == ssl.CERT_OPTIONAL
    assert len(w.ssl_context.get_ca_certs()) == 1  # the inline client_ca
    # The key is a secret: a wrong inline key is named, not echoed.
    f.write_text(f"tls_server_config:\n  cert: {block(cert)}  key: |\n    not a key\n")
    with pytest.raises(ValueError, match=r"cert \(inline\) with key \(inline\)") as e:
        WebConfig.load(f)
    assert "not a key" not in str(e.value)


@pytest.mark.parametrize(("extra", "match"), [
    ("  cert: x\n", "cert_file and cert are both set"),
    ("  key: x\n", "key_file and key are both set"),
    ("  client_ca: x\n  client_ca_file: certs/cert.pem\n", "client_ca_file and client_ca are both set"),
    ("  client_ca_file: certs/cert.pem\n", "client_ca_file is set but client_auth_type is NoClientCert"),
    ("  client_auth_type: VerifyClientCertIfGiven\n", "VerifyClientCertIfGiven needs client_ca_file"),
    ("  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: certs/cert.pem\n"
     "  client_allowed_sans: [a]\n", "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert"),
    ("  client_allowed_sans: [a]\n", "client_allowed_sans needs"),
    ("  max_version: TLS11\n", "max_version 'TLS11': expected one of TLS12, TLS13"),
    ("  min_version: TLS13\n  max_version: TLS12\n", "min_version TLS13 is above max_version TLS12"),
    ("  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n", "cipher_suites: unknown 'TLS_RSA_WITH_RC4_128_SHA'"),
    ("  curve_preferences: [CurveP256, X25519]\n", "one curve, not order 2; give one"),
    ("  curve_preferences: [P256]\n", "curve_preferences: unknown 'P256'"),
])
def test_load_tls_refuses_what_it_cannot_honour(tmp_path: Path, extra: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_tls(tmp_path, extra)


def test_load_tls_needs_a_cert_and_a_key(tmp_path: Path) -> None:
    f = tmp_path / "web.yml"
    f.write_text("tls_server_config:\n  key_file: k\n")
    with pytest.raises(ValueError, match=r"cert_file \(or inline cert\) is required"):
        WebConfig.load(f)


def test_load_tls13_suites_and_server_preference_off(tmp_path: Path) -> None:
    # Go and OpenSSL alike: the TLS 1.3 suites are not configurable; naming them changes nothing.
    w = load_tls(tmp_path, "  cipher_suites: [TLS_AES_256_GCM_SHA384]\n"
                           "  prefer_server_cipher_suites: false\n")
    default = load_tls(tmp_path / "2", "")
    assert w.ssl_context is not None and default.ssl_context is not None
    names = [{c["name"] for c in x.ssl_context.get_ciphers()} for x in (w, default)]  # type: ignore[union-attr]
    assert names[0] == names[1]
    assert not w.ssl_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE


@pytest.mark.parametrize(("headers", "match"), [
    ("X-Frame-Options: allow-all", "expected deny or sameorigin"),
    ("X-Content-Type-Options: sniff", "expected nosniff"),
    ('Content-Security-Policy: "a\\r\\nSet-Cookie: x=1"', "printable ASCII: no line breaks"),
    ("Content-Security-Policy: default-src 'self' é", "printable ASCII: no line breaks"),
])
def test_load_refuses_bad_response_headers(tmp_path: Path, headers: str, match: str) -> None:
    f = tmp_path / "web.yml"
    f.write_text(f"http_server_config:\n  headers:\n    {headers}\n")
    with pytest.raises(ValidationError, match=match):
        WebConfig.load(f)


def test_load_rate_limit(tmp_path: Path) -> None:
    f = tmp_path / "web.yml"
    f.write_text("rate_limit:\n  interval: 0\n  burst: 0\n")
    assert WebConfig.load(f).rate_limit.allow()
    f.write_text("rate_limit:\n  interval: 1s\n")
    with pytest.raises(ValueError, match="burst must be at least 1"):
        WebConfig.load(f)
    f.write_text("rate_limit:\n  interval: soon\n  burst: 1\n")
    with pytest.raises(ValidationError, match="not a duration"):
        WebConfig.load(f)
    f.write_text("rate_limit:\n  interval: 1s\n  burst: -1\n")
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        WebConfig.load(f)


def test_rate_limit_is_a_token_bucket() -> None:
    from pageheat.serve.webconfig import RateLimit

    r = RateLimit(0.5, 3)  # 2 requests a second, 3 at once; starts full
    t = r._last
    assert [r.allow(t) for _ in range(4)] == [True, True, True, False]
    assert not r.allow(t + 0.49)  # 0.98 of a token
    assert r.allow(t + 0.5) and not r.allow(t + 0.5)
    assert [r.allow(t + 10) for _ in range(4)] == [True, True, True, False]  # capped at burst


@pytest.mark.parametrize(("san", "allowed"), [
    ((("DNS", "scraper.example"),), True),
    ((("DNS", "other.example"), ("URI", "spiffe://fleet/prometheus")), True),
    ((("IP Address", "2001:DB8:0:0:0:0:0:1"),), True),  # getpeercert() spells IPv6 out
    ((("IP Address", "10.0.0.2"),), False),
    ((("DNS", "Scraper.example"),), False),  # exact, as exporter-toolkit compares
    ((("email", "ops@example.org"),), True),
    ((), False),
])
def test_client_allowed_sans(san: tuple, allowed: bool) -> None:
    from pageheat.serve.webconfig import _normal_san

    w = WebConfig(allowed_sans=frozenset(_normal_san(s) for s in (
        "scraper.example", "spiffe://fleet/prometheus", "2001:db8::1", "ops@example.org")))
    assert w.client_allowed({"subjectAltName": san}) is allowed
    assert WebConfig().client_allowed(None)
    assert not w.client_allowed(None)

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
    assert web.authorized(basic("bob", "pa:ss"))  # only the first colon separates user and password


@pytest.mark.parametrize("header", [
    None, "", "Basic", "Basic ", "Bearer abc", "basic " + base64.b64encode(b"alice:s3cret").decode(),
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


def test_load_tls_unsupported_client_auth_type(tmp_path: Path) -> None:
    d = tls_dir(tmp_path)
    f = d / "web.yml"
    f.write_text("tls_server_config:\n  cert_file: certs/cert.pem\n  key_file: certs/key.pem\n"
                 "  client_auth_type: RequestClientCert\n")
    with pytest.raises(ValueError, match="unsupported client_auth_type"):
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
    f.write_text("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: []\n")
    with pytest.raises(ValidationError):
        WebConfig.load(f)

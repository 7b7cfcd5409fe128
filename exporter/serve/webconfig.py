"""TLS, basic auth, response headers and rate limiting for every endpoint, configured by the
web-config file Prometheus exporters use (exporter-toolkit's format, docs/web-configuration.md
in github.com/prometheus/exporter-toolkit), so that a fleet's existing file works unchanged.

What Python's ssl module cannot do is refused with a one-line reason, never dropped: client
certificates requested without verification (RequestClientCert, RequireAnyClientCert) and a
preference list of more than one curve. HTTP/2 is not spoken: ``http2`` is accepted, and a
client that offers h2 gets HTTP/1.1, which every scraper speaks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import ssl
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pageheat.config import Duration, read_yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

# TLS 1.0 and 1.1 are deliberately refused, although the format allows them.
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}

# Go's names (crypto/tls CipherSuites(), what exporter-toolkit accepts) -> OpenSSL's. The
# TLS 1.3 suites are not configurable, in Go as in OpenSSL's cipher list: accepted, no effect.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",  # Go's older alias
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
# Go's tls.CurveID names -> OpenSSL's group names.
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1",
          "X25519": "X25519"}
# client_auth_type -> verify mode. RequestClientCert and RequireAnyClientCert ask for a
# certificate without verifying it: Python's ssl verifies every certificate it asks for.
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")


class TlsServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None  # inline PEM, instead of cert_file
    key: SecretStr | None = None  # inline PEM, instead of key_file
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = None  # inline PEM, instead of client_ca_file
    client_allowed_sans: list[str] = []
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: list[str] = []
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[str] = []


# RFC 9110 field-value without CR, LF, NUL; ASCII only, as h11 encodes header values.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


class ResponseHeaders(BaseModel):
    """The security headers exporter-toolkit can add to every response (blank: not sent)."""

    model_config = ConfigDict(extra="forbid")

    content_security_policy: Annotated[str, Field(alias="Content-Security-Policy")] = ""
    x_frame_options: Annotated[str, Field(alias="X-Frame-Options")] = ""
    x_content_type_options: Annotated[str, Field(alias="X-Content-Type-Options")] = ""
    x_xss_protection: Annotated[str, Field(alias="X-XSS-Protection")] = ""
    strict_transport_security: Annotated[str, Field(alias="Strict-Transport-Security")] = ""

    @field_validator("*")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if not _HEADER_VALUE.fullmatch(v):
            raise ValueError("a header value is printable ASCII: no line breaks, control "
                             "characters or other scripts")
        return v

    @field_validator("x_frame_options")
    @classmethod
    def _frame(cls, v: str) -> str:
        if v and v.lower() not in ("deny", "sameorigin"):
            raise ValueError("expected deny or sameorigin")
        return v

    @field_validator("x_content_type_options")
    @classmethod
    def _nosniff(cls, v: str) -> str:
        if v and v.lower() != "nosniff":
            raise ValueError("expected nosniff")
        return v

    def pairs(self) -> list[tuple[str, str]]:
        """(name, value) of the headers set, as they go on the wire."""
        return [(f.alias, v) for name, f in type(self).model_fields.items()
                if f.alias and (v := getattr(self, name))]


class HttpServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    http2: bool = True  # accepted; pageheat speaks HTTP/1.1 (see the module docstring)
    headers: ResponseHeaders = ResponseHeaders()


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval: Duration = 0.0  # "100ms", "1s" or seconds; 0: no limit
    burst: Annotated[int, Field(ge=0)] = 0


class WebConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = HttpServerConfig()
    basic_auth_users: dict[str, str] = {}
    rate_limit: RateLimitConfig = RateLimitConfig()


def _readable(base: Path, name: str, path: Path) -> Path:
    """``path`` (relative to the web config's folder) if it can be opened; else ValueError
    naming the field and the file, so a missing key is not reported as a missing cert."""
    full = base / path
    try:
        with open(full, "rb"):
            pass
    except OSError as e:
        raise ValueError(f"tls_server_config.{name} {full}: {e.strerror or e}") from None
    return full


def _one_of(t: TlsServerConfig, file_field: str, inline_field: str, required: bool) -> None:
    has_file, has_inline = getattr(t, file_field) is not None, getattr(t, inline_field) is not None
    if has_file and has_inline:
        raise ValueError(f"tls_server_config: {file_field} and {inline_field} are both set; give one")
    if required and not (has_file or has_inline):
        raise ValueError(f"tls_server_config: {file_field} (or inline {inline_field}) is required")


class _InlinePem:
    """An inline PEM as a path ssl can open (load_cert_chain takes only paths): a memfd, so
    that the key never touches a disk."""

    def __init__(self, pem: str, name: str) -> None:
        self.fd = os.memfd_create(f"pageheat-{name}", os.MFD_CLOEXEC)
        os.write(self.fd, pem.encode())
        self.path = Path(f"/proc/self/fd/{self.fd}")

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _version(t: TlsServerConfig, name: str) -> ssl.TLSVersion:
    value = getattr(t, name)
    if value not in TLS_VERSIONS:
        raise ValueError(f"{name} {value!r}: expected one of {', '.join(TLS_VERSIONS)}")
    return TLS_VERSIONS[value]


def _ssl_context(t: TlsServerConfig, base: Path) -> ssl.SSLContext:
    """The server context of a tls_server_config; ValueError naming the field at fault."""
    _one_of(t, "cert_file", "cert", True)
    _one_of(t, "key_file", "key", True)
    _one_of(t, "client_ca_file", "client_ca", False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version, ctx.maximum_version = _version(t, "min_version"), _version(t, "max_version")
    if ctx.minimum_version > ctx.maximum_version:
        raise ValueError(f"min_version {t.min_version} is above max_version {t.max_version}")
    cert = _readable(base, "cert_file", t.cert_file) if t.cert_file else None
    key = _readable(base, "key_file", t.key_file) if t.key_file else None
    try:
        with (_InlinePem(t.cert, "cert") if t.cert is not None else nullcontext(cert)) as c, \
                (_InlinePem(t.key.get_secret_value(), "key") if t.key is not None else nullcontext(key)) as k:
            ctx.load_cert_chain(c, k)
    except ssl.SSLError as e:  # not PEM, or a key that is not the certificate's
        what_cert = f"cert_file {cert}" if cert else "cert (inline)"
        what_key = f"key_file {key}" if key else "key (inline)"
        why = e.reason if e.reason and e.reason != "PEM_LIB" else "not PEM, or not this certificate's key"
        raise ValueError(f"tls_server_config: {what_cert} with {what_key}: {why}") from None

    if t.client_auth_type in UNVERIFIED_CLIENT_AUTH:
        raise ValueError(f"client_auth_type {t.client_auth_type}: not supported (Python's ssl "
                         "verifies every client certificate it asks for); use "
                         "VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if t.client_auth_type not in CLIENT_AUTH:
        raise ValueError(f"unsupported client_auth_type {t.client_auth_type!r}: expected one of "
                         f"{', '.join(CLIENT_AUTH)}")
    ctx.verify_mode = CLIENT_AUTH[t.client_auth_type]
    has_ca = t.client_ca_file is not None or t.client_ca is not None
    if ctx.verify_mode == ssl.CERT_NONE and has_ca:  # as exporter-toolkit: a CA with no use
        raise ValueError("client_ca_file is set but client_auth_type is NoClientCert")
    if ctx.verify_mode != ssl.CERT_NONE:
        if not has_ca:
            raise ValueError(f"client_auth_type {t.client_auth_type} needs client_ca_file")
        try:
            if t.client_ca_file is not None:
                ca = _readable(base, "client_ca_file", t.client_ca_file)
                ctx.load_verify_locations(ca)
            else:
                ca = "client_ca (inline)"
                ctx.load_verify_locations(cadata=t.client_ca)
        except ssl.SSLError as e:
            raise ValueError(f"tls_server_config.client_ca_file {ca}: {e.reason or e}") from None
    if t.client_allowed_sans and ctx.verify_mode != ssl.CERT_REQUIRED:
        raise ValueError("client_allowed_sans needs client_auth_type RequireAndVerifyClientCert "
                         "(a client without a certificate has no SAN to match)")

    unknown = [s for s in t.cipher_suites if s not in CIPHER_SUITES and s not in TLS13_SUITES]
    if unknown:
        raise ValueError(f"cipher_suites: unknown {unknown[0]!r} (Go's names, e.g. "
                         "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
    tls12 = [CIPHER_SUITES[s] for s in t.cipher_suites if s in CIPHER_SUITES]
    if tls12:
        try:
            ctx.set_ciphers(":".join(tls12))
        except ssl.SSLError:
            raise ValueError(f"cipher_suites: none of {', '.join(t.cipher_suites)} is "
                             "available in this OpenSSL") from None
    if t.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    for curve in t.curve_preferences:
        if curve not in CURVES:
            raise ValueError(f"curve_preferences: unknown {curve!r}: expected one of {', '.join(CURVES)}")
    if len(t.curve_preferences) > 1:
        raise ValueError("curve_preferences: Python's ssl can restrict the handshake to one "
                         f"curve, not order {len(t.curve_preferences)}; give one")
    if t.curve_preferences:
        ctx.set_ecdh_curve(CURVES[t.curve_preferences[0]])
    return ctx


@dataclass
class RateLimit:
    """exporter-toolkit's rate_limit: a token bucket (Go's rate.Limiter): one request per
    ``interval`` seconds on average, ``burst`` at once; starts full. interval 0: no limit.
    Used from the event loop only."""

    interval: float = 0.0
    burst: int = 0
    _tokens: float = 0.0
    _last: float = 0.0

    def __post_init__(self) -> None:
        self._tokens, self._last = float(self.burst), time.monotonic()

    def allow(self, now: float | None = None) -> bool:
        if self.interval <= 0:
            return True
        now = time.monotonic() if now is None else now
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) / self.interval)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: list[tuple[str, str]] = field(default_factory=list)  # added to every response
    allowed_sans: frozenset[str] = frozenset()  # client certificate SANs let in; empty: any
    rate_limit: RateLimit = field(default_factory=RateLimit)
    _ok: set[bytes] = field(default_factory=set)  # digests of credentials already verified

    @classmethod
    def load(cls, path: Path | None) -> WebConfig:
        """The web config in ``path`` (None: no TLS, no auth). Raises OSError if it cannot be
        read, ConfigError for YAML errors, pydantic's ValidationError for unknown fields or
        types, and ValueError naming the field for a value that cannot be used."""
        if path is None:
            return cls()
        spec = WebConfigFile(**read_yaml(path, "web config"))
        ctx = _ssl_context(spec.tls_server_config, path.parent) if spec.tls_server_config else None
        for user, hashed in spec.basic_auth_users.items():
            if ":" in user or not user:  # the Authorization header is "user:password" (RFC 7617)
                raise ValueError(f"basic_auth_users: user name {user!r} cannot log in over basic "
                                 "auth (empty, or contains ':')")
            if not re.fullmatch(r"\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}", hashed):
                raise ValueError(f"basic_auth_users.{user}: not a bcrypt hash")
        limit = spec.rate_limit
        if limit.interval > 0 and limit.burst < 1:
            raise ValueError("rate_limit: burst must be at least 1 when interval is set "
                             "(else no request would ever pass)")
        sans = spec.tls_server_config.client_allowed_sans if spec.tls_server_config else []
        return cls(ctx, {u: h.encode() for u, h in spec.basic_auth_users.items()},
                   spec.http_server_config.headers.pairs(), frozenset(_normal_san(s) for s in sans),
                   RateLimit(limit.interval, limit.burst))

    def client_allowed(self, peercert: dict[str, Any] | None) -> bool:
        """Whether a verified client certificate (SSLObject.getpeercert()) has a Subject
        Alternative Name in client_allowed_sans: DNS, IP, e-mail or URI, exact match (IP
        addresses compared as addresses). True when no SANs are configured."""
        if not self.allowed_sans:
            return True
        for kind, value in (peercert or {}).get("subjectAltName", ()):
            if kind in ("DNS", "email", "URI", "IP Address") and _normal_san(value) in self.allowed_sans:
                return True
        return False

    def authorized(self, header: str | None) -> bool:
        """Check an Authorization header. bcrypt is slow on purpose, so a credential that was
        verified once is remembered (by a keyed digest, not in clear)."""
        if not self.users:
            return True
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "basic":  # the scheme is case-insensitive (RFC 9110 11.1)
            return False
        try:
            user, _, password = base64.b64decode(token.strip(" "), validate=True).decode().partition(":")
        except ValueError:
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        digest = hmac.new(hashed, password.encode(), hashlib.sha256).digest()
        if digest in self._ok:
            return True
        import bcrypt  # only needed when basic auth is configured

        try:
            ok = bcrypt.checkpw(password.encode(), hashed.replace(b"$2y$", b"$2b$", 1))
        except ValueError:  # e.g. longer than bcrypt's 72 bytes: cannot match
            return False
        if ok:
            self._ok.add(digest)
            return True
        return False


def _normal_san(value: str) -> str:
    """An IP address in its canonical form (getpeercert() spells IPv6 out in full); any
    other SAN as it is."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value

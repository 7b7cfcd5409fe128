"""TLS and basic auth for /metrics, configured by the web-config file Prometheus exporters use
(exporter-toolkit format: ``tls_server_config`` and ``basic_auth_users`` with bcrypt hashes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class TlsServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"


class WebConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: dict[str, str] = {}


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


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    _ok: set[bytes] = field(default_factory=set)  # digests of credentials already verified

    @classmethod
    def load(cls, path: Path | None) -> WebConfig:
        if path is None:
            return cls()
        from pageheat.config import read_yaml  # ConfigError naming file, line and column, one line

        spec = WebConfigFile(**read_yaml(path, "web config"))
        ctx = None
        if spec.tls_server_config:
            t = spec.tls_server_config
            base = path.parent
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            # TLS 1.0 and 1.1 are deliberately refused, although the format allows them.
            versions = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
            if t.min_version not in versions:
                raise ValueError(f"min_version {t.min_version!r}: expected one of {', '.join(versions)}")
            ctx.minimum_version = versions[t.min_version]
            cert, key = _readable(base, "cert_file", t.cert_file), _readable(base, "key_file", t.key_file)
            try:
                ctx.load_cert_chain(cert, key)
            except ssl.SSLError as e:  # not PEM, or a key that is not the certificate's
                raise ValueError(f"tls_server_config: cert_file {cert} with key_file {key}: "
                                 f"{e.reason or e}") from None
            if t.client_auth_type == "RequireAndVerifyClientCert":
                if not t.client_ca_file:
                    raise ValueError("client_auth_type RequireAndVerifyClientCert needs client_ca_file")
                ctx.verify_mode = ssl.CERT_REQUIRED
                ca = _readable(base, "client_ca_file", t.client_ca_file)
                try:
                    ctx.load_verify_locations(ca)
                except ssl.SSLError as e:
                    raise ValueError(f"tls_server_config.client_ca_file {ca}: {e.reason or e}") from None
            elif t.client_auth_type != "NoClientCert":
                raise ValueError(f"unsupported client_auth_type {t.client_auth_type!r}")
        for user, hashed in spec.basic_auth_users.items():
            if ":" in user or not user:  # the Authorization header is "user:password" (RFC 7617)
                raise ValueError(f"basic_auth_users: user name {user!r} cannot log in over basic "
                                 "auth (empty, or contains ':')")
            if not re.fullmatch(r"\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}", hashed):
                raise ValueError(f"basic_auth_users.{user}: not a bcrypt hash")
        return cls(ctx, {u: h.encode() for u, h in spec.basic_auth_users.items()})

    def authorized(self, header: str | None) -> bool:
        """Check an Authorization header. bcrypt is slow on purpose, so a credential that was
        verified once is remembered (by a keyed digest, not in clear)."""
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
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

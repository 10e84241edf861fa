"""The development key: what `portline dev-token` signs with, and what development trusts.

An Ed25519 key is generated under the var dir on first use (mode 0600; when several services
start at once, the first writer wins and everyone reads its key). Its public half is the
key set of the development issuer, which the services trust in development only: production
never reads this file, and tokens it signed name an issuer no production service knows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.auth import ROLES, Role

__all__ = ["DEV_ISSUER", "DEV_KEY_FILE", "DevelopmentKey"]

log = logging.getLogger(__name__)

DEV_ISSUER = "urn:portline:development"
"""The `iss` of development tokens: no provider has it, so production refuses them."""
DEV_KEY_FILE = "dev-token-key.pem"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class DevelopmentKey:
    private_key: Ed25519PrivateKey

    @classmethod
    def load(cls, var_dir: Path) -> DevelopmentKey:
        """The var dir's development key, generated there on first use."""
        path = Path(var_dir) / DEV_KEY_FILE
        if not path.exists():
            _create(path)
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 key")
        return cls(loaded)

    @property
    def public_jwk(self) -> dict[str, str]:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}
        # RFC 7638 thumbprint: the required members, sorted, without spaces.
        thumbprint = hashlib.sha256(json.dumps(jwk, separators=(",", ":")).encode()).digest()
        return {**jwk, "kid": _b64(thumbprint), "alg": "EdDSA", "use": "sig"}

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def mint(
        self,
        *,
        role: Role,
        program: str,
        subject: str,
        audience: Sequence[str],
        now: datetime,
        ttl: timedelta = timedelta(hours=12),
    ) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        claims = {
            "iss": DEV_ISSUER,
            "sub": subject,
            "aud": list(audience),
            "role": role,
            "program": program,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(
            claims, self.private_key, algorithm="EdDSA", headers={"kid": self.public_jwk["kid"]}
        )


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails if another process got there first: theirs is the key
    except FileExistsError:
        pass
    else:
        log.warning(
            "generated the development token key in %s; development only, never trusted "
            "in production",
            path,
        )
    finally:
        tmp.unlink(missing_ok=True)

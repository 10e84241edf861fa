"""A stand-in for a program's OpenID Connect provider: signing keys (RS256, ES256, EdDSA), a
discovery document and a JWKS, and tokens signed as a provider would sign them (or as an
attacker would). Unit tests reach it through an httpx transport; integration and e2e tests
through real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ALGORITHMS = ("RS256", "ES256", "EdDSA")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(alg: str) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


class Provider:
    """Keys by kid, the kids it publishes, and what its endpoints answer."""

    def __init__(self, issuer: str = "https://idp.test/realms/demo") -> None:
        self.issuer = issuer
        self.jwks_path = "/keys"
        self.keys: dict[str, tuple[str, PrivateKey]] = {}
        self.published: list[str] = []
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.down = False
        self.discovery_issuer: str | None = None
        """The issuer the discovery document claims (None: the real one)."""

    def add_key(self, alg: str = "RS256", kid: str | None = None, *, publish: bool = True) -> str:
        kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        self.keys[kid] = (alg, new_key(alg))
        if publish:
            self.published.append(kid)
        return kid

    def public_pem(self, kid: str) -> bytes:
        return (
            self.keys[kid][1]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            alg, key = self.keys[kid]
            algorithm = jwt.get_algorithm_by_name(alg)
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": alg})
        return {"keys": keys}

    def discovery(self, base: str) -> dict[str, Any]:
        return {
            "issuer": self.discovery_issuer or self.issuer,
            "jwks_uri": f"{base}{self.jwks_path}",
            "id_token_signing_alg_values_supported": list(ALGORITHMS),
        }

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "peer-ana",
            "aud": "portline-scheduler",
            "role": "peer",
            "program": "demo",
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(minutes=10)).timestamp()),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str, *, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        alg, key = self.keys[kid]
        return jwt.encode(
            self.claims(**claims), key, algorithm=alg, headers={"kid": kid, **(headers or {})}
        )

    # --- tokens no provider signs ---------------------------------------------------------

    def unsigned(self, kid: str, **claims: Any) -> str:
        """`alg: none`: no signature at all."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        return f"{header}.{_b64(json.dumps(self.claims(**claims)).encode())}."

    def hs256_with_public_key(self, kid: str, **claims: Any) -> str:
        """Algorithm confusion: HMAC-signed with the provider's public key as the secret, which
        a verifier that lets the token choose the algorithm would accept."""
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        payload = _b64(json.dumps(self.claims(**claims)).encode())
        signing_input = f"{header}.{payload}".encode()
        signature = hmac.new(self.public_pem(kid), signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    # --- serving -------------------------------------------------------------------------

    def answer(self, path: str, base: str) -> tuple[int, bytes]:
        if self.down:
            return 503, b'{"error": "down"}'
        if path == "/.well-known/openid-configuration":
            self.discovery_fetches += 1
            return 200, json.dumps(self.discovery(base)).encode()
        if path == self.jwks_path:
            self.jwks_fetches += 1
            return 200, json.dumps(self.jwks()).encode()
        return 404, b"{}"

    def transport(self) -> httpx.MockTransport:
        """Answers at the issuer's own URL, without a network."""
        base = self.issuer

        def handle(request: httpx.Request) -> httpx.Response:
            url = str(request.url)
            path = url[len(base) :] if url.startswith(base) else request.url.path
            status, body = self.answer(path, base)
            return httpx.Response(status, content=body)

        return httpx.MockTransport(handle)

    @contextmanager
    def serving(self) -> Iterator[str]:
        """Serve over HTTP on 127.0.0.1 (a free port); yields the issuer URL, which the
        provider takes as its own while serving."""
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                status, body = provider.answer(self.path, base)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        original = self.issuer
        self.issuer = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield self.issuer
        finally:
            self.issuer = original
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

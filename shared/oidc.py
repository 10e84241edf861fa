"""Verifying team tokens: JWTs from the program's OpenID Connect provider.

The provider's signing keys come from its JWKS (found by discovery at
`<issuer>/.well-known/openid-configuration`, or named outright). They are fetched with httpx,
asynchronously, and cached: for a TTL, and until a token names a key id the cache does not
know, which is how a rotation shows itself; such refetches are rate-limited, so that tokens
with made-up key ids cannot turn a service into a flood of requests to the provider. PyJWT
parses the keys and checks the signatures and claims.

In development a second issuer is trusted: the development key that `portline dev-token`
signs with (see `shared.devtokens`), read from the var dir as a static key set. Production
never builds that key source.

Errors are shared.auth's: AuthError (the token is not one this service accepts) and
ProviderUnavailable (the provider's keys cannot be fetched, and none are cached).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt

from shared.auth import ROLES, AuthError, Principal, ProviderUnavailable, Role
from shared.settings import insecure_url_problem

__all__ = [
    "ClaimNames",
    "KeySource",
    "ProviderKeys",
    "StaticKeys",
    "TokenVerifier",
]

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16_384
MAX_DOCUMENT_BYTES = 256 * 1024
"""The largest discovery document or key set read from the provider."""
FAILED_FETCH_BACKOFF = 2.0
"""Seconds before a failed fetch is tried again (never more often than the refetch limit)."""
MAX_SUBJECT = 128
MAX_PROGRAM = 64


class KeySource(Protocol):
    async def key(self, kid: str) -> jwt.PyJWK:
        """The signing key with this id; AuthError if there is none."""
        ...


def _key_set(document: Any) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS document, by key id (keys without one are useless:
    every token must name its key)."""
    if not isinstance(document, dict):
        raise ValueError("the key set is not a JSON object")
    keys = jwt.PyJWKSet.from_dict(document)
    return {
        key.key_id: key
        for key in keys
        if isinstance(key.key_id, str) and key.key_id and key.public_key_use in (None, "sig")
    }


class StaticKeys:
    """A fixed key set (the development key)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._keys = _key_set(dict(document))

    async def key(self, kid: str) -> jwt.PyJWK:
        try:
            return self._keys[kid]
        except KeyError:
            raise AuthError("the token's key id is not one of the issuer's keys") from None


class ProviderKeys:
    """The provider's key set, fetched over HTTP and cached.

    - The set is used for `ttl` seconds, then fetched again; if that fails, the cached set
      keeps being used (a provider outage does not lock the team out) and it is tried again
      shortly after.
    - A key id the set does not hold refetches it (a rotation: the provider publishes its new
      key before signing with it), at most once every `min_interval` seconds.
    - One fetch at a time: concurrent requests wait for the fetch in flight.
    """

    def __init__(
        self,
        issuer: str,
        *,
        client: httpx.AsyncClient,
        jwks_url: str | None = None,
        ttl: float = 3600.0,
        min_interval: float = 30.0,
        timeout: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuer = issuer
        self._client = client
        self._configured_jwks_url = jwks_url
        self._jwks_url = jwks_url
        self._ttl = ttl
        self._min_interval = min_interval
        self._timeout = timeout
        self._monotonic = monotonic
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._fetched_at = 0.0
        self._quiet_until = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0
        """Fetches of the key set tried so far (for tests and metrics)."""

    async def key(self, kid: str) -> jwt.PyJWK:
        now = self._monotonic()
        if self._keys is None or now - self._fetched_at >= self._ttl:
            await self._refresh()
        found = self._keys.get(kid) if self._keys is not None else None
        if found is None and self._monotonic() >= self._quiet_until:
            await self._refresh()
            found = self._keys.get(kid) if self._keys is not None else None
        if found is None:
            raise AuthError("the token's key id is not one of the provider's keys")
        return found

    async def _refresh(self) -> None:
        """Fetch the key set, unless a fetch was tried too recently; raise ProviderUnavailable
        only when there is no set to fall back on."""
        async with self._lock:
            now = self._monotonic()
            if now < self._quiet_until:
                if self._keys is None:
                    raise ProviderUnavailable("the identity provider's keys are unavailable")
                return  # fetched (or tried) a moment ago, maybe by the request before this one
            self.fetches += 1
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                self._quiet_until = now + min(self._min_interval, FAILED_FETCH_BACKOFF)
                self._jwks_url = self._configured_jwks_url  # discover again next time
                log.warning(
                    "cannot fetch the identity provider's keys",
                    extra={"issuer": self._issuer, "error": type(exc).__name__},
                )
                if self._keys is None:
                    raise ProviderUnavailable(
                        "the identity provider's keys are unavailable"
                    ) from None
                return
            self._keys = keys
            self._fetched_at = now
            self._quiet_until = now + self._min_interval

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        if self._jwks_url is None:
            discovery = f"{self._issuer.rstrip('/')}/.well-known/openid-configuration"
            document = await self._get_json(discovery)
            if not isinstance(document, dict) or document.get("issuer") != self._issuer:
                raise ValueError("the discovery document names another issuer")
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str) or insecure_url_problem(jwks_uri):
                raise ValueError("the discovery document has no usable jwks_uri")
            self._jwks_url = jwks_uri
        return _key_set(await self._get_json(self._jwks_url))

    async def _get_json(self, url: str) -> Any:
        async with self._client.stream(
            "GET", url, headers={"Accept": "application/json"}, timeout=self._timeout
        ) as response:
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        return json.loads(body)


@dataclass(frozen=True)
class ClaimNames:
    """Where a provider puts the role and the program: claim names, or dotted paths into
    nested claims (`realm_access.roles`)."""

    role: str = "role"
    program: str = "program"


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _role(value: Any) -> Role:
    """A role claim: one PORTline role, or a list (a provider's groups) holding exactly one."""
    if isinstance(value, str) and value in ROLES:
        return value
    if isinstance(value, list):
        found = {v for v in value if isinstance(v, str) and v in ROLES}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            raise AuthError("the token names several PORTline roles; give each user one")
    raise AuthError(f"the token has no PORTline role ({', '.join(ROLES)})")


_FAILURES: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is not meant for this service (audience)"),
    (jwt.InvalidIssuerError, "the token's issuer is not the program's provider"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
)


class TokenVerifier:
    """Turns a bearer token into a Principal, or refuses it with AuthError."""

    def __init__(
        self,
        *,
        issuers: Mapping[str, KeySource],
        audience: str,
        algorithms: Sequence[str],
        leeway: float = 60.0,
        claims: ClaimNames | None = None,
    ) -> None:
        self._issuers = dict(issuers)
        self._audience = audience
        self._algorithms = tuple(algorithms)
        self._leeway = leeway
        self._claims = claims or ClaimNames()

    async def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError("the token is too long")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("the token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._algorithms:
            raise AuthError(
                f"the token's signature algorithm is not accepted (only "
                f"{', '.join(self._algorithms)})"
            )
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise AuthError("the token names no signing key (kid)")
        issuer = unverified.get("iss")
        source = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if source is None:
            raise AuthError("the token's issuer is not the program's provider")
        key = await source.key(kid)
        if key.algorithm_name != alg:
            raise AuthError("the token's signature algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            message = next((m for kind, m in _FAILURES if isinstance(exc, kind)), None)
            raise AuthError(message or "the token is invalid") from None
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT:
            raise AuthError(f"the token's subject must be 1 to {MAX_SUBJECT} characters")
        program = _claim(claims, self._claims.program)
        if not isinstance(program, str) or not program or len(program) > MAX_PROGRAM:
            raise AuthError(f"the token has no program ({self._claims.program!r} claim)")
        role = _role(_claim(claims, self._claims.role))
        return Principal(subject=subject, role=role, program=program)

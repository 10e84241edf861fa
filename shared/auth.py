"""Team users' bearer tokens: JWTs carrying a role and a program.

Roles are `peer`, `team_lead`, `deputy`, `analyst` and `admin`. A token is HS256-signed with
PORTLINE_JWT_SECRET and issued by PORTLINE_JWT_ISSUER; in development a secret is generated
under the var dir (with a warning), elsewhere a missing secret stops the service at start.
`portline dev-token --role ROLE [--program demo]` mints one for development.

Exceptions:

    AuthError            - the token is missing, malformed, expired or signed by someone else
    └── ForbiddenError   - a valid token whose role or program may not do this
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import jwt
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute

from shared.http import ApiError
from shared.settings import Settings

__all__ = [
    "ROLES",
    "AuthError",
    "ForbiddenError",
    "Principal",
    "Role",
    "TokenService",
    "declared_roles",
    "document_roles",
    "jwt_secret",
    "require",
]

log = logging.getLogger(__name__)

Role = Literal["peer", "team_lead", "deputy", "analyst", "admin"]
ROLES: tuple[Role, ...] = ("peer", "team_lead", "deputy", "analyst", "admin")


class AuthError(Exception):
    """The request is not authenticated."""


class ForbiddenError(AuthError):
    """Authenticated, but not allowed."""


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    program: str


def jwt_secret(settings: Settings) -> str:
    """The signing secret: from settings, or generated once for development."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    if not settings.is_development:
        raise AuthError("PORTLINE_JWT_SECRET is required outside development")
    path = Path(settings.var_dir) / "jwt.secret"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value)
    os.chmod(tmp, 0o600)
    try:
        os.link(tmp, path)  # first writer wins when several services start at once
    except FileExistsError:
        value = path.read_text().strip()
    finally:
        tmp.unlink(missing_ok=True)
    log.warning("generated a development JWT secret; never use it in production")
    return value


class TokenService:
    def __init__(self, secret: str, *, issuer: str) -> None:
        self._secret = secret
        self._issuer = issuer

    def mint(
        self,
        *,
        role: Role,
        program: str,
        subject: str,
        now: datetime,
        ttl: timedelta = timedelta(hours=12),
    ) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        claims = {
            "sub": subject,
            "role": role,
            "program": program,
            "iss": self._issuer,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=self._issuer,
                options={"require": ["exp", "iss", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}") from None
        role, program = claims.get("role"), claims.get("program")
        if role not in ROLES or not isinstance(program, str) or not program:
            raise AuthError("the token has no valid role or program")
        return Principal(subject=str(claims["sub"]), role=role, program=program)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise ApiError(
            401, "missing_token", "Send a bearer token.", headers={"WWW-Authenticate": "Bearer"}
        )
    return header[7:].strip()


def require(*roles: Role) -> Callable[[Request], Principal]:
    """A dependency that authenticates the caller and checks their role."""
    allowed: Sequence[Role] = roles or ROLES

    def dependency(request: Request) -> Principal:
        tokens: TokenService = request.app.state.tokens
        try:
            principal = tokens.verify(_bearer(request))
        except AuthError as exc:
            raise ApiError(
                401, "invalid_token", str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from None
        if principal.role not in allowed:
            raise ApiError(403, "forbidden_role", f"The {principal.role} role may not do this.")
        return principal

    dependency.roles = tuple(allowed)  # type: ignore[attr-defined]
    return dependency


def declared_roles(route: APIRoute) -> tuple[Role, ...] | None:
    """The roles a route's require() dependency admits; None for a public route."""
    stack = list(route.dependant.dependencies)
    while stack:
        dependant = stack.pop()
        roles: tuple[Role, ...] | None = getattr(dependant.call, "roles", None)
        if roles is not None:
            return roles
        stack.extend(dependant.dependencies)
    return None


def document_roles(router: APIRouter) -> None:
    """Say in each operation's OpenAPI which roles may call it (x-roles and the text).

    Call it on a router before it is included in the app."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        roles = declared_roles(route)
        if roles is None:
            continue
        route.openapi_extra = {**(route.openapi_extra or {}), "x-roles": list(roles)}
        note = f"Roles: {', '.join(roles)}."
        route.description = f"{route.description}\n\n{note}" if route.description else note

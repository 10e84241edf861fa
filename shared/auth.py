"""Team users' bearer tokens: who is calling, with which role, for which program.

Roles are `peer`, `team_lead`, `deputy`, `analyst` and `admin`. Tokens are JWTs issued by the
program's OpenID Connect provider and verified against its published keys (`shared.oidc`):
no service holds a key that can sign one. In development, `portline dev-token --role ROLE
[--program demo]` mints one with a development key that only development trusts
(`shared.devtokens`). A team member whom outreach's roster marks inactive is refused at
once, whatever their token says (`shared.team_access`).

`require(*roles)` is the dependency routes use; it answers

- 401 `missing_token` / `invalid_token`: no token, or one this service does not accept;
- 403 `member_deactivated`: a valid token of a member the program deactivated;
- 403 `forbidden_role`: a valid token whose role may not call this operation;
- 503 `identity_provider_unavailable`: the provider's keys cannot be fetched (none cached);
- 503 `team_access_unavailable`: the deactivated members could not be read yet.

Exceptions:

    AuthError              - the token is missing, malformed, expired or signed by someone else
    └── ForbiddenError     - a valid token whose role or program may not do this
    ProviderUnavailable    - the provider's keys cannot be fetched, and none are cached
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute

from shared.http import ApiError

__all__ = [
    "ROLES",
    "AuthError",
    "ForbiddenError",
    "Principal",
    "ProviderUnavailable",
    "Role",
    "TeamIdentity",
    "authenticate",
    "authenticate_token",
    "declared_roles",
    "document_roles",
    "require",
    "takes_team_tokens",
]

log = logging.getLogger(__name__)

Role = Literal["peer", "team_lead", "deputy", "analyst", "admin"]
ROLES: tuple[Role, ...] = ("peer", "team_lead", "deputy", "analyst", "admin")


class AuthError(Exception):
    """The request is not authenticated."""


class ForbiddenError(AuthError):
    """Authenticated, but not allowed."""


class ProviderUnavailable(Exception):
    """The provider's keys cannot be fetched, and none are cached: nobody can be verified."""


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    program: str


class Verifier(Protocol):
    async def verify(self, token: str) -> Principal: ...


class AccessList(Protocol):
    @property
    def loaded(self) -> bool: ...

    def deactivated(self, program: str, subject: str) -> bool: ...

    def apply(self, program: str, member: str, *, active: bool) -> None:
        """A change this process just committed, in force before anything rereads it."""


@dataclass(frozen=True)
class TeamIdentity:
    """What a service that takes team tokens checks them with (app.state.team_identity)."""

    verifier: Verifier
    access: AccessList


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise ApiError(
            401, "missing_token", "Send a bearer token.", headers={"WWW-Authenticate": "Bearer"}
        )
    return header[7:].strip()


async def authenticate(request: Request) -> Principal:
    """The caller, from their bearer token; an ApiError when they cannot be let in."""
    return await authenticate_token(request, _bearer(request))


async def authenticate_token(request: Request, token: str) -> Principal:
    """The caller, from a bearer token that came another way than the Authorization header
    (the dashboard's session cookie); the same checks and errors as `authenticate`."""
    identity: TeamIdentity = request.app.state.team_identity
    try:
        principal = await identity.verifier.verify(token)
    except ProviderUnavailable:
        raise ApiError(
            503,
            "identity_provider_unavailable",
            "The identity provider's keys cannot be fetched; try again shortly.",
            headers={"Retry-After": "5"},
        ) from None
    except AuthError as exc:
        raise ApiError(
            401, "invalid_token", str(exc), headers={"WWW-Authenticate": "Bearer"}
        ) from None
    if not identity.access.loaded:
        raise ApiError(
            503,
            "team_access_unavailable",
            "The list of deactivated team members cannot be read yet; try again shortly.",
            headers={"Retry-After": "2"},
        )
    if identity.access.deactivated(principal.program, principal.subject):
        raise ApiError(
            403, "member_deactivated", "Your membership of this team has been deactivated."
        )
    return principal


def require(*roles: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that authenticates the caller and checks their role."""
    allowed: Sequence[Role] = roles or ROLES

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request)
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


def takes_team_tokens(routers: Sequence[APIRouter]) -> bool:
    """Whether any route of these routers admits team users (declares its roles)."""
    return any(
        declared_roles(route) is not None
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
    )

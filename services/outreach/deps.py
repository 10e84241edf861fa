"""The team API's typed dependencies: who may call a route, who calls it and why, the request's
unit of work, and the record a route works on.

A route declares its roles in its decorator (see `Operations`); the edge
(`shared.edge.EdgeRoute`) checks them before the body is read, so by the time any other
dependency runs, the caller is known. A route's default audit purpose is part of its OpenAPI
operation (``x-purpose``), so clients can read it.

    @api.post("/tasks/{task_id}/attempts", WORKERS, "log an attempt", 404, 409, created=True)
    async def log_attempt(body: AttemptBody, task: CurrentTask, ...) -> AttemptView:
        '''Log an outreach attempt

        What the OpenAPI description says.'''
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.params import Depends as DependsParam

from services.outreach.access import Access, V, tagged
from shared.auth import Principal, Role
from shared.edge import PRINCIPAL_KEY, EdgeRoute, guard
from shared.http import ApiError, ErrorResponse
from shared.runtime import Runtime
from shared.uow import UnitOfWork

__all__ = [
    "ADMINS",
    "DEPUTIES",
    "LEADS",
    "MANAGERS",
    "STAFF",
    "WORKERS",
    "Conditional",
    "CurrentAccess",
    "CurrentCase",
    "CurrentTask",
    "CurrentVisit",
    "Edit",
    "IfMatch",
    "Operations",
    "Uow",
    "errors",
    "purpose",
]


def _roles(*roles: Role) -> list[DependsParam]:
    return [Depends(guard(*roles))]


WORKERS = _roles("peer", "team_lead")
"""Peers and team leads: the people who work the queue."""
LEADS = _roles("team_lead")
STAFF = _roles("peer", "team_lead", "admin")
MANAGERS = _roles("team_lead", "admin")
ADMINS = _roles("admin")
DEPUTIES = _roles("deputy")

_PURPOSE = "x-purpose"
_PURPOSE_MAX = 200


_X_PURPOSE = {
    "name": "X-Purpose",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 200},  # _PURPOSE_MAX
    "description": "Why you read or change this record, for the audit log (free text, stored "
    "sealed); without it, the operation's own purpose (`x-purpose`) is recorded.",
}


def purpose(text: str) -> dict[str, Any]:
    """A route's default audit purpose ("log an attempt"), for its OpenAPI operation; the
    caller may state their own in X-Purpose (documented beside it)."""
    return {_PURPOSE: text, "parameters": [_X_PURPOSE]}


IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=1000,
        description="The ETag you last read. Without it: 428 `precondition_required`; `*`: "
        "428 `etag_required`; a stale one: 412 `version_mismatch` (with the current ETag).",
    ),
]
"""What an edit of a shared record is conditional on."""


def _stated_purpose(request: Request) -> str | None:
    """What the caller says they are doing (X-Purpose), at most 200 characters."""
    stated = request.headers.get("x-purpose")
    if stated is not None and len(stated) > _PURPOSE_MAX:
        raise ApiError(
            422,
            "validation_error",
            "The request does not match the schema.",
            details=[
                {
                    "loc": ["header", "X-Purpose"],
                    "type": "string_too_long",
                    "msg": f"String should have at most {_PURPOSE_MAX} characters",
                }
            ],
        )
    return stated


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error responses a route answers beyond the edge's own (401, 403, 400, 413, 415 and
    422 are documented for every route by `shared.edge.complete_openapi`). Every route reads
    the database: 503 `storage_unavailable` when it is down."""
    return {status: {"model": ErrorResponse} for status in (*statuses, 503)}


Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


class Operations:
    """A router of the team API, its operations declared in one line each: method, path,
    roles, audit purpose, the errors it answers. An endpoint's docstring is its OpenAPI
    summary (first paragraph) and description (the rest). Its routes check roles and media
    types before the body is read (`shared.edge.EdgeRoute`)."""

    def __init__(self, prefix: str, tag: str) -> None:
        self.router = APIRouter(prefix=prefix, tags=[tag], route_class=EdgeRoute)

    def get(
        self, path: str, roles: list[DependsParam], why: str | None, *statuses: int
    ) -> _Register:
        """`why`: the audit purpose; None for a route that reads nobody's record."""
        return self._route("GET", path, roles, why, statuses)

    def post(
        self,
        path: str,
        roles: list[DependsParam],
        why: str,
        *statuses: int,
        created: bool = False,
        no_content: bool = False,
    ) -> _Register:
        """`created`: answers 201; `no_content`: answers 204."""
        status = 201 if created else 204 if no_content else None
        return self._route("POST", path, roles, why, statuses, status)

    def patch(self, path: str, roles: list[DependsParam], why: str, *statuses: int) -> _Register:
        return self._route("PATCH", path, roles, why, statuses)

    def put(self, path: str, roles: list[DependsParam], why: str, *statuses: int) -> _Register:
        return self._route("PUT", path, roles, why, statuses)

    def _route(
        self,
        method: str,
        path: str,
        roles: list[DependsParam],
        why: str | None,
        statuses: tuple[int, ...],
        status_code: int | None = None,
    ) -> _Register:
        def register(endpoint: Endpoint) -> Endpoint:
            summary, _, description = inspect.cleandoc(endpoint.__doc__ or "").partition("\n\n")
            self.router.add_api_route(
                path,
                endpoint,
                methods=[method],
                dependencies=roles,
                summary=" ".join(summary.split()),
                description=description or None,
                responses=errors(*statuses),
                openapi_extra=purpose(why) if why else None,
                status_code=status_code,
            )
            return endpoint

        return register


class _Register(Protocol):
    def __call__(self, endpoint: Endpoint, /) -> Endpoint: ...


def _current_access(request: Request) -> Access:
    principal = request.scope.get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):  # a route without roles: refuse, never guess
        raise ApiError(401, "missing_token", "Send a bearer token.")
    _stated_purpose(request)
    route = request.scope.get("route")
    extra = getattr(route, "openapi_extra", None) or {}
    return Access.of(request, principal, str(extra.get(_PURPOSE, "use the team API")))


CurrentAccess = Annotated[Access, Depends(_current_access)]
"""The caller the route's roles admitted, and why they ask (for the audit log)."""


async def _unit_of_work(request: Request) -> AsyncIterator[UnitOfWork]:
    runtime: Runtime = request.app.state.runtime
    async with runtime.uow() as uow:
        yield uow


Uow = Annotated[UnitOfWork, Depends(_unit_of_work)]
"""The request's unit of work: it rolls back unless the service layer commits it."""


async def _current_task(task_id: uuid.UUID, access: CurrentAccess, uow: Uow) -> Any:
    return await access.task(uow.session, task_id)


async def _current_case(case_id: uuid.UUID, access: CurrentAccess, uow: Uow) -> Any:
    return await access.case(uow.session, case_id)


async def _current_visit(visit_id: uuid.UUID, access: CurrentAccess, uow: Uow) -> Any:
    return await access.visit(uow.session, visit_id)


class Conditional:
    """An edit's condition (the If-Match it was sent with) and its answer's ETag.

    The service layer checks the condition, after the body was validated and the record
    found: a bad body is 422 and a missing record 404 whatever If-Match says."""

    def __init__(self, if_match: str | None, response: Response) -> None:
        self.if_match = if_match
        self._response = response

    def tag(self, view: V) -> V:
        """The view, with its version as the answer's ETag."""
        return tagged(self._response, view)


async def _conditional(response: Response, if_match: IfMatch = None) -> Conditional:
    return Conditional(if_match, response)


CurrentTask = Annotated[Any, Depends(_current_task)]
"""The task of the path's task_id, in the caller's program (404 otherwise)."""
CurrentCase = Annotated[Any, Depends(_current_case)]
"""The case of the path's case_id, in the caller's program (404 otherwise)."""
CurrentVisit = Annotated[Any, Depends(_current_visit)]
"""The visit of the path's visit_id, in the caller's program (404 otherwise)."""
Edit = Annotated[Conditional, Depends(_conditional)]
"""An edit of a shared record: its If-Match, and its answer's ETag."""

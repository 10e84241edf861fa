"""Cheap refusals first, and inputs a client cannot get wrong: the team APIs' edge.

A request that may not be served is refused before anything costly happens to it:

1. a body over the service's limit (PORTLINE_HTTP_MAX_BODY_BYTES) is 413 `body_too_large`,
   from its Content-Length before a byte of it is read, or as soon as a chunked body passes
   the limit (:class:`BodyLimit`, one ASGI middleware per service);
2. a caller without a valid token, or whose role may not call the operation, is 401 or 403
   before the body is read or parsed (:class:`EdgeRoute`: FastAPI itself parses the JSON
   body before it runs dependencies, so a bad token with a bad body would otherwise be 422);
3. a body that is not JSON where JSON is expected is 415 `unsupported_media_type`;
4. only then is the body parsed and validated (422 `validation_error`, 400 `bad_request` for
   JSON that does not parse).

The types here keep values the database or the clock cannot take out of the API:
:data:`Instant` (an ISO 8601 date-time with an offset, never a number, within a sane range),
:class:`Body` (request bodies: no unknown fields, no NUL characters or unpaired surrogates in
any text) and :class:`Cursor` (opaque page cursors; a forged one is 400 `invalid_cursor`).
:func:`complete_openapi` writes into the OpenAPI document every status the edge can answer.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar, cast

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request, Response, params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Principal, Role, require
from shared.http import ApiError, ErrorResponse, error_response

__all__ = [
    "PRINCIPAL_KEY",
    "Body",
    "BodyLimit",
    "Cursor",
    "DateTimeText",
    "EdgeRoute",
    "Instant",
    "Page",
    "PageQuery",
    "check_routes",
    "complete_openapi",
    "guard",
    "is_json",
    "keyset_page",
]

T = TypeVar("T")

PRINCIPAL_KEY = "portline.principal"
"""Where the edge keeps the caller it authenticated, in the request's ASGI scope."""

SECURITY_SCHEME = "bearerAuth"

# -- values ---------------------------------------------------------------------------------

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _text_only(value: Any) -> Any:
    """A number is not a date-time here, though pydantic would read it as Unix time."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError(
            "a date-time is ISO 8601 text with an offset (e.g. 2026-11-20T03:10:00Z), not a number"
        )
    return value


def _utc_in_range(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the date-time is out of range") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"a date-time from {EARLIEST:%Y} to {LATEST:%Y} is expected")
    return utc


DateTimeText = Annotated[datetime, BeforeValidator(_text_only)]
"""A date-time given as ISO 8601 text, never a number; whether it needs an offset is the
route's to say (with its own error code)."""

Instant = Annotated[AwareDatetime, BeforeValidator(_text_only), AfterValidator(_utc_in_range)]
"""A date-time the API accepts: ISO 8601 text with an offset (never a number), from 1970 to
2200, answered in UTC."""


def _bad_text(data: Any) -> str | None:
    """Why some text in a decoded JSON value cannot be stored, or None. Iterative: a deeply
    nested body must be a validation error, not a RecursionError."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return "text may not contain the NUL character"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "text may not contain an unpaired surrogate"
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return None


class Body(BaseModel):
    """A request body: unknown fields are refused, and so is text no database can store."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        problem = _bad_text(data)
        if problem is not None:
            raise ValueError(problem)
        return data


class Page(BaseModel, Generic[T]):
    """One page of a list: every list of the team APIs answers this shape."""

    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class PageQuery(BaseModel):
    """How every list pages: at most `limit` items, then `?cursor=<next_cursor>`."""

    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(
        default=None, max_length=400, description="next_cursor of the previous page."
    )


class Cursor(Generic[T]):
    """An opaque page cursor: the sort key of a page's last row, as base64url JSON.

    Anything that does not decode to that key's shape (forged, cut, from another list) is
    400 `invalid_cursor`, never a server error: the shape is validated like a request body.
    """

    MAX_LENGTH = 400

    def __init__(self, shape: Any) -> None:
        self._adapter: TypeAdapter[T] = TypeAdapter(shape)

    def encode(self, key: T) -> str:
        return base64.urlsafe_b64encode(self._adapter.dump_json(key)).decode().rstrip("=")

    def decode(self, cursor: str) -> T:
        try:
            if len(cursor) > self.MAX_LENGTH:
                raise ValueError("too long")
            padded = cursor.encode("ascii") + b"=" * (-len(cursor) % 4)
            raw = base64.b64decode(padded, altchars=b"-_", validate=True)
            return self._adapter.validate_json(raw)
        except (ValueError, binascii.Error, ValidationError):
            raise ApiError(
                400, "invalid_cursor", "The cursor is not one this API gave out."
            ) from None


async def keyset_page(
    session: AsyncSession,
    query: sa.Select[Any],
    *,
    keys: Sequence[sa.ColumnElement[Any]],
    key_of: Callable[[Any], tuple[Any, ...]],
    cursor: Cursor[Any],
    page: PageQuery,
) -> tuple[list[Any], str | None]:
    """One page of `query`'s rows in the order of `keys` (ascending; a key like `-priority`
    orders by priority, highest first), after the row the cursor names, and the cursor of
    the page's last row when more follow. `key_of` gives a row's keys, as the cursor holds
    them."""
    if page.cursor:
        after = cursor.decode(page.cursor)
        bound = [sa.literal(v, type_=k.type) for k, v in zip(keys, after, strict=True)]
        query = query.where(sa.tuple_(*keys) > sa.tuple_(*bound))
    rows = list(await session.execute(query.order_by(*keys).limit(page.limit + 1)))
    if len(rows) <= page.limit:
        return rows, None
    return rows[: page.limit], cursor.encode(key_of(rows[page.limit - 1]))


# -- authentication before the body ----------------------------------------------------------

Guard = Callable[[Request], Awaitable[Principal]]


async def _run(check: Callable[[Request], Any], request: Request) -> Principal:
    principal = check(request)
    if inspect.isawaitable(principal):
        principal = await principal
    return cast(Principal, principal)


def guard(*roles: Role) -> Guard:
    """`shared.auth.require(*roles)` for routes of an :class:`EdgeRoute`: the route checks it
    before the body is read, and the dependency then answers the caller it found (the token
    is verified once per request)."""
    check = require(*roles)

    async def authenticated(request: Request) -> Principal:
        found = request.scope.get(PRINCIPAL_KEY)
        if isinstance(found, Principal):
            return found
        return await _run(check, request)  # a route that is not an EdgeRoute

    authenticated.roles = check.roles  # type: ignore[attr-defined]
    authenticated.check = check  # type: ignore[attr-defined]
    return authenticated


def _guards(dependant: Dependant) -> list[Callable[..., Any]]:
    """The role checks a route depends on (require() or guard() dependencies)."""
    found: list[Callable[..., Any]] = []
    stack = [dependant]
    while stack:
        current = stack.pop()
        if current.call is not None and hasattr(current.call, "roles"):
            found.append(current.call)
        stack.extend(current.dependencies)
    return list(dict.fromkeys(found))


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers


def is_json(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class EdgeRoute(APIRoute):
    """A route that refuses who may not call it (401/403) and a body that is not JSON (415)
    before FastAPI reads and parses the body. Use it for every router of a service's API
    (`APIRouter(route_class=EdgeRoute)`); its role check is a :func:`guard`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        guards = _guards(self.dependant)
        if len(guards) > 1:
            raise ValueError(f"{self.path}: a route has one role check, not {len(guards)}")
        check = getattr(guards[0], "check", guards[0]) if guards else None
        body = self.body_field
        wants_json = body is not None and not isinstance(body.field_info, params.Form)
        if check is None and not wants_json:
            return handler

        async def edge(request: Request) -> Response:
            if check is not None:
                request.scope[PRINCIPAL_KEY] = await _run(check, request)
            if wants_json and _has_body(request) and not is_json(_media_type(request)):
                raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
            return await handler(request)

        return edge


# -- the body-size limit ---------------------------------------------------------------------


class _BodyTooLarge(HTTPException):
    """Raised from the body as the app reads it; FastAPI passes HTTP exceptions on (any other
    error while reading the body would become its 400), and the app's handler answers it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body exceeds {limit} bytes.")


class BodyLimit:
    """413 `body_too_large` for a request body over `limit` bytes: from Content-Length before
    the body is read, or when a body without one (chunked) passes the limit. Pure ASGI, so a
    request within the limit costs one header lookup (and a counter on chunked bodies)."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
                break
        if length is not None:
            if length.isdigit() and int(length) > self._limit:
                await self._refuse(scope, receive, send)
                return
            await self._app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        started = False

        async def counting() -> Message:  # the body as the app reads it, refused past the limit
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._limit:
                    raise _BodyTooLarge(self._limit)
            return message

        async def watching(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, counting, watching)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, "body_too_large", f"The request body exceeds {self._limit} bytes."
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


# -- the OpenAPI document --------------------------------------------------------------------

_EDGE_RESPONSES: dict[int, str] = {
    400: "`bad_request`: the body is not valid JSON; `invalid_cursor`: a cursor this API did "
    "not give out.",
    401: "`missing_token` or `invalid_token`: no valid bearer token. Checked before the body "
    "is read.",
    403: "`forbidden_role`: the caller's role may not call this operation; "
    "`member_deactivated`: the caller was deactivated in the team roster. Checked before the "
    "body is read.",
    413: "`body_too_large`: the body is over the service's limit. Refused before it is read.",
    415: "`unsupported_media_type`: the body is not `application/json`.",
    503: "`identity_provider_unavailable`: the provider's keys cannot be fetched and none are "
    "cached; `team_access_unavailable`: the deactivated members cannot be read yet "
    "(`Retry-After`; other codes as the operation says).",
    422: "`validation_error`: the body, query or path does not match the schema (`details` "
    "name each field and why, never the value sent); or a value the rules refuse (its own "
    "code).",
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def _complete(operation: dict[str, Any], method: str) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    wanted: set[int] = set()
    parameters = operation.get("parameters", [])
    has_body = "requestBody" in operation
    if "x-roles" in operation:
        operation.setdefault("security", [{SECURITY_SCHEME: []}])
        wanted |= {401, 403, 503}
        if has_body:
            wanted |= {400, 413, 415}
    if any(p.get("name") == "cursor" for p in parameters):
        wanted.add(400)
    if parameters or has_body:
        wanted.add(422)
    for status in sorted(wanted):
        key = str(status)
        if key not in responses:
            responses[key] = _error(_EDGE_RESPONSES[status])
    validation = responses.get("422")
    if validation is not None and "HTTPValidationError" in str(validation):
        responses["422"] = _error(_EDGE_RESPONSES[422])
    if method == "head":  # a HEAD answer has headers and a status, never a body
        for response in responses.values():
            response.pop("content", None)


def complete_openapi(app: FastAPI, *, description: str | None = None) -> None:
    """Write into the app's OpenAPI document what the edge answers: the bearer scheme and,
    per operation, 401/403 where a role is checked, 400/413/415 where a JSON body is read, 400
    where a cursor is taken, and 422 in the one error shape (FastAPI documents its own)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.setdefault(
            "ErrorResponse",
            ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}"),
        )
        error_defs = schemas["ErrorResponse"].pop("$defs", {})
        schemas.update(error_defs)
        for path_item in schema.get("paths", {}).values():
            for method, operation in path_item.items():
                if isinstance(operation, dict):
                    _complete(operation, method)
        text = str(schema.get("paths", {}))
        for unused in ("HTTPValidationError", "ValidationError"):
            if f"#/components/schemas/{unused}'" not in text:
                schemas.pop(unused, None)
        if "x-roles" in text:
            components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": description
                or "A team member's token: its `role` and `program` decide what the caller "
                "may see and do (each operation lists its roles in `x-roles`).",
            }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def check_routes(routes: Sequence[Any]) -> None:
    """Every route that checks a role is an EdgeRoute (else the body is parsed first)."""
    for route in routes:
        if (
            isinstance(route, APIRoute)
            and not isinstance(route, EdgeRoute)
            and _guards(route.dependant)
        ):
            raise TypeError(f"{route.path}: use APIRouter(route_class=EdgeRoute)")

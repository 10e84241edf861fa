"""The dashboard's routes: the page, its sign-in session, its two static files.

Who may see it: analysts, team leads and admins, as the metrics API. The page takes the same
bearer token as the API in the Authorization header (an OpenID Connect proxy in front of it
forwards the user's token), or, for a browser opened from a sign-in link, in a session cookie
(HttpOnly, SameSite=Strict, path /dashboard, at most an hour and never beyond the token's own
expiry) that `POST /dashboard/session` sets from the token in its Authorization header.
Every answer forbids other origins (Content-Security-Policy) and framing.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from functools import cache
from importlib import resources
from typing import Annotated, Literal

import jwt
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reporting.answers import Question, QuestionError
from services.reporting.dashboard.board import Filters, gather
from services.reporting.dashboard.page import error_page, page, signin_page
from services.reporting.dashboard.questions import board_sessions
from services.reporting.dashboard.render import SvgRenderer
from services.reporting.dashboard.signals import NOT_YET_BUILT, Signals
from services.reporting.programs import ProgramBook
from shared.auth import Principal, authenticate, authenticate_token
from shared.http import ApiError
from shared.runtime import Runtime

__all__ = ["COOKIE", "DEFAULT_DAYS", "SECURITY_HEADERS", "SESSION_SECONDS", "router"]

router = APIRouter(tags=["dashboard"])

COOKIE = "portline_dashboard"
SESSION_SECONDS = 3600
"""A sign-in cookie lasts an hour at most (and never beyond its token's expiry)."""
DEFAULT_DAYS = 91
"""Without `from`, the page shows the last 13 weeks to today (the program's clock)."""
READERS = ("analyst", "team_lead", "admin")
INTERNAL_ROLES = ("team_lead", "admin")
MAX_COUNTY = 100

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
STATIC_TYPES = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


def _error(error: ApiError) -> HTMLResponse:
    response = _html(error_page(error.status, error.code, error.message), error.status)
    if error.headers:
        response.headers.update(error.headers)
    return response


async def _principal(request: Request) -> tuple[Principal, bool]:
    """The reader, and whether they came by the session cookie."""
    if request.headers.get("authorization"):
        principal, by_cookie = await authenticate(request), False
    else:
        token = request.cookies.get(COOKIE)
        if not token:
            raise ApiError(401, "missing_token", "Sign in to see the dashboard.")
        principal, by_cookie = await authenticate_token(request, token), True
    if principal.role not in READERS:
        raise ApiError(
            403, "forbidden_role", f"The {principal.role} role may not see the dashboard."
        )
    return principal, by_cookie


def _date(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(422, "validation_error", f"`{name}` must be a date, YYYY-MM-DD.") from None


def _filters(
    request: Request,
    principal: Principal,
    start_text: str | None,
    end_text: str | None,
    county: str | None,
    view: str | None,
) -> Filters:
    programs: ProgramBook = request.app.state.programs
    runtime: Runtime = request.app.state.runtime
    rules = programs.for_program(principal.program)
    end = _date(end_text, "to") or rules.local_date(runtime.clock.now())
    start = _date(start_text, "from") or end - timedelta(days=DEFAULT_DAYS - 1)
    if view not in (None, "", "published", "internal"):
        raise ApiError(422, "validation_error", "`view` is published or internal.")
    chosen: Literal["published", "internal"] = "internal" if view == "internal" else "published"
    if chosen == "internal" and principal.role not in INTERNAL_ROLES:
        raise ApiError(
            403,
            "internal_view_forbidden",
            "Only team leads and admins may see the internal (unsuppressed) view.",
        )
    county = (county or "").strip() or None
    if county is not None and len(county) > MAX_COUNTY:
        raise ApiError(422, "validation_error", f"`county` is at most {MAX_COUNTY} characters.")
    if county is not None and any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in county):
        raise ApiError(422, "validation_error", "`county` must not hold control characters.")
    try:
        Question(principal.program, start, end, (), chosen)
    except QuestionError as error:
        raise ApiError(422, error.code, error.message) from None
    return Filters(start, end, county, chosen)


def _board_sessions(request: Request, runtime: Runtime) -> async_sessionmaker[AsyncSession]:
    """The board's reading sessions (questions.board_sessions), made once per app."""
    state = request.app.state
    sessions: async_sessionmaker[AsyncSession] | None = getattr(state, "board_sessions", None)
    if sessions is None:
        sessions = state.board_sessions = board_sessions(runtime.engine)
    return sessions


Text = Annotated[str | None, Query()]


@router.get(
    "/dashboard",
    summary="The dashboard: the program's figures as charts, tables and panels (HTML)",
    description="Filters: `from`, `to` (incident dates; default the last 13 weeks), `county`, "
    "`view=internal` (team leads and admins). Bearer token in the Authorization header, or "
    "the session cookie `POST /dashboard/session` sets. Roles: analyst, team_lead, admin. "
    "Refusals are pages too, with the error's status and code.",
    response_class=HTMLResponse,
    responses={
        status: {"description": why, "content": {"text/html": {}}}
        for status, why in (
            (401, "Not signed in: a sign-in note."),
            (403, "A role that may not see the figures, or the internal view asked for."),
            (422, "Bad filters (`validation_error`, `invalid_range`, `range_too_large`)."),
        )
    },
)
async def dashboard(
    request: Request,
    start: Annotated[str | None, Query(alias="from")] = None,
    to: Text = None,
    county: Text = None,
    view: Text = None,
) -> Response:
    try:
        principal, by_cookie = await _principal(request)
        filters = _filters(request, principal, start, to, county, view)
    except ApiError as error:
        if error.status != 401:
            return _error(error)
        response = _html(signin_page(error.message), 401)
        if request.cookies.get(COOKIE):
            response.delete_cookie(COOKIE, path="/dashboard")
        return response
    runtime: Runtime = request.app.state.runtime
    programs: ProgramBook = request.app.state.programs
    signals: Signals = getattr(request.app.state, "signals", NOT_YET_BUILT)
    renderer: SvgRenderer = request.app.state.renderer
    board, alerts, feeds = await asyncio.gather(
        gather(
            _board_sessions(request, runtime),
            programs.for_program(principal.program),
            filters,
            as_of=runtime.clock.now(),
        ),
        signals.open_alerts(principal.program),
        signals.feeds(principal.program),
    )
    svgs = await renderer.render([chart.spec for chart in board.charts])
    text = page(
        board,
        svgs,
        alerts=alerts,
        feeds=feeds,
        may_see_internal=principal.role in INTERNAL_ROLES,
        signed_in_by_cookie=by_cookie,
    )
    return _html(text)


@router.post(
    "/dashboard/session",
    summary="Trade the bearer token in the Authorization header for a dashboard cookie",
    description="Sets an HttpOnly, SameSite=Strict cookie (path /dashboard) that lasts until "
    "the token expires, an hour at most. Roles: analyst, team_lead, admin.",
    status_code=204,
)
async def session(request: Request) -> Response:
    try:
        if not request.headers.get("authorization"):
            raise ApiError(401, "missing_token", "Send a bearer token.")
        await _principal(request)
    except ApiError as error:
        return _error(error)
    token = request.headers["authorization"][7:].strip()
    expires = jwt.decode(token, options={"verify_signature": False}).get("exp")
    runtime: Runtime = request.app.state.runtime
    now = runtime.clock.now().timestamp()
    lasts = SESSION_SECONDS if expires is None else min(SESSION_SECONDS, int(expires - now))
    response = Response(status_code=204, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(lasts, 0),
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    return response


@router.post(
    "/dashboard/signout",
    summary="End the dashboard's cookie session",
    description="Clears the cookie and sends the browser back to `/dashboard` (303), which "
    "then answers its sign-in note, or the page for a bearer token a proxy forwards.",
    status_code=303,
    response_class=HTMLResponse,
    responses={
        303: {"description": "Signed out: to /dashboard."},
        200: {
            "description": "/dashboard, for a client that follows the redirect.",
            "content": {"text/html": {}},
        },
        401: {
            "description": "/dashboard's sign-in note, for a client that follows the redirect.",
            "content": {"text/html": {}},
        },
    },
)
async def signout() -> Response:
    response = HTMLResponse(  # a short page for the rare client that shows a 303's body
        '<!doctype html><title>Signed out</title><a href="/dashboard">Signed out</a>',
        status_code=303,
        headers={**SECURITY_HEADERS, "Location": "/dashboard"},
    )
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@cache
def _static(name: str) -> bytes:
    return resources.files("services.reporting.dashboard").joinpath("static", name).read_bytes()


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    if name not in STATIC_TYPES:
        raise ApiError(404, "not_found", "No such file.")
    return Response(
        _static(name),
        media_type=STATIC_TYPES[name],
        headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=300"},
    )

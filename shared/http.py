"""The HTTP edge every service shares: errors with stable codes, health, readiness, metrics.

Every error response has the same shape, so clients handle them in one place:

    {"error": {"code": "validation_error", "message": "...", "details": [...]}}
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import tracing
from shared.metrics import HTTP_REQUESTS, HTTP_SECONDS

__all__ = [
    "ApiError",
    "ErrorBody",
    "ErrorResponse",
    "add_openapi_schemas",
    "direct_routes",
    "error_response",
    "install_common_routes",
    "install_error_handlers",
]


class ApiError(Exception):
    """An error a route raises on purpose: an HTTP status, a stable code, a human sentence."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers or {}
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[Any] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    428: "precondition_required",
    429: "too_many_requests",
}


def error_response(
    status: int, code: str, message: str, details: list[Any] | None = None
) -> JSONResponse:
    """An error in the shared shape, for services' own exception handlers."""
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details or []))
    return JSONResponse(body.model_dump(mode="json"), status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        response.headers.update(exc.headers)
        return response

    async def validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        # Report where and why, never the submitted values (they may be PHI).
        details = [
            {"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")}
            for e in exc.errors()
        ]
        return error_response(
            422, "validation_error", "The request does not match the schema.", details
        )

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        response = error_response(exc.status_code, code, message)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error(
            "unhandled error",
            exc_info=exc,
            extra={"method": request.method, "path": request.url.path},
        )
        return error_response(
            500, "internal_error", "An unexpected error occurred; it has been logged."
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


ReadinessCheck = Callable[[], Awaitable[dict[str, str]]]


class Health(BaseModel):
    status: str
    service: str


class Readiness(BaseModel):
    status: str
    service: str
    checks: dict[str, str]


def install_common_routes(app: FastAPI, *, service: str, readiness: ReadinessCheck) -> None:
    """/healthz, /readyz and /metrics, plus request metrics for every route."""
    registry = _metrics_registry()

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process is serving")
    async def healthz() -> Health:
        return Health(status="ok", service=service)

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness: the database and Kafka are reachable",
        description="200 when every check is `ok`, else 503 with the failing checks. Besides "
        "`database` and `kafka`, a service may add its own: an intake worker without the MLLP "
        "listener checks that the MLLP port accepts connections (`mllp`).",
        responses={503: {"model": Readiness}},
    )
    async def readyz() -> Response:
        checks = await readiness()
        ready = all(v == "ok" for v in checks.values())
        body = Readiness(status="ready" if ready else "not_ready", service=service, checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        description="With several worker processes, the sum over all of them.",
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_RequestMetrics, service=service)


def _metrics_registry() -> CollectorRegistry:
    """This process's metrics; for worker processes (PROMETHEUS_MULTIPROC_DIR, set by the
    supervisor in shared.serve, which is also what prometheus_client itself reads) those of
    every worker, read from their files and added up at each scrape."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


class _RequestMetrics:
    """Counts and times requests by route template (plain ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self._app = app
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()
        method = scope["method"]

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # A new trace per request (a caller's traceparent is not continued: shared.tracing);
        # probes and scrapes are not traced.
        with contextlib.ExitStack() as stack:
            span = None
            if scope.get("path") not in _UNTRACED:
                span = stack.enter_context(tracing.span(method, kind=tracing.SpanKind.SERVER))
            try:
                await self._app(scope, receive, capture)
            finally:
                route = getattr(scope.get("route"), "path", "unmatched")
                elapsed = time.perf_counter() - started
                HTTP_SECONDS.labels(self._service, method, route).observe(elapsed)
                HTTP_REQUESTS.labels(self._service, method, route, str(status)).inc()
                if span is not None:
                    span.update_name(f"{method} {route}")
                    tracing.set_attributes(
                        span,
                        {
                            "http.request.method": method,
                            "http.route": route,
                            "http.response.status_code": status,
                            "portline.service": self._service,
                        },
                    )


class _DirectRoutes:
    """Serves a few hot routes by calling their endpoint directly (see `direct_routes`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        fastapi_app: FastAPI,
        routes: Mapping[tuple[str, str], APIRoute],
    ) -> None:
        self._app = app
        self._fastapi_app = fastapi_app
        self._routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http":
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            route = self._routes.get((scope["method"], path))
        if route is None:
            await self._app(scope, receive, send)
            return
        scope["route"] = route  # for the request metrics, as routing would set it
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            # The app's own handler for the exception, as ExceptionMiddleware (or, for what
            # nothing else handles, ServerErrorMiddleware) would choose it.
            handler = next(
                (
                    h
                    for cls in type(exc).__mro__
                    if (h := self._fastapi_app.exception_handlers.get(cls)) is not None
                ),
                None,
            )
            if handler is None:
                raise
            answered = handler(request, exc)
            response = await answered if inspect.isawaitable(answered) else answered
        await response(scope, receive, send)


def _check_direct(route: APIRoute) -> None:
    """Only an endpoint that takes the bare Request and answers with a Response can skip
    FastAPI's request handling: it has no parameters, dependencies or body to resolve."""
    d = route.dependant
    params = (
        d.path_params,
        d.query_params,
        d.header_params,
        d.cookie_params,
        d.body_params,
        d.dependencies,
    )
    if any(params) or d.request_param_name is None or route.dependencies:
        raise ValueError(
            f"direct_routes: {route.path} must take only the Request and have no dependencies"
        )


def direct_routes(
    app: FastAPI, routers: Sequence[APIRouter], routes: Sequence[tuple[str, str]]
) -> None:
    """Serve these (method, path) routes, from routers included without a prefix, by calling
    their endpoints directly.

    For an endpoint that reads the raw request itself (`endpoint(request) -> Response`),
    FastAPI's routing and request handling add nothing but CPU: matching the path against
    every route, resolving an empty set of dependencies and the ASGI layers between them,
    about a tenth of intake's CPU per EMS run report under load (measured, ADR 0011). The
    routes stay registered as usual, so the OpenAPI document is unchanged; errors go to the
    app's exception handlers as before, and the request metrics still see each request
    under its route. Call before `install_common_routes`, so those metrics wrap it.
    """
    known = {
        (method, route.path): route
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    chosen: dict[tuple[str, str], APIRoute] = {}
    for method, path in routes:
        route = known.get((method, path))
        if route is None:
            raise ValueError(f"direct_routes: no route {method} {path}")
        _check_direct(route)
        chosen[(method, path)] = route
    app.add_middleware(_DirectRoutes, fastapi_app=app, routes=chosen)


def add_openapi_schemas(
    app: FastAPI,
    models: Sequence[type[BaseModel]],
    *,
    security_schemes: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Publish models that routes read from the raw body (so FastAPI cannot see them)
    under components/schemas, where the routes' request bodies refer to them; and security
    schemes that routes name in their `openapi_extra` (when they authenticate themselves)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        if security_schemes:
            schemes = schema["components"].setdefault("securitySchemes", {})
            schemes.update({name: dict(scheme) for name, scheme in security_schemes.items()})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

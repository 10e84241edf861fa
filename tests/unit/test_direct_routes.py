"""shared.http.direct_routes: hot routes served past FastAPI's routing, with the same answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response

from shared.http import (
    ApiError,
    direct_routes,
    install_common_routes,
    install_error_handlers,
)
from shared.metrics import HTTP_REQUESTS

router = APIRouter(prefix="/v1", tags=["test"])
seen: list[dict[str, object]] = []


@router.post("/echo", summary="Echo the body")
async def echo(request: Request) -> Response:
    seen.append({"router": "router" in request.scope, "app": request.app.title})
    if request.headers.get("x-fail") == "api":
        raise ApiError(409, "conflict_here", "Refused.", headers={"Retry-After": "7"})
    if request.headers.get("x-fail") == "crash":
        raise RuntimeError("a bug")
    return Response(await request.body(), media_type="text/plain")


@router.get("/echo", summary="Only POST is direct")
async def echo_get(request: Request) -> Response:
    seen.append({"router": "router" in request.scope})
    return Response("get")


@router.post("/with-query")
async def with_query(request: Request, limit: int = 3) -> Response:
    return Response(str(limit))


def _dependency() -> int:
    return 1


@router.post("/with-dependency", dependencies=[Depends(_dependency)])
async def with_dependency(request: Request) -> Response:
    return Response("x")


def _app(*routes: tuple[str, str]) -> FastAPI:
    app = FastAPI(title="direct-test")
    install_error_handlers(app)
    app.include_router(router)
    direct_routes(app, [router], routes)
    install_common_routes(app, service="intake", readiness=_ready)
    return app


async def _ready() -> dict[str, str]:
    return {}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    seen.clear()
    app = _app(("POST", "/v1/echo"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def _count(status: str) -> float:
    return HTTP_REQUESTS.labels("intake", "POST", "/v1/echo", status)._value.get()  # type: ignore[attr-defined]


async def test_a_direct_route_is_answered_by_its_endpoint_without_the_router(
    client: httpx.AsyncClient,
) -> None:
    before = _count("200")
    response = await client.post("/v1/echo", content=b"hello")
    assert response.status_code == 200
    assert response.text == "hello"
    # Starlette's router marks every scope it handles; the direct path never reaches it.
    assert seen == [{"router": False, "app": "direct-test"}]
    # The request metrics still count it under its route template.
    assert _count("200") == before + 1


async def test_other_methods_on_the_path_and_other_paths_take_the_usual_routing(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/echo")
    assert response.text == "get"
    assert seen == [{"router": True}]
    assert (await client.put("/v1/echo")).status_code == 405
    missing = await client.post("/v1/echo/")
    assert missing.status_code in (307, 404)


async def test_an_api_error_gets_the_shared_error_shape_and_its_headers(
    client: httpx.AsyncClient,
) -> None:
    before = _count("409")
    response = await client.post("/v1/echo", headers={"x-fail": "api"})
    assert response.status_code == 409
    assert response.headers["retry-after"] == "7"
    assert response.json() == {
        "error": {"code": "conflict_here", "message": "Refused.", "details": []}
    }
    assert _count("409") == before + 1


async def test_an_unexpected_error_is_a_logged_500_without_its_text(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.post("/v1/echo", headers={"x-fail": "crash"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "a bug" not in response.text
    assert any(r.message == "unhandled error" for r in caplog.records)


async def test_the_openapi_document_still_describes_a_direct_route(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["paths"]["/v1/echo"]["post"]["summary"] == "Echo the body"


def test_only_bare_request_endpoints_without_dependencies_can_be_direct() -> None:
    with pytest.raises(ValueError, match="no route"):
        _app(("POST", "/v1/nowhere"))
    with pytest.raises(ValueError, match="only the Request"):
        _app(("POST", "/v1/with-query"))
    with pytest.raises(ValueError, match="only the Request"):
        _app(("POST", "/v1/with-dependency"))

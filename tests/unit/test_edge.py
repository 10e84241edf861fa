"""The shared edge: cheap refusals before the body, values a client cannot get wrong, keyset
pages, and OpenAPI documents that say what every service answers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Query
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from services.intake.app import create_app as intake_app
from services.outreach.app import create_app as outreach_app
from services.reporting.app import create_app as reporting_app
from services.scheduler.app import create_app as scheduler_app
from shared.auth import AuthError, Principal, TeamIdentity, require
from shared.edge import (
    Body,
    BodyLimit,
    Cursor,
    EdgeRoute,
    Instant,
    PageQuery,
    check_routes,
    complete_openapi,
    guard,
    keyset_page,
)
from shared.http import ApiError, install_common_routes, install_error_handlers
from shared.settings import Settings

NOW = datetime.now(UTC)


class _Tokens:
    """A verifier whose tokens are `role:subject`: the edge, not token checking, is tested
    here (shared.oidc's own tests check real tokens)."""

    def __init__(self) -> None:
        self.verified: list[str] = []

    async def verify(self, token: str) -> Principal:
        self.verified.append(token)
        role, _, subject = token.partition(":")
        if role not in ("peer", "team_lead", "deputy", "analyst", "admin") or not subject:
            raise AuthError("not a token")
        return Principal(subject=subject, role=role, program="demo")  # type: ignore[arg-type]


class _NobodyDeactivated:
    loaded = True

    def deactivated(self, program: str, subject: str) -> bool:
        return False

    def apply(self, program: str, member: str, *, active: bool) -> None:
        return None


class Thing(Body):
    name: str
    at: Instant | None = None
    tags: list[Any] = []


def _app(limit: int = 1024) -> tuple[FastAPI, dict[str, int]]:
    calls = {"endpoint": 0}
    router = APIRouter(prefix="/v1", route_class=EdgeRoute)

    @router.post("/things")
    async def create(
        thing: Thing, who: Annotated[Principal, Depends(guard("peer"))]
    ) -> dict[str, Any]:
        calls["endpoint"] += 1
        return {"name": thing.name, "by": who.subject, "at": thing.at}

    @router.get("/things")
    async def listing(
        page: Annotated[PageQuery, Query()], who: Annotated[Principal, Depends(guard())]
    ) -> dict[str, Any]:
        return {"limit": page.limit}

    app = FastAPI()
    app.state.team_identity = TeamIdentity(verifier=_Tokens(), access=_NobodyDeactivated())
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(BodyLimit, limit=limit)

    async def ready() -> dict[str, str]:
        return {"database": "ok"}

    install_common_routes(app, service="test", readiness=ready)
    complete_openapi(app)
    return app, calls


def _auth(role: str = "peer") -> dict[str, str]:
    return {"Authorization": f"Bearer {role}:{role}-1"}


@pytest.fixture
async def edge() -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, int]]]:
    app, calls = _app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        yield client, calls


def _code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


JSON = {"Content-Type": "application/json"}


async def test_who_may_not_call_is_refused_before_the_body_is_parsed(
    edge: tuple[httpx.AsyncClient, dict[str, int]],
) -> None:
    client, calls = edge
    bad = b'{"name": '  # not JSON, and not the schema either
    assert _code(await client.post("/v1/things", content=bad, headers=JSON)) == (
        401,
        "missing_token",
    )
    no = {"Authorization": "Bearer nope"}
    assert _code(await client.post("/v1/things", content=bad, headers=JSON | no)) == (
        401,
        "invalid_token",
    )
    deputy = _auth("deputy") | JSON
    assert _code(await client.post("/v1/things", content=bad, headers=deputy)) == (
        403,
        "forbidden_role",
    )
    assert _code(await client.post("/v1/things", content=bad, headers=_auth() | JSON)) == (
        400,
        "bad_request",
    )
    assert calls["endpoint"] == 0


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/x-www-form-urlencoded", None]
)
async def test_a_body_that_is_not_json_is_415(
    edge: tuple[httpx.AsyncClient, dict[str, int]], content_type: str | None
) -> None:
    client, calls = edge
    headers = _auth() | ({"Content-Type": content_type} if content_type else {})
    r = await client.post("/v1/things", content=b'{"name": "x"}', headers=headers)
    assert _code(r) == (415, "unsupported_media_type")
    assert calls["endpoint"] == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"],
)
async def test_json_in_any_json_media_type_is_served(
    edge: tuple[httpx.AsyncClient, dict[str, int]], content_type: str
) -> None:
    client, _calls = edge
    r = await client.post(
        "/v1/things", content=b'{"name": "x"}', headers=_auth() | {"Content-Type": content_type}
    )
    assert r.status_code == 200, r.text
    assert r.json()["by"] == "peer-1"


async def test_the_token_is_verified_once_per_request() -> None:
    app, _calls = _app()
    tokens = app.state.team_identity.verifier
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        r = await client.post("/v1/things", json={"name": "x"}, headers=_auth())
    assert r.status_code == 200
    assert tokens.verified == ["peer:peer-1"]


async def test_a_body_over_the_limit_is_413_before_it_is_read(
    edge: tuple[httpx.AsyncClient, dict[str, int]],
) -> None:
    client, calls = edge
    big = b'{"name": "' + b"x" * 2000 + b'"}'
    # no token either: the size is the cheapest refusal of all
    assert _code(await client.post("/v1/things", content=big, headers=JSON)) == (
        413,
        "body_too_large",
    )

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it is read
        for _ in range(10):
            yield b"x" * 300

    r = await client.post("/v1/things", content=chunks(), headers=_auth() | JSON)
    assert _code(r) == (413, "body_too_large")
    assert calls["endpoint"] == 0
    within = await client.post("/v1/things", content=b'{"name": "x"}', headers=_auth() | JSON)
    assert within.status_code == 200


def test_a_role_checked_route_must_be_an_edge_route() -> None:
    router = APIRouter()

    @router.get("/x")
    async def x(who: Annotated[Principal, Depends(require("peer"))]) -> None:
        return None

    with pytest.raises(TypeError, match="EdgeRoute"):
        check_routes(router.routes)


# -- values ------------------------------------------------------------------------------------

INSTANT: TypeAdapter[datetime] = TypeAdapter(Instant)


@pytest.mark.parametrize(
    "value",
    [
        1_700_000_000,
        1.5,
        "1700000000",
        "-3.5e2",
        True,
        "2026-11-20T03:10:00",  # no offset
        "0001-01-01T00:00:00+05:00",  # overflows when read in UTC
        "9999-12-31T23:59:59-14:00",
        "1969-12-31T23:59:59Z",
        "2200-01-01T00:00:00Z",
        "yesterday",
    ],
)
def test_an_instant_is_iso_text_with_an_offset_in_range(value: object) -> None:
    with pytest.raises(ValidationError):
        INSTANT.validate_python(value)


def test_an_instant_is_answered_in_utc() -> None:
    value = INSTANT.validate_python("2026-11-20T03:10:00-05:00")
    assert value == datetime(2026, 11, 20, 8, 10, tzinfo=UTC)
    assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["a\x00b", "\ud800", "ok \udfff"])
def test_a_body_refuses_text_no_database_can_store(text: str) -> None:
    with pytest.raises(ValidationError):
        Thing.model_validate({"name": "x", "tags": [{"deep": [text]}]})
    with pytest.raises(ValidationError):
        Thing.model_validate({"name": text})


def test_a_deeply_nested_body_is_a_validation_error_not_a_crash() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValidationError):
        Thing.model_validate({"name": "x", "tags": [deep, "\x00"]})
    assert Thing.model_validate({"name": "x", "tags": [deep]}).name == "x"


def test_a_body_refuses_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        Thing.model_validate({"name": "x", "nme": "y"})


CURSOR: Cursor[tuple[datetime, int, uuid.UUID]] = Cursor(tuple[Instant, int, uuid.UUID])


def test_a_cursor_round_trips() -> None:
    key = (NOW, -3, uuid.uuid4())
    assert CURSOR.decode(CURSOR.encode(key)) == key


@given(st.text(max_size=500))
def test_any_text_as_a_cursor_is_a_key_or_400(text: str) -> None:
    refused: ApiError | None = None
    try:
        CURSOR.decode(text)
    except ApiError as exc:
        refused = exc
    assert refused is None or (refused.status, refused.code) == (400, "invalid_cursor")


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "²",
        "nope",
        "W10",  # []
        "eyJ4IjoxfQ",  # {"x": 1}
        "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzA1OjAwIiwxLCJhIl0",  # a year-1 time
        "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwxLCIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAiXQ",
        "A" * 401,
    ],
)
def test_a_forged_cursor_is_400(forged: str) -> None:
    with pytest.raises(ApiError) as refused:
        CURSOR.decode(forged)
    assert (refused.value.status, refused.value.code) == (400, "invalid_cursor")


async def test_keyset_pages_walk_every_row_once_in_order(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/k.db")
    meta = sa.MetaData()
    table = sa.Table(
        "row", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("rank", sa.Integer)
    )
    async with engine.begin() as conn:
        await conn.run_sync(meta.create_all)
        await conn.execute(table.insert(), [{"id": i, "rank": i % 3} for i in range(1, 12)])
    cursor: Cursor[tuple[int, int]] = Cursor(tuple[int, int])
    seen: list[tuple[int, int]] = []
    page = PageQuery(limit=4)
    async with engine.connect() as conn:
        while True:
            rows, after = await keyset_page(
                conn,  # type: ignore[arg-type]
                sa.select(table),
                keys=[-table.c.rank, table.c.id],
                key_of=lambda r: (-r.rank, r.id),
                cursor=cursor,
                page=page,
            )
            seen += [(r.rank, r.id) for r in rows]
            if after is None:
                break
            page = PageQuery(limit=4, cursor=after)
    await engine.dispose()
    assert seen == sorted(seen, key=lambda r: (-r[0], r[1]))
    assert sorted(i for _, i in seen) == list(range(1, 12))


# -- every service's OpenAPI document ---------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        env="development",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db",
        kafka_bootstrap_servers="127.0.0.1:9",
        var_dir=tmp_path,
    )


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


@pytest.mark.parametrize("factory", [intake_app, scheduler_app, outreach_app, reporting_app])
def test_every_service_documents_what_its_edge_answers(factory: Any, settings: Settings) -> None:
    app = factory(settings)
    schema = app.openapi()
    components = schema["components"]
    assert "HTTPValidationError" not in components["schemas"]
    assert "ErrorResponse" in components["schemas"]
    for method, path, operation in _operations(schema):
        where = f"{method} {path}"
        responses = operation["responses"]
        for status, response in responses.items():
            if status.startswith(("4", "5")) and "content" in response:
                media = response["content"].get("application/json")
                if media is not None and path not in ("/readyz",):
                    assert media["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}, (
                        f"{where} {status}"
                    )
        if "x-roles" in operation:
            assert operation["security"] == [{"bearerAuth": []}], where
            assert {"401", "403"} <= set(responses), where
            if "requestBody" in operation:
                assert {"400", "413", "415", "422"} <= set(responses), where
        if any(p["name"] == "cursor" for p in operation.get("parameters", [])):
            assert "400" in responses, where
        if operation.get("parameters") or "requestBody" in operation:
            assert "422" in responses, where
    assert {"get", "head"} <= set(schema["paths"]["/healthz"])
    assert {"get", "head"} <= set(schema["paths"]["/readyz"])
    metrics = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    if any("x-roles" in op for _m, _p, op in _operations(schema)):
        assert components["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


async def test_health_answers_head_and_metrics_are_text(
    edge: tuple[httpx.AsyncClient, dict[str, int]],
) -> None:
    client, _calls = edge
    head = await client.head("/healthz")
    assert (head.status_code, head.content) == (200, b"")
    assert (await client.head("/readyz")).status_code == 200
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    listing = await client.get("/v1/things", params={"limit": 0}, headers=_auth("analyst"))
    assert _code(listing) == (422, "validation_error")


class _Model(BaseModel):
    at: Instant


def test_an_instant_is_documented_as_a_date_time() -> None:
    assert _Model.model_json_schema()["properties"]["at"] == {
        "format": "date-time",
        "title": "At",
        "type": "string",
    }

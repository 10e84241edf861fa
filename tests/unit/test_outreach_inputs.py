"""Inputs a client cannot get wrong, on the team API: cheap refusals on every operation, bounds
on numbers and times, forged cursors, If-Match, quiet hours, referrals and closed cases, and
lists that page the same way everywhere."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from services.outreach.models import SMS_MESSAGE
from shared.events import CaseClosed, QuietHours
from shared.events.scheduler import TaskKind
from tests.outreach_world import World, outreach_world

LIMIT = 4096


def _provider(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json={"sid": "SM1", "status": "queued"})


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with outreach_world(
        tmp_path,
        sms_transport=httpx.MockTransport(_provider),
        outreach_sms_url="https://sms.test",
        outreach_sms_account_sid="AC1",
        outreach_sms_auth_token="token-1",
        outreach_sms_from="+13365550000",
        http_max_body_bytes=LIMIT,
    ) as w:
        for member in ("peer-1", "peer-2", "deputy-1"):
            await w.member(member)
        yield w


def _code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def _operations(world: World) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in world.app.openapi()["paths"].items()
        for method, op in item.items()
    ]


def _path(template: str) -> str:
    return template.format(
        task_id=uuid.uuid4(),
        case_id=uuid.uuid4(),
        visit_id=uuid.uuid4(),
        referral_id=uuid.uuid4(),
        notice_id=uuid.uuid4(),
        hot_spot_id=uuid.uuid4(),
        member_id="someone",
    )


async def test_every_operation_refuses_who_may_not_call_before_reading_the_body(
    world: World,
) -> None:
    bad = b'{"not json'
    json = {"Content-Type": "application/json"}
    checked = 0
    for method, template, op in _operations(world):
        if "x-roles" not in op or "requestBody" not in op:
            continue
        path, where = _path(template), f"{method} {template}"
        r = await world.client.request(method, path, content=bad, headers=json)
        assert _code(r) == (401, "missing_token"), where
        other = next(role for role in ("analyst", "deputy", "peer") if role not in op["x-roles"])
        r = await world.client.request(method, path, content=bad, headers=json | world.auth(other))
        assert _code(r) == (403, "forbidden_role"), where
        allowed = world.auth(op["x-roles"][0])
        r = await world.client.request(
            method, path, content=b"{}", headers=allowed | {"Content-Type": "text/plain"}
        )
        assert _code(r) == (415, "unsupported_media_type"), where
        r = await world.client.request(method, path, content=bad, headers=json | allowed)
        assert _code(r) == (400, "bad_request"), where
        r = await world.client.request(method, path, content=b"x" * (LIMIT + 1), headers=json)
        assert _code(r) == (413, "body_too_large"), where
        checked += 1
    assert checked >= 15


FORGED = ["nope", "²", "W10", "eyJ4IjoxfQ", "W251bGwsbnVsbCxudWxsXQ", "A" * 399]


async def test_every_list_answers_a_forged_cursor_with_400(world: World) -> None:
    lists = [
        (path, op["x-roles"][0])
        for method, path, op in _operations(world)
        if any(p["name"] == "cursor" for p in op.get("parameters", []))
    ]
    assert {p for p, _ in lists} == {
        "/v1/tasks",
        "/v1/visits",
        "/v1/deputy/visits",
        "/v1/team/members",
        "/v1/audit",
    }
    for path, role in lists:
        for cursor in FORGED:
            r = await world.client.get(path, params={"cursor": cursor}, headers=world.auth(role))
            assert _code(r) == (400, "invalid_cursor"), f"{path} {cursor!r}"


async def test_every_list_pages_the_same_way(world: World) -> None:
    for member in ("peer-3", "peer-4"):
        await world.member(member)
    lead = world.auth("team_lead")
    names: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await world.client.get("/v1/team/members", params=params, headers=lead)
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "next_cursor"}
        names += [m["display_name"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == sorted(names)
    assert len(names) == len(set(names)) == 5
    deputy = await world.client.get(
        "/v1/deputy/visits", headers=world.auth("deputy", subject="deputy-1")
    )
    assert set(deputy.json()) == {"items", "next_cursor"}


async def test_the_queue_finds_the_tasks_of_one_report(world: World) -> None:
    mine = await world.seed_case()
    await world.seed_case()
    peer = world.auth("peer", subject="peer-1")
    r = await world.client.get("/v1/tasks", params={"report_id": str(mine.report_id)}, headers=peer)
    assert [t["id"] for t in r.json()["items"]] == [str(mine.task_id)]
    other_program = world.auth("peer", program="other")
    r = await world.client.get(
        "/v1/tasks", params={"report_id": str(mine.report_id)}, headers=other_program
    )
    assert r.json()["items"] == []


def _at(when: object) -> dict[str, Any]:
    return {"channel": "phone", "outcome": "no_answer", "occurred_at": when}


@pytest.mark.parametrize(
    ("when", "code"),
    [
        (1_700_000_000, "validation_error"),
        ("1700000000", "validation_error"),
        ("2026-11-20T03:10:00", "validation_error"),
        ("0001-01-01T00:00:00+05:00", "validation_error"),
        ("2019-01-01T00:00:00Z", "time_before_overdose"),
        ("FUTURE", "time_in_future"),
    ],
)
async def test_an_attempt_is_dated_after_its_overdose_and_not_ahead(
    world: World, when: object, code: str
) -> None:
    seeded = await world.seed_case()
    if when == "FUTURE":
        when = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/attempts",
        json=_at(when),
        headers=world.auth("peer", subject="peer-1"),
    )
    assert _code(r) == (422, code)
    if code == "time_before_overdose":
        assert "overdose_at" in r.json()["error"]["details"][0]
    skewed = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()  # a phone a bit ahead
    ok = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/attempts",
        json=_at(skewed),
        headers=world.auth("peer", subject="peer-1"),
    )
    assert ok.status_code == 201, ok.text


async def test_service_counts_have_a_sane_maximum(world: World) -> None:
    seeded = await world.seed_case()
    url = f"/v1/cases/{seeded.case_id}/services"
    peer = world.auth("peer", subject="peer-1")
    for count in (0, 1001, 10**12):
        r = await world.client.post(
            url, json={"items": [{"kind": "naloxone_kit", "count": count}]}, headers=peer
        )
        assert _code(r) == (422, "validation_error"), count
    r = await world.client.post(
        url, json={"items": [{"kind": "fentanyl_test_strips", "count": 1000}]}, headers=peer
    )
    assert r.status_code == 201, r.text
    assert r.json()["items"] == [{"kind": "fentanyl_test_strips", "count": 1000}]


async def _visit(
    world: World, task: uuid.UUID, start: datetime, hours: float = 1, peer: str = "peer-1"
) -> httpx.Response:
    return await world.client.post(
        "/v1/visits",
        json={
            "task_id": str(task),
            "window_start": start.isoformat(),
            "window_end": (start + timedelta(hours=hours)).isoformat(),
            "meeting_place": "the park",
        },
        headers=world.auth("peer", subject=peer),
    )


async def test_visits_do_not_overlap_for_the_person_the_peer_or_the_deputy(world: World) -> None:
    one = await world.seed_case(kind=TaskKind.IN_PERSON_VISIT)
    two = await world.seed_case(kind=TaskKind.IN_PERSON_VISIT)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)
    first = await _visit(world, one.task_id, start)
    assert first.status_code == 201, first.text
    # the same peer, another person, half an hour later: they cannot be in two places
    clash = await _visit(world, two.task_id, start + timedelta(minutes=30))
    assert _code(clash) == (409, "visit_overlaps")
    assert clash.json()["error"]["details"] == [{"visit_id": first.json()["id"]}]
    # the same person, another peer
    assert _code(await _visit(world, one.task_id, start, peer="peer-2")) == (409, "visit_overlaps")
    # windows that only touch do not overlap; another peer at the same time is fine
    assert (await _visit(world, two.task_id, start + timedelta(hours=1))).status_code == 201
    assert (
        await _visit(world, two.task_id, start - timedelta(hours=2), peer="peer-2")
    ).status_code == 201
    # moving a visit onto another is refused the same way
    moved = await world.client.patch(
        f"/v1/visits/{first.json()['id']}",
        json={
            "window_start": (start + timedelta(hours=1)).isoformat(),
            "window_end": (start + timedelta(hours=2)).isoformat(),
        },
        headers=world.auth("peer", subject="peer-1") | {"If-Match": first.headers["ETag"]},
    )
    assert _code(moved) == (409, "visit_overlaps")


@pytest.mark.parametrize("days", [-2, 61])
async def test_visit_windows_are_bounded_in_time(world: World, days: int) -> None:
    seeded = await world.seed_case(kind=TaskKind.IN_PERSON_VISIT)
    r = await _visit(world, seeded.task_id, datetime.now(UTC) + timedelta(days=days))
    assert _code(r) == (422, "invalid_window")


async def test_if_match_star_is_refused(world: World) -> None:
    seeded = await world.seed_case()
    peer = world.auth("peer", subject="peer-1")
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/claim", headers=peer | {"If-Match": "*"}
    )
    assert _code(r) == (428, "etag_required")
    case = await world.client.get(f"/v1/cases/{seeded.case_id}", headers=peer)
    r = await world.client.post(
        f"/v1/cases/{seeded.case_id}/conclusion",
        json={"reason": "engaged"},
        headers=world.auth("team_lead") | {"If-Match": f"*, {case.headers['ETag']}"},
    )
    assert _code(r) == (428, "etag_required")


async def test_a_referral_is_made_on_an_open_case_and_moves_on_after_it_closes(
    world: World,
) -> None:
    seeded = await world.seed_case()
    peer = world.auth("peer", subject="peer-1")
    made = await world.client.post(
        f"/v1/cases/{seeded.case_id}/referrals", json={"kind": "detox"}, headers=peer
    )
    assert made.status_code == 201, made.text
    await world.feed(
        CaseClosed(
            case_id=seeded.case_id,
            program_id="demo",
            reason="outreach_concluded",
            closed_at=datetime.now(UTC),
        ),
        str(seeded.case_id),
    )
    refused = await world.client.post(
        f"/v1/cases/{seeded.case_id}/referrals", json={"kind": "housing"}, headers=peer
    )
    assert _code(refused) == (409, "case_closed")
    moved = await world.client.patch(
        f"/v1/referrals/{made.json()['id']}",
        json={"status": "accepted"},
        headers=peer | {"If-Match": made.headers["ETag"]},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["status"] == "accepted"


def _quiet_now() -> QuietHours:
    """Quiet hours that hold now (an hour either side, on UTC's clock)."""
    now = datetime.now(UTC)
    return QuietHours(
        start=f"{(now - timedelta(hours=1)):%H:%M}",
        end=f"{(now + timedelta(hours=1)):%H:%M}",
        timezone="UTC",
        channels=["phone", "text"],
    )


async def test_a_text_in_quiet_hours_needs_an_explicit_override(world: World) -> None:
    seeded = await world.seed_case(quiet_hours=_quiet_now())
    url = f"/v1/tasks/{seeded.task_id}/texts"
    peer = world.auth("peer", subject="peer-1")
    refused = await world.client.post(url, json={"template": "first_contact"}, headers=peer)
    assert _code(refused) == (409, "quiet_hours")
    ends = datetime.fromisoformat(refused.json()["error"]["details"][0]["quiet_hours_end"])
    assert timedelta(minutes=55) < ends - datetime.now(UTC) <= timedelta(hours=1)
    sent = await world.client.post(
        url, json={"template": "first_contact", "override_quiet_hours": True}, headers=peer
    )
    assert sent.status_code == 201, sent.text
    async with world.runtime.sessions() as s:
        (message,) = list(await s.execute(sa.select(SMS_MESSAGE)))
    assert message.quiet_hours_override is True


async def test_quiet_hours_for_the_phone_only_do_not_hold_texts(world: World) -> None:
    phone_only = _quiet_now().model_copy(update={"channels": ["phone"]})
    seeded = await world.seed_case(quiet_hours=phone_only)
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/texts",
        json={"template": "first_contact"},
        headers=world.auth("peer", subject="peer-1"),
    )
    assert r.status_code == 201, r.text


async def test_a_community_referral_of_a_future_overdose_is_refused(world: World) -> None:
    r = await world.client.post(
        "/v1/community-referrals",
        json={
            "referrer": "self",
            "person": {"family_name": "Rivera", "given_name": "Jordan"},
            "consent": "accepted",
            "overdose": True,
            "overdose_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat(),
        },
        headers=world.auth("peer", subject="peer-1"),
    )
    assert _code(r) == (422, "time_in_future")
    assert "overdose_at" in r.json()["error"]["message"]


async def test_a_bad_body_or_a_missing_record_answers_before_if_match(world: World) -> None:
    """If-Match is the service layer's check, after the body and the record: a client fixing a
    stale ETag is not sent to fix a body that was wrong all along, and a missing record is
    404 whatever If-Match says."""
    seeded = await world.seed_case()
    lead = world.auth("team_lead")
    url = f"/v1/cases/{seeded.case_id}/conclusion"
    r = await world.client.post(url, json={"reason": "no such reason"}, headers=lead)
    assert _code(r) == (422, "validation_error")
    r = await world.client.post(url, json={"reason": "engaged"}, headers=lead)
    assert _code(r) == (428, "precondition_required")
    r = await world.client.post(
        f"/v1/cases/{uuid.uuid4()}/conclusion", json={"reason": "engaged"}, headers=lead
    )
    assert _code(r) == (404, "not_found")
    r = await world.client.post(
        url, json={"reason": "engaged"}, headers=lead | {"If-Match": '"999"'}
    )
    assert _code(r) == (412, "version_mismatch")


async def test_x_purpose_is_bounded(world: World) -> None:
    peer = world.auth("peer", subject="peer-1")
    r = await world.client.get("/v1/tasks", headers=peer | {"X-Purpose": "x" * 201})
    assert _code(r) == (422, "validation_error")
    assert r.json()["error"]["details"][0]["loc"] == ["header", "X-Purpose"]
    assert (await world.client.get("/v1/tasks", headers=peer | {"X-Purpose": "x" * 200})).is_success


@pytest.mark.parametrize("value", [1, 0, "true", "yes"])
async def test_a_boolean_is_a_boolean(world: World, value: object) -> None:
    seeded = await world.seed_case()
    r = await world.client.post(
        f"/v1/cases/{seeded.case_id}/referrals",
        json={"kind": "detox", "warm_handoff": value},
        headers=world.auth("peer", subject="peer-1"),
    )
    assert _code(r) == (422, "validation_error")


async def test_a_method_a_path_does_not_have_names_every_method_it_does(world: World) -> None:
    r = await world.client.delete("/v1/tasks", headers=world.auth("peer", subject="peer-1"))
    assert _code(r) == (405, "method_not_allowed")
    assert set(r.headers["Allow"].split(", ")) == {"GET"}
    r = await world.client.delete(f"/v1/visits/{uuid.uuid4()}", headers=world.auth("peer"))
    assert r.status_code == 405
    assert set(r.headers["Allow"].split(", ")) == {"GET", "PATCH"}

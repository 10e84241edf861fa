"""Who may do what: every outreach endpoint x every role x another program's records, and
every deputy response checked against an allowlist of fields."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.outreach.models import NOTICE
from shared.auth import ROLES
from shared.events import HotSpotTaskScheduled
from shared.events.scheduler import TaskKind
from tests.outreach_world import SECRET_WORDS, World, outreach_world

WORK = {"peer", "team_lead"}
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("GET", "/v1/tasks"): WORK,
    ("GET", "/v1/tasks/{task_id}"): WORK,
    ("POST", "/v1/tasks/{task_id}/claim"): WORK,
    ("POST", "/v1/tasks/{task_id}/assign"): {"team_lead"},
    ("POST", "/v1/tasks/{task_id}/handover"): WORK,
    ("POST", "/v1/tasks/{task_id}/attempts"): WORK,
    ("POST", "/v1/tasks/{task_id}/texts"): WORK,
    ("GET", "/v1/cases/{case_id}"): WORK,
    ("POST", "/v1/cases/{case_id}/contacts"): WORK,
    ("POST", "/v1/cases/{case_id}/services"): WORK,
    ("POST", "/v1/cases/{case_id}/referrals"): WORK,
    ("POST", "/v1/cases/{case_id}/decline"): WORK,
    ("POST", "/v1/cases/{case_id}/do-not-contact"): WORK,
    ("POST", "/v1/cases/{case_id}/conclusion"): {"team_lead"},
    ("PATCH", "/v1/referrals/{referral_id}"): WORK,
    ("POST", "/v1/visits"): WORK,
    ("GET", "/v1/visits"): WORK,
    ("GET", "/v1/visits/{visit_id}"): WORK,
    ("PATCH", "/v1/visits/{visit_id}"): WORK,
    ("POST", "/v1/visits/{visit_id}/outcome"): WORK,
    ("POST", "/v1/visits/{visit_id}/cancel"): WORK,
    ("GET", "/v1/deputy/visits"): {"deputy"},
    ("GET", "/v1/deputy/visits/{visit_id}"): {"deputy"},
    ("POST", "/v1/deputy/visits/{visit_id}/status"): {"deputy"},
    ("GET", "/v1/texts/templates"): WORK,
    ("GET", "/v1/team/members"): {"peer", "team_lead", "admin"},
    ("PUT", "/v1/team/members/{member_id}"): {"team_lead", "admin"},
    ("GET", "/v1/audit"): {"admin"},
    ("POST", "/v1/notices/{notice_id}/dismiss"): WORK,
    ("POST", "/v1/community-referrals"): WORK,
    ("GET", "/v1/hot-spots/{hot_spot_id}"): WORK,
    ("POST", "/v1/hot-spots/{hot_spot_id}/conclude"): {"team_lead"},
}
PUBLIC = {
    ("GET", "/healthz"),
    ("HEAD", "/healthz"),
    ("GET", "/readyz"),
    ("HEAD", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/sms/inbound"),  # signed by the SMS provider, not a team user
}

DEPUTY_FIELDS = {
    "items",
    "next_cursor",
    "id",
    "window_start",
    "window_end",
    "meeting_place",
    "peer",
    "name",
    "phone",
    "status",
    "deputy_status",
    "safety_concern",
    "error",
    "code",
    "message",
    "details",
}
"""Everything a deputy's response may contain: when, where, whom to call, and errors."""


def _operations(world: World) -> list[tuple[str, str, set[str] | None]]:
    """Every operation the API publishes: method, path template, declared roles."""
    schema = world.app.openapi()
    return [
        (method.upper(), path, set(op["x-roles"]) if "x-roles" in op else None)
        for path, operations in schema["paths"].items()
        for method, op in operations.items()
    ]


def _body(method: str, path: str, target: dict[str, str]) -> dict[str, Any] | None:
    start = datetime.now(UTC) + timedelta(hours=2)
    window = {
        "window_start": start.isoformat(),
        "window_end": (start + timedelta(hours=1)).isoformat(),
    }
    bodies: dict[str, dict[str, Any]] = {
        "/assign": {"assignee_id": target["member_id"]},
        "/handover": {"assignee_id": target["member_id"]},
        "/attempts": {"channel": "phone", "outcome": "no_answer"},
        "/texts": {"template": "first_contact"},
        "/contacts": {"channel": "phone"},
        "/services": {"items": [{"kind": "naloxone_kit"}]},
        "/referrals": {"kind": "detox"},
        "/decline": {},
        "/do-not-contact": {},
        "/conclusion": {"reason": "engaged"},
        "/outcome": {"outcome": "reached"},
        "/status": {"status": "arrived"},
        "/conclude": {
            "naloxone_kits": 1,
            "test_strips": 0,
            "warnings_given": 0,
            "contacts_checked": 0,
        },
    }
    if method == "PATCH" and "referrals" in path:
        return {"status": "accepted"}
    if method == "PATCH" and "visits" in path:
        return window
    if method == "POST" and path == "/v1/visits":
        return {"task_id": target["visit_task_id"], "meeting_place": "park", **window}
    if method == "PUT":
        return {"display_name": "Someone"}
    for suffix, body in bodies.items():
        if path.endswith(suffix):
            return body
    return {} if method in {"POST", "PATCH"} else None


async def _records(world: World, program: str) -> dict[str, str]:
    """One of each record in `program`, with a visit a deputy accompanies."""
    for member in ("peer-1", "deputy-1", f"member-of-{program}"):
        await world.member(member, program)
    remote = await world.seed_case(program)
    visit_task = await world.seed_case(program, kind=TaskKind.IN_PERSON_VISIT, deputy="always")
    peer = world.auth("peer", program, "peer-1")
    referral = await world.client.post(
        f"/v1/cases/{visit_task.case_id}/referrals",
        json={"kind": "moud_methadone", "notes": "uses fentanyl and heroin daily"},
        headers=peer,
    )
    assert referral.status_code == 201, referral.text
    await world.client.post(
        f"/v1/tasks/{visit_task.task_id}/attempts",
        json={"channel": "phone", "outcome": "no_answer", "notes": "Jordan Rivera not home"},
        headers=peer,
    )
    start = datetime.now(UTC) + timedelta(hours=1)
    visit = await world.client.post(
        "/v1/visits",
        json={
            "task_id": str(visit_task.task_id),
            "window_start": start.isoformat(),
            "window_end": (start + timedelta(hours=2)).isoformat(),
            "meeting_place": "Corner of Market and Elm, by the bus stop",
            "deputy_id": "deputy-1",
        },
        headers=peer,
    )
    assert visit.status_code == 201, visit.text
    notice_id = uuid.uuid4()
    async with world.app.state.runtime.sessions() as session, session.begin():
        await session.execute(
            NOTICE.insert().values(
                id=notice_id,
                program_id=program,
                member_id="peer-1",
                case_id=remote.case_id,
                task_id=remote.task_id,
                kind="person_deceased",
                created_at=datetime.now(UTC),
            )
        )
    hot_spot_id = uuid.uuid4()
    await world.feed(hot_spot(hot_spot_id, program), str(hot_spot_id))
    return {
        "hot_spot_id": str(hot_spot_id),
        "notice_id": str(notice_id),
        "task_id": str(remote.task_id),
        "case_id": str(remote.case_id),
        "referral_id": referral.json()["id"],
        "visit_id": visit.json()["id"],
        "visit_task_id": str(visit_task.task_id),
        "member_id": f"member-of-{program}",
    }


def hot_spot(task_id: uuid.UUID, program: str) -> HotSpotTaskScheduled:
    now = datetime.now(UTC)
    return HotSpotTaskScheduled(
        task_id=task_id,
        program_id=program,
        county="Guilford",
        alert_ids=[uuid.uuid4()],
        detector="ewma",
        level="alert",
        observed=5,
        window_start=now - timedelta(days=1),
        window_end=now,
        priority=5,
        opened_at=now,
        due_at=now + timedelta(hours=48),
        policy_version="v1",
    )


def _provider(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json={"sid": "SM1", "status": "queued"})


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """Texting configured against a provider that accepts everything, so only the rules
    under test can refuse a request."""
    async with outreach_world(
        tmp_path,
        sms_transport=httpx.MockTransport(_provider),
        outreach_sms_url="https://sms.test",
        outreach_sms_account_sid="AC1",
        outreach_sms_auth_token="token-1",
        outreach_sms_from="+13365550000",
    ) as w:
        yield w


async def test_every_endpoint_declares_the_expected_roles(world: World) -> None:
    declared = {(m, p): roles for m, p, roles in _operations(world) if roles is not None}
    public = {(m, p) for m, p, roles in _operations(world) if roles is None}
    assert declared == EXPECTED
    assert public == PUBLIC
    schema = (await world.client.get("/openapi.json")).json()
    for (method, path), roles in EXPECTED.items():
        operation = schema["paths"][path][method.lower()]
        assert set(operation["x-roles"]) == roles
        assert "Roles:" in operation["description"]


async def test_no_role_reaches_another_programs_records(world: World) -> None:
    theirs = await _records(world, "other")
    await _records(world, "demo")
    for method, template, _roles in _operations(world):
        if (method, template) in PUBLIC:
            continue
        path = template.format(**theirs)
        body = _body(method, template, theirs)
        for role in ROLES:
            subject = {"deputy": "deputy-1", "peer": "peer-1"}.get(role, f"{role}-1")
            headers = world.auth(role, "demo", subject) | {"If-Match": "*"}
            r = await world.client.request(method, path, json=body, headers=headers)
            allowed = role in EXPECTED[(method, template)]
            where = f"{method} {template} as {role}"
            if not allowed:
                assert r.status_code == 403, where
                assert r.json()["error"]["code"] == "forbidden_role", where
                continue
            if 200 <= r.status_code < 300:
                # Only program-wide lists may answer 2xx, and without their records.
                assert "{" not in template, where
                assert method == "GET", where
                for value in theirs.values():
                    if value != "peer-1":
                        assert value not in r.text, where
            else:
                assert r.status_code in (404, 422), f"{where}: {r.status_code} {r.text}"


async def test_requests_without_a_valid_token_are_refused(world: World) -> None:
    for method, template, _roles in _operations(world):
        if (method, template) in PUBLIC:
            continue
        path = template.format(
            task_id=uuid.uuid4(),
            case_id=uuid.uuid4(),
            visit_id=uuid.uuid4(),
            referral_id=uuid.uuid4(),
            notice_id=uuid.uuid4(),
            hot_spot_id=uuid.uuid4(),
            member_id="x",
        )
        r = await world.client.request(method, path)
        assert r.status_code == 401, f"{method} {template}"
        r = await world.client.request(
            method, path, headers={"Authorization": "Bearer not-a-token"}
        )
        assert r.status_code == 401, f"{method} {template}"
        assert r.json()["error"]["code"] == "invalid_token"


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


async def test_deputy_responses_hold_only_allowed_fields(world: World) -> None:
    mine = await _records(world, "demo")
    deputy = world.auth("deputy", "demo", "deputy-1")
    responses = []
    for method, template, roles in _operations(world):
        if "deputy" not in (roles or set()):
            continue
        path = template.format(**mine)
        r = await world.client.request(
            method, path, json=_body(method, template, mine), headers=deputy
        )
        assert r.status_code == 200, f"{method} {template}: {r.text}"
        responses.append(r)
    # safety concern, and an error response, go through the same check
    visit = mine["visit_id"]
    responses.append(
        await world.client.post(
            f"/v1/deputy/visits/{visit}/status",
            json={"status": "safety_concern", "note": "dog loose in the yard"},
            headers=deputy,
        )
    )
    responses.append(await world.client.get(f"/v1/deputy/visits/{uuid.uuid4()}", headers=deputy))
    assert len(responses) >= 5
    for r in responses:
        body = r.json()
        assert _keys(body) <= DEPUTY_FIELDS, f"{r.request.url}: {_keys(body) - DEPUTY_FIELDS}"
        for word in SECRET_WORDS:
            assert word.lower() not in r.text.lower(), f"{r.request.url} leaks {word!r}"
    listed = responses[0].json()["items"]
    assert listed[0]["meeting_place"].startswith("Corner of Market")
    assert listed[0]["peer"] == {"name": "Name of peer-1", "phone": "+13365550199"}


async def test_a_deputy_sees_only_visits_they_accompany(world: World) -> None:
    mine = await _records(world, "demo")
    await world.member("deputy-2")
    other_deputy = world.auth("deputy", "demo", "deputy-2")
    r = await world.client.get("/v1/deputy/visits", headers=other_deputy)
    assert r.json()["items"] == []
    r = await world.client.get(f"/v1/deputy/visits/{mine['visit_id']}", headers=other_deputy)
    assert r.status_code == 404

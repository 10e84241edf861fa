"""Who may do what in the scheduler's API: every operation x every role x another program's
records (404 for every role, admins included), the audit log of every read of a person's data,
and deactivated team members refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from services.scheduler.app import create_app
from services.scheduler.models import AUDIT, CASE, EPISODE, POSSIBLE_MATCH, TASK
from shared.auth import ROLES
from shared.clock import SystemClock
from shared.db import create_engine
from shared.envelope import Envelope
from shared.events.team import TeamMemberDeactivated, TeamMemberReactivated, member_key
from shared.migrations import upgrade
from shared.settings import Settings
from shared.team_access import apply_team_event
from shared.uow import UnitOfWork
from tests.tokens import DevTokens

LEADS = {"team_lead", "admin"}
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("GET", "/v1/policy"): set(ROLES),
    ("GET", "/v1/cases/{case_id}/timeline"): LEADS,
    ("GET", "/v1/possible-matches"): LEADS,
    ("POST", "/v1/possible-matches/{match_id}/{decision}"): LEADS,
    ("GET", "/v1/audit"): {"admin"},
}
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}


@dataclass
class Scheduler:
    app: Any
    client: httpx.AsyncClient
    tokens: DevTokens

    def auth(self, role: str, program: str = "demo", subject: str | None = None) -> dict[str, str]:
        return self.tokens.headers(role, program, subject or f"{role}-1")

    async def records(self, program: str) -> dict[str, str]:
        """A case with an episode and a task, and an open possible match, in `program`."""
        now = datetime.now(UTC)
        case_id, person_id, episode_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        match_id = uuid.uuid4()
        async with self.app.state.runtime.sessions() as s, s.begin():
            await s.execute(
                CASE.insert().values(
                    id=case_id,
                    program_id=program,
                    person_id=person_id,
                    status="open",
                    priority=2,
                    opened_at=now,
                )
            )
            await s.execute(
                EPISODE.insert().values(
                    id=episode_id,
                    program_id=program,
                    case_id=case_id,
                    person_id=person_id,
                    incident_at=now - timedelta(hours=2),
                    received_at=now - timedelta(hours=1),
                    windows_from=now - timedelta(hours=2),
                    sources="ems",
                    consent="accepted",
                    deidentified=False,
                    repeat=False,
                    plan_reasons=json.dumps(["remote_contact_scheduled"]),
                    created_at=now,
                )
            )
            await s.execute(
                TASK.insert().values(
                    id=uuid.uuid4(),
                    program_id=program,
                    case_id=case_id,
                    episode_id=episode_id,
                    kind="remote_contact",
                    status="open",
                    priority=2,
                    window_opens_at=now,
                    due_at=now + timedelta(hours=22),
                    expires_at=now + timedelta(hours=70),
                    policy_version="test",
                    with_deputy=False,
                    late=False,
                    failed_attempts=0,
                    created_at=now,
                )
            )
            await s.execute(
                POSSIBLE_MATCH.insert().values(
                    id=match_id,
                    program_id=program,
                    report_id=uuid.uuid4(),
                    person_id=uuid.uuid4(),
                    candidate_id=person_id,
                    reasons='["dob_and_similar_name"]',
                    status="open",
                    created_at=now,
                )
            )
        return {"case_id": str(case_id), "match_id": str(match_id), "program": program}

    async def audit_rows(self) -> list[Any]:
        async with self.app.state.runtime.sessions() as s:
            return list(await s.execute(sa.select(AUDIT).order_by(AUDIT.c.id)))


@pytest.fixture
async def scheduler(tmp_path: Path) -> AsyncIterator[Scheduler]:
    settings = Settings(
        env="development",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db",
        kafka_bootstrap_servers="127.0.0.1:9",
        var_dir=tmp_path,
    )
    engine = create_engine(settings.db_url, service="scheduler")
    await upgrade(engine, service="scheduler")
    await engine.dispose()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scheduler") as client:
            yield Scheduler(app, client, DevTokens(settings))


def _operations(scheduler: Scheduler) -> list[tuple[str, str, set[str] | None]]:
    schema = scheduler.app.openapi()
    return [
        (method.upper(), path, set(op["x-roles"]) if "x-roles" in op else None)
        for path, operations in schema["paths"].items()
        for method, op in operations.items()
    ]


async def test_every_operation_declares_the_expected_roles(scheduler: Scheduler) -> None:
    operations = _operations(scheduler)
    assert {(m, p): r for m, p, r in operations if r is not None} == EXPECTED
    assert {(m, p) for m, p, r in operations if r is None} == PUBLIC


def _path(template: str, target: dict[str, str], decision: str = "split") -> str:
    return template.format(**target, decision=decision)


async def test_no_role_reaches_another_programs_records(scheduler: Scheduler) -> None:
    theirs = await scheduler.records("other")
    mine = await scheduler.records("demo")
    for method, template, _roles in _operations(scheduler):
        if (method, template) in PUBLIC:
            continue
        for role in ROLES:
            headers = scheduler.auth(role, "demo")
            where = f"{method} {template} as {role}"
            paths = [_path(template, theirs)]
            if template == "/v1/policy":
                paths = ["/v1/policy?program=other"]
            for path in paths:
                r = await scheduler.client.request(method, path, headers=headers)
                if role not in EXPECTED[(method, template)]:
                    assert r.status_code == 403, where
                    assert r.json()["error"]["code"] == "forbidden_role", where
                    continue
                if "{" in template or "program=" in path:
                    assert r.status_code == 404, f"{where}: {r.status_code} {r.text}"
                    assert r.json()["error"]["code"] == "not_found", where
                else:  # a program-wide list answers, with none of their records
                    assert r.status_code == 200, where
                    assert theirs["case_id"] not in r.text, where
                    assert theirs["match_id"] not in r.text, where
    # Nothing of theirs was read or changed, and their match is still open.
    other_lead = scheduler.auth("team_lead", "other")
    (match,) = (await scheduler.client.get("/v1/possible-matches", headers=other_lead)).json()
    assert match["id"] == theirs["match_id"]
    assert {r.program_id for r in await scheduler.audit_rows()} <= {"demo", "other"}
    assert all(r.case_id != uuid.UUID(theirs["case_id"]) for r in await scheduler.audit_rows())
    assert mine["case_id"] != theirs["case_id"]


async def test_an_admin_sees_their_own_programs_timeline_and_policy_only(
    scheduler: Scheduler,
) -> None:
    theirs = await scheduler.records("other")
    mine = await scheduler.records("demo")
    admin = scheduler.auth("admin", "demo")
    own = await scheduler.client.get(f"/v1/cases/{mine['case_id']}/timeline", headers=admin)
    assert own.status_code == 200
    assert {i["kind"] for i in own.json()["items"]} == {"episode", "task"}
    assert (
        await scheduler.client.get(f"/v1/cases/{theirs['case_id']}/timeline", headers=admin)
    ).status_code == 404
    assert (await scheduler.client.get("/v1/policy", headers=admin)).json()["program_id"] == "demo"
    assert (await scheduler.client.get("/v1/policy?program=demo", headers=admin)).status_code == 200
    assert (
        await scheduler.client.get("/v1/policy?program=other", headers=admin)
    ).status_code == 404


async def test_reads_of_a_persons_data_and_match_decisions_are_audited(
    scheduler: Scheduler,
) -> None:
    mine = await scheduler.records("demo")
    lead = scheduler.auth("team_lead", "demo", "lead-ana")
    stated = {"X-Purpose": "call back Jordan Rivera's sister", "X-Request-Id": "req-1"}
    timeline = await scheduler.client.get(
        f"/v1/cases/{mine['case_id']}/timeline", headers=lead | stated
    )
    assert timeline.status_code == 200
    await scheduler.client.get("/v1/possible-matches", headers=lead)
    decided = await scheduler.client.post(
        f"/v1/possible-matches/{mine['match_id']}/confirm", headers=lead
    )
    assert decided.status_code == 200
    await scheduler.client.get("/v1/policy", headers=lead)  # the policy is nobody's data

    rows = await scheduler.audit_rows()
    assert [(r.action, r.resource, r.resource_id) for r in rows] == [
        ("read", "case_timeline", mine["case_id"]),
        ("read", "possible_match", mine["match_id"]),
        ("update", "possible_match", mine["match_id"]),
    ]
    first = rows[0]
    assert (first.actor_id, first.role, first.program_id) == ("lead-ana", "team_lead", "demo")
    assert first.case_id == uuid.UUID(mine["case_id"])
    assert first.purpose == "review a case's timeline"
    assert first.request_id == "req-1"
    assert first.purpose_sealed is not None
    assert "Jordan" not in first.purpose_sealed

    # Admins of the program read the log, newest first, what the caller stated included.
    admin = scheduler.auth("admin", "demo")
    page = (await scheduler.client.get("/v1/audit?limit=2", headers=admin)).json()
    assert [e["resource"] for e in page["items"]] == ["possible_match", "possible_match"]
    rest = await scheduler.client.get(f"/v1/audit?cursor={page['next_cursor']}", headers=admin)
    (entry,) = rest.json()["items"]
    assert entry["purpose"] == "call back Jordan Rivera's sister"
    assert rest.json()["next_cursor"] is None
    by_case = await scheduler.client.get(f"/v1/audit?case_id={mine['case_id']}", headers=admin)
    assert len(by_case.json()["items"]) == 1
    # ... of their own program only; a forged cursor is a 400, not a 500.
    other_admin = scheduler.auth("admin", "other")
    assert (await scheduler.client.get("/v1/audit", headers=other_admin)).json()["items"] == []
    for cursor in ("abc", "9" * 40, "١٢", "-1"):
        forged = await scheduler.client.get("/v1/audit", params={"cursor": cursor}, headers=admin)
        assert forged.status_code == 400, cursor
        assert forged.json()["error"]["code"] == "invalid_cursor"


async def test_the_audit_log_is_append_only(scheduler: Scheduler) -> None:
    mine = await scheduler.records("demo")
    lead = scheduler.auth("team_lead", "demo")
    await scheduler.client.get(f"/v1/cases/{mine['case_id']}/timeline", headers=lead)
    for statement in (AUDIT.update().values(purpose="nothing to see"), AUDIT.delete()):
        with pytest.raises(DBAPIError, match="append-only"):
            async with scheduler.app.state.runtime.sessions() as s, s.begin():
                await s.execute(statement)
    assert len(await scheduler.audit_rows()) == 1


async def test_a_deactivated_member_is_refused_until_reactivated(scheduler: Scheduler) -> None:
    runtime = scheduler.app.state.runtime
    access = scheduler.app.state.team_identity.access
    lead = scheduler.auth("team_lead", "demo", "lead-ana")
    same_name_elsewhere = scheduler.auth("team_lead", "other", "lead-ana")
    assert (await scheduler.client.get("/v1/policy", headers=lead)).status_code == 200

    async def outreach_says(
        event_type: type[TeamMemberDeactivated | TeamMemberReactivated],
    ) -> None:
        event = event_type(program_id="demo", member_id="lead-ana", occurred_at=datetime.now(UTC))
        envelope = Envelope.wrap(
            event,
            source="/portline/outreach",
            subject=member_key("demo", "lead-ana"),
            time=datetime.now(UTC),
        )
        uow = UnitOfWork(runtime.sessions, clock=SystemClock(), source="/test")
        async with uow:
            await apply_team_event(uow, envelope)
        await access.refresh()  # what every process does each PORTLINE_TEAM_ACCESS_REFRESH_SECONDS

    await outreach_says(TeamMemberDeactivated)
    refused = await scheduler.client.get("/v1/policy", headers=lead)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "member_deactivated"
    # Their token is refused everywhere in the API, before its role or records are looked at.
    assert (await scheduler.client.get("/v1/possible-matches", headers=lead)).status_code == 403
    # Only in that program: a member id is the program's own.
    assert (
        await scheduler.client.get("/v1/policy", headers=same_name_elsewhere)
    ).status_code == 200

    await outreach_says(TeamMemberReactivated)
    assert (await scheduler.client.get("/v1/policy", headers=lead)).status_code == 200


async def test_team_requests_wait_until_the_deactivated_members_can_be_read(
    tmp_path: Path,
) -> None:
    """Fail closed: a service whose team_access table cannot be read (here: not migrated)
    refuses team requests and says why on /readyz, rather than let anyone in."""
    settings = Settings(
        env="development",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db",
        kafka_bootstrap_servers="127.0.0.1:9",
        var_dir=tmp_path,
    )
    engine = create_engine(settings.db_url, service="scheduler")
    await upgrade(engine, service="scheduler", revision="scheduler_0007")
    await engine.dispose()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scheduler") as client:
            peer = DevTokens(settings).headers("peer")
            r = await client.get("/v1/policy", headers=peer)
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "team_access_unavailable"
            assert r.headers["Retry-After"]
            ready = (await client.get("/readyz")).json()
            assert ready["checks"]["team_access"].startswith("unavailable")
            engine = create_engine(settings.db_url, service="scheduler")
            await upgrade(engine, service="scheduler")
            await engine.dispose()
            await app.state.team_identity.access.refresh()
            assert (await client.get("/v1/policy", headers=peer)).status_code == 200

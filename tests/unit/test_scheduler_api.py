"""The scheduler's API: roles, program isolation, the policy, possible-match decisions."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from services.scheduler.api import timing_note
from services.scheduler.app import create_app
from services.scheduler.models import CASE, POSSIBLE_MATCH
from shared.db import create_engine
from shared.migrations import upgrade
from shared.settings import Settings
from tests.tokens import DevTokens


class Api:
    def __init__(self, client: httpx.AsyncClient, tokens: DevTokens, app: Any) -> None:
        self.client = client
        self.tokens = tokens
        self.app = app

    def auth(self, role: str, program: str = "demo") -> dict[str, str]:
        return self.tokens.headers(role, program)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(
        env="development",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db",
        kafka_bootstrap_servers="127.0.0.1:9",
        var_dir=tmp_path,
    )
    engine = create_engine(settings.db_url, service="scheduler")
    await upgrade(engine, service="scheduler")
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        for program in ("demo", "other"):
            person, candidate = uuid.uuid4(), uuid.uuid4()
            await conn.execute(
                CASE.insert().values(
                    id=uuid.UUID(int=hash(program) % 2**64),
                    program_id=program,
                    person_id=person,
                    status="open",
                    priority=2,
                    opened_at=now,
                )
            )
            await conn.execute(
                POSSIBLE_MATCH.insert().values(
                    id=uuid.uuid4(),
                    program_id=program,
                    report_id=uuid.uuid4(),
                    person_id=person,
                    candidate_id=candidate,
                    reasons='["dob_and_similar_name"]',
                    status="open",
                    created_at=now,
                )
            )
    await engine.dispose()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        tokens = DevTokens(settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            yield Api(client, tokens, app)


async def test_every_endpoint_needs_a_valid_bearer_token(api: Api) -> None:
    for path in ("/v1/policy", f"/v1/cases/{uuid.uuid4()}/timeline", "/v1/possible-matches"):
        response = await api.client.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "missing_token"
        bad = await api.client.get(path, headers={"Authorization": "Bearer nope"})
        assert bad.json()["error"]["code"] == "invalid_token"


async def test_the_policy_in_force_is_shown_with_its_version(api: Api) -> None:
    response = await api.client.get("/v1/policy", headers=api.auth("peer"))
    assert response.status_code == 200
    body = response.json()
    assert body["program_id"] == "demo"
    assert body["version"].startswith("sha256:")
    assert "not retroactively" in body["note"]
    assert body["remote_contact"]["first_attempt_due_hours"] == 24
    other = await api.client.get("/v1/policy?program=other", headers=api.auth("peer"))
    assert other.status_code == 404


@pytest.mark.parametrize("role", ["peer", "deputy", "analyst"])
async def test_only_team_leads_and_admins_see_timelines_and_matches(api: Api, role: str) -> None:
    for path in (f"/v1/cases/{uuid.uuid4()}/timeline", "/v1/possible-matches"):
        response = await api.client.get(path, headers=api.auth(role))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden_role"


async def test_another_programs_case_is_not_found(api: Api) -> None:
    other_case = uuid.UUID(int=hash("other") % 2**64)
    own_case = uuid.UUID(int=hash("demo") % 2**64)
    assert (
        await api.client.get(f"/v1/cases/{other_case}/timeline", headers=api.auth("team_lead"))
    ).status_code == 404
    own = await api.client.get(f"/v1/cases/{own_case}/timeline", headers=api.auth("team_lead"))
    assert own.status_code == 200
    assert own.json()["status"] == "open"


async def test_a_lead_decides_a_possible_match_once(api: Api) -> None:
    lead = api.auth("team_lead")
    (match,) = (await api.client.get("/v1/possible-matches", headers=lead)).json()
    confirmed = await api.client.post(f"/v1/possible-matches/{match['id']}/confirm", headers=lead)
    assert confirmed.status_code == 200
    assert confirmed.json()["status"] == "confirmed"
    again = await api.client.post(f"/v1/possible-matches/{match['id']}/split", headers=lead)
    assert again.status_code == 409
    assert (await api.client.get("/v1/possible-matches", headers=lead)).json() == []
    other_lead = api.auth("team_lead", program="other")
    (theirs,) = (await api.client.get("/v1/possible-matches", headers=other_lead)).json()
    assert (
        await api.client.post(f"/v1/possible-matches/{theirs['id']}/split", headers=lead)
    ).status_code == 404


def _episode(
    incident: datetime, received: datetime | None, start: datetime | None, plan: list[str]
) -> SimpleNamespace:
    return SimpleNamespace(
        incident_at=incident,
        received_at=received,
        windows_from=start,
        plan_reasons=json.dumps(plan),
    )


def test_the_timeline_says_why_an_episode_s_times_are_what_they_are() -> None:
    incident = datetime.now(UTC) - timedelta(days=10, hours=3)
    received = incident + timedelta(days=10, hours=3)
    on_time = _episode(
        incident, incident + timedelta(hours=1), incident, ["remote_contact_scheduled"]
    )
    assert timing_note(on_time) == "Times count from the overdose."
    late = _episode(incident, received, received, ["late_report_windows_from_receipt"])
    assert "arrived 10 d 3 h after the overdose" in timing_note(late)
    assert "count from its receipt" in timing_note(late)
    old = _episode(incident, received, None, ["too_old_for_outreach"])
    assert "too long after the overdose" in timing_note(old)
    skewed = _episode(received, received, received, ["incident_time_after_receipt"])
    assert "receipt is taken as the overdose time" in timing_note(skewed)
    applied = _episode(incident, incident, received, ["windows_from_when_applied"])
    assert "applied the report only after" in timing_note(applied)

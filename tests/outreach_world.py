"""An outreach service (SQLite by default) with cases fed through its real projection handlers, for
unit tests of the team API (no Kafka: the events a broker would deliver are applied here)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from services.outreach.app import create_app
from services.outreach.projection import on_case_event, on_overdose
from shared.db import create_engine
from shared.envelope import Envelope, Event
from shared.events import (
    CaseOpened,
    Consent,
    EpisodeOpened,
    Location,
    OverdoseReported,
    ReportLinked,
    TaskScheduled,
)
from shared.events.scheduler import TaskKind
from shared.migrations import upgrade
from shared.outbox import OutboxRecord
from shared.settings import Settings
from tests.tokens import DevTokens

SECRET_WORDS = ("Jordan", "Rivera", "1984", "MRN-99", "fentanyl", "heroin", "Elm St")
"""Planted in the identity, notes and referrals: a deputy must never see any of them."""


@dataclass
class Seeded:
    case_id: uuid.UUID
    task_id: uuid.UUID
    episode_id: uuid.UUID
    report_id: uuid.UUID


class World:
    def __init__(self, app: Any, client: httpx.AsyncClient, tokens: DevTokens) -> None:
        self.app = app
        self.client = client
        self.tokens = tokens
        self._seal_with: Any = None

    def auth(self, role: str, program: str = "demo", subject: str | None = None) -> dict[str, str]:
        return self.tokens.headers(role, program, subject or f"{role}-1")

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def feed(self, event: Event, subject: str) -> None:
        envelope = Envelope.wrap(event, source="/test", subject=subject, time=datetime.now(UTC))
        handler = on_overdose if isinstance(event, OverdoseReported) else on_case_event
        async with self.runtime.uow() as uow:
            await handler(uow, envelope)
            await uow.commit()

    async def seed_case(
        self,
        program: str = "demo",
        *,
        kind: TaskKind = TaskKind.REMOTE_CONTACT,
        deputy: str = "never",
        due_in: timedelta = timedelta(hours=24),
        priority: int = 2,
        name: tuple[str, str] = ("Jordan", "Rivera"),
    ) -> Seeded:
        now = datetime.now(UTC)
        case_id, person_id, episode_id, report_id, task_id = (uuid.uuid4() for _ in range(5))
        sealer = self._seal_with or self.app.state.sealer
        identity = {
            "given": name[0],
            "family": name[1],
            "dob": "1984-02-03",
            "phones": ["336-555-0100"],
            "mrn": "MRN-99",
            "language": "es",
        }
        address = {"street": "12 Elm St", "city": "Greensboro", "postal_code": "27401"}
        await self.feed(
            OverdoseReported(
                report_id=report_id,
                program_id=program,
                source_kind="ems",
                source_org="demo-ems",
                source_ref="PCR-1",
                incident_at=now - timedelta(hours=2),
                received_at=now - timedelta(hours=1),
                identity=sealer.seal_json(identity, context="identity"),
                deidentified=False,
                location=Location(
                    county="Guilford",
                    state="NC",
                    address=sealer.seal_json(address, context="address"),
                ),
                opioid=True,
                any_drug=True,
                reasons=[],
                consent=Consent.ACCEPTED,
            ),
            subject="person",
        )
        sub = str(case_id)
        await self.feed(
            CaseOpened(case_id=case_id, program_id=program, person_id=person_id, opened_at=now),
            sub,
        )
        await self.feed(
            EpisodeOpened(
                case_id=case_id,
                program_id=program,
                episode_id=episode_id,
                person_id=person_id,
                incident_at=now - timedelta(hours=2),
                repeat=False,
            ),
            sub,
        )
        await self.feed(
            ReportLinked(
                case_id=case_id,
                program_id=program,
                report_id=report_id,
                episode_id=episode_id,
                match="new_person",
            ),
            sub,
        )
        await self.feed(
            TaskScheduled(
                case_id=case_id,
                program_id=program,
                task_id=task_id,
                episode_id=episode_id,
                kind=kind,
                priority=priority,
                window_opens_at=now - timedelta(hours=2),
                due_at=now + due_in,
                expires_at=now + due_in + timedelta(hours=48),
                policy_version="test",
                deputy=deputy,  # type: ignore[arg-type]
            ),
            sub,
        )
        return Seeded(case_id, task_id, episode_id, report_id)

    def seal_with(self, sealer: Any) -> None:
        """Seal what seed_case reports with another sealer (None: the service's own)."""
        self._seal_with = sealer

    async def member(
        self, member_id: str, program: str = "demo", phone: str = "+13365550199"
    ) -> None:
        r = await self.client.put(
            f"/v1/team/members/{member_id}",
            json={"display_name": f"Name of {member_id}", "phone": phone},
            headers=self.auth("team_lead", program),
        )
        assert r.status_code == 200, r.text

    async def outbox(self) -> list[dict[str, Any]]:
        async with self.runtime.sessions() as s:
            rows = await s.execute(sa.select(OutboxRecord.__table__).order_by(sa.text("id")))  # type: ignore[attr-defined]
            return [json.loads(r.payload) for r in rows]

    async def events(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in await self.outbox() if e["type"] == type_]


@asynccontextmanager
async def outreach_world(
    tmp_path: Path, *, sms_transport: httpx.AsyncBaseTransport | None = None, **overrides: Any
) -> AsyncIterator[World]:
    defaults: dict[str, Any] = {
        "env": "development",
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db",
        "kafka_bootstrap_servers": "127.0.0.1:9",
        "var_dir": tmp_path,
    }
    settings = Settings(**(defaults | overrides))
    engine = create_engine(
        settings.db_url, service="outreach", schema=settings.schema_for("outreach")
    )
    await upgrade(engine, service="outreach", schema=settings.schema_for("outreach"))
    await engine.dispose()
    app = create_app(settings, sms_transport=sms_transport)
    async with app.router.lifespan_context(app):
        tokens = DevTokens(settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://outreach") as client:
            yield World(app, client, tokens)

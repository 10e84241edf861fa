"""Outreach's service layer called as the routes call it, without HTTP: each flow commits its
unit of work once (the change, its events and its audit entries, or nothing); the case file
has one writer; the projection dispatches by event type and applies merges of two people."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from services.outreach import casefile
from services.outreach.access import Access
from services.outreach.models import ATTEMPT, AUDIT, CASE, CONTACT, TASK, VISIT
from services.outreach.projection import HANDLERS
from services.outreach.schemas import AttemptBody, VisitBody
from services.outreach.service import cases, tasks, visits
from shared.auth import Principal, Role
from shared.envelope import latest_event_model, registered_events
from shared.events import PersonsMerged, TaskScheduled
from shared.events.scheduler import TaskKind
from shared.http import ApiError
from shared.outbox import OUTBOX
from shared.topics import SCHEDULER_CASES
from tests.outreach_world import Seeded, World, outreach_world


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with outreach_world(tmp_path) as w:
        await w.member("peer-1")
        yield w


def _access(world: World, role: Role = "peer", subject: str = "peer-1") -> Access:
    return Access(
        principal=Principal(subject=subject, role=role, program="demo"),
        runtime=world.runtime,
        sealer=world.app.state.sealer,
        purpose="a test",
        stated_purpose=None,
        request_id=None,
    )


async def _row(world: World, table: sa.Table, key: Any) -> Any:
    async with world.runtime.sessions() as s:
        return (await s.execute(sa.select(table).where(table.c.id == key))).one()


async def _count(world: World, table: sa.Table) -> int:
    async with world.runtime.sessions() as s:
        return int((await s.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def test_a_flow_commits_its_change_events_and_audit_together(world: World) -> None:
    seeded = await world.seed_case()
    access = _access(world)
    task = await _row(world, TASK, seeded.task_id)
    async with world.runtime.uow() as uow:
        view = await tasks.log_attempt(
            uow=uow, access=access, task=task, body=AttemptBody(channel="phone", outcome="reached")
        )
    assert view.outcome == "reached"
    assert await _count(world, ATTEMPT) == 1
    assert await _count(world, CONTACT) == 1  # a reached person is also a contact
    assert [e["type"] for e in await world.outbox()] == ["AttemptLogged", "ContactMade"]
    async with world.runtime.sessions() as s:
        audit = list(await s.execute(sa.select(AUDIT.c.action, AUDIT.c.resource)))
    assert [tuple(a) for a in audit] == [("create", "attempt")]


async def test_a_refused_flow_leaves_nothing_behind(world: World) -> None:
    seeded = await world.seed_case()
    access = _access(world)
    case = await _row(world, CASE, seeded.case_id)
    async with world.runtime.uow() as uow:
        await cases.decide(uow=uow, access=access, case=case, decision="do_not_contact", notes=None)
    before = (await _count(world, OUTBOX), await _count(world, AUDIT))
    task = await _row(world, TASK, seeded.task_id)
    async with world.runtime.uow() as uow:
        with pytest.raises(ApiError) as refused:
            await tasks.log_attempt(
                uow=uow,
                access=access,
                task=task,
                body=AttemptBody(channel="phone", outcome="no_answer"),
            )
    assert refused.value.code == "do_not_contact"
    assert await _count(world, ATTEMPT) == 0
    assert (await _count(world, OUTBOX), await _count(world, AUDIT)) == before


async def test_a_do_not_contact_request_clears_the_calendar_and_is_never_undone(
    world: World,
) -> None:
    seeded = await world.seed_case(kind=TaskKind.IN_PERSON_VISIT)
    access = _access(world)
    start = datetime.now(UTC) + timedelta(hours=2)
    async with world.runtime.uow() as uow:
        visit = await visits.schedule(
            uow=uow,
            access=access,
            body=VisitBody(
                task_id=seeded.task_id,
                window_start=start,
                window_end=start + timedelta(hours=1),
                meeting_place="the park",
            ),
        )
    case = await _row(world, CASE, seeded.case_id)
    async with world.runtime.uow() as uow:
        view = await cases.decide(
            uow=uow, access=access, case=case, decision="do_not_contact", notes="asked us to stop"
        )
    assert view.do_not_contact is True
    assert (await _row(world, VISIT, visit.id)).status == "cancelled"
    async with world.runtime.uow() as uow:  # a repeat overdose reopens a decline, never this
        await casefile.repeat_overdose(uow.session, seeded.case_id)
        await uow.commit()
    after = await _row(world, CASE, seeded.case_id)
    assert after.do_not_contact is True
    assert after.version > case.version


async def test_a_closed_case_keeps_the_first_reason_it_was_closed_for(world: World) -> None:
    seeded = await world.seed_case()
    now = datetime.now(UTC)
    async with world.runtime.uow() as uow:
        await casefile.close(uow.session, seeded.case_id, reason="engaged", closed_at=now)
        await casefile.close(
            uow.session, seeded.case_id, reason="outreach_concluded", closed_at=now + timedelta(1)
        )
        await uow.commit()
    case = await _row(world, CASE, seeded.case_id)
    assert (case.status, case.close_reason, case.closed_at) == ("closed", "engaged", now)


def test_the_projection_has_a_handler_for_every_event_of_the_scheduler_s_topic() -> None:
    types = {
        name
        for (name, _version), model in registered_events().items()
        if model.topic == SCHEDULER_CASES.name
    }
    assert set(HANDLERS) == {latest_event_model(name) for name in types}


# -- merges -----------------------------------------------------------------------------------


async def _merge(world: World, kept: Seeded, folded: Seeded, **flags: Any) -> None:
    event = PersonsMerged(
        program_id="demo",
        match_id=uuid.uuid4(),
        person_id=uuid.uuid4(),
        merged_person_id=uuid.uuid4(),
        case_id=kept.case_id,
        folded_case_ids=[folded.case_id],
        moved_case_ids=[folded.case_id],
        do_not_contact=flags.get("do_not_contact", False),
        declined=flags.get("declined", False),
        deceased_at=flags.get("deceased_at"),
        merged_at=datetime.now(UTC),
    )
    await world.feed(event, str(kept.case_id))


async def test_a_merge_moves_the_folded_case_s_work_to_the_case_that_stays(world: World) -> None:
    kept = await world.seed_case()
    folded = await world.seed_case(name=("Jordan", "Rivero"))
    access = _access(world)
    task = await _row(world, TASK, folded.task_id)
    async with world.runtime.uow() as uow:
        await tasks.log_attempt(
            uow=uow,
            access=access,
            task=task,
            body=AttemptBody(channel="phone", outcome="no_answer"),
        )
    before = (await _row(world, TASK, folded.task_id)).version
    await _merge(world, kept, folded, do_not_contact=True)
    moved = await _row(world, TASK, folded.task_id)
    assert moved.case_id == kept.case_id
    assert moved.version == before + 1  # an ETag read before the merge is stale
    async with world.runtime.sessions() as s:
        attempt_cases = set((await s.execute(sa.select(ATTEMPT.c.case_id))).scalars())
    assert attempt_cases == {kept.case_id}
    stays, gone = await _row(world, CASE, kept.case_id), await _row(world, CASE, folded.case_id)
    assert stays.do_not_contact is True
    assert (gone.status, gone.close_reason, gone.merged_into) == (
        "closed",
        "duplicate",
        kept.case_id,
    )
    case = await world.client.get(
        f"/v1/cases/{kept.case_id}", headers=world.auth("peer", subject="peer-1")
    )
    assert {t["id"] for t in case.json()["tasks"]} == {str(kept.task_id), str(folded.task_id)}


async def test_an_event_of_a_folded_case_that_arrives_late_lands_on_the_case_that_stays(
    world: World,
) -> None:
    kept = await world.seed_case()
    folded = await world.seed_case(name=("Jordan", "Rivero"))
    await _merge(world, kept, folded, declined=True)
    assert (await _row(world, CASE, kept.case_id)).declined is True
    late_task = uuid.uuid4()  # published for the folded case before the merge, read after it
    now = datetime.now(UTC)
    await world.feed(
        TaskScheduled(
            case_id=folded.case_id,
            program_id="demo",
            task_id=late_task,
            episode_id=folded.episode_id,
            kind=TaskKind.FOLLOW_UP,
            priority=2,
            window_opens_at=now,
            due_at=now + timedelta(days=1),
            expires_at=now + timedelta(days=3),
            policy_version="test",
        ),
        str(folded.case_id),
    )
    assert (await _row(world, TASK, late_task)).case_id == kept.case_id

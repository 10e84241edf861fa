"""Scheduler replicas linking at once on PostgreSQL: reports of one person take turns.

Each test holds one replica's batch open (applied, not committed) and starts another
replica's batch of a report of the same person under another Kafka key. Without linking's
locks the second batch would not see the first one's person and would create a second person
(or a second episode of the same overdose).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.batch import blind_pairs
from services.scheduler.models import CASE, EPISODE, PERSON, TASK
from shared.clock import ManualClock
from shared.db import session_factory
from shared.envelope import Envelope
from shared.events import OverdoseReported
from shared.identity import Identity, person_key
from shared.migrations import upgrade
from tests.unit.test_scheduler_handlers import INCIDENT, PROTECTOR, World

pytestmark = pytest.mark.integration

DOB = date(1990, 1, 1)
PHONE = "336-555-0100"
HELD = 8.0
"""How long the second batch is given while the first is open."""


def report(world: World, identity: Identity, *, kind: str, hours: float = 0) -> OverdoseReported:
    incident_at = INCIDENT + timedelta(hours=hours)
    return OverdoseReported(
        report_id=uuid.uuid4(),
        program_id="demo",
        source_kind=kind,  # type: ignore[arg-type]
        source_org=kind,
        source_ref="r",
        incident_at=incident_at,
        received_at=max(world.clock.now(), incident_at + timedelta(minutes=30)),
        identity=PROTECTOR.seal_identity(identity),
        blind_keys=PROTECTOR.blind_keys(identity, facility=None),
        deidentified=identity.deidentified,
        opioid=True,
        any_drug=True,
        reasons=[],
    )


async def race(world: World, first: OverdoseReported, second: OverdoseReported) -> bool:
    """Apply `first` in one replica's batch and, while it is open, `second` in another's.
    Returns whether the second batch waited for the first to commit."""
    envelope = Envelope.wrap(first, source="/test", subject="k", time=world.clock.now())
    async with world.uow() as uow:
        await world.scheduler.on_overdoses(uow, [envelope])
        other = asyncio.create_task(
            world.deliver(
                world.scheduler.on_overdose,
                second,
                subject=person_key(second.blind_keys, second.report_id),
            )
        )
        # A batch held up by the first never finishes while it is open; one that is not
        # finishes within HELD, even on a busy machine.
        finished, _ = await asyncio.wait({other}, timeout=HELD)
        waited = not finished
        await uow.commit()
    await other
    return waited


async def rows(world: World, table: Any) -> list[Any]:
    async with world.sessions() as s:
        return list(await s.execute(sa.select(table)))


@pytest.fixture
async def world(pg_engine: AsyncEngine, pg_schema: str) -> World:
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    return World(session_factory(pg_engine), ManualClock(INCIDENT + timedelta(minutes=30)))


async def test_two_replicas_create_one_person_from_two_differently_keyed_reports(
    world: World,
) -> None:
    ems = report(world, Identity("Doe", "Jane", dob=DOB, phones=(PHONE,)), kind="ems")
    # The ED spelled the given name with a typo: another name+DOB key, so another Kafka key.
    ed = report(world, Identity("Doe", "Jnae", dob=DOB, phones=(PHONE,)), kind="ed", hours=1)
    assert person_key(ems.blind_keys, ems.report_id) != person_key(ed.blind_keys, ed.report_id)

    assert await race(world, ems, ed)

    assert len(await rows(world, PERSON)) == 1
    assert len(await rows(world, CASE)) == 1
    (episode,) = await rows(world, EPISODE)
    assert sorted(episode.sources.split(",")) == ["ed", "ems"]
    assert len(await rows(world, TASK)) == 1


async def test_reports_sharing_no_key_take_turns_on_the_person_both_reach(world: World) -> None:
    known = Identity("Doe", "Jane", dob=DOB, phones=(PHONE,))
    first = report(world, known, kind="ems", hours=-72)
    envelope = Envelope.wrap(first, source="/test", subject="k", time=world.clock.now())
    async with world.uow() as uow:
        await world.scheduler.on_overdoses(uow, [envelope])
        await uow.commit()
    # A new overdose: the EMS run knows name and date of birth, the ED visit only the name
    # and phone. They share no blind key, but both are the person on file.
    ems = report(world, Identity("Doe", "Jane", dob=DOB), kind="ems")
    ed = report(world, Identity("Doe", "Jane", phones=(PHONE,)), kind="ed", hours=1)
    assert not set(blind_pairs(ems.blind_keys)) & set(blind_pairs(ed.blind_keys))

    assert await race(world, ems, ed)

    assert len(await rows(world, PERSON)) == 1
    episodes = await rows(world, EPISODE)
    assert sorted(sorted(e.sources.split(",")) for e in episodes) == [["ed", "ems"], ["ems"]]


async def test_reports_of_different_people_do_not_wait_for_each_other(world: World) -> None:
    jane = report(world, Identity("Doe", "Jane", dob=DOB, phones=(PHONE,)), kind="ems")
    john = report(
        world, Identity("Roe", "John", dob=date(1985, 5, 5), phones=("919-555-0199",)), kind="ed"
    )

    assert not await race(world, jane, john)

    assert len(await rows(world, PERSON)) == 2

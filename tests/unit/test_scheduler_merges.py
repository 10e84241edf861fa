"""Merging two people a team lead confirmed are one: what either asked for survives.

The rule is pure (`linking.merge_people`, tested by properties first); the scheduler's
handler applies it and publishes `PersonsMerged`. Then the same property end to end through
the handlers on the embedded database: whatever each person asked (do-not-contact, a decline)
and whichever of their cases are open, after the merge nothing reaches out to a person who
asked not to be reached, and a decline still holds.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.scheduler.handlers import MatchDecidedError, MatchNotFoundError
from services.scheduler.linking import CaseFacts, PersonFacts, merge_people
from services.scheduler.models import CASE, PERSON, PERSON_KEY, POSSIBLE_MATCH, TASK
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.events import DoNotContactRequested, OutreachConcluded, OutreachDeclined
from shared.migrations import upgrade
from tests.unit.test_scheduler_handlers import INCIDENT, World

T0 = datetime(2026, 11, 20, tzinfo=UTC)

# -- the rule -------------------------------------------------------------------------------


@st.composite
def people(draw: st.DrawFn, person_id: uuid.UUID) -> PersonFacts:
    n = draw(st.integers(min_value=0, max_value=3))
    cases = tuple(
        CaseFacts(
            case_id=uuid.uuid4(),
            open=draw(st.booleans()),
            declined=draw(st.booleans()),
            priority=draw(st.integers(min_value=1, max_value=5)),
            opened_at=T0 + timedelta(days=draw(st.integers(min_value=0, max_value=30))),
        )
        for _ in range(n)
    )
    died = draw(st.none() | st.integers(min_value=0, max_value=30))
    return PersonFacts(
        person_id=person_id,
        do_not_contact=draw(st.booleans()),
        deceased_at=None if died is None else T0 + timedelta(days=died),
        cases=cases,
    )


KEPT, MERGED = uuid.uuid4(), uuid.uuid4()


@given(people(KEPT), people(MERGED))
def test_what_either_person_asked_for_survives_the_merge(
    kept: PersonFacts, merged: PersonFacts
) -> None:
    merge = merge_people(kept, merged)
    assert merge.person_id == KEPT
    assert merge.do_not_contact == (kept.do_not_contact or merged.do_not_contact)
    open_cases = [c for c in (*kept.cases, *merged.cases) if c.open]
    assert merge.declined == any(c.declined for c in open_cases)
    deaths = [d for d in (kept.deceased_at, merged.deceased_at) if d is not None]
    assert merge.deceased_at == min(deaths, default=None)
    # at most one case stays open; every other open case is folded into it
    if open_cases:
        assert merge.case_id in {c.case_id for c in open_cases}
        assert {merge.case_id, *merge.folded_case_ids} == {c.case_id for c in open_cases}
        assert merge.case_id not in merge.folded_case_ids
        assert merge.priority == max(c.priority for c in open_cases)
    else:
        assert (merge.case_id, merge.folded_case_ids, merge.priority) == (None, (), None)
    # the kept person's open case stays, if they had one
    if any(c.open for c in kept.cases):
        assert merge.case_id in {c.case_id for c in kept.cases}
    assert set(merge.moved_case_ids) == {c.case_id for c in merged.cases}
    # the open case's tasks stop exactly when something the person asked for holds
    held = merge.do_not_contact or merge.declined or merge.deceased_at is not None
    assert (merge.stop is not None) == (held and merge.case_id is not None)
    if merge.do_not_contact and merge.case_id is not None and merge.deceased_at is None:
        assert merge.stop == "do_not_contact"


@given(people(KEPT), people(MERGED))
def test_which_person_asked_does_not_matter(kept: PersonFacts, merged: PersonFacts) -> None:
    one, other = merge_people(kept, merged), merge_people(merged, kept)
    assert (one.do_not_contact, one.declined, one.deceased_at) == (
        other.do_not_contact,
        other.declined,
        other.deceased_at,
    )


def test_a_person_is_not_merged_into_themself() -> None:
    with pytest.raises(ValueError, match="themself"):
        merge_people(PersonFacts(person_id=KEPT), PersonFacts(person_id=KEPT))


# -- through the handlers -------------------------------------------------------------------


async def _world(path: Path) -> tuple[World, object]:
    engine = create_engine(f"sqlite+aiosqlite:///{path}/s.db", service="scheduler")
    await upgrade(engine, service="scheduler")
    return World(session_factory(engine), ManualClock(INCIDENT + timedelta(minutes=30))), engine


async def _only_case(world: World) -> object:
    async with world.sessions() as s:
        return (await s.execute(sa.select(CASE))).one()


async def _ask(world: World, case_id: uuid.UUID, *, dnc: bool, declined: bool) -> None:
    at = world.clock.now()
    if declined:
        await world.activity(OutreachDeclined(case_id=case_id, program_id="demo", occurred_at=at))
    if dnc:
        await world.activity(
            DoNotContactRequested(case_id=case_id, program_id="demo", occurred_at=at)
        )


async def _scenario(
    path: Path,
    kept_asks: tuple[bool, bool],
    merged_asks: tuple[bool, bool],
    kept_case_closed: bool,
) -> None:
    world, engine = await _world(path)
    try:
        # The person, as EMS first reported them; what they asked for on that case.
        await world.report(family="Smith", given="Jane", phone=None)
        kept_case = await _only_case(world)
        await _ask(world, kept_case.id, dnc=kept_asks[0], declined=kept_asks[1])  # type: ignore[attr-defined]
        if kept_case_closed:
            await world.activity(
                OutreachConcluded(
                    case_id=kept_case.id,  # type: ignore[attr-defined]
                    program_id="demo",
                    occurred_at=world.clock.now(),
                    reason="unreachable",
                )
            )
        # Days later an ED report whose date of birth is one digit off: a new person, a
        # possible match of the first (a name typo with the same DOB links on its own).
        world.clock.advance(timedelta(days=5))
        await world.report(
            family="Smith",
            given="Jane",
            dob="1990-01-07",
            phone=None,
            incident_at=INCIDENT + timedelta(days=5),
        )
        async with world.sessions() as s:
            match = (await s.execute(sa.select(POSSIBLE_MATCH))).one()
            merged_case = (
                await s.execute(sa.select(CASE).where(CASE.c.person_id == match.person_id))
            ).one()
        await _ask(world, merged_case.id, dnc=merged_asks[0], declined=merged_asks[1])

        # The lead confirms: one person.
        async with world.uow() as uow:
            await world.scheduler.decide_match(
                uow, match_id=match.id, program_id="demo", confirm=True
            )
            await uow.commit()

        dnc = kept_asks[0] or merged_asks[0]
        async with world.sessions() as s:
            kept = (
                await s.execute(sa.select(PERSON).where(PERSON.c.id == match.candidate_id))
            ).one()
            open_cases = list(
                await s.execute(
                    sa.select(CASE).where(
                        CASE.c.person_id == match.candidate_id, CASE.c.status == "open"
                    )
                )
            )
            open_tasks = list(await s.execute(sa.select(TASK).where(TASK.c.status == "open")))
            left = list(
                await s.execute(
                    sa.select(PERSON_KEY).where(PERSON_KEY.c.person_id == match.person_id)
                )
            )
        assert kept.do_not_contact == dnc
        assert left == []  # the merged person is known by nothing any more
        assert len(open_cases) <= 1
        # A decline held on an open case: the case that stays open holds it. (The merged
        # person's case is open: the lead decided before anyone concluded it.)
        open_declined = (kept_asks[1] and not kept_case_closed) or merged_asks[1]
        (stays,) = open_cases
        assert stays.declined == open_declined
        if dnc or open_declined:
            assert open_tasks == []  # nobody is asked to reach them
        (merged_event,) = await world.events("PersonsMerged")
        assert merged_event["do_not_contact"] == dnc
        assert merged_event["person_id"] == str(match.candidate_id)
        assert merged_event["merged_person_id"] == str(match.person_id)

        # A later overdose of either name reaches the one person: a do-not-contact request
        # holds for it, whoever made it.
        world.clock.advance(timedelta(days=3))
        await world.report(
            family="Smtih", given="Jane", phone=None, incident_at=INCIDENT + timedelta(days=8)
        )
        async with world.sessions() as s:
            opened = list(await s.execute(sa.select(TASK).where(TASK.c.status == "open")))
        if dnc:
            assert opened == []
        else:
            assert opened, "a person who asked for nothing is reached after a new overdose"
    finally:
        await engine.dispose()  # type: ignore[attr-defined]


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kept_asks=st.tuples(st.booleans(), st.booleans()),
    merged_asks=st.tuples(st.booleans(), st.booleans()),
    kept_case_closed=st.booleans(),
)
def test_a_do_not_contact_or_a_decline_of_either_person_survives_the_merge(
    kept_asks: tuple[bool, bool], merged_asks: tuple[bool, bool], kept_case_closed: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_scenario(Path(tmp), kept_asks, merged_asks, kept_case_closed))


async def _possible_match(world: World) -> object:
    await world.report(family="Smith", given="Jane", phone=None)
    world.clock.advance(timedelta(days=5))
    await world.report(
        family="Smith",
        given="Jane",
        dob="1990-01-07",  # one digit off: a possible match, never linked on its own
        phone=None,
        incident_at=INCIDENT + timedelta(days=5),
    )
    async with world.sessions() as s:
        return (await s.execute(sa.select(POSSIBLE_MATCH))).one()


async def test_the_merged_case_folds_into_the_kept_one(tmp_path: Path) -> None:
    world, engine = await _world(tmp_path)
    try:
        match = await _possible_match(world)
        async with world.uow() as uow:
            decided = await world.scheduler.decide_match(
                uow,
                match_id=match.id,  # type: ignore[attr-defined]
                program_id="demo",
                confirm=True,
            )
            await uow.commit()
        assert decided.status == "confirmed"
        async with world.sessions() as s:
            cases = list(await s.execute(sa.select(CASE)))
            tasks = list(await s.execute(sa.select(TASK)))
        assert {c.person_id for c in cases} == {match.candidate_id}  # type: ignore[attr-defined]
        (kept,) = [c for c in cases if c.status == "open"]
        assert {t.case_id for t in tasks} == {kept.id}  # the folded case's task moved too
        (event,) = await world.events("PersonsMerged")
        assert event["case_id"] == str(kept.id)
        assert len(event["folded_case_ids"]) == 1
        assert event["moved_case_ids"] == event["folded_case_ids"]
        async with world.sessions() as s:
            folded = (
                await s.execute(
                    sa.select(CASE).where(CASE.c.id == uuid.UUID(event["folded_case_ids"][0]))
                )
            ).one()
        assert (folded.status, folded.close_reason) == ("closed", "duplicate")
        # decided once: a second decision is refused, another program sees no such match
        async with world.uow() as uow:
            with pytest.raises(MatchDecidedError):
                await world.scheduler.decide_match(
                    uow,
                    match_id=match.id,  # type: ignore[attr-defined]
                    program_id="demo",
                    confirm=False,
                )
            with pytest.raises(MatchNotFoundError):
                await world.scheduler.decide_match(
                    uow,
                    match_id=match.id,  # type: ignore[attr-defined]
                    program_id="other",
                    confirm=True,
                )
    finally:
        await engine.dispose()  # type: ignore[attr-defined]


async def test_a_split_keeps_two_people_and_publishes_nothing(tmp_path: Path) -> None:
    world, engine = await _world(tmp_path)
    try:
        match = await _possible_match(world)
        async with world.uow() as uow:
            await world.scheduler.decide_match(
                uow,
                match_id=match.id,  # type: ignore[attr-defined]
                program_id="demo",
                confirm=False,
            )
            await uow.commit()
        assert await world.events("PersonsMerged") == []
        async with world.sessions() as s:
            assert len(list(await s.execute(sa.select(CASE)))) == 2
            status = (await s.execute(sa.select(POSSIBLE_MATCH.c.status))).scalar_one()
        assert status == "split"
    finally:
        await engine.dispose()  # type: ignore[attr-defined]

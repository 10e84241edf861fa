"""The one writer of outreach's case file (table ``case_file``).

A case is changed by the scheduler's events (opened, closed, a death, a repeat overdose, two
people merged) and by the team (a decline, a do-not-contact request, a conclusion). Both
come here, so every change bumps the version (a client holding an older ETag re-reads before
it edits), a closed case keeps the first reason it was closed for, and a do-not-contact
request is never undone. Functions take the unit of work's session and never commit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach.models import CASE

__all__ = [
    "close",
    "fold",
    "mark_deceased",
    "mark_declined",
    "mark_do_not_contact",
    "open_case",
    "read",
    "repeat_overdose",
]

_BUMP = {"version": CASE.c.version + 1}


async def read(session: AsyncSession, case_id: uuid.UUID) -> Any:
    """The case row as it is now (None when outreach has not heard of it)."""
    return (await session.execute(sa.select(CASE).where(CASE.c.id == case_id))).first()


async def open_case(
    session: AsyncSession,
    *,
    case_id: uuid.UUID,
    program_id: str,
    person_id: uuid.UUID,
    opened_at: datetime,
) -> None:
    """A case the scheduler opened (once, however often the event arrives)."""
    if await read(session, case_id) is not None:
        return
    await session.execute(
        CASE.insert().values(
            id=case_id,
            program_id=program_id,
            person_id=person_id,
            status="open",
            opened_at=opened_at,
            do_not_contact=False,
            declined=False,
            version=1,
        )
    )


async def mark_declined(session: AsyncSession, case_id: uuid.UUID) -> None:
    await session.execute(CASE.update().where(CASE.c.id == case_id).values(declined=True, **_BUMP))


async def mark_do_not_contact(session: AsyncSession, case_id: uuid.UUID) -> None:
    """Final: nothing here ever sets it back."""
    await session.execute(
        CASE.update().where(CASE.c.id == case_id).values(do_not_contact=True, **_BUMP)
    )


async def repeat_overdose(session: AsyncSession, case_id: uuid.UUID) -> None:
    """A repeat overdose reopens outreach the person had declined; never a do-not-contact."""
    await session.execute(
        CASE.update()
        .where(CASE.c.id == case_id, CASE.c.do_not_contact.is_(False))
        .values(declined=False, **_BUMP)
    )


async def close(
    session: AsyncSession, case_id: uuid.UUID, *, reason: str, closed_at: datetime
) -> None:
    """Closed, for the first reason given (a lead's conclusion, then the scheduler's echo)."""
    await session.execute(
        CASE.update()
        .where(CASE.c.id == case_id)
        .values(
            status="closed",
            closed_at=sa.func.coalesce(CASE.c.closed_at, closed_at),
            close_reason=sa.func.coalesce(CASE.c.close_reason, reason),
            **_BUMP,
        )
    )


async def mark_deceased(session: AsyncSession, case_id: uuid.UUID, at: datetime) -> None:
    await session.execute(
        CASE.update()
        .where(CASE.c.id == case_id, CASE.c.deceased_at.is_(None))
        .values(deceased_at=at, **_BUMP)
    )


async def fold(
    session: AsyncSession,
    *,
    into: uuid.UUID | None,
    folded: list[uuid.UUID],
    moved: list[uuid.UUID],
    person_id: uuid.UUID,
    do_not_contact: bool,
    declined: bool,
    deceased_at: datetime | None,
    at: datetime,
) -> None:
    """Two people were one: their cases now belong to `person_id`; folded cases are closed
    as duplicates of `into`, which holds what either person asked for (a do-not-contact
    request or a decline survives, and so does a death)."""
    for case_id in moved:
        await session.execute(
            CASE.update()
            .where(CASE.c.id == case_id, CASE.c.person_id != person_id)
            .values(person_id=person_id, **_BUMP)
        )
    if into is None:
        return
    for case_id in folded:
        if case_id == into:
            continue
        await session.execute(
            CASE.update().where(CASE.c.id == case_id).values(merged_into=into, person_id=person_id)
        )
        await close(session, case_id, reason="duplicate", closed_at=at)
    if do_not_contact:
        await mark_do_not_contact(session, into)
    if declined:
        await mark_declined(session, into)
    if deceased_at is not None:
        await mark_deceased(session, into, deceased_at)

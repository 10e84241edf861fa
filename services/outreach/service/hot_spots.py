"""Hot-spot tasks: outreach where a county's overdoses spiked (the scheduler's
``HotSpotTaskScheduled``). They name no person and have no case. The team reads them in the
queue; a team lead concludes one with what was distributed, published as
``HotSpotConcluded`` (reporting counts the kits and strips)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach.access import Access, rowcount
from services.outreach.models import HOT_SPOT
from services.outreach.schemas import HotSpotConclusionBody, HotSpotView
from services.outreach.views import NOTE
from shared.events import HotSpotConcluded
from shared.http import ApiError
from shared.uow import UnitOfWork

__all__ = ["conclude", "list_open", "read"]


async def list_open(access: Access, session: AsyncSession) -> list[HotSpotView]:
    """The program's open hot-spot tasks, soonest due first (the queue shows them)."""
    rows = await session.execute(
        sa.select(HOT_SPOT)
        .where(HOT_SPOT.c.program_id == access.program, HOT_SPOT.c.status == "open")
        .order_by(HOT_SPOT.c.due_at, HOT_SPOT.c.id)
        .limit(100)
    )
    return views(access, list(rows))


async def read(*, uow: UnitOfWork, access: Access, task_id: uuid.UUID) -> HotSpotView:
    """One hot-spot task of the caller's program; the read is audited."""
    row = await _row(access, uow.session, task_id)
    await access.audit(uow.session, "read", "hot_spot", [(row.id, None)])
    await uow.commit()
    return views(access, [row])[0]


async def conclude(
    *, uow: UnitOfWork, access: Access, task_id: uuid.UUID, body: HotSpotConclusionBody
) -> HotSpotView:
    """A lead concludes an open hot-spot task with what the team distributed."""
    s = uow.session
    row = await _row(access, s, task_id)
    if row.status != "open":
        raise ApiError(409, "hot_spot_concluded", "The hot-spot task was concluded already.")
    now = access.runtime.clock.now()
    updated = await s.execute(
        HOT_SPOT.update()
        .where(HOT_SPOT.c.id == row.id, HOT_SPOT.c.status == "open")
        .values(
            status="concluded",
            naloxone_kits=body.naloxone_kits,
            test_strips=body.test_strips,
            warnings_given=body.warnings_given,
            contacts_checked=body.contacts_checked,
            note_sealed=access.seal(body.note, NOTE),
            concluded_by=access.actor,
            concluded_at=now,
            version=row.version + 1,
            updated_at=now,
        )
    )
    if rowcount(updated) != 1:
        raise ApiError(409, "hot_spot_concluded", "The hot-spot task was concluded already.")
    uow.publish(
        HotSpotConcluded(
            task_id=row.id,
            program_id=access.program,
            county=row.county,
            state=row.state,
            naloxone_kits=body.naloxone_kits,
            test_strips=body.test_strips,
            warnings_given=body.warnings_given,
            contacts_checked=body.contacts_checked,
            concluded_at=now,
        ),
        subject=str(row.id),
    )
    await access.audit(s, "update", "hot_spot", [(row.id, None)])
    fresh = await _row(access, s, row.id)
    await uow.commit()
    return views(access, [fresh])[0]


async def _row(access: Access, session: AsyncSession, task_id: uuid.UUID) -> Any:
    row = (
        await session.execute(
            sa.select(HOT_SPOT).where(
                HOT_SPOT.c.id == task_id, HOT_SPOT.c.program_id == access.program
            )
        )
    ).first()
    if row is None:
        raise ApiError(404, "not_found", "No such hot-spot task in your program.")
    return row


def views(access: Access, rows: Sequence[Any]) -> list[HotSpotView]:
    return [
        HotSpotView(
            id=r.id,
            status=r.status,
            county=r.county,
            state=r.state,
            alert_ids=[uuid.UUID(a) for a in json.loads(r.alert_ids)],
            detector=r.detector,
            level=r.level,
            observed=r.observed,
            expected=r.expected,
            window_start=r.window_start,
            window_end=r.window_end,
            priority=r.priority,
            opened_at=r.opened_at,
            due_at=r.due_at,
            naloxone_kits=r.naloxone_kits,
            test_strips=r.test_strips,
            warnings_given=r.warnings_given,
            contacts_checked=r.contacts_checked,
            note=access.open(r.note_sealed, NOTE),
            concluded_by=r.concluded_by,
            concluded_at=r.concluded_at,
            version=r.version,
        )
        for r in rows
    ]

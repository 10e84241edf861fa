"""Replaying rejected HL7 messages once their cause is fixed (a facility added, a bug fixed).

The raw message was kept sealed when it was rejected; replay opens it and submits it again
through the same pipeline, which marks the rejected record replayed in the commit that
accepts it (or gives the record the new answer when it is refused again).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake.models import INBOUND, Channel, InboundStatus
from services.intake.pipeline import HL7Intake, HL7Submission
from shared.sealing import Sealer

__all__ = ["ReplayResult", "replay_rejected"]


@dataclass(frozen=True)
class ReplayResult:
    inbound_id: uuid.UUID
    ack_code: str
    hl7_error_code: str | None


def _ack_code(ack: str) -> str:
    codes = [s[4:6] for s in ack.split("\r") if s.startswith("MSA")]
    return next((c for c in ("AE", "AR") if c in codes), "AA")


async def replay_rejected(
    sessions: async_sessionmaker[AsyncSession],
    intake: HL7Intake,
    sealer: Sealer,
    *,
    ids: Sequence[uuid.UUID] = (),
) -> list[ReplayResult]:
    """Replay the given rejected messages, or every one not yet replayed when ids is empty."""
    query = sa.select(
        INBOUND.c.id, INBOUND.c.channel, INBOUND.c.partner_id, INBOUND.c.raw_sealed
    ).where(
        INBOUND.c.status == InboundStatus.REJECTED.value,
        INBOUND.c.raw_sealed.is_not(None),
        INBOUND.c.channel.in_([Channel.MLLP.value, Channel.HTTP_HL7.value]),
    )
    if ids:
        query = query.where(INBOUND.c.id.in_(list(ids)))
    async with sessions() as session:
        rows = (await session.execute(query.order_by(INBOUND.c.received_at))).all()
    results: list[ReplayResult] = []
    for row in rows:
        raw = sealer.open(row.raw_sealed, context="inbound")
        # Replayed as sent by the partner it was recorded under (a refusal of a sender who
        # may not speak for a facility is never recorded, so it cannot be replayed).
        sender = frozenset({row.partner_id}) if row.partner_id else frozenset()
        (ack,) = await intake.receive(
            [HL7Submission(raw.encode(), Channel(row.channel), sender, replay_of=row.id)]
        )
        code = _ack_code(ack)
        reason = None
        if code != "AA":
            err = [s for s in ack.split("\r") if s.startswith("ERR")]
            reason = (
                err[0].split("|")[3].split("^")[0] if err and len(err[0].split("|")) > 3 else None
            )
        results.append(ReplayResult(row.id, code, reason))
    return results

"""One contract for intake's storage port, run against both adapters: SQLite in the unit
tier (tests/unit/test_intake_store.py) and PostgreSQL in the integration tier
(tests/integration/test_intake_pg.py). Each check takes a fresh, migrated store."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake.models import INBOUND, REPORT
from services.intake.store import (
    BatchWrites,
    InboundRecord,
    IntakeStore,
    RejectedAgain,
    ReportRow,
    RoutineWrites,
    StoreConflict,
)
from shared.events import InboundRejected
from shared.outbox import OUTBOX

Check = Callable[[IntakeStore, async_sessionmaker[AsyncSession], list[None]], Awaitable[None]]
NOW = datetime.now(UTC).replace(microsecond=0)


def _record(key: str | None, status: str = "not_overdose", **kw: object) -> InboundRecord:
    return InboundRecord(uuid.uuid4(), "mllp", "p1", status, key, f"ACK-{key}", **kw)  # type: ignore[arg-type]


def _report(key: str, revision: int = 1, report_id: uuid.UUID | None = None) -> ReportRow:
    return ReportRow(
        report_id or uuid.uuid4(), key, "p1", "ed", revision, f"h{revision}", True, True
    )


def _writes() -> BatchWrites:
    return BatchWrites(source="/portline/intake", now=NOW)


def _rejected(inbound_id: uuid.UUID) -> InboundRejected:
    return InboundRejected(
        inbound_id=inbound_id,
        source_kind="ed",
        source_org="p1",
        reason_code="not_hl7",
        reason="Not HL7.",
        received_at=NOW,
    )


async def routine_first_copy_wins(
    store: IntakeStore, sessions: async_sessionmaker[AsyncSession], woken: list[None]
) -> None:
    first = await store.write_routine(RoutineWrites([_record("a"), _record("b")], NOW))
    assert first.inserted == {"a", "b"}
    assert first.acks == {"a": "ACK-a", "b": "ACK-b"}
    resend = _record("a")
    resend.ack = "ACK-second-copy"
    again = await store.write_routine(RoutineWrites([resend, _record("c")], NOW))
    assert again.inserted == {"c"}
    assert again.acks == {"a": "ACK-a", "c": "ACK-c"}
    assert woken == []  # routine writes publish nothing


async def routine_records_stand_behind_an_existing_report(
    store: IntakeStore, sessions: async_sessionmaker[AsyncSession], woken: list[None]
) -> None:
    report = _report("pcr-1")
    writes = _writes()
    writes.new_reports.append(report)
    await store.write(writes)
    result = await store.write_routine(
        RoutineWrites([_record("seen-1"), _record("seen-2")], NOW, report_keys=["pcr-1", "pcr-2"])
    )
    assert result.reports == {"pcr-1": (report.id, 1)}
    assert result.inserted == {"seen-2"}
    async with sessions() as s:
        keys = set((await s.execute(sa.select(INBOUND.c.dedupe_key))).scalars())
    assert keys == {"seen-2"}


async def a_batch_commits_together_and_lookup_finds_it(
    store: IntakeStore, sessions: async_sessionmaker[AsyncSession], woken: list[None]
) -> None:
    rejected = _record(None, "rejected", reason_code="not_hl7", reason="Not HL7.", raw_sealed="s")
    report = _report("visit-1")
    writes = _writes()
    writes.new_reports.append(report)
    writes.inbound += [_record("k1", "accepted", report_id=report.id, revision=1), rejected]
    writes.publish(_rejected(rejected.id), subject="p1")
    writes.publish(_rejected(uuid.uuid4()), subject="p1")
    await store.write(writes)
    assert len(woken) == 1

    known = await store.lookup(dedupe_keys=["k1", "nope"], source_keys=["visit-1", "nope"])
    assert known.acks == {"k1": "ACK-k1"}
    assert known.reports["visit-1"].report_id == report.id
    assert known.reports["visit-1"].revision == 1

    revised = _report("visit-1", revision=2, report_id=report.id)
    later = _writes()
    later.revised_reports.append(revised)
    later.rejected_again.append(RejectedAgain(rejected.id, "parse_error", "Again.", "ACK-again"))
    await store.write(later)
    accepted_replay = _writes()
    accepted_replay.replayed.append(rejected.id)
    await store.write(accepted_replay)
    async with sessions() as s:
        stored = (await s.execute(sa.select(REPORT.c.revision, REPORT.c.content_hash))).one()
        row = (await s.execute(sa.select(INBOUND).where(INBOUND.c.id == rejected.id))).one()
        outbox = (await s.execute(sa.select(OUTBOX.c.key).order_by(OUTBOX.c.id))).scalars()
        assert list(outbox) == ["p1", "p1"]
    assert tuple(stored) == (2, "h2")
    assert (row.status, row.reason_code, row.ack, row.raw_sealed) == (
        "replayed",
        "parse_error",
        "ACK-again",
        "s",
    )
    assert row.replayed_at is not None
    assert len(woken) == 1  # only writes with events wake the relay


async def a_taken_key_is_a_conflict_that_writes_nothing(
    store: IntakeStore, sessions: async_sessionmaker[AsyncSession], woken: list[None]
) -> None:
    await store.write_routine(RoutineWrites([_record("dup")], NOW))
    writes = _writes()
    writes.new_reports.append(_report("visit-2"))
    writes.inbound.append(_record("dup", "accepted"))
    writes.publish(_rejected(uuid.uuid4()), subject="p1")
    with pytest.raises(StoreConflict):
        await store.write(writes)
    async with sessions() as s:
        reports = await s.scalar(sa.select(sa.func.count()).select_from(REPORT))
        events = await s.scalar(sa.select(sa.func.count()).select_from(OUTBOX))
    assert (reports, events) == (0, 0)
    assert woken == []


CHECKS: list[Check] = [
    routine_first_copy_wins,
    routine_records_stand_behind_an_existing_report,
    a_batch_commits_together_and_lookup_finds_it,
    a_taken_key_is_a_conflict_that_writes_nothing,
]

"""Intake on real PostgreSQL and Kafka: events reach the topic; replicas racing stay exact."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.models import INBOUND, REPORT, Channel
from services.intake.parse_pool import parse_inline
from services.intake.partners import PartnerContext, PartnerDirectory
from services.intake.pipeline import EmsIntake, EmsSubmission, HL7Intake, HL7Submission
from services.intake.pipeline.hl7 import FullParse
from services.intake.reports import Protector
from services.intake.seed import seed_demo
from services.intake.store import InboundRecord, Known, RoutineResult, RoutineWrites
from services.intake.store.postgres import PostgresStore
from shared.bus import KafkaPublisher, ensure_topics
from shared.clock import SystemClock
from shared.db import session_factory
from shared.envelope import Envelope
from shared.events import OverdoseReported
from shared.migrations import upgrade
from shared.outbox import OutboxRelay
from shared.sealing import BlindIndexer, Keyring, Sealer
from shared.topics import INTAKE_OVERDOSES, TopicLayout
from tests.hl7_builder import ack_fields, adt
from tests.intake_store_contract import CHECKS, Check
from tests.support import read_topic, wait_for
from tests.unit.test_intake_handlers import run

pytestmark = pytest.mark.integration

HOSPITAL = frozenset({"demo-hospital"})
PROTECTOR = Protector(Sealer(Keyring({"it": b"i" * 32}, "it")), BlindIndexer(b"j" * 32))


async def _intake(engine: AsyncEngine, schema: str, var: Path, store: PostgresStore) -> HL7Intake:
    await upgrade(engine, service="intake", schema=schema)
    sessions = session_factory(engine)
    await seed_demo(sessions, clock=SystemClock(), var_dir=var)
    return _hl7_intake(engine, store)


def _store(postgres_url: str, schema: str, **kw: Any) -> PostgresStore:
    return PostgresStore.connect(postgres_url, schema=schema, **kw)


def _hl7_intake(
    engine: AsyncEngine, store: PostgresStore, *, full_parse: FullParse = parse_inline
) -> HL7Intake:
    """An HL7 intake on this database (migrated and seeded by `_intake`), as the app builds it."""
    return HL7Intake(
        store=store,
        directory=PartnerDirectory(session_factory(engine), ttl_seconds=0),
        protector=PROTECTOR,
        clock=SystemClock(),
        full_parse=full_parse,
    )


async def _ems_intake(
    engine: AsyncEngine, schema: str, var: Path, store: PostgresStore
) -> tuple[EmsIntake, PartnerContext]:
    """An EMS intake on this database (migrated and seeded here), as the app builds it, and
    the demo EMS agency as its partner."""
    await _intake(engine, schema, var, store)
    sessions = session_factory(engine)
    keys = json.loads((var / "demo-keys.json").read_text())
    partner = await PartnerDirectory(sessions, ttl_seconds=0).by_api_key(keys["demo-ems"])
    assert partner is not None
    ems = EmsIntake(store=store, protector=PROTECTOR, clock=SystemClock())
    return ems, partner


async def test_overdose_reaches_kafka_keyed_by_person_with_identity_sealed(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await ensure_topics(kafka_bootstrap, TopicLayout())
    store = _store(postgres_url, pg_schema)
    intake = await _intake(pg_engine, pg_schema, tmp_path, store)
    control = f"IT-{uuid.uuid4().hex[:12]}"
    family = f"Zq{uuid.uuid4().hex[:8]}"
    try:
        (ack,) = await intake.receive(
            [HL7Submission(adt(control, family=family).encode(), Channel.MLLP, HOSPITAL)]
        )
    finally:
        await store.close()
    assert ack_fields(ack)[0] == "AA"

    publisher = KafkaPublisher(kafka_bootstrap, client_id="it-intake")
    await publisher.start()
    try:
        assert (
            await OutboxRelay(session_factory(pg_engine), publisher, clock=SystemClock()).run_once()
            == 1
        )
    finally:
        await publisher.stop()

    records = await read_topic(
        kafka_bootstrap,
        INTAKE_OVERDOSES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("source_ref") == control,
        expect=1,
    )
    (record,) = records
    assert family.encode() not in record.value
    event = Envelope.from_bytes(record.value).event()
    assert isinstance(event, OverdoseReported)
    assert record.key == (event.blind_keys.name_dob or "").encode()
    assert PROTECTOR.sealer.open_json(event.identity or "", context="identity")["family"] == family


async def test_two_replicas_receiving_the_same_message_at_once_store_it_once(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, tmp_path: Path
) -> None:
    stores = [_store(postgres_url, pg_schema) for _ in range(2)]
    first = await _intake(pg_engine, pg_schema, tmp_path, stores[0])
    second = _hl7_intake(pg_engine, stores[1])
    message = adt(f"RACE-{uuid.uuid4().hex[:10]}").encode()
    try:
        rounds = await asyncio.gather(
            *[
                replica.receive([HL7Submission(message, Channel.MLLP, HOSPITAL)])
                for replica in (first, second, first, second)
            ]
        )
    finally:
        for store in stores:
            await store.close()
    codes = {ack_fields(acks[0])[:2] for acks in rounds}
    assert len(codes) == 1
    assert next(iter(codes))[0] == "AA"
    async with session_factory(pg_engine)() as s:
        count = (await s.execute(sa.select(sa.func.count()).select_from(INBOUND))).scalar_one()
        events = (await s.execute(sa.text("select count(*) from outbox"))).scalar_one()
    assert (count, events) == (1, 1)


async def test_routine_messages_are_one_statement_and_resends_get_the_original_ack(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, tmp_path: Path
) -> None:
    from tests.hl7_builder import routine

    store = _store(postgres_url, pg_schema)
    intake = await _intake(pg_engine, pg_schema, tmp_path, store)
    sessions = session_factory(pg_engine)
    try:
        a, b = f"FP-{uuid.uuid4().hex[:8]}", f"FP-{uuid.uuid4().hex[:8]}"
        first = await intake.receive(
            [HL7Submission(routine(c).encode(), Channel.MLLP, HOSPITAL) for c in (a, b, a)]
        )
        assert [ack_fields(x)[:2] for x in first] == [("AA", a), ("AA", b), ("AA", a)]
        assert first[0] == first[2]
        again = await intake.receive([HL7Submission(routine(a).encode(), Channel.MLLP, HOSPITAL)])
        assert again == [first[0]]
        # beside an overdose (the general write), a routine resend still gets its first ACK
        both = await intake.receive(
            [
                HL7Submission(routine(b).encode(), Channel.MLLP, HOSPITAL),
                HL7Submission(adt(f"FPO-{a}").encode(), Channel.MLLP, HOSPITAL),
            ]
        )
        assert both[0] == first[1]
        async with sessions() as s:
            rows = (
                await s.execute(sa.select(INBOUND.c.status, INBOUND.c.raw_sealed, INBOUND.c.ack))
            ).all()
        assert sorted(r.status for r in rows) == ["accepted", "not_overdose", "not_overdose"]
        assert all(r.raw_sealed is None for r in rows)
    finally:
        await store.close()


async def test_routine_messages_are_answered_while_an_overdose_beside_them_is_still_parsed(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, tmp_path: Path
) -> None:
    from services.intake.records import AdtMessage
    from tests.hl7_builder import routine

    store = _store(postgres_url, pg_schema)
    await _intake(pg_engine, pg_schema, tmp_path, store)
    sessions = session_factory(pg_engine)
    parse_may_finish = asyncio.Event()

    async def slow_parse(message: str, screened: Any, tz: Any) -> AdtMessage:
        await parse_may_finish.wait()
        return await parse_inline(message, screened, tz)

    intake = _hl7_intake(pg_engine, store, full_parse=slow_parse)
    early: dict[int, str] = {}
    answered = asyncio.Event()

    def reply(index: int, ack: str) -> None:
        early[index] = ack
        answered.set()

    a, od, b = (f"SPLIT-{uuid.uuid4().hex[:8]}" for _ in range(3))
    try:
        batch = asyncio.create_task(
            intake.receive(
                [
                    HL7Submission(routine(a).encode(), Channel.MLLP, HOSPITAL),
                    HL7Submission(adt(od).encode(), Channel.MLLP, HOSPITAL),
                    HL7Submission(routine(b).encode(), Channel.MLLP, HOSPITAL),
                ],
                reply=reply,
            )
        )
        await asyncio.wait_for(answered.wait(), 10)
        # the routine messages are stored and answered; the overdose is not, and its row
        # does not exist yet: its ACK must wait for its own commit
        assert sorted(early) == [0, 2]
        assert [ack_fields(early[i])[:2] for i in (0, 2)] == [("AA", a), ("AA", b)]
        async with sessions() as s:
            stored = set((await s.execute(sa.select(INBOUND.c.status))).scalars())
        assert stored == {"not_overdose"}
        assert not batch.done()

        parse_may_finish.set()
        acks = await asyncio.wait_for(batch, 10)
        assert sorted(early) == [0, 1, 2]
        assert acks == [early[0], early[1], early[2]]
        assert ack_fields(acks[1])[:2] == ("AA", od)
        async with sessions() as s:
            statuses = sorted((await s.execute(sa.select(INBOUND.c.status))).scalars())
            events = (await s.execute(sa.text("select count(*) from outbox"))).scalar_one()
        assert statuses == ["accepted", "not_overdose", "not_overdose"]
        assert events == 1
    finally:
        parse_may_finish.set()
        await store.close()


async def test_ems_routine_records_are_stored_once_and_stand_behind_a_report(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, tmp_path: Path
) -> None:
    store = _store(postgres_url, pg_schema)
    ems, partner = await _ems_intake(pg_engine, pg_schema, tmp_path, store)

    def sub(i: int, pcr: str, *, improved: bool) -> EmsSubmission:
        return EmsSubmission(partner, i, run(pcr, improved=improved))

    try:
        routine, od = f"R-{uuid.uuid4().hex[:8]}", f"O-{uuid.uuid4().hex[:8]}"
        out = await ems.receive(
            [
                sub(0, routine, improved=False),
                sub(1, od, improved=True),
                sub(2, routine, improved=False),
            ]
        )
        assert [o.status for o in out] == ["not_overdose", "accepted", "duplicate"]
        out = await ems.receive([sub(0, routine, improved=False), sub(1, od, improved=False)])
        assert [o.status for o in out] == ["duplicate", "unchanged"]
        assert out[1].report_id is not None
        assert out[1].revision == 1
    finally:
        await store.close()


async def test_ems_commits_run_side_by_side_neither_waits_for_the_other(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, tmp_path: Path
) -> None:
    """The two commits of an EMS batch run side by side: the overdose's report is stored
    while the routine records' statement is held back."""
    routine_may_go = asyncio.Event()

    class HeldStore(PostgresStore):
        async def write_routine(self, writes: RoutineWrites) -> RoutineResult:
            await routine_may_go.wait()
            return await super().write_routine(writes)

    plain = _store(postgres_url, pg_schema)
    store = HeldStore(plain.connections)
    ems, partner = await _ems_intake(pg_engine, pg_schema, tmp_path, store)
    sessions = session_factory(pg_engine)
    pcrs = [f"H-{uuid.uuid4().hex[:8]}" for _ in range(2)]

    async def report_stored() -> bool:
        async with sessions() as session:
            stored = await session.scalar(sa.select(sa.func.count()).select_from(REPORT))
        return bool(stored)

    try:
        receiving = asyncio.create_task(
            ems.receive(
                [
                    EmsSubmission(partner, 0, run(pcrs[0], improved=False)),
                    EmsSubmission(partner, 1, run(pcrs[1], improved=True)),
                ]
            )
        )
        await wait_for(report_stored, timeout=5)
        assert not receiving.done()  # the routine record's answer waits for its own commit
        routine_may_go.set()
        out = await asyncio.wait_for(receiving, 5)
        assert [o.status for o in out] == ["not_overdose", "accepted"]
    finally:
        routine_may_go.set()
        await store.close()


async def test_the_store_opens_a_fresh_connection_when_the_server_dropped_one(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    store = _store(postgres_url, pg_schema)
    await _intake(pg_engine, pg_schema, tmp_path, store)

    def row(key: str) -> RoutineWrites:
        record = InboundRecord(
            uuid.uuid4(), "mllp", "demo-hospital", "not_overdose", key, f"ACK {key}"
        )
        return RoutineWrites([record], datetime.now(UTC))

    try:
        assert (await store.write_routine(row("conn-a"))).acks == {"conn-a": "ACK conn-a"}
        async with pg_engine.connect() as conn:
            dropped = (
                await conn.execute(
                    sa.text(
                        "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                        "where application_name = :name"
                    ),
                    {"name": f"portline-intake-{pg_schema}"},
                )
            ).scalar_one()
        assert dropped == 1
        await asyncio.sleep(0.3)  # the client sees the connection close
        # the dropped connection is not handed out again: the next batch simply succeeds
        assert (await store.write_routine(row("conn-b"))).acks == {"conn-b": "ACK conn-b"}
        async with session_factory(pg_engine)() as s:
            keys = set((await s.execute(sa.select(INBOUND.c.dedupe_key))).scalars())
        assert keys == {"conn-a", "conn-b"}
    finally:
        await store.close()


async def _outbox(engine: AsyncEngine) -> list[tuple[str, str, Envelope]]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("select topic, key, payload from outbox order by id"))
        return [(t, k, Envelope.model_validate_json(p)) for t, k, p in rows.all()]


async def test_ems_overdoses_are_one_lookup_and_one_statement_past_sqlalchemy(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL an EMS batch's overdoses skip SQLAlchemy: one read of their reports and
    one statement that writes reports, inbound records and outbox rows."""
    woken: list[None] = []
    store = _store(postgres_url, pg_schema, on_published=lambda: woken.append(None))
    ems, partner = await _ems_intake(pg_engine, pg_schema, tmp_path, store)
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    od, other = f"O-{uuid.uuid4().hex[:8]}", f"O-{uuid.uuid4().hex[:8]}"

    def sub(i: int, pcr: str, **kw: Any) -> EmsSubmission:
        return EmsSubmission(partner, i, run(pcr, **kw))

    sa.event.listen(pg_engine.sync_engine, "before_cursor_execute", record)
    try:
        out = await ems.receive(
            [sub(0, od), sub(1, other), sub(2, od, narrative="naloxone given, improved")]
        )
        # The same PCR twice in one batch: accepted, then revised; one report row.
        assert [(o.status, o.revision) for o in out] == [
            ("accepted", 1),
            ("accepted", 1),
            ("revised", 2),
        ]
        assert out[0].report_id == out[2].report_id
        again = await ems.receive([sub(0, od, narrative="naloxone given, improved")])
        assert [(o.status, o.revision) for o in again] == [("duplicate", 2)]
        later = await ems.receive([sub(0, other, narrative="found down, naloxone, improved")])
        assert [(o.status, o.revision) for o in later] == [("revised", 2)]
    finally:
        sa.event.remove(pg_engine.sync_engine, "before_cursor_execute", record)
        await store.close()
    assert statements == []  # nothing went through SQLAlchemy
    assert len(woken) == 2  # the relay is woken by the writes that staged events

    async with session_factory(pg_engine)() as s:
        reports = {r.id: r for r in (await s.execute(sa.select(REPORT))).all()}
        inbound = (
            await s.execute(
                sa.select(INBOUND.c.status, INBOUND.c.report_id, INBOUND.c.revision)
                .where(INBOUND.c.channel == Channel.HTTP_EMS.value)
                .order_by(INBOUND.c.revision)
            )
        ).all()
    assert {r.revision for r in reports.values()} == {2}
    assert len(reports) == 2
    assert all(r.created_at.tzinfo is not None for r in reports.values())
    assert sorted((str(st), rid, rev) for st, rid, rev in inbound) == sorted(
        [
            ("accepted", out[0].report_id, 1),
            ("accepted", out[1].report_id, 1),
            ("accepted", out[2].report_id, 2),
            ("accepted", later[0].report_id, 2),
        ]
    )
    events = await _outbox(pg_engine)
    assert [e.event().revision for _t, _k, e in events] == [1, 1, 2, 2]  # type: ignore[attr-defined]
    assert {t for t, _k, _e in events} == {INTAKE_OVERDOSES.name}
    first, _, revised, _ = events
    assert first[1] == revised[1]  # one person's events share a key, in order
    assert first[2].event().report_id == revised[2].event().report_id == out[0].report_id  # type: ignore[attr-defined]
    assert b"Roe" not in first[2].model_dump_json().encode()  # identity sealed


class _SlowLookup(PostgresStore):
    """A replica whose first lookup returns late: the other replica writes meanwhile."""

    def __init__(self, store: PostgresStore) -> None:
        super().__init__(store.connections)
        self.lookups = 0

    async def lookup(self, *, dedupe_keys: Any, source_keys: Any) -> Known:
        found = await super().lookup(dedupe_keys=dedupe_keys, source_keys=source_keys)
        self.lookups += 1
        if self.lookups == 1:
            await asyncio.sleep(0.3)
        return found


async def test_two_replicas_with_the_first_report_of_one_pcr_at_once_store_it_once(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, tmp_path: Path
) -> None:
    """Both read "no report yet"; the later write fails on the report's unique source key,
    keeps nothing, and reads and decides again: the record is then a duplicate."""
    store = _store(postgres_url, pg_schema)
    ems, partner = await _ems_intake(pg_engine, pg_schema, tmp_path, store)
    slow = _SlowLookup(_store(postgres_url, pg_schema))
    racing = EmsIntake(store=slow, protector=PROTECTOR, clock=SystemClock())
    submission = EmsSubmission(partner, 0, run(f"R-{uuid.uuid4().hex[:8]}"))
    try:
        late, early = await asyncio.gather(racing.receive([submission]), ems.receive([submission]))
    finally:
        await store.close()
        await slow.close()
    assert slow.lookups == 2  # the late write failed, and its retry read again
    assert [o.status for o in early] == ["accepted"]
    assert [o.status for o in late] == ["duplicate"]
    assert late[0].report_id == early[0].report_id
    assert len(await _outbox(pg_engine)) == 1
    async with session_factory(pg_engine)() as s:
        count = await s.scalar(sa.select(sa.func.count()).select_from(INBOUND))
    assert count == 1


def _mllp(message: str) -> HL7Submission:
    return HL7Submission(message.encode(), Channel.MLLP, HOSPITAL)


async def test_hl7_overdoses_are_one_lookup_and_one_statement_past_sqlalchemy(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL a batch's HL7 messages are written without SQLAlchemy: one lookup of
    the ACKs of resends and the reports, one statement for the rest."""
    from tests.hl7_builder import routine

    woken: list[None] = []
    store = _store(postgres_url, pg_schema, on_published=lambda: woken.append(None))
    intake = await _intake(pg_engine, pg_schema, tmp_path, store)
    written: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if not statement.lstrip().upper().startswith("SELECT"):  # partner lookups may read
            written.append(statement)

    tag = uuid.uuid4().hex[:8]
    od, visit, update, v = f"OS1-{tag}", f"OS2-{tag}", f"OS3-{tag}", f"V{tag}"
    sa.event.listen(pg_engine.sync_engine, "before_cursor_execute", record)
    try:
        first = await intake.receive(
            [_mllp(adt(od, visit=v)), _mllp(routine(visit)), _mllp(adt(od, visit=v))]
        )
        assert [ack_fields(a)[:2] for a in first] == [("AA", od), ("AA", visit), ("AA", od)]
        assert first[0] == first[2]
        (revised,) = await intake.receive(
            [_mllp(adt(update, trigger="A08", dx="T40.411A", visit=v))]
        )
        assert ack_fields(revised)[:2] == ("AA", update)
        assert await intake.receive([_mllp(adt(od, visit=v))]) == [first[0]]
    finally:
        sa.event.remove(pg_engine.sync_engine, "before_cursor_execute", record)
        await store.close()
    assert written == []  # nothing was written through SQLAlchemy
    assert len(woken) == 2  # the relay is woken by each write that staged an event

    async with session_factory(pg_engine)() as s:
        reports = (await s.execute(sa.select(REPORT.c.id, REPORT.c.revision))).all()
        inbound = (
            await s.execute(sa.select(INBOUND.c.status, INBOUND.c.report_id, INBOUND.c.revision))
        ).all()
    ((report_id, revision),) = reports
    assert revision == 2
    assert sorted((str(st), rid, rev) for st, rid, rev in inbound) == [
        ("accepted", report_id, 1),
        ("accepted", report_id, 2),
        ("not_overdose", None, None),
    ]
    events = await _outbox(pg_engine)
    assert [e.event().revision for _t, _k, e in events] == [1, 2]  # type: ignore[attr-defined]
    assert {e.event().report_id for _t, _k, e in events} == {report_id}  # type: ignore[attr-defined]
    assert events[0][1] == events[1][1]  # one person's events share a key, in order
    assert b"Doe" not in events[0][2].model_dump_json().encode()  # identity sealed


async def test_two_replicas_writing_one_hl7_overdose_at_once_store_it_once(
    pg_engine: AsyncEngine, pg_schema: str, postgres_url: str, tmp_path: Path
) -> None:
    """Both read "not seen yet"; the later write fails on the unique keys, and its batch is
    retried at once: it finds the first replica's record and answers with that ACK."""
    store = _store(postgres_url, pg_schema)
    first = await _intake(pg_engine, pg_schema, tmp_path, store)
    slow = _SlowLookup(_store(postgres_url, pg_schema))
    second = _hl7_intake(pg_engine, slow)
    message = adt(f"ORACE-{uuid.uuid4().hex[:8]}")
    try:
        late, early = await asyncio.gather(
            second.receive([_mllp(message)]), first.receive([_mllp(message)])
        )
    finally:
        await store.close()
        await slow.close()
    assert slow.lookups == 2  # the late replica's write failed and its retry read again
    assert late == early
    assert ack_fields(early[0])[0] == "AA"
    assert len(await _outbox(pg_engine)) == 1
    async with session_factory(pg_engine)() as s:
        count = await s.scalar(sa.select(sa.func.count()).select_from(INBOUND))
    assert count == 1


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
async def test_the_postgres_adapter_keeps_the_contract(
    check: Check, pg_engine: AsyncEngine, pg_schema: str, postgres_url: str
) -> None:
    await upgrade(pg_engine, service="intake", schema=pg_schema)
    woken: list[None] = []
    store = _store(postgres_url, pg_schema, on_published=lambda: woken.append(None))
    try:
        await check(store, session_factory(pg_engine), woken)
    finally:
        await store.close()

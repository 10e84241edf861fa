"""Intake on real PostgreSQL and Kafka: events reach the topic; replicas racing stay exact."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.handlers import HL7Intake, HL7Submission
from services.intake.models import INBOUND, Channel
from services.intake.partners import PartnerDirectory
from services.intake.reports import Protector
from services.intake.seed import seed_demo
from shared.bus import KafkaPublisher, create_topics
from shared.clock import SystemClock
from shared.db import session_factory
from shared.envelope import Envelope
from shared.events import OverdoseReported
from shared.migrations import upgrade
from shared.outbox import OutboxRelay
from shared.sealing import BlindIndexer, Keyring, Sealer
from shared.topics import INTAKE_OVERDOSES
from shared.uow import UnitOfWork
from tests.hl7_builder import ack_fields, adt
from tests.support import read_topic

pytestmark = pytest.mark.integration

PROTECTOR = Protector(Sealer(Keyring({"it": b"i" * 32}, "it")), BlindIndexer(b"j" * 32))


async def _intake(engine: AsyncEngine, schema: str, var: Path) -> HL7Intake:
    await upgrade(engine, service="intake", schema=schema)
    sessions = session_factory(engine)
    await seed_demo(sessions, clock=SystemClock(), var_dir=var)
    return HL7Intake(
        uow_factory=lambda: UnitOfWork(sessions, clock=SystemClock(), source="/portline/intake"),
        directory=PartnerDirectory(sessions, ttl_seconds=0),
        protector=PROTECTOR,
        clock=SystemClock(),
    )


async def test_overdose_reaches_kafka_keyed_by_person_with_identity_sealed(
    pg_engine: AsyncEngine, pg_schema: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await create_topics(kafka_bootstrap)
    intake = await _intake(pg_engine, pg_schema, tmp_path)
    control = f"IT-{uuid.uuid4().hex[:12]}"
    family = f"Zq{uuid.uuid4().hex[:8]}"
    (ack,) = await intake.receive(
        [HL7Submission(adt(control, family=family).encode(), Channel.MLLP)]
    )
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
    pg_engine: AsyncEngine, pg_schema: str, tmp_path: Path
) -> None:
    first = await _intake(pg_engine, pg_schema, tmp_path)
    second = HL7Intake(
        uow_factory=lambda: UnitOfWork(
            session_factory(pg_engine), clock=SystemClock(), source="/portline/intake"
        ),
        directory=PartnerDirectory(session_factory(pg_engine), ttl_seconds=0),
        protector=PROTECTOR,
        clock=SystemClock(),
    )
    message = adt(f"RACE-{uuid.uuid4().hex[:10]}").encode()
    rounds = await asyncio.gather(
        *[
            replica.receive([HL7Submission(message, Channel.MLLP)])
            for replica in (first, second, first, second)
        ]
    )
    codes = {ack_fields(acks[0])[:2] for acks in rounds}
    assert len(codes) == 1
    assert next(iter(codes))[0] == "AA"
    async with session_factory(pg_engine)() as s:
        count = (await s.execute(sa.select(sa.func.count()).select_from(INBOUND))).scalar_one()
        events = (await s.execute(sa.text("select count(*) from outbox"))).scalar_one()
    assert (count, events) == (1, 1)

"""Faults under MLLP load: intake killed, PostgreSQL restarted, the Kafka broker restarted.

Each test runs its own intake process (two workers) on real PostgreSQL and Kafka and drives a
steady load at it over four MLLP connections, sent as an interface engine sends (resending
each message until AA: tests/e2e/mllp_load.py). Whatever the fault, afterwards:

* every message is stored exactly once, and the ACK it is stored with is the AA its sender
  got first (an AA for something not stored would show as a second, different ACK once the
  message was resent and stored);
* every overdose has exactly one outbox row, and its event id, and no other, is on Kafka
  (copies of that id are allowed on the wire).

PostgreSQL and Kafka restarts use a private cluster or broker started by this file, on its
own ports and state: the shared ones other tests use are never disturbed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer

from shared.db import create_engine
from shared.envelope import Envelope
from shared.topics import INTAKE_OVERDOSES
from tests.e2e.conftest import free_port, intake_deployment
from tests.e2e.mllp_load import Message, MllpLoad, adt_messages
from tests.hl7_builder import ack_fields
from tests.support import wait_for

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "local"


# --- what was stored and published ----------------------------------------------------


async def stored_acks(database_url: str, schema: str) -> dict[str, list[str]]:
    """Intake's inbound rows, as the ACK each is stored with, by the MSH-10 it echoes."""
    engine = create_engine(database_url, service="faults", schema=schema)
    try:
        async with engine.connect() as conn:
            acks = (await conn.execute(sa.text("SELECT ack FROM inbound_message"))).scalars()
            by_control: dict[str, list[str]] = defaultdict(list)
            for ack in acks:
                by_control[ack_fields(ack)[1]].append(ack)
    finally:
        await engine.dispose()
    return dict(by_control)


async def outbox_ids(database_url: str, schema: str) -> dict[str, list[str]]:
    """Intake's outbox rows, as event ids, by the MSH-10 (source_ref) of their report."""
    engine = create_engine(database_url, service="faults", schema=schema)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT event_id, payload FROM outbox"))).all()
    finally:
        await engine.dispose()
    by_ref: dict[str, list[str]] = defaultdict(list)
    for event_id, payload in rows:
        by_ref[Envelope.from_bytes(payload).data["source_ref"]].append(event_id)
    return dict(by_ref)


async def published_ids(
    bootstrap: str, refs: Collection[str], *, timeout: float = 60.0, settle: float = 1.0
) -> dict[str, set[str]]:
    """The ids of the OverdoseReported events on the broker for these MSH-10s: read until
    each has one (bounded), then a little longer, so that a second id would show too."""
    wanted = set(refs)
    consumer = AIOKafkaConsumer(
        INTAKE_OVERDOSES.name,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        ids: dict[str, set[str]] = defaultdict(set)
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    envelope = Envelope.from_bytes(record.value)
                    if (ref := envelope.data.get("source_ref")) in wanted:
                        ids[ref].add(envelope.id)
            if settle_until is None and wanted <= ids.keys():
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
        return dict(ids)
    finally:
        await consumer.stop()


async def oldest_unpublished(base: str, *, above: float) -> bool:
    """Whether intake's oldest unpublished event is older than `above` seconds (/metrics)."""
    async with httpx.AsyncClient(base_url=base) as client:
        text = (await client.get("/metrics")).text
    name = "portline_outbox_oldest_unpublished_seconds{"
    ages = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    return max(ages, default=0.0) > above


async def assert_stored_once(database_url: str, schema: str, messages: list[Message]) -> None:
    """Every message stored once, with the AA its sender got first; nothing else stored."""
    assert all(m.accepted is not None for m in messages)
    expected = {m.control_id: [m.accepted.ack] for m in messages if m.accepted is not None}
    assert await stored_acks(database_url, schema) == expected


async def assert_published_once(
    database_url: str, schema: str, bootstrap: str, messages: list[Message]
) -> dict[str, set[str]]:
    """One outbox row per overdose (none for anything else), and its id alone on the topic."""
    overdoses = {m.control_id for m in messages if m.overdose}
    outbox = await outbox_ids(database_url, schema)
    assert outbox.keys() == overdoses
    assert all(len(ids) == 1 for ids in outbox.values()), outbox
    published = await published_ids(bootstrap, overdoses)
    assert published == {ref: set(ids) for ref, ids in outbox.items()}
    return published


# --- private infrastructure -------------------------------------------------------------


async def _script(name: str, command: str, env: dict[str, str], *, check: bool = True) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [str(DEPLOY / name), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0 or not check, f"{name} {command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class PrivateService:
    """A broker or cluster of this test's own, run by its deploy/local script."""

    script: str
    env: dict[str, str]

    async def start(self) -> str:
        return await _script(self.script, "start", self.env)

    async def stop(self) -> str:
        return await _script(self.script, "stop", self.env)


def _private_env(tmp: Path, drop: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != drop}  # or the script uses that one
    return {**env, "PORTLINE_VAR_DIR": str(tmp), **settings}


@pytest.fixture
async def private_kafka(tmp_path: Path) -> AsyncIterator[tuple[PrivateService, str]]:
    """A single-node KRaft broker of this test's own, and its bootstrap address."""
    port = free_port()
    broker = PrivateService(
        "kafka.sh",
        _private_env(
            tmp_path / "broker",
            "KAFKA_BOOTSTRAP_SERVERS",
            KAFKA_PORT=str(port),
            KAFKA_CONTROLLER_PORT=str(free_port()),
            KAFKA_HEAP_OPTS="-Xms128m -Xmx512m",
        ),
    )
    try:
        await broker.start()
        yield broker, f"127.0.0.1:{port}"
    finally:
        await broker.stop()


@pytest.fixture
async def private_postgres(tmp_path: Path) -> AsyncIterator[tuple[PrivateService, str]]:
    """A PostgreSQL cluster of this test's own (run as the postgres user), and its URL."""
    cluster = PrivateService(
        "postgres.sh", _private_env(tmp_path / "db", "DATABASE_URL", PG_PORT=str(free_port()))
    )
    try:
        url = (await cluster.start()).strip().splitlines()[-1]
        yield cluster, url.rsplit("/", 1)[0] + "/portline_test"
    finally:
        await cluster.stop()
        # The postgres user cannot enter pytest's private tmp dir, so the script keeps the
        # cluster in a /tmp directory of its own instead: remove it with the cluster.
        status = await _script("postgres.sh", "status", cluster.env, check=False)
        found = re.search(r"\(data (\S+)/data\)", status)
        if found and not Path(found.group(1)).is_relative_to(tmp_path):
            shutil.rmtree(found.group(1), ignore_errors=True)


# --- the faults ---------------------------------------------------------------------------


async def test_intake_killed_mid_load_loses_nothing_and_stores_nothing_twice(
    postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with intake_deployment(
        postgres_url, kafka_bootstrap, tmp_path / "intake", own_process_group=True
    ) as intake:
        load = MllpLoad(intake.mllp_port, adt_messages(1200)).start()
        await wait_for(lambda: len(load.accepted()) >= 300, timeout=60)
        await intake.kill()

        # Intake is dead: every AA its senders got came from the killed process.
        accepted = load.accepted()
        assert len(accepted) < len(load.messages), "the load ended before the kill"
        stored = await stored_acks(postgres_url, intake.schema)
        for m in accepted:
            assert m.accepted is not None
            assert stored.get(m.control_id) == [m.accepted.ack], m.control_id

        # The senders reconnect and resend what got no ACK once intake is back.
        await intake.start()
        await load.finished()
        assert not load.failures
        assert sum(m.unanswered for m in load.messages) > 0, "the kill cut no message off"
        await assert_stored_once(postgres_url, intake.schema, load.messages)
        published = await assert_published_once(
            postgres_url, intake.schema, kafka_bootstrap, load.messages
        )

        # Everything sent again: each gets its first AA back, byte for byte, and nothing new
        # is stored or published.
        again = MllpLoad(intake.mllp_port, [m.again() for m in load.messages]).start()
        await again.finished()
        assert not again.failures
        for first, resent in zip(load.messages, again.messages, strict=True):
            assert first.accepted is not None
            assert [a.ack for a in resent.answers] == [first.accepted.ack], first.control_id
        await assert_stored_once(postgres_url, intake.schema, load.messages)
        assert (
            await assert_published_once(postgres_url, intake.schema, kafka_bootstrap, load.messages)
            == published
        )


async def test_postgres_restarted_mid_load_answers_ae_meanwhile_and_loses_nothing(
    private_postgres: tuple[PrivateService, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    cluster, database_url = private_postgres
    async with intake_deployment(database_url, kafka_bootstrap, tmp_path / "intake") as intake:
        load = MllpLoad(intake.mllp_port, adt_messages(1000), rate=200).start()
        await wait_for(lambda: len(load.accepted()) >= 150, timeout=60)
        await cluster.stop()
        down_at = time.monotonic()

        def answered_while_down() -> list[str]:
            return [a.code for _, a in load.answers() if a.sent_at > down_at]

        await wait_for(lambda: len(answered_while_down()) >= 40, timeout=30)
        during = answered_while_down()
        await cluster.start()
        await load.finished()

        assert set(during) == {"AE"}, during
        assert not load.failures
        assert intake.process is not None
        assert intake.process.poll() is None, "intake exited"
        assert len(load.accepted()) == len(load.messages)
        await assert_stored_once(database_url, intake.schema, load.messages)
        await assert_published_once(database_url, intake.schema, kafka_bootstrap, load.messages)


async def test_kafka_restarted_mid_load_keeps_acking_and_publishes_everything_after(
    private_kafka: tuple[PrivateService, str], postgres_url: str, tmp_path: Path
) -> None:
    broker, bootstrap = private_kafka
    async with intake_deployment(postgres_url, bootstrap, tmp_path / "intake") as intake:
        load = MllpLoad(intake.mllp_port, adt_messages(1800), rate=60).start()
        await wait_for(lambda: len(load.accepted()) >= 100, timeout=60)
        await broker.stop()
        down_at = time.monotonic()

        def acked_while_down() -> list[Message]:
            return [m for m in load.messages if m.answers and m.answers[0].sent_at > down_at]

        await wait_for(lambda: len(acked_while_down()) >= 100, timeout=30)
        # Down for longer than the producer waits for one request (15 s, shared/bus.py).
        await wait_for(lambda: oldest_unpublished(intake.http, above=20.0), timeout=60)
        during = acked_while_down()
        await broker.start()
        await load.finished()

        # The database alone decides the ACK: the broker being away changes nothing.
        assert {a.code for m in during for a in m.answers} == {"AA"}
        assert any(m.overdose for m in during)
        assert not load.failures
        await assert_stored_once(postgres_url, intake.schema, load.messages)
        await assert_published_once(postgres_url, intake.schema, bootstrap, load.messages)

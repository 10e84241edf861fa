"""The day-2 tools against a running scheduler, real Kafka and PostgreSQL (the services as the
runtime role, the tools as the owner where docs/deploy.md says so):

- dead letters: an overdose sealed under a key the scheduler lacks is dead-lettered; `portline
  dlq show` prints it sealed; replay fails while the key is missing, applies once with it,
  and the running scheduler publishes what the replay wrote;
- sealing keys: `portline keys rotate`, `portline keys reseal`, `portline keys status`; the
  scheduler then runs with the new key alone and still matches and reads everything.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from services.scheduler.audit import PURPOSE
from shared.bus import KafkaPublisher
from shared.envelope import Envelope
from shared.events import OverdoseReported
from shared.identity import Identity, Protector
from shared.outbox import OutgoingMessage
from shared.sealing import BlindIndexer, Keyring, Sealer, generate_key_setting
from shared.topics import INTAKE_OVERDOSES, SCHEDULER_CASES
from tests.e2e.conftest import (
    PORTLINE,
    IntakeProcess,
    _start,
    _stop,
    _until_consuming,
    _wait_ready,
    db_execute,
    db_scalar,
    free_port,
    intake_deployment,
)
from tests.support import read_topic

pytestmark = pytest.mark.e2e

FAMILY = f"Dl{uuid.uuid4().hex[:6]}"
"""The person's name: it must never reach a terminal."""


async def _portline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [PORTLINE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def _eventually(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _protector(seal_keys: str, blind_key: str) -> Protector:
    return Protector(Sealer(Keyring.from_setting(seal_keys)), BlindIndexer.from_setting(blind_key))


async def _report(bootstrap: str, protector: Protector, given: str = "Ann") -> str:
    """Publish an identified overdose of the person to intake's topic; its report id."""
    identity = Identity(family=FAMILY, given=given, dob=date(1981, 4, 5))
    now = datetime.now(UTC)
    event = OverdoseReported(
        report_id=uuid.uuid4(),
        program_id="demo",
        source_kind="ems",
        source_org="e2e",
        source_ref=f"dl-{uuid.uuid4().hex[:8]}",
        incident_at=now,
        received_at=now,
        identity=protector.seal_identity(identity),
        blind_keys=protector.blind_keys(identity, facility=None),
        deidentified=False,
        opioid=True,
        any_drug=True,
        reasons=[],
    )
    envelope = Envelope.wrap(event, source="/e2e", subject="dl", time=now)
    publisher = KafkaPublisher(bootstrap, client_id="e2e-day2")
    await publisher.start()
    try:
        await publisher.publish(
            [OutgoingMessage(INTAKE_OVERDOSES.name, FAMILY.encode(), envelope.to_bytes())]
        )
    finally:
        await publisher.stop()
    return str(event.report_id)


async def test_dead_letters_then_key_rotation(
    postgres_url: str, runtime_postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with intake_deployment(
        postgres_url, kafka_bootstrap, tmp_path / "var", runtime_url=runtime_postgres_url
    ) as intake:
        await _day2(postgres_url, kafka_bootstrap, tmp_path, intake)


async def _day2(
    postgres_url: str, kafka_bootstrap: str, tmp_path: Path, intake: IntakeProcess
) -> None:
    env = {
        **intake.env,
        "PORTLINE_SCHEDULER_PORT": str(free_port()),
        "PORTLINE_KAFKA_CONSUMER_START": "latest",
        "PORTLINE_INBOX_MAX_ATTEMPTS": "1",
    }
    scheduler_schema = env["PORTLINE_DB_SCHEMA_PREFIX"] + "scheduler"
    done = await _portline(env, "migrate")
    assert done.returncode == 0, done.stderr
    log = tmp_path / "scheduler.log"
    http = f"http://127.0.0.1:{env['PORTLINE_SCHEDULER_PORT']}"
    scheduler = await asyncio.to_thread(_start, env, log, "scheduler")
    await _wait_ready(scheduler, http, log)
    try:
        await _until_consuming(env)
        dev = json.loads((Path(env["PORTLINE_VAR_DIR"]) / "keys.json").read_text())
        blind = dev["blind_index_key"]
        lost_key = generate_key_setting("kx")  # a key the scheduler was never given
        first = await _report(kafka_bootstrap, _protector(lost_key, blind))
        second = await _report(kafka_bootstrap, _protector(lost_key, blind), given="Anna")

        async def open_dead_letters() -> list[str]:
            listed = await _portline(env, "dlq", "list", "--service", "scheduler")
            return re.findall(r"^(scheduler:\d+)\s+scheduler\.overdoses\s", listed.stdout, re.M)

        ids = await _eventually(
            lambda: _until(open_dead_letters, 2), "two dead letters in the scheduler"
        )
        one, other = ids

        shown = await _portline(env, "dlq", "show", one)
        assert shown.returncode == 0, shown.stderr
        assert "OverdoseReported" in shown.stdout
        assert '"identity": "v1.kx.' in shown.stdout, shown.stdout  # the event, sealed
        assert "key id 'kx', which is not configured" in shown.stdout  # the reason
        assert FAMILY not in shown.stdout + shown.stderr

        # The cause is not fixed yet: it fails again and stays open.
        again = await _portline(env, "dlq", "replay", one)
        assert again.returncode == 1
        assert f"{one} failed again, still open" in again.stdout

        # With the key (the fix), it applies once; the running scheduler publishes the rest.
        fixed = {**env, "PORTLINE_SEAL_KEYS": f"{dev['seal_keys']},{lost_key}"}
        fixed["PORTLINE_BLIND_INDEX_KEY"] = blind
        replayed = await _portline(fixed, "dlq", "replay", one)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert f"{one} applied; marked resolved" in replayed.stdout
        assert FAMILY not in replayed.stdout + replayed.stderr
        twice = await _portline(fixed, "dlq", "replay", one)
        assert twice.returncode == 1
        assert f"{one} has no open dead letter" in twice.stderr
        everything = await _portline(fixed, "dlq", "replay", "--all", "--service", "scheduler")
        assert everything.returncode == 0, everything.stdout + everything.stderr
        assert f"{other} applied; marked resolved" in everything.stdout
        assert (await _portline(env, "dlq", "list")).stdout.strip() == "no dead letters"

        links = "SELECT count(*) FROM report_link WHERE report_id = :rid"
        for report_id in (first, second):
            assert await db_scalar(postgres_url, scheduler_schema, links, rid=uuid.UUID(report_id))
            await read_topic(
                kafka_bootstrap,
                SCHEDULER_CASES.name,
                where=lambda r, rid=report_id: (
                    Envelope.from_bytes(r.value).data.get("report_id") == rid
                ),
                expect=1,
                timeout=60,
            )
    finally:
        await _stop(scheduler)

    # --- rotate the sealing key, re-seal, run on the new key alone -------------------------
    persons = "SELECT count(*) FROM person"
    people = await db_scalar(postgres_url, scheduler_schema, persons)
    assert people >= 1
    audit = (
        "INSERT INTO audit_log (at, actor_id, role, program_id, action, resource, purpose, "
        "purpose_sealed) VALUES (now(), 'a', 'team_lead', 'demo', 'read', 'person', 'p', :s)"
    )
    old_sealer = Sealer(Keyring.from_setting(fixed["PORTLINE_SEAL_KEYS"]))
    await db_execute(
        postgres_url,
        scheduler_schema,
        audit,
        s=old_sealer.seal("a follow-up call", context=PURPOSE),
    )

    rotated = await _portline(fixed, "keys", "rotate", "--kid", "k2")
    assert rotated.returncode == 0, rotated.stderr
    (line,) = [x for x in rotated.stdout.splitlines() if x.startswith("PORTLINE_SEAL_KEYS=")]
    new_keys = line.split("=", 1)[1]
    assert new_keys.startswith("k2:")
    assert new_keys.endswith(fixed["PORTLINE_SEAL_KEYS"])
    new_env = {**fixed, "PORTLINE_SEAL_KEYS": new_keys}

    status = await _portline(new_env, "keys", "status")
    assert "kx: " in status.stdout
    assert "token(s) left" in status.stdout

    resealed = await _portline(new_env, "keys", "reseal", "--rate", "2000", "--batch", "2")
    assert resealed.returncode == 0, resealed.stdout + resealed.stderr
    assert re.search(r"scheduler person\.identity_sealed: [1-9]\d* re-sealed", resealed.stdout)
    assert "scheduler audit_log.purpose_sealed: 1 re-sealed" in resealed.stdout
    assert FAMILY not in resealed.stdout + resealed.stderr

    status = await _portline(new_env, "keys", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    for kid in ("kx", dev["seal_keys"].split(":")[0]):
        assert f"{kid}: no token left in the database" in status.stdout
    # Still append-only: the triggers are back, they refuse even the owner.
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        await db_execute(postgres_url, scheduler_schema, "UPDATE audit_log SET role = 'x'")
    purpose = await db_scalar(
        postgres_url, scheduler_schema, "SELECT purpose_sealed FROM audit_log"
    )
    only_new = new_keys.split(",")[0]
    assert Sealer(Keyring.from_setting(only_new)).open(purpose, context=PURPOSE) == (
        "a follow-up call"
    )

    # The old keys removed: the scheduler runs on k2 alone, matches the person again by the
    # blind keys and opens the stored identity to compare.
    alone = {**new_env, "PORTLINE_SEAL_KEYS": only_new, "PORTLINE_INBOX_MAX_ATTEMPTS": "3"}
    scheduler = await asyncio.to_thread(_start, alone, log, "scheduler")
    try:
        await _wait_ready(scheduler, http, log)
        third = await _report(kafka_bootstrap, _protector(only_new, blind))
        links = "SELECT count(*) FROM report_link WHERE report_id = :rid"

        async def linked() -> bool:
            found = await db_scalar(postgres_url, scheduler_schema, links, rid=uuid.UUID(third))
            return bool(found)

        await _eventually(linked, "the report under the new key linked", timeout=90)
        assert await db_scalar(postgres_url, scheduler_schema, persons) == people
        listed = await _portline(alone, "dlq", "list")
        assert listed.stdout.strip() == "no dead letters"
    finally:
        await _stop(scheduler)


async def _until(probe: Callable[[], Awaitable[list[str]]], count: int) -> list[str] | None:
    found = await probe()
    return found if len(found) >= count else None

"""The backup-and-restore drill of docs/deploy.md#backups-and-restore, on real processes, Kafka
and PostgreSQL 15's own pg_dump and pg_restore: back up while intake and the scheduler run,
report more, lose the database, restore, start again. What was acknowledged before the backup
is there; what came after reaches the scheduler again from Kafka; the scheduler's events of
before the loss are skipped downstream, not applied twice."""

from __future__ import annotations

import asyncio
import glob
import os
import re
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.db import create_engine
from shared.envelope import Envelope
from shared.topics import INTAKE_OVERDOSES, SCHEDULER_CASES
from tests.e2e.conftest import (
    PORTLINE,
    IntakeProcess,
    _start,
    _stop,
    _until_consuming,
    _wait_ready,
    db_scalar,
    free_port,
    intake_deployment,
)
from tests.hl7_builder import ack_fields, adt, framed, hl7_time
from tests.support import read_topic

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _pg_bin() -> str:
    given = os.environ.get("PG_BIN")
    if given:
        return given
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))
    assert found, "PostgreSQL's client binaries (pg_dump, pg_restore) are needed"
    return str(Path(found[-1]).parent)


async def _script(name: str, env: dict[str, str], *args: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [str(ROOT / "scripts" / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"{name}: {done.stdout}\n{done.stderr}"
    return done.stdout


async def _report(kafka: str, intake: IntakeProcess, ref: str) -> str:
    """Report an overdose over MLLP; once acknowledged, the report id its event carries."""
    incident = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    family = f"Bk{uuid.uuid4().hex[:6]}"
    message = adt(ref, family=family, visit=f"V-{ref}", admit=hl7_time(incident))
    (ack,) = await intake.mllp(framed(message))
    assert ack_fields(ack)[0] == "AA"
    (reported,) = await read_topic(
        kafka,
        INTAKE_OVERDOSES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("source_ref") == ref,
        expect=1,
        timeout=120,  # a loaded machine (CI's two cores) can be slow to relay it
    )
    return str(Envelope.from_bytes(reported.value).data["report_id"])


async def _case_events(kafka: str, report_id: str, expect: int) -> list[str]:
    """The ids of the scheduler's events naming the report (its link to a case)."""
    found = await read_topic(
        kafka,
        SCHEDULER_CASES.name,
        where=lambda r: Envelope.from_bytes(r.value).data.get("report_id") == report_id,
        expect=expect,
        timeout=120,
    )
    return [Envelope.from_bytes(r.value).id for r in found]


async def test_backup_loss_restore_resume(
    postgres_url: str,
    runtime_postgres_url: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    async with intake_deployment(
        postgres_url,
        kafka_bootstrap,
        tmp_path / "var",
        runtime_url=runtime_postgres_url,
    ) as intake:
        await _drill(postgres_url, kafka_bootstrap, tmp_path, intake)


async def _drill(
    postgres_url: str, kafka_bootstrap: str, tmp_path: Path, intake: IntakeProcess
) -> None:
    prefix = intake.env["PORTLINE_DB_SCHEMA_PREFIX"]
    env = {
        **intake.env,
        "PORTLINE_SCHEDULER_PORT": str(free_port()),
        # Only what is published from now on: the broker may hold other tests' events.
        "PORTLINE_KAFKA_CONSUMER_START": "latest",
        "PG_BIN": _pg_bin(),
        "PORTLINE": PORTLINE,
    }
    await asyncio.to_thread(subprocess.run, [PORTLINE, "migrate"], env=env, check=True, timeout=180)
    scheduler_log = tmp_path / "scheduler.log"
    scheduler_http = f"http://127.0.0.1:{env['PORTLINE_SCHEDULER_PORT']}"
    scheduler = await asyncio.to_thread(_start, env, scheduler_log, "scheduler")
    try:
        await _wait_ready(scheduler, scheduler_http, scheduler_log)
        await _until_consuming(env)

        before = await _report(kafka_bootstrap, intake, f"BK1-{uuid.uuid4().hex[:8]}")
        await _case_events(kafka_bootstrap, before, 1)

        backup = tmp_path / "backup"
        out = await _script("pg-backup.sh", env, str(backup))
        assert "backup complete" in out
        assert (backup / "portline.dump").stat().st_size > 0

        after_ref = f"BK2-{uuid.uuid4().hex[:8]}"
        after = await _report(kafka_bootstrap, intake, after_ref)
        [ghost] = await _case_events(kafka_bootstrap, after, 1)
    finally:
        await _stop(scheduler)
    assert intake.process is not None
    await _stop(intake.process)

    # The loss: every PORTline schema of this deployment is gone.
    admin = create_engine(postgres_url, service="admin", schema="public")
    async with admin.begin() as conn:
        for service in ("intake", "scheduler", "outreach", "reporting"):
            await conn.execute(sa.text(f'DROP SCHEMA "{prefix}{service}" CASCADE'))
    await admin.dispose()

    out = await _script("pg-restore.sh", env, str(backup))
    assert "database restored" in out
    skipped = re.search(r"outreach\.cases: (\d+) event\(s\) of port\.scheduler\.cases\.v1", out)
    assert skipped, out
    assert int(skipped[1]) >= 1  # the case, its episode and task of the report after it
    assert out.rstrip().endswith("done: start the services")

    # Acknowledged before the backup: there. Received after it: intake's row is lost (the
    # documented loss), but its event is on Kafka and reaches the scheduler again.
    intake_schema = f"{prefix}intake"
    reports = "SELECT count(*) FROM report WHERE id = :rid"
    assert await db_scalar(postgres_url, intake_schema, reports, rid=uuid.UUID(before)) == 1
    assert await db_scalar(postgres_url, intake_schema, reports, rid=uuid.UUID(after)) == 0
    scheduler_schema = f"{prefix}scheduler"
    links = "SELECT count(*) FROM report_link WHERE report_id = :rid"
    assert await db_scalar(postgres_url, scheduler_schema, links, rid=uuid.UUID(before)) == 1
    assert await db_scalar(postgres_url, scheduler_schema, links, rid=uuid.UUID(after)) == 0
    # The scheduler's event of before the loss is marked as applied downstream.
    marked = "SELECT count(*) FROM inbox WHERE consumer = 'outreach.cases' AND event_id = :e"
    assert await db_scalar(postgres_url, f"{prefix}outreach", marked, e=ghost) == 1

    await intake.start()
    scheduler = await asyncio.to_thread(_start, env, scheduler_log, "scheduler")
    try:
        await _wait_ready(scheduler, scheduler_http, scheduler_log)
        # The report of after the backup is linked again: a new event, not the ghost.
        ids = await _case_events(kafka_bootstrap, after, 2)
        assert ghost in ids
        [again] = [i for i in ids if i != ghost]
        assert await db_scalar(postgres_url, f"{prefix}outreach", marked, e=again) == 0
        assert await db_scalar(postgres_url, scheduler_schema, links, rid=uuid.UUID(after)) == 1
        assert await db_scalar(postgres_url, scheduler_schema, links, rid=uuid.UUID(before)) == 1
        # The report of before the backup is not linked twice.
        assert len(await _case_events(kafka_bootstrap, before, 1)) == 1
    finally:
        await _stop(scheduler)

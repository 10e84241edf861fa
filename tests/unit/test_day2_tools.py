"""`portline prune`, `portline keys rotate | reseal | status` and what `portline dlq show` may
print, on the embedded SQLite databases (the PostgreSQL and Kafka versions are in
tests/integration/test_day2_pg.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from services.intake.models import IDEMPOTENCY, INBOUND
from services.outreach.access import PURPOSE
from services.outreach.models import AUDIT
from shared.cli import main
from shared.db import create_engine
from shared.dead_letters import describe_payload
from shared.envelope import Envelope
from shared.events import OverdoseReported
from shared.identity import Identity, Protector
from shared.inbox import INBOX
from shared.migrations import upgrade
from shared.outbox import OUTBOX
from shared.reseal import Progress
from shared.sealing import BlindIndexer, Keyring, Sealer, rotated_setting
from shared.settings import Settings, get_settings

SECRET = "Jane Q. Public, born 1980"


@pytest.fixture
def var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_OWNER_URL", raising=False)
    monkeypatch.delenv("PORTLINE_DB_SCHEMA_PREFIX", raising=False)
    monkeypatch.delenv("PORTLINE_SEAL_KEYS", raising=False)
    monkeypatch.delenv("PORTLINE_BLIND_INDEX_KEY", raising=False)
    monkeypatch.setenv("PORTLINE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PORTLINE_ENV", "development")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


async def portline(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def migrated(var_dir: Path, service: str) -> sa.ext.asyncio.AsyncEngine:
    engine = create_engine(f"sqlite+aiosqlite:///{var_dir}/{service}.db", service=service)
    await upgrade(engine, service=service)
    return engine


def pruned(service: str, rule: str) -> float:
    value = REGISTRY.get_sample_value(
        "portline_retention_pruned_rows_total", {"service": service, "rule": rule}
    )
    return value or 0.0


async def test_prune_removes_only_what_is_past_each_rules_setting(
    var_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a deployment whose fact topics keep 30 days may prune inbox ids after 60
    monkeypatch.setenv("PORTLINE_KAFKA_FACT_RETENTION_DAYS", "30")
    monkeypatch.setenv("PORTLINE_RETENTION_INBOX_DAYS", "60")
    get_settings.cache_clear()
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=100), now - timedelta(days=1)
    for service in ("scheduler", "reporting"):
        await (await migrated(var_dir, service)).dispose()
    intake = await migrated(var_dir, "intake")
    async with intake.begin() as conn:
        for n, (created, published) in enumerate(
            [(old, old), (recent, recent), (old, None)]  # published old / new / never
        ):
            await conn.execute(
                OUTBOX.insert().values(
                    event_id=f"e{n}",
                    topic="t",
                    key="k",
                    payload="{}",
                    created_at=created,
                    published_at=published,
                )
            )
        await conn.execute(
            INBOX.insert(),
            [
                {"consumer": "intake.x", "event_id": "old", "processed_at": old},
                {"consumer": "intake.x", "event_id": "new", "processed_at": recent},
            ],
        )
        await conn.execute(
            IDEMPOTENCY.insert(),
            [
                {
                    "partner_id": "p",
                    "key": k,
                    "request_hash": "h",
                    "status_code": 202,
                    "response": "{}",
                    "created_at": at,
                }
                for k, at in (("old", old), ("new", recent))
            ],
        )
        for status, at in (("rejected", old), ("rejected", recent), ("accepted", old)):
            await conn.execute(
                INBOUND.insert().values(
                    id=uuid.uuid4(),
                    channel="mllp",
                    received_at=at,
                    status=status,
                    raw_sealed="v1.dev1.sealed",
                )
            )
    await intake.dispose()
    outreach = await migrated(var_dir, "outreach")
    async with outreach.begin() as conn:
        for at in (now - timedelta(days=3000), recent):
            await conn.execute(
                AUDIT.insert().values(
                    at=at,
                    actor_id="a",
                    role="navigator",
                    program_id="demo",
                    action="read",
                    resource="case",
                    purpose="case.read",
                )
            )
    await outreach.dispose()
    before = pruned("intake", "outbox_published")

    assert await portline("prune", "--dry-run") == 0
    out = capsys.readouterr().out
    assert any(line.split() == ["intake", "outbox_published", "1"] for line in out.splitlines())

    assert await portline("prune") == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["intake", "outbox_published", "1"] in lines
    assert ["intake", "inbox", "1"] in lines
    assert ["intake", "idempotency_keys", "1"] in lines
    assert ["intake", "rejected_raw", "1"] in lines
    assert not any(line[1:2] == ["audit_log"] for line in lines)  # never without asking
    assert pruned("intake", "outbox_published") == before + 1

    intake = await migrated(var_dir, "intake")
    async with intake.connect() as conn:
        assert set((await conn.execute(sa.select(OUTBOX.c.event_id))).scalars()) == {"e1", "e2"}
        assert set((await conn.execute(sa.select(INBOX.c.event_id))).scalars()) == {"new"}
        assert set((await conn.execute(sa.select(IDEMPOTENCY.c.key))).scalars()) == {"new"}
        kept = (await conn.execute(sa.select(INBOUND.c.status, INBOUND.c.raw_sealed))).all()
    await intake.dispose()
    assert sorted(kept, key=str) == sorted(
        [("rejected", None), ("rejected", "v1.dev1.sealed"), ("accepted", "v1.dev1.sealed")],
        key=str,
    )

    # The audit log: refused unless PORTLINE_AUDIT_PRUNE says so, then only past six years.
    assert await portline("prune", "--audit-log") == 2
    assert "PORTLINE_AUDIT_PRUNE=true" in capsys.readouterr().err
    monkeypatch.setenv("PORTLINE_AUDIT_PRUNE", "true")
    get_settings.cache_clear()
    assert await portline("prune", "--audit-log", "--service", "outreach") == 0
    assert ["outreach", "audit_log", "1"] in [
        line.split() for line in capsys.readouterr().out.splitlines()
    ]
    outreach = await migrated(var_dir, "outreach")
    async with outreach.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(AUDIT)) == 1
        # Still append-only for everyone else: the triggers came back.
        with pytest.raises(sa.exc.IntegrityError, match="append-only"):
            await conn.execute(sa.delete(AUDIT))
    await outreach.dispose()


def test_inbox_ids_must_outlive_what_kafka_can_redeliver() -> None:
    # fact topics kept for good (the default): inbox ids too
    assert Settings(env="development").retention_inbox_days == 0
    with pytest.raises(ValueError, match="must keep inbox ids for ever"):
        Settings(env="development", retention_inbox_days=400)
    # fact topics kept 30 days: inbox ids at least as long
    with pytest.raises(ValueError, match="at least 30 days"):
        Settings(env="development", kafka_fact_retention_days=30, retention_inbox_days=3)
    thirty = Settings(env="development", kafka_fact_retention_days=30, retention_inbox_days=30)
    assert thirty.retention_inbox_days == 30


def test_rotated_setting_puts_a_new_key_first_and_keeps_the_old_ones() -> None:
    first = "k1:" + "A" * 43 + "="
    kid, value = rotated_setting(first)
    assert kid == "k2"
    keyring = Keyring.from_setting(value)
    assert keyring.active_kid == "k2"
    assert keyring.kids == ("k2", "k1")
    with pytest.raises(Exception, match="already in the keyring"):
        rotated_setting(value, "k1")


async def test_rotate_then_reseal_moves_every_token_and_the_old_key_can_go(
    var_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for service in ("intake", "scheduler", "reporting"):
        await (await migrated(var_dir, service)).dispose()
    outreach = await migrated(var_dir, "outreach")
    assert await portline("keys", "status") == 0  # creates the development keys
    capsys.readouterr()
    keys_file = var_dir / "keys.json"
    old = json.loads(keys_file.read_text())
    sealer = Sealer(Keyring.from_setting(old["seal_keys"]))
    old_kid = sealer.keyring.active_kid
    async with outreach.begin() as conn:
        for n in range(7):
            await conn.execute(
                AUDIT.insert().values(
                    at=datetime.now(UTC),
                    actor_id="a",
                    role="navigator",
                    program_id="demo",
                    action="read",
                    resource="case",
                    purpose="case.read",
                    purpose_sealed=sealer.seal(f"{SECRET} {n}", context=PURPOSE),
                )
            )
    await outreach.dispose()

    assert await portline("keys", "rotate") == 0
    assert "now seal with" in capsys.readouterr().out
    rotated = json.loads(keys_file.read_text())
    new_ring = Keyring.from_setting(rotated["seal_keys"])
    assert new_ring.kids[1:] == (old_kid,)
    assert rotated["blind_index_key"] == old["blind_index_key"]

    assert await portline("keys", "status", "--service", "outreach") == 0
    assert f"{old_kid}: 7 token(s) left" in capsys.readouterr().out

    assert await portline("keys", "reseal", "--rate", "1000", "--batch", "3") == 0
    captured = capsys.readouterr()
    assert "audit_log.purpose_sealed: 7 re-sealed" in captured.out
    assert SECRET not in captured.out + captured.err

    assert await portline("keys", "status") == 0
    assert f"{old_kid}: no token left in the database" in capsys.readouterr().out
    # Run again: nothing left to do (resumable: the work is found by what it is).
    assert await portline("keys", "reseal", "--service", "outreach") == 0
    assert "audit_log.purpose_sealed: 0 re-sealed" in capsys.readouterr().out

    # Without the old key, everything still opens.
    only_new = Sealer(Keyring.from_setting(rotated["seal_keys"].split(",")[0]))
    outreach = await migrated(var_dir, "outreach")
    async with outreach.connect() as conn:
        tokens = list((await conn.execute(sa.select(AUDIT.c.purpose_sealed))).scalars())
        with pytest.raises(sa.exc.IntegrityError, match="append-only"):
            await conn.execute(sa.update(AUDIT).values(purpose="x"))
    await outreach.dispose()
    assert sorted(only_new.open(t, context=PURPOSE) for t in tokens) == [
        f"{SECRET} {n}" for n in range(7)
    ]


def test_reseal_progress_draws_a_bar_on_a_terminal_and_lines_in_a_log() -> None:
    written: list[str] = []
    Progress(written.append, bar=True).update("outreach report", 5, 10)
    assert written[-1].startswith("\routreach report")
    assert "5/10" in written[-1]
    assert "#" * 15 + "." * 15 in written[-1]
    Progress(written.append, bar=False).update("x", 1, 4, final=True)
    assert written[-1] == "x: 1/4 (25%)\n"


def test_a_dead_letter_shows_its_event_with_phi_still_sealed() -> None:
    protector = Protector(Sealer(Keyring({"t": b"s" * 32}, "t")), BlindIndexer(b"b" * 32))
    identity = Identity(family="Public", given="Jane", dob=date(1980, 2, 3))
    now = datetime.now(UTC)
    event = OverdoseReported(
        report_id=uuid.uuid4(),
        program_id="demo",
        source_kind="ems",
        source_org="x",
        source_ref="r",
        incident_at=now - timedelta(hours=1),
        received_at=now,
        identity=protector.seal_identity(identity),
        blind_keys=protector.blind_keys(identity, facility=None),
        deidentified=identity.deidentified,
        opioid=True,
        any_drug=True,
        reasons=[],
    )
    envelope = Envelope.wrap(event, source="/portline/intake", subject="person-1", time=now)
    shown = json.dumps(describe_payload(envelope.to_bytes()))
    assert event.identity is not None
    assert event.identity in shown
    assert "OverdoseReported" in shown
    for plain in ("Public", "Jane", "1980-02-03"):
        assert plain not in shown
    # Not a PORTline event: never printed, whatever it holds.
    odd = describe_payload(json.dumps({"name": SECRET}).encode())
    assert SECRET not in json.dumps(odd)
    assert "not shown" in odd["payload"]
    assert describe_payload(b"")["payload"].startswith("none")


def test_dead_letter_ids_are_service_and_number() -> None:
    from shared.ops_cli import _parse_id

    assert _parse_id("scheduler:12") == ("scheduler", 12)
    for bad in ("12", "nowhere:1", "intake:x", "intake:"):
        with pytest.raises(SystemExit, match="not a dead letter id"):
            _parse_id(bad)

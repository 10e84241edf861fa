"""SMS opt-outs through a blind-index key rotation (ADR 0026): the number kept sealed beside its
index, the re-index of opt-outs from their sealed number or from a number recovered from
outreach's reports (interrupted and resumed), and the refusal to retire a version an opt-out
is under alone; on the embedded database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.outreach.models import REPORT, SMS_OPT_OUT
from services.outreach.reindex import RetireRefused, reindex, retire, usage
from services.outreach.service.texts import opted_out, record_keyword
from services.outreach.views import SMS_PHONE
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.migrations import upgrade
from shared.sealing import BlindIndexer
from shared.uow import UnitOfWork
from tests.unit.test_blind_key_rotation import B1, B2, NEW, ROTATING, SEALER, b64

PHONES = [f"+1336555{n:04d}" for n in range(10)]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/o.db", service="outreach")
    await upgrade(engine, service="outreach")
    yield session_factory(engine)
    await engine.dispose()


async def keyword(
    sessions: async_sessionmaker[AsyncSession], held: BlindIndexer, phone: str, kind: str = "STOP"
) -> None:
    """A STOP (or START) from ``phone`` as the webhook records it with ``held`` configured."""
    keys = {i.version: k for i in held.held if (k := i.phone(phone))}
    clock = ManualClock(datetime.now(UTC))
    async with UnitOfWork(sessions, clock=clock, source="/portline/outreach") as uow:
        await record_keyword(
            uow=uow,
            kind="opt_out" if kind == "STOP" else "opt_in",
            phone_keys=keys,
            phone_sealed=SEALER.seal(phone, context=SMS_PHONE) if kind == "STOP" else None,
            at=clock.now(),
        )


async def old_stop(sessions: async_sessionmaker[AsyncSession], phone: str) -> None:
    """A STOP recorded before outreach_0013: its index under b1, and no number."""
    key = B1.phone(phone)
    async with sessions() as s, s.begin():
        await s.execute(
            SMS_OPT_OUT.insert().values(
                phone_key=key, at=datetime.now(UTC), version="b1", number_key=key
            )
        )


async def reported(sessions: async_sessionmaker[AsyncSession], *phones: str) -> None:
    """A report outreach holds, whose person gives ``phones``."""
    identity = {"family": "Doe", "given": "Jane", "dob": "1990-01-01", "phones": list(phones)}
    async with sessions() as s, s.begin():
        await s.execute(
            REPORT.insert().values(
                id=uuid.uuid4(),
                program_id="demo",
                revision=1,
                identity_sealed=SEALER.seal_json(identity, context="identity"),
            )
        )


async def blocked(
    sessions: async_sessionmaker[AsyncSession], held: BlindIndexer, phone: str
) -> bool:
    async with sessions() as s:
        return await opted_out(s, held, phone)


async def test_a_stop_keeps_the_number_sealed_and_during_a_rotation_one_row_per_version(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await keyword(sessions, B1, PHONES[0])
    await keyword(sessions, ROTATING, PHONES[1])
    async with sessions() as s:
        rows = (await s.execute(sa.select(SMS_OPT_OUT).order_by(SMS_OPT_OUT.c.version))).all()
    assert len(rows) == 3
    for row in rows:
        assert "5550" not in row.phone_sealed
        assert SEALER.open(row.phone_sealed, context=SMS_PHONE) in PHONES[:2]
    rotated = [r for r in rows if SEALER.open(r.phone_sealed, context=SMS_PHONE) == PHONES[1]]
    assert {r.version for r in rotated} == {"b1", "b2"}
    assert len({r.number_key for r in rotated}) == 1  # one opt-out, two indexes
    found = await usage(sessions)
    assert (found.total, found.opt_outs, found.only) == (2, {"b1": 2, "b2": 1}, {"b1": 1})
    # START removes the opt-out under every version.
    await keyword(sessions, ROTATING, PHONES[1], "START")
    assert not await blocked(sessions, ROTATING, PHONES[1])
    assert (await usage(sessions)).opt_outs == {"b1": 1}


async def test_a_second_stop_seals_the_number_of_an_opt_out_recorded_before_0013(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await old_stop(sessions, PHONES[0])
    await keyword(sessions, ROTATING, PHONES[0])
    async with sessions() as s:
        rows = (await s.execute(sa.select(SMS_OPT_OUT))).all()
    assert {r.version for r in rows} == {"b1", "b2"}
    assert len({r.number_key for r in rows}) == 1
    assert all(SEALER.open(r.phone_sealed, context=SMS_PHONE) == PHONES[0] for r in rows)


async def test_reindex_from_sealed_and_recovered_numbers_then_retirement(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    for phone in PHONES[:3]:
        await keyword(sessions, B1, phone)  # sealed
    await old_stop(sessions, PHONES[3])  # unsealed, a report gives the number
    await old_stop(sessions, PHONES[4])  # unsealed, no report gives it
    await reported(sessions, PHONES[9], "(336) 555-0003")
    await reported(sessions, PHONES[8])
    assert (await usage(sessions)).only == {"b1": 5}
    with pytest.raises(RetireRefused, match="5 SMS opt-out"):
        await retire(sessions, "b1")

    done = await reindex(sessions, SEALER, ROTATING, rate=1000, batch=2)
    assert (done.reindexed, done.recovered, done.unrecoverable, done.failed) == (3, 1, 1, 0)
    found = await usage(sessions)
    assert found.only == {"b1": 1}
    assert found.opt_outs == {"b1": 5, "b2": 4}
    # The recovered opt-out now keeps its number: the next rotation needs no recovery.
    async with sessions() as s:
        sealed = await s.scalar(
            sa.select(SMS_OPT_OUT.c.phone_sealed).where(
                SMS_OPT_OUT.c.phone_key == B1.phone(PHONES[3])
            )
        )
    assert sealed is not None
    assert SEALER.open(sealed, context=SMS_PHONE) == "(336) 555-0003"
    # A second run finds nothing more to do and still cannot recover the last one.
    again = await reindex(sessions, SEALER, ROTATING, rate=1000, batch=2)
    assert (again.reindexed, again.recovered, again.unrecoverable) == (0, 0, 1)
    with pytest.raises(RetireRefused, match="1 SMS opt-out"):
        await retire(sessions, "b1")

    # The lost one is settled (here: the number replies START), then b1 retires.
    await keyword(sessions, ROTATING, PHONES[4], "START")
    assert await retire(sessions, "b1") == 4
    assert (await usage(sessions)).opt_outs == {"b2": 4}
    for phone in PHONES[:4]:
        assert await blocked(sessions, B2, phone)
    assert not await blocked(sessions, B2, PHONES[4])


async def test_reindex_resumes_after_it_is_stopped(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    for phone in PHONES[:5]:
        await keyword(sessions, B1, phone)

    class Interrupted(Exception):
        pass

    async def die(_seconds: float) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        await reindex(sessions, SEALER, B2, rate=1.0, batch=2, sleep=die)
    assert (await usage(sessions)).only == {"b1": 3}
    resumed = await reindex(sessions, SEALER, B2, rate=1000, batch=2)
    assert resumed.reindexed == 3
    assert (await usage(sessions)).only == {}


async def test_an_opt_out_whose_version_is_no_longer_held_cannot_be_recovered(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await old_stop(sessions, PHONES[0])
    await reported(sessions, PHONES[0])
    done = await reindex(sessions, SEALER, B2, rate=1000)  # b1 not held: nothing matches
    assert (done.recovered, done.unrecoverable) == (0, 1)
    assert (await usage(sessions)).only == {"b1": 1}


def test_cli_retire_index_refuses_while_an_opt_out_is_under_b1_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.cli import main
    from shared.db import resolve_url
    from shared.settings import get_settings

    monkeypatch.setenv("PORTLINE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PORTLINE_ENV", "development")
    monkeypatch.setenv("PORTLINE_DATABASE_URL", f"sqlite:///{tmp_path}/{{service}}.db")
    monkeypatch.setenv("PORTLINE_BLIND_INDEX_KEYS", f"b2:{b64(NEW)}")
    monkeypatch.delenv("PORTLINE_BLIND_INDEX_KEY", raising=False)
    get_settings.cache_clear()

    async def seed() -> None:
        url = resolve_url(get_settings().db_url, "outreach")
        engine = create_engine(url, service="outreach")
        await upgrade(engine, service="outreach")
        await old_stop(session_factory(engine), PHONES[0])
        await engine.dispose()

    try:
        asyncio.run(seed())
        code = main(["keys", "retire-index", "b1", "--service", "outreach"])
        out = capsys.readouterr()
        assert code == 1
        assert "1 SMS opt-out(s) are under b1 only" in out.err
        assert main(["keys", "status", "--service", "outreach"]) == 0
        assert "sms opt-outs b1: 1 of 1, 1 under b1 only" in capsys.readouterr().out
        # b1 is no longer held here: the re-index cannot recover the number, and says so.
        assert main(["keys", "reindex", "--service", "outreach"]) == 0
        assert (
            "outreach sms_opt_out: 0 opt-out(s) re-indexed under b2, 1 with no number outreach "
            "knows" in capsys.readouterr().out
        )
    finally:
        get_settings.cache_clear()

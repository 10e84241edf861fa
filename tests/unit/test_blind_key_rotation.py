"""Blind-index key rotation (ADR 0026): versions, both indexes in events, lookup and locks under
any version, re-index and retirement, on the embedded database."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.handlers import PolicyBook, Scheduler
from services.scheduler.locks import _blocking_keys
from services.scheduler.models import PERSON, PERSON_KEY, REPORT_LINK
from services.scheduler.reindex import RetireRefused, person_keys, reindex, retire, usage
from services.scheduler.reports import report_of
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.envelope import Envelope
from shared.events import OverdoseReported, OverdoseReportedV2
from shared.identity import Identity, Protector
from shared.migrations import upgrade
from shared.sealing import BlindIndexer, KeyConfigError, Keyring, Sealer, load_keys
from shared.settings import Settings
from shared.uow import UnitOfWork

OLD, NEW = b"o" * 32, b"n" * 32
SEALER = Sealer(Keyring({"t": b"s" * 32}, "t"))
B1 = BlindIndexer(OLD)
ROTATING = BlindIndexer(NEW, version="b2", others=[BlindIndexer(OLD)])
B2 = BlindIndexer(NEW, version="b2")
JANE = Identity(family="Doe", given="Jane", dob=date(1990, 1, 1), phones=("336-555-0100",))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# --- versions ------------------------------------------------------------------------------------


def test_versions_parse_with_the_first_active_and_the_single_key_as_b1() -> None:
    indexer = BlindIndexer.from_versions(f"b2:{b64(NEW)},b1:{b64(OLD)}")
    assert indexer.version == "b2"
    assert indexer.versions == ("b2", "b1")
    assert indexer.at("b1").phone("336-555-0100") == B1.phone("336-555-0100")
    assert indexer.phone("336-555-0100") != B1.phone("336-555-0100")
    # The single key of an existing deployment is b1 and indexes exactly as before.
    legacy = BlindIndexer.from_versions(None, legacy=b64(OLD))
    assert legacy.versions == ("b1",)
    assert legacy.name_dob("Doe", "Jane", "1990-01-01") == B1.name_dob("Doe", "Jane", "1990-01-01")
    # A rotation can add b2 beside the single key: b1 is held after it.
    beside = BlindIndexer.from_versions(f"b2:{b64(NEW)}", legacy=b64(OLD))
    assert beside.versions == ("b2", "b1")
    assert "keys=<hidden>" in repr(beside)
    assert b64(NEW) not in repr(beside)


@pytest.mark.parametrize(
    ("versions", "legacy", "message"),
    [
        (f"b1:{b64(NEW)}", b64(OLD), "differ; set one of them"),
        (f"b2:{b64(NEW)},b2:{b64(OLD)}", None, "duplicate version 'b2'"),
        (f"b2{b64(NEW)}", None, "entry 1 is malformed"),
        ("b2:c2hvcnQ=", None, "must be 32 bytes"),
        (None, None, "no blind index key"),
    ],
)
def test_bad_versions_are_refused_precisely(
    versions: str | None, legacy: str | None, message: str
) -> None:
    with pytest.raises(KeyConfigError, match=message) as info:
        BlindIndexer.from_versions(versions, legacy=legacy)
    assert b64(NEW) not in str(info.value)


def test_settings_take_either_key_setting_and_load_both_versions(tmp_path: Path) -> None:
    settings = Settings(
        env="production",
        var_dir=tmp_path,
        seal_keys=SecretStr(f"k1:{b64(b's' * 32)}"),
        blind_index_keys=SecretStr(f"b2:{b64(NEW)}"),
        blind_index_key=SecretStr(b64(OLD)),
    )
    _sealer, indexer = load_keys(settings)
    assert indexer.versions == ("b2", "b1")


# --- events --------------------------------------------------------------------------------------


def test_during_a_rotation_a_report_carries_its_keys_under_both_versions() -> None:
    fields = Protector(SEALER, ROTATING).blind_fields(JANE, facility="ED1")
    assert fields["blind_keys_version"] == "b2"
    assert fields["blind_keys"] == Protector(SEALER, B2).blind_keys(JANE, facility="ED1")
    assert fields["other_blind_keys"] == {
        "b1": Protector(SEALER, B1).blind_keys(JANE, facility="ED1")
    }
    assert fields["blind_keys"].name_dob != fields["other_blind_keys"]["b1"].name_dob
    # Outside a rotation there is nothing more to send.
    assert Protector(SEALER, B1).blind_fields(JANE, facility=None)["other_blind_keys"] == {}


def test_an_older_report_reads_as_its_keys_under_b1() -> None:
    old = OverdoseReportedV2(
        **_report_fields(Protector(SEALER, B1).blind_keys(JANE, facility=None))
    )
    envelope = Envelope.from_bytes(
        Envelope.wrap(old, source="/t", subject="k", time=datetime.now(UTC)).to_bytes()
    )
    event = envelope.event()
    assert isinstance(event, OverdoseReported)
    report = report_of(event)
    assert report is not None
    assert report.blind_sets() == (("b1", old.blind_keys),)


# --- the scheduler -------------------------------------------------------------------------------


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/s.db", service="scheduler")
    await upgrade(engine, service="scheduler")
    yield session_factory(engine)
    await engine.dispose()


def _report_fields(blind: Any, **more: Any) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(hours=2)
    return {
        "report_id": uuid.uuid4(),
        "program_id": "demo",
        "source_kind": "ems",
        "source_org": "x",
        "source_ref": "r",
        "incident_at": at,
        "received_at": at + timedelta(minutes=30),
        "identity": SEALER.seal_json(
            {"family": "Doe", "given": "Jane", "dob": "1990-01-01", "phones": ["336-555-0100"]},
            context="identity",
        ),
        "blind_keys": blind,
        "deidentified": False,
        "opioid": True,
        "any_drug": True,
        "reasons": [],
        **more,
    }


def reported(indexer: BlindIndexer, *, days_ago: int = 0) -> OverdoseReported:
    """Jane's report as an intake holding ``indexer`` publishes it."""
    fields = _report_fields(None)
    fields.update(Protector(SEALER, indexer).blind_fields(JANE, facility=None))
    fields["incident_at"] -= timedelta(days=days_ago)
    fields["received_at"] -= timedelta(days=days_ago)
    return OverdoseReported(**fields)


async def deliver(
    sessions: async_sessionmaker[AsyncSession], indexer: BlindIndexer, event: OverdoseReported
) -> None:
    scheduler = Scheduler(sealer=SEALER, policies=PolicyBook(), indexer=indexer)
    envelope = Envelope.wrap(event, source="/t", subject="k", time=datetime.now(UTC))
    async with UnitOfWork(
        sessions, clock=ManualClock(datetime.now(UTC)), source="/portline/scheduler"
    ) as uow:
        await scheduler.on_overdose(uow, envelope)
        await uow.commit()


async def people(sessions: async_sessionmaker[AsyncSession]) -> list[uuid.UUID]:
    async with sessions() as s:
        return list((await s.execute(sa.select(PERSON.c.id))).scalars())


async def linked_to(sessions: async_sessionmaker[AsyncSession], event: OverdoseReported) -> str:
    async with sessions() as s:
        match = await s.scalar(
            sa.select(REPORT_LINK.c.match).where(REPORT_LINK.c.report_id == event.report_id)
        )
    return str(match)


async def test_a_person_indexed_under_b1_is_found_during_the_rotation_and_after_retirement(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Before: one key, b1.
    await deliver(sessions, B1, reported(B1, days_ago=40))
    [jane] = await people(sessions)
    assert (await usage(sessions)).only == {"b1": 1}
    with pytest.raises(RetireRefused, match="1 person"):
        await retire(sessions, "b1")  # refused early: Jane would be found by no key

    # During: the report carries b2 and b1; the scheduler holds both.
    during = reported(ROTATING, days_ago=20)
    await deliver(sessions, ROTATING, during)
    assert await people(sessions) == [jane]
    assert await linked_to(sessions, during) == "exact"
    async with sessions() as s:
        versions = set(
            (await s.execute(sa.select(PERSON_KEY.c.version).distinct())).scalars().all()
        )
    assert versions == {"b1", "b2"}  # the rotation's report added her b2 keys

    # Re-index, then retire b1: a report under b2 alone still finds her.
    report = await reindex(sessions, SEALER, B2, rate=1000)
    assert report.reindexed == 0  # she already holds b2 keys: nothing to do
    assert await retire(sessions, "b1") > 0
    after = reported(B2)
    await deliver(sessions, B2, after)
    assert await people(sessions) == [jane]
    assert await linked_to(sessions, after) == "exact"
    assert (await usage(sessions)).people == {"b2": 1}


async def test_reindex_computes_b2_keys_from_the_sealed_identity_and_resumes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    names = ["Ann", "Bea", "Cy", "Di", "Ed"]
    for n, given in enumerate(names):
        identity = {"family": "Roe", "given": given, "dob": f"1980-01-0{n + 1}", "phones": []}
        async with sessions() as s, s.begin():
            pid = uuid.uuid4()
            await s.execute(
                PERSON.insert().values(
                    id=pid,
                    program_id="demo",
                    identity_sealed=SEALER.seal_json(identity, context="identity"),
                    do_not_contact=False,
                    created_at=datetime.now(UTC),
                )
            )
            await s.execute(
                PERSON_KEY.insert().values(
                    [
                        {"person_id": pid, "kind": k, "value": v, "version": "b1"}
                        for k, v in person_keys(B1, identity)
                    ]
                )
            )

    class Stop(Exception):
        pass

    slept: list[float] = []

    async def interrupt(seconds: float) -> None:
        slept.append(seconds)
        raise Stop  # the run dies after its first batch

    with pytest.raises(Stop):
        await reindex(sessions, SEALER, B2, rate=1.0, batch=2, sleep=interrupt)
    assert len(slept) == 1
    assert slept[0] > 1.0  # throttled: two people at one a second
    assert (await usage(sessions)).only == {"b1": 3}
    report = await reindex(sessions, SEALER, B2, rate=10_000, batch=2)
    assert report.reindexed == 3  # only what the first run left
    assert (await usage(sessions)).only == {}
    again = await reindex(sessions, SEALER, B2, rate=10_000)
    assert again.reindexed == 0
    # Each person's b2 keys are exactly what an indexer under b2 computes.
    async with sessions() as s:
        rows = (
            await s.execute(
                sa.select(PERSON_KEY.c.kind, PERSON_KEY.c.value).where(PERSON_KEY.c.version == "b2")
            )
        ).all()
    expected = set().union(
        *(
            person_keys(B2, {"family": "Roe", "given": g, "dob": f"1980-01-0{n + 1}"})
            for n, g in enumerate(names)
        )
    )
    assert {tuple(r) for r in rows} == expected


def test_reports_of_one_person_under_b1_and_under_b2_share_a_lock_with_a_rotation_report() -> None:
    """Whichever replica reads which, two reports of one person share a locked key as long as
    everyone holds one common version (the runbook's order)."""

    def keys(event: OverdoseReported) -> set[tuple[str, str, str]]:
        report = report_of(event)
        assert report is not None
        return _blocking_keys([report], {})

    before, during, after = reported(B1), reported(ROTATING), reported(B2)
    assert keys(before) & keys(during)
    assert keys(during) & keys(after)
    assert not keys(before) & keys(after)  # why b1 retires only once everyone holds b2


def test_cli_refuses_to_retire_a_version_still_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.cli import main
    from shared.settings import get_settings

    monkeypatch.setenv("PORTLINE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PORTLINE_ENV", "development")
    monkeypatch.setenv("PORTLINE_BLIND_INDEX_KEYS", f"b2:{b64(NEW)},b1:{b64(OLD)}")
    monkeypatch.delenv("PORTLINE_BLIND_INDEX_KEY", raising=False)
    get_settings.cache_clear()
    try:
        assert asyncio.run(asyncio.to_thread(main, ["keys", "retire-index", "b1"])) == 2
    finally:
        get_settings.cache_clear()
    assert "b1 is still configured here" in capsys.readouterr().err


async def test_a_late_report_under_a_retired_version_brings_none_of_its_keys_back(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await deliver(sessions, B2, reported(B2, days_ago=10))
    late = reported(ROTATING, days_ago=5)  # published during the rotation, read after it
    await deliver(sessions, B2, late)
    assert await linked_to(sessions, late) == "exact"
    assert (await usage(sessions)).people == {"b2": 1}

"""`portline outbox parked` and `portline outbox retry` on the embedded SQLite databases."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.cli import build_parser, main
from shared.db import create_engine
from shared.migrations import upgrade
from shared.outbox import OUTBOX
from shared.settings import get_settings

SECRET = "Jane Q. Public, born 1980"
"""Stands for what a payload may carry: it must never reach the terminal."""


@pytest.fixture
def var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The CLI's settings: SQLite files under a var dir of this test's own."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("PORTLINE_DB_SCHEMA_PREFIX", raising=False)
    monkeypatch.setenv("PORTLINE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PORTLINE_ENV", "development")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


async def outbox_rows(var_dir: Path, service: str, rows: list[tuple[str, str | None]]) -> list[int]:
    """Migrate the service's file and add outbox rows (key, park reason or None); their ids."""
    engine = create_engine(f"sqlite+aiosqlite:///{var_dir}/{service}.db", service=service)
    await upgrade(engine, service=service)
    now = datetime.now(UTC)
    ids = []
    async with engine.begin() as conn:
        for key, reason in rows:
            row_id = await conn.scalar(
                OUTBOX.insert()
                .values(
                    event_id=str(uuid.uuid4()),
                    topic=f"port.{service}.things.v1",
                    key=key,
                    payload=f'{{"name": "{SECRET}"}}',
                    created_at=now - timedelta(minutes=10),
                    parked_at=now if reason else None,
                    park_reason=reason,
                )
                .returning(OUTBOX.c.id)
            )
            ids.append(int(row_id))
    await engine.dispose()
    return ids


async def reason_of(var_dir: Path, service: str, row_id: int) -> str | None:
    engine = create_engine(f"sqlite+aiosqlite:///{var_dir}/{service}.db", service=service)
    async with engine.connect() as conn:
        reason = await conn.scalar(sa.select(OUTBOX.c.park_reason).where(OUTBOX.c.id == row_id))
    await engine.dispose()
    return reason


async def portline(*argv: str) -> int:
    # In a thread: the command runs its own event loop, as it does from a shell.
    return await asyncio.to_thread(main, list(argv))


async def test_parked_lists_every_service_s_parked_rows_without_their_payload(
    var_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [_, intake_parked] = await outbox_rows(
        var_dir, "intake", [("person-1", None), ("person-2", "too_large")]
    )
    [scheduler_parked] = await outbox_rows(
        var_dir, "scheduler", [("case-9", "refused:InvalidTopicError")]
    )
    for service in ("outreach", "reporting"):
        await outbox_rows(var_dir, service, [])

    assert await portline("outbox", "parked") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["SERVICE", "ID", "TOPIC", "KEY", "REASON", "PARKED", "AT"]
    assert lines[1].split()[:5] == [
        "intake",
        str(intake_parked),
        "port.intake.things.v1",
        "person-2",
        "too_large",
    ]
    assert lines[2].split()[:5] == [
        "scheduler",
        str(scheduler_parked),
        "port.scheduler.things.v1",
        "case-9",
        "refused:InvalidTopicError",
    ]
    assert len(lines) == 3  # the unparked row is not listed
    assert SECRET not in out

    assert await portline("outbox", "parked", "--service", "scheduler") == 0
    only = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in only] == ["SERVICE", "scheduler"]


async def test_retry_unparks_one_row_of_one_service(
    var_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [published, parked] = await outbox_rows(
        var_dir, "outreach", [("case-1", None), ("case-1", "too_large")]
    )

    assert await portline("outbox", "retry", str(parked), "--service", "outreach") == 0
    assert f"outreach: outbox row {parked} unparked" in capsys.readouterr().out
    assert await reason_of(var_dir, "outreach", parked) is None
    assert await portline("outbox", "parked", "--service", "outreach") == 0
    assert capsys.readouterr().out == "no parked outbox rows\n"

    # Not parked (any more), or not there: said so, and nothing changes.
    for row_id in (parked, published, parked + 100):
        assert await portline("outbox", "retry", str(row_id), "--service", "outreach") == 1
        assert "has no parked outbox row" in capsys.readouterr().err


async def test_a_service_without_a_database_is_reported_not_created(
    var_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await outbox_rows(var_dir, "intake", [("person-1", "too_large")])

    assert await portline("outbox", "parked") == 1
    captured = capsys.readouterr()
    assert "intake" in captured.out
    for service in ("scheduler", "outreach", "reporting"):
        assert f"{service}: no database at" in captured.err
        assert not (var_dir / f"{service}.db").exists()
    assert await portline("outbox", "retry", "1", "--service", "reporting") == 1
    assert "reporting: no database at" in capsys.readouterr().err


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_every_outbox_subcommand_has_a_one_line_help() -> None:
    outbox = _subcommands(build_parser()).choices["outbox"]
    helps = {choice.dest: choice.help for choice in _subcommands(outbox)._choices_actions}
    assert set(helps) == {"parked", "retry"}
    assert all(h and "\n" not in h for h in helps.values())

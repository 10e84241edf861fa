"""The storage port's contract on the SQLite adapter (the same checks run on PostgreSQL in
tests/integration/test_intake_pg.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.intake.store.sqlite import SqliteStore
from shared.db import create_engine, session_factory
from shared.migrations import upgrade
from tests.intake_store_contract import CHECKS, Check


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
async def test_the_sqlite_adapter_keeps_the_contract(check: Check, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/intake.db", service="intake")
    await upgrade(engine, service="intake")
    sessions = session_factory(engine)
    woken: list[None] = []
    try:
        await check(SqliteStore(sessions, on_published=lambda: woken.append(None)), sessions, woken)
    finally:
        await engine.dispose()

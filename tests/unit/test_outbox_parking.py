"""Outbox parking on SQLite: a row that can never be published is parked with its reason, the
rows after it flow, a parked row's key waits behind it, and operators see and retry it."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.db import create_engine
from shared.migrations import upgrade
from shared.settings import SERVICES


@pytest.mark.parametrize("service", SERVICES)
async def test_every_service_migrates_its_outbox_to_parking(tmp_path: Path, service: str) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/{service}.db", service=service)
    await upgrade(engine, service=service)

    def inspect(connection: sa.Connection) -> tuple[dict[str, bool], dict[str, list[str]]]:
        inspector = sa.inspect(connection)
        columns = {c["name"]: c["nullable"] for c in inspector.get_columns("outbox")}
        indexes = {i["name"]: list(i["column_names"]) for i in inspector.get_indexes("outbox")}
        return columns, indexes

    async with engine.connect() as conn:
        columns, indexes = await conn.run_sync(inspect)
        ddl = (
            await conn.execute(
                sa.text("select sql from sqlite_master where name = 'ix_outbox_parked_key'")
            )
        ).scalar_one()
    await engine.dispose()
    assert columns["parked_at"] is True
    assert columns["park_reason"] is True
    assert indexes["ix_outbox_parked_key"] == ["key", "id"]
    assert indexes["ix_outbox_unpublished"] == ["id"]  # the table was not rebuilt without it
    assert "parked_at IS NOT NULL" in ddl

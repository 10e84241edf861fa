"""Reporting never stores or shows who anyone is: no column for a name, a date of birth, a
phone, an address, a blind key, a sealed token or a note, and none of those values anywhere in
its read models, its answers or its exports, although the events it reads carry sealed
identities, sealed addresses and blind keys."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from openpyxl import load_workbook

from services.reporting.models import METADATA, READ_MODEL_TABLES
from shared.db import create_engine
from shared.settings import Settings
from tests.reporting_world import BLIND, SEALED, History, reporting_world

FORBIDDEN = re.compile(
    r"name|dob|birth|phone|address|street|city|postal|zip|mrn|ssn|email|blind|seal|token|"
    r"identity|note|text|provider|language|given|family",
    re.IGNORECASE,
)


def test_no_column_of_the_read_models_is_for_identity() -> None:
    columns = [f"{t.name}.{c.name}" for t in METADATA.sorted_tables for c in t.columns]
    assert len(columns) > 100
    assert [c for c in columns if FORBIDDEN.search(c.split(".", 1)[1])] == []


async def test_the_migrated_schema_has_no_column_for_identity(tmp_path: Path) -> None:
    async with reporting_world(tmp_path):
        engine = create_engine(
            Settings(
                env="development", database_url=f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db"
            ).db_url,
            service="reporting",
        )
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            found = []
            for table in tables:
                if not table.startswith("rpt_"):
                    continue
                for column in await conn.run_sync(lambda c, t=table: sa.inspect(c).get_columns(t)):
                    if FORBIDDEN.search(column["name"]):
                        found.append(f"{table}.{column['name']}")
        await engine.dispose()
    assert {t.name for t in READ_MODEL_TABLES} <= set(tables)
    assert found == []


async def test_no_identity_reaches_the_tables_the_answers_or_the_exports(tmp_path: Path) -> None:
    async with reporting_world(tmp_path, now=datetime(2025, 6, 1, tzinfo=UTC)) as world:
        h = History()
        at = datetime(2025, 2, 3, 14, tzinfo=UTC)
        for i in range(12):
            episode = h.overdose(at=at + timedelta(days=i))
            h.also_reported(episode)
            h.attempt(episode, at=at + timedelta(days=i, hours=1), outcome="reached")
            h.referral(episode, at=at + timedelta(days=i, hours=2))
        h.report(at=at, deidentified=True)
        h.community(at=at, deidentified=False)
        h.rejected(at=at)
        await world.deliver(h.envelopes)
        assert any(SEALED in e.to_bytes().decode() for e in h.envelopes)  # the events carry it

        seen: list[str] = []
        async with world.runtime.sessions() as session:
            for table in READ_MODEL_TABLES:
                for row in await session.execute(sa.select(table)):
                    seen.append(repr(tuple(row)))
        assert len(seen) > 50
        for path, params in (
            ("/v1/metrics", {"from": "2025-01-01", "to": "2025-03-31", "by": "partner"}),
            ("/v1/exports/metrics.csv", {"from": "2025-01-01", "to": "2025-03-31", "by": "county"}),
            ("/v1/exports/metrics.xlsx", {"from": "2025-01-01", "to": "2025-03-31"}),
            ("/v1/exports/quarterly.csv", {"quarter": "2025-Q1", "view": "internal"}),
        ):
            r = await world.client.get(path, params=params, headers=world.auth("team_lead"))
            assert r.status_code == 200, path
            if path.endswith(".xlsx"):  # zipped: read the cells
                book = load_workbook(io.BytesIO(r.content), read_only=True)
                for sheet in book:
                    seen.extend(repr(row) for row in sheet.iter_rows(values_only=True))
            else:
                seen.append(r.text)
    text = "\n".join(seen)
    assert SEALED not in text
    assert BLIND not in text
    assert "v1.k1." not in text

"""The adapter for a service's database: asyncpg on PostgreSQL, SQLAlchemy on SQLite."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.intake.store import IntakeStore, OnPublished
from services.intake.store.postgres import PostgresStore
from services.intake.store.sqlite import SqliteStore
from shared.db import is_postgres
from shared.settings import Settings

__all__ = ["open_store"]


def open_store(
    settings: Settings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    *,
    on_published: OnPublished | None = None,
) -> IntakeStore:
    """Intake's storage port on the engine's database (connections open on first use)."""
    if is_postgres(engine):
        return PostgresStore.connect(
            settings.db_url, schema=settings.schema_for("intake"), on_published=on_published
        )
    return SqliteStore(sessions, on_published=on_published)

"""Async database engines and sessions, one database (or PostgreSQL schema) per service.

On PostgreSQL every service owns a schema named after it inside the one database that
DATABASE_URL names; on SQLite (the embedded default) every service owns its own file.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = [
    "UTCDateTime",
    "bigint_pk",
    "create_engine",
    "ensure_schema",
    "is_postgres",
    "resolve_url",
    "session_factory",
]

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def resolve_url(database_url: str, service: str) -> str:
    """The async SQLAlchemy URL for one service."""
    url = database_url.replace("{service}", service)
    if url.startswith("postgres://"):
        url = "postgresql+asyncpg://" + url.removeprefix("postgres://")
    elif url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    elif url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    return url


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def create_engine(database_url: str, *, service: str, schema: str | None = None) -> AsyncEngine:
    """An engine for one service; on PostgreSQL its sessions see only that service's schema."""
    url = resolve_url(database_url, service)
    if url.startswith("postgresql"):
        schema = schema or service
        if not _SCHEMA.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        return create_async_engine(
            url,
            pool_size=10,
            max_overflow=10,
            # No pre-ping (a round trip per checkout): a connection the server dropped fails
            # its transaction once, is discarded with the pool's stale connections, and the
            # caller's retry (a partner's resend, a consumer's redelivery) gets a fresh one.
            pool_recycle=1800,
            connect_args={"server_settings": {"search_path": schema}},
        )
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        sa_event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    raise ValueError("DATABASE_URL must be a postgresql:// or sqlite:/// URL")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


async def ensure_schema(engine: AsyncEngine, *, service: str, schema: str | None = None) -> None:
    """Create the service's schema on PostgreSQL (no-op on SQLite)."""
    if not is_postgres(engine):
        return
    name = schema or service
    if not _SCHEMA.match(name):
        raise ValueError(f"invalid schema name {name!r}")
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{name}"'))


def bigint_pk(name: str = "id") -> sa.Column[int]:
    """An autoincrementing 64-bit primary key (a plain INTEGER on SQLite, where only that
    autoincrements)."""
    return sa.Column(
        name,
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware datetimes that come back aware (and in UTC) on SQLite too."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware one is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

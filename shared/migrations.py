"""Running each service's own Alembic migrations, and the plumbing tables they all share.

Migrations run on a connection handed to Alembic, so they work inside a running event loop
(the CLI, the services' start-up and the tests all use the same path).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command, op
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import UTCDateTime, bigint_pk, ensure_schema

__all__ = [
    "add_outbox_parking_v2",
    "create_plumbing_tables_v1",
    "current_revision",
    "head_revision",
    "run_env",
    "upgrade",
]

_SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"


def _config(service: str) -> Config:
    location = _SERVICES_DIR / service / "migrations"
    if not location.is_dir():
        raise ValueError(f"no migrations for service {service!r}")
    cfg = Config()
    cfg.set_main_option("script_location", str(location))
    return cfg


async def upgrade(
    engine: AsyncEngine, *, service: str, schema: str | None = None, revision: str = "head"
) -> None:
    """Bring the service's schema (or SQLite file) up to `revision`."""
    await ensure_schema(engine, service=service, schema=schema)
    cfg = _config(service)

    def _run(connection: Connection) -> None:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)


def head_revision(service: str) -> str | None:
    """The revision a service's code expects: the head of its migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(service)).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    def _get(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_get)


def run_env() -> None:
    """The body of every service's migrations/env.py."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `portline migrate`, not the alembic CLI")
    context.configure(
        connection=connection,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def create_plumbing_tables_v1() -> None:
    """Outbox, inbox and dead-letter tables, as of version 1 (frozen: later changes get new
    functions, so old migrations keep meaning what they meant)."""
    op.create_table(
        "outbox",
        bigint_pk(),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
    )
    op.create_index(
        "ix_outbox_unpublished",
        "outbox",
        ["id"],
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "dead_letter",
        bigint_pk(),
        sa.Column("consumer", sa.String(100), nullable=False),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("consumer", "topic", "partition", "offset"),
    )


def add_outbox_parking_v2() -> None:
    """Outbox parking (frozen, like v1): `parked_at` and `park_reason` on rows the relay can
    never publish as they are, and a partial index on the parked rows' keys, which the relay
    reads to hold back the later rows of a key with a parked row. Both columns are nullable,
    so writers that do not know them (intake's asyncpg path) keep working."""
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("parked_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("park_reason", sa.String(64), nullable=True))
    op.create_index(
        "ix_outbox_parked_key",
        "outbox",
        ["key", "id"],
        postgresql_where=sa.text("parked_at IS NOT NULL"),
        sqlite_where=sa.text("parked_at IS NOT NULL"),
    )

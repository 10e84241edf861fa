"""Running each service's own Alembic migrations, and the plumbing tables they all share.

Migrations run on a connection handed to Alembic, so they work inside a running event loop
(the CLI and the tests use the same path).

On PostgreSQL two roles keep the audit logs honest: migrations run as the **owner** of the
schemas (DATABASE_OWNER_URL), and the services connect as a **runtime** role (DATABASE_URL)
that `grant_runtime_access` gives only row access: SELECT, INSERT, UPDATE and DELETE on the
service's tables, INSERT and SELECT only on its append-only tables, and nothing on the schema
itself. Only a table's owner can drop or disable its triggers, so the runtime role can neither
edit the audit log nor take away what stops it being edited.
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from alembic import command, op
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import UTCDateTime, bigint_pk, ensure_schema, is_postgres, resolve_url
from shared.settings import Settings

__all__ = [
    "APPEND_ONLY_TABLES",
    "add_outbox_parking_v2",
    "add_outbox_traceparent_v1",
    "create_plumbing_tables_v1",
    "create_team_access_v1",
    "current_revision",
    "grant_runtime_access",
    "protect_append_only_v1",
    "run_env",
    "runtime_role",
    "upgrade",
]

APPEND_ONLY_TABLES = ("audit_log",)
"""Tables no service may change or delete a row of: the runtime role may only add and read."""
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

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


def add_outbox_traceparent_v1() -> None:
    """The outbox row's trace context (frozen, like v1): the W3C traceparent of the span that
    published the event, sent as the Kafka record's `traceparent` header (shared.tracing).
    Nullable: tracing is off by default, and rows written before it have none."""
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(64), nullable=True))


def create_team_access_v1() -> None:
    """The `team_access` table (frozen, like v1): each member's latest state as outreach
    published it on port.outreach.team.v1 (see shared.team_access)."""
    op.create_table(
        "team_access",
        sa.Column("program_id", sa.String(64), primary_key=True),
        sa.Column("member_id", sa.String(128), primary_key=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
    )


def protect_append_only_v1(table: str) -> None:
    """Make a table append-only in the database itself (frozen, like v1): UPDATE, DELETE and
    TRUNCATE raise, whoever sends them, until the table's owner drops the triggers."""
    if not _ROLE.match(table):
        raise ValueError(f"invalid table name {table!r}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{table} is append-only'; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()"
        )
        return
    for verb in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )


def runtime_role(settings: Settings) -> str | None:
    """The role the services connect as, when migrations run as another (the owner) on
    PostgreSQL; None when there is one role only (or SQLite, which has none)."""
    if not settings.database_owner_url:
        return None
    runtime = make_url(resolve_url(settings.db_url, "any"))
    owner = make_url(resolve_url(settings.database_owner_url, "any"))
    if not runtime.drivername.startswith("postgresql") or runtime.username == owner.username:
        return None
    return runtime.username


async def grant_runtime_access(engine: AsyncEngine, *, schema: str, role: str) -> None:
    """Give the runtime role row access to a migrated schema, and no more (run as its owner,
    after every migration: new tables get their grants then)."""
    if not is_postgres(engine):
        return
    if not _ROLE.match(role) or not _ROLE.match(schema):
        raise ValueError("invalid role or schema name")
    async with engine.begin() as conn:
        tables = set(
            (
                await conn.execute(
                    sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"),
                    {"schema": schema},
                )
            ).scalars()
        )
        statements = [
            f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM "{role}"',
            f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"',
            f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"',
        ]
        statements += [
            f'REVOKE UPDATE, DELETE ON "{schema}"."{table}" FROM "{role}"'
            for table in sorted(tables & {*APPEND_ONLY_TABLES, "alembic_version"})
        ]
        if "alembic_version" in tables:
            statements.append(f'REVOKE INSERT ON "{schema}"."alembic_version" FROM "{role}"')
        for statement in statements:
            await conn.execute(sa.text(statement))

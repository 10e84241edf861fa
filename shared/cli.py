"""The `portline` command: run services, migrate their databases, create Kafka topics, and
see and retry the outbox rows the relay parked."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from shared.settings import (
    SERVICES,
    TEAM_TOKEN_SERVICES,
    ConfigurationError,
    ServiceName,
    Settings,
    get_settings,
)

if TYPE_CHECKING:  # the CLI imports the database plumbing only for the commands that use it
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["main"]

T = TypeVar("T")


def _services(names: Sequence[str]) -> tuple[ServiceName, ...]:
    if not names or list(names) == ["all"]:
        return SERVICES
    chosen = [s for s in SERVICES if s in names]
    unknown = sorted(set(names) - set(chosen))
    if unknown:
        raise SystemExit(f"portline: unknown service(s): {', '.join(unknown)}")
    return tuple(chosen)


def _cmd_run(args: argparse.Namespace) -> int:
    from shared.serve import run_all, serve

    settings = get_settings()
    if args.service == "all":
        print(f"PORTline ({settings.env}) starting all services:")
        return run_all(settings)
    module = importlib.import_module(f"services.{args.service}.app")
    serve(args.service, module.create_app)
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from shared.db import create_engine
    from shared.migrations import current_revision, grant_runtime_access, runtime_role, upgrade

    settings = get_settings()
    if args.check:
        return _check_migrated(settings, _services(args.services))
    owner_url = settings.database_owner_url or settings.db_url
    role = runtime_role(settings)

    async def go() -> None:
        for service in _services(args.services):
            schema = settings.schema_for(service)
            engine = create_engine(owner_url, service=service, schema=schema)
            try:
                await upgrade(engine, service=service, schema=schema)
                if role is not None:
                    await grant_runtime_access(engine, schema=schema, role=role)
                granted = f"; {role} may read and write rows" if role else ""
                print(f"{service}: at {await current_revision(engine)}{granted}")
            finally:
                await engine.dispose()

    asyncio.run(go())
    return 0


def _check_migrated(settings: Settings, services: Sequence[ServiceName]) -> int:
    """0 when every service's schema is at the head revision its code expects; 1 (and why on
    stderr) otherwise. Changes nothing: what a service's pod waits on before it starts."""
    from shared.db import create_engine
    from shared.migrations import current_revision, head_revision

    async def go() -> list[str]:
        behind: list[str] = []
        for service in services:
            engine = create_engine(
                settings.db_url, service=service, schema=settings.schema_for(service)
            )
            try:
                current = await current_revision(engine)
            except Exception as exc:  # not reachable yet, or no schema: not migrated
                current = f"unreadable ({type(exc).__name__})"
            finally:
                await engine.dispose()
            head = head_revision(service)
            if current != head:
                behind.append(f"{service}: at {current}, code expects {head}")
            else:
                print(f"{service}: at {head}")
        return behind

    behind = asyncio.run(go())
    for line in behind:
        print(f"portline migrate --check: {line}", file=sys.stderr)
    return 1 if behind else 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from shared.bus import ensure_topics
    from shared.kafka import KafkaConnection

    settings = get_settings()
    layout = settings.topic_layout()
    if settings.env == "production" and (layout.replication < 3 or layout.min_insync_replicas < 2):
        print(
            "warning: production topics want PORTLINE_KAFKA_REPLICATION=3 and "
            "PORTLINE_KAFKA_MIN_INSYNC_REPLICAS=2 (a single broker can hold neither)",
            file=sys.stderr,
        )
    created, updated = asyncio.run(ensure_topics(KafkaConnection.from_settings(settings), layout))
    for name in created:
        print(f"created {name}")
    for name in updated:
        print(f"exists {name}: settings applied")
    return 0


def _cmd_keys(_args: argparse.Namespace) -> int:
    import base64
    import os

    from shared.sealing import generate_key_setting

    print(f"PORTLINE_SEAL_KEYS={generate_key_setting('k1')}")
    print(f"PORTLINE_BLIND_INDEX_KEY={base64.b64encode(os.urandom(32)).decode()}")
    return 0


def _cmd_dev_token(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from shared.devtokens import DevelopmentKey

    settings = get_settings()
    if not settings.is_development:
        print("portline dev-token: only in development", file=sys.stderr)
        return 2
    key = DevelopmentKey.load(settings.var_dir)
    audience = [settings.token_audience(s) for s in TEAM_TOKEN_SERVICES]
    print(
        key.mint(
            role=args.role,
            program=args.program,
            subject=args.subject,
            audience=audience,
            now=datetime.now(UTC),
        )
    )
    return 0


class _NoDatabase(Exception):
    """A service's SQLite file does not exist (opening it would create an empty one)."""


def _missing_sqlite_file(settings: Settings, service: str) -> str | None:
    """The service's SQLite file if it does not exist yet; None if it does (or on PostgreSQL)."""
    from shared.db import resolve_url

    url = resolve_url(settings.db_url, service)
    if not url.startswith("sqlite") or ":///" not in url:
        return None
    path = url.split(":///", 1)[1]
    return None if path == ":memory:" or Path(path).exists() else path


async def _on_database(
    settings: Settings,
    service: str,
    work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]],
    *,
    as_owner: bool = False,
) -> T:
    """Run `work` on one service's database: its schema on PostgreSQL, its file on SQLite;
    `as_owner`: as DATABASE_OWNER_URL's role when set (what may lift an append-only table's
    triggers)."""
    from shared.db import create_engine, session_factory

    missing = _missing_sqlite_file(settings, service)
    if missing is not None:
        raise _NoDatabase(missing)
    url = (settings.database_owner_url or settings.db_url) if as_owner else settings.db_url
    engine = create_engine(url, service=service, schema=settings.schema_for(service))
    try:
        return await work(session_factory(engine))
    finally:
        await engine.dispose()


def _cannot_read(service: str, exc: Exception) -> str:
    if isinstance(exc, _NoDatabase):
        return f"{service}: no database at {exc} (run `portline migrate`)"
    # The error's type only: its text could quote rows.
    return f"{service}: cannot read its outbox ({type(exc).__name__}; run `portline migrate`?)"


def _cmd_outbox_parked(args: argparse.Namespace) -> int:
    from shared.outbox import ParkedRow, parked_rows

    settings = get_settings()
    services = _services([args.service] if args.service else [])

    async def go() -> tuple[list[tuple[str, ParkedRow]], list[str]]:
        found: list[tuple[str, ParkedRow]] = []
        problems: list[str] = []
        for service in services:
            try:
                rows = await _on_database(settings, service, parked_rows)
            except Exception as exc:
                problems.append(_cannot_read(service, exc))
                continue
            found.extend((service, row) for row in rows)
        return found, problems

    found, problems = asyncio.run(go())
    for problem in problems:
        print(f"portline outbox parked: {problem}", file=sys.stderr)
    if not found:
        print("no parked outbox rows")
        return 1 if problems else 0
    # Never the payload: it is the event, and it may carry sealed PHI.
    table = [("SERVICE", "ID", "TOPIC", "KEY", "REASON", "PARKED AT")] + [
        (service, str(r.id), r.topic, r.key, r.reason, r.parked_at.isoformat(timespec="seconds"))
        for service, r in found
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for *cells, last in table:
        print("  ".join([*(c.ljust(w) for c, w in zip(cells, widths, strict=True)), last]))
    return 1 if problems else 0


def _cmd_outbox_retry(args: argparse.Namespace) -> int:
    from shared.outbox import unpark

    settings = get_settings()
    service: str = args.service

    async def retry(sessions: async_sessionmaker[AsyncSession]) -> bool:
        return await unpark(sessions, args.id)

    try:
        retried = asyncio.run(_on_database(settings, service, retry))
    except Exception as exc:
        print(f"portline outbox retry: {_cannot_read(service, exc)}", file=sys.stderr)
        return 1
    if not retried:
        print(
            f"portline outbox retry: {service} has no parked outbox row {args.id}", file=sys.stderr
        )
        return 1
    print(
        f"{service}: outbox row {args.id} unparked; its relay tries it again at its next pass "
        "(and parks it again, with its reason, if it still fails)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from shared import ops_cli

    parser = argparse.ArgumentParser(prog="portline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one service, or all of them")
    run.add_argument("service", choices=[*SERVICES, "all"])
    run.set_defaults(func=_cmd_run)

    migrate = sub.add_parser("migrate", help="apply database migrations (default: all services)")
    migrate.add_argument("services", nargs="*", metavar="SERVICE")
    migrate.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 unless every named schema is at its head revision",
    )
    migrate.set_defaults(func=_cmd_migrate)

    topics = sub.add_parser("topics", help="Kafka topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    create = topics_sub.add_parser(
        "create", help="create the topics that do not exist yet; set the settings on the rest"
    )
    create.set_defaults(func=_cmd_topics)

    outbox = sub.add_parser("outbox", help="outbox rows the relay parked")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    parked = outbox_sub.add_parser(
        "parked", help="list parked outbox rows (never their payload) of one service or all"
    )
    parked.add_argument("--service", choices=SERVICES, help="only this service")
    parked.set_defaults(func=_cmd_outbox_parked)
    retry = outbox_sub.add_parser(
        "retry", help="unpark one outbox row so that the relay tries it again"
    )
    retry.add_argument("id", type=int, help="the row's id, as `portline outbox parked` shows it")
    retry.add_argument("--service", required=True, choices=SERVICES, help="the row's service")
    retry.set_defaults(func=_cmd_outbox_retry)

    keys = sub.add_parser("keys", help="secrets")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = keys_sub.add_parser("generate", help="print fresh secrets for a deployment")
    generate.set_defaults(func=_cmd_keys)
    ops_cli.register_keys(keys_sub)
    ops_cli.register(sub)

    token = sub.add_parser("dev-token", help="print a bearer token for development")
    token.add_argument(
        "--role", required=True, choices=["peer", "team_lead", "deputy", "analyst", "admin"]
    )
    token.add_argument("--program", default="demo")
    token.add_argument("--subject", default="dev-user")
    token.set_defaults(func=_cmd_dev_token)

    for service in SERVICES:
        # Each service may contribute commands of its own (services/<name>/cli.py).
        try:
            module = importlib.import_module(f"services.{service}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"services.{service}.cli":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ValidationError as exc:  # the settings: say what is wrong, never the values
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        print(f"portline: the configuration is invalid: {problems}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"portline: the configuration is invalid: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())

"""The `portline` command: run services, migrate their databases, create Kafka topics."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence

from shared.settings import SERVICES, ServiceName, get_settings

__all__ = ["main"]


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
    from shared.migrations import current_revision, upgrade

    settings = get_settings()

    async def go() -> None:
        for service in _services(args.services):
            schema = settings.schema_for(service)
            engine = create_engine(settings.db_url, service=service, schema=schema)
            try:
                await upgrade(engine, service=service, schema=schema)
                print(f"{service}: at {await current_revision(engine)}")
            finally:
                await engine.dispose()

    asyncio.run(go())
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from shared.bus import create_topics

    settings = get_settings()
    created = asyncio.run(
        create_topics(settings.kafka_bootstrap_servers, replication=settings.kafka_replication)
    )
    for name in created:
        print(f"created {name}")
    if not created:
        print("all topics exist")
    return 0


def _cmd_keys(_args: argparse.Namespace) -> int:
    import base64
    import os

    from shared.sealing import generate_key_setting

    print(f"PORTLINE_SEAL_KEYS={generate_key_setting('k1')}")
    print(f"PORTLINE_BLIND_INDEX_KEY={base64.b64encode(os.urandom(32)).decode()}")
    print(f"PORTLINE_JWT_SECRET={base64.urlsafe_b64encode(os.urandom(32)).decode()}")
    return 0


def _cmd_dev_token(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from shared.auth import TokenService, jwt_secret

    settings = get_settings()
    if not settings.is_development:
        print("portline dev-token: only in development", file=sys.stderr)
        return 2
    tokens = TokenService(jwt_secret(settings), issuer=settings.jwt_issuer)
    print(
        tokens.mint(
            role=args.role, program=args.program, subject=args.subject, now=datetime.now(UTC)
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one service, or all of them")
    run.add_argument("service", choices=[*SERVICES, "all"])
    run.set_defaults(func=_cmd_run)

    migrate = sub.add_parser("migrate", help="apply database migrations (default: all services)")
    migrate.add_argument("services", nargs="*", metavar="SERVICE")
    migrate.set_defaults(func=_cmd_migrate)

    topics = sub.add_parser("topics", help="Kafka topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    create = topics_sub.add_parser("create", help="create the topics that do not exist yet")
    create.set_defaults(func=_cmd_topics)

    keys = sub.add_parser("keys", help="secrets")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = keys_sub.add_parser("generate", help="print fresh secrets for a deployment")
    generate.set_defaults(func=_cmd_keys)

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
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

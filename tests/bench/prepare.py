"""A clean intake database for the benchmark: drop the schema, migrate, seed the demo partners.

    python -m tests.bench.prepare drop-schema   # PostgreSQL: DROP SCHEMA intake CASCADE

`scripts/bench.sh` runs the drop, then `portline migrate intake` and `portline intake
seed-demo` itself; `intake_bench --sqlite` uses :func:`prepare` for its own SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from shared.db import create_engine, resolve_url

__all__ = ["demo_keys", "drop_intake_schema", "portline", "prepare"]

SCHEMA = "intake"


def portline() -> str:
    """The `portline` entry point of the interpreter running this module."""
    return str(Path(sys.executable).parent / "portline")


def refuse_unless_resettable(database_url: str) -> None:
    """Benchmarks drop schemas: only in a database whose name says test or bench, unless
    BENCH_ALLOW_RESET=1. Raises RuntimeError otherwise."""
    database = sa.engine.make_url(resolve_url(database_url, SCHEMA)).database or ""
    if (
        not any(w in database for w in ("test", "bench"))
        and os.environ.get("BENCH_ALLOW_RESET") != "1"
    ):
        raise RuntimeError(
            f"refusing to drop schemas in database {database!r}: use a database whose name "
            "contains 'test' or 'bench', or set BENCH_ALLOW_RESET=1"
        )


async def drop_intake_schema(database_url: str) -> bool:
    """Drop the intake schema (tables, alembic version and all) on PostgreSQL.

    Returns False (and does nothing) for SQLite URLs. Refuses databases whose name does not
    say test or bench, unless BENCH_ALLOW_RESET=1.
    """
    if not resolve_url(database_url, SCHEMA).startswith("postgresql"):
        return False
    refuse_unless_resettable(database_url)
    engine = create_engine(database_url, service="bench", schema="public")
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
    finally:
        await engine.dispose()
    return True


def demo_keys(var_dir: Path) -> dict[str, str]:
    """The API keys `portline intake seed-demo` wrote (partner id -> key)."""
    data = json.loads((var_dir / "demo-keys.json").read_text())
    return {str(k): str(v) for k, v in data.items()}


async def prepare(env: dict[str, str], *, timeout: float = 180) -> dict[str, str]:
    """Drop (PostgreSQL), migrate and seed intake with `env`; returns the demo API keys."""
    await drop_intake_schema(env["DATABASE_URL"])
    for args in (["migrate", "intake"], ["intake", "seed-demo"]):
        await asyncio.to_thread(
            subprocess.run,
            [portline(), *args],
            env=env,
            check=True,
            timeout=timeout,
            capture_output=True,
        )
    return demo_keys(Path(env["PORTLINE_VAR_DIR"]))


def main(argv: list[str]) -> int:
    if argv != ["drop-schema"]:
        print("usage: python -m tests.bench.prepare drop-schema", file=sys.stderr)
        return 2
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        print("prepare: DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        dropped = asyncio.run(drop_intake_schema(url))
    except RuntimeError as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    print(f"schema {SCHEMA}: {'dropped' if dropped else 'not PostgreSQL, nothing to drop'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fixtures for every tier. Integration and e2e tests use the real Kafka and PostgreSQL that
`make test` starts (or that KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL name)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import create_engine

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Kubernetes tests last: `make test` builds kustomize for them in the background
    meanwhile (scripts/test.sh)."""
    deploy = ROOT / "tests" / "deploy"
    items.sort(key=lambda item: item.path.is_relative_to(deploy))


def _from_script(script: str, *args: str) -> str:
    out = subprocess.run(
        [str(ROOT / "deploy" / "local" / script), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The real broker: KAFKA_BOOTSTRAP_SERVERS, or the local one (started if needed)."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        return given
    _from_script("kafka.sh", "start")
    return "127.0.0.1:9092"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real PostgreSQL: DATABASE_URL, or the private local cluster (started if needed)."""
    given = os.environ.get("DATABASE_URL")
    if given and given.startswith("postgres"):
        return given
    _from_script("postgres.sh", "start")
    return _from_script("postgres.sh", "url").rsplit("/", 1)[0] + "/portline_test"


@pytest.fixture(scope="session")
def runtime_postgres_url(postgres_url: str) -> str:
    """The same database as the runtime role the services connect as (rows only): given by
    PORTLINE_TEST_RUNTIME_DATABASE_URL (scripts/test.sh), or deploy/local/postgres.sh's."""
    given = os.environ.get("PORTLINE_TEST_RUNTIME_DATABASE_URL")
    if given:
        return given
    url = make_url(postgres_url).set(username="portline_app", password="portline_app")
    return url.render_as_string(hide_password=False)


@pytest.fixture
async def pg_schema(postgres_url: str) -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL schema for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    engine = create_engine(postgres_url, service="admin", schema="public")
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    await engine.dispose()


@pytest.fixture
async def pg_engine(postgres_url: str, pg_schema: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url, service="test", schema=pg_schema)
    yield engine
    await engine.dispose()

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.bus import KafkaPublisher
from shared.clock import SystemClock
from shared.db import session_factory
from shared.migrations import upgrade
from shared.uow import UnitOfWork
from tests.support import TEST_TOPIC, ensure_topic, test_metadata


@pytest.fixture(scope="session")
async def test_topic(kafka_bootstrap: str) -> str:
    return await ensure_topic(kafka_bootstrap, TEST_TOPIC, partitions=3)


@pytest.fixture
async def sessions(pg_engine: AsyncEngine, pg_schema: str) -> async_sessionmaker[AsyncSession]:
    """A migrated schema (the plumbing tables) plus the test's own domain tables."""
    await upgrade(pg_engine, service="scheduler", schema=pg_schema)
    async with pg_engine.begin() as conn:
        await conn.run_sync(test_metadata.create_all)
    return session_factory(pg_engine)


@pytest.fixture
def uow_factory(sessions: async_sessionmaker[AsyncSession]) -> Callable[[], UnitOfWork]:
    return lambda: UnitOfWork(sessions, clock=SystemClock(), source="/portline/test")


@pytest.fixture
async def publisher(kafka_bootstrap: str, test_topic: str) -> AsyncIterator[KafkaPublisher]:
    pub = KafkaPublisher(kafka_bootstrap, client_id="portline-test")
    await pub.start()
    yield pub
    await pub.stop()

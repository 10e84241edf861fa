"""Partner administration: keys, facilities, disabling; what stops working and when."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake import partners
from shared.db import create_engine, session_factory
from shared.migrations import upgrade

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/intake.db", service="intake")
    await upgrade(engine, service="intake")
    sessions = session_factory(engine)
    async with sessions() as s, s.begin():
        await partners.create_program(
            s, program_id="p", name="P", timezone="America/Chicago", definition="any_drug"
        )
        await partners.create_partner(
            s, partner_id="h1", program_id="p", name="H1", kind="hospital", now=NOW
        )
        await partners.create_partner(
            s, partner_id="e1", program_id="p", name="E1", kind="ems", now=NOW
        )
    yield sessions
    await engine.dispose()


async def test_issued_key_authenticates_until_revoked(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as s, s.begin():
        issued = await partners.issue_key(s, partner_id="e1", now=NOW)
    directory = partners.PartnerDirectory(sessions, ttl_seconds=0)
    context = await directory.by_api_key(issued.api_key)
    assert context is not None
    assert (context.partner_id, context.definition, context.timezone) == (
        "e1",
        "any_drug",
        "America/Chicago",
    )
    wrong_secret = issued.api_key[:-3] + "xyz"
    assert await directory.by_api_key(wrong_secret) is None
    async with sessions() as s, s.begin():
        assert await partners.revoke_key(s, key_id=issued.key_id, now=NOW)
        assert not await partners.revoke_key(s, key_id=issued.key_id, now=NOW)
    assert await directory.by_api_key(issued.api_key) is None


async def test_facilities_are_normalized_idempotent_and_owned_by_one_partner(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as s, s.begin():
        await partners.create_partner(
            s, partner_id="h2", program_id="p", name="H2", kind="hospital", now=NOW
        )
        assert (
            await partners.add_facility(s, partner_id="h1", facility=" mercy^1.2.3^ISO") == "MERCY"
        )
        assert await partners.add_facility(s, partner_id="h1", facility="Mercy") == "MERCY"
        with pytest.raises(ValueError, match="already belongs"):
            await partners.add_facility(s, partner_id="h2", facility="MERCY")
        with pytest.raises(ValueError, match="hospital"):
            await partners.add_facility(s, partner_id="e1", facility="AMBULANCE")
    directory = partners.PartnerDirectory(sessions, ttl_seconds=0)
    found = await directory.by_facility("MERCY^9^ISO")
    assert found is not None
    assert found.partner_id == "h1"
    async with sessions() as s, s.begin():
        assert await partners.remove_facility(s, partner_id="h1", facility="mercy")
    assert await directory.by_facility("MERCY") is None


async def test_a_disabled_partner_can_neither_post_nor_send_over_mllp(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as s, s.begin():
        issued = await partners.issue_key(s, partner_id="h1", now=NOW)
        await partners.add_facility(s, partner_id="h1", facility="MERCY")
        assert await partners.set_disabled(s, partner_id="h1", disabled=True, now=NOW)
    directory = partners.PartnerDirectory(sessions, ttl_seconds=0)
    assert await directory.by_api_key(issued.api_key) is None
    assert await directory.by_facility("MERCY") is None
    async with sessions() as s, s.begin():
        await partners.set_disabled(s, partner_id="h1", disabled=False, now=NOW)
    assert await directory.by_facility("MERCY") is not None


async def test_a_partner_id_is_taken_once(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as s, s.begin():
        with pytest.raises(ValueError, match="already exists"):
            await partners.create_partner(
                s, partner_id="h1", program_id="p", name="again", kind="hospital", now=NOW
            )
        with pytest.raises(LookupError):
            await partners.create_partner(
                s, partner_id="x", program_id="nope", name="X", kind="ems", now=NOW
            )

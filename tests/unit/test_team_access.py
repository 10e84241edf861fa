"""Deactivated team members: outreach's roster refuses them at once and tells the other
services; each process's set of deactivated members; development tokens from the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from shared.cli import main
from shared.devtokens import DEV_ISSUER, DevelopmentKey
from shared.oidc import StaticKeys, TokenVerifier
from shared.settings import get_settings
from shared.team_access import TeamAccess
from tests.outreach_world import World, outreach_world


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with outreach_world(tmp_path) as w:
        yield w


async def _put(
    world: World, member: str, *, active: bool, etag: str | None = None
) -> httpx.Response:
    headers = world.auth("team_lead", "demo", "lead-ana") | ({"If-Match": etag} if etag else {})
    return await world.client.put(
        f"/v1/team/members/{member}",
        json={"display_name": f"Name of {member}", "active": active},
        headers=headers,
    )


async def test_outreach_refuses_a_deactivated_member_at_once_and_tells_the_others(
    world: World,
) -> None:
    added = await _put(world, "peer-sam", active=True)
    assert added.status_code == 200
    peer = world.auth("peer", "demo", "peer-sam")
    assert (await world.client.get("/v1/tasks", headers=peer)).status_code == 200
    assert await world.events("TeamMemberDeactivated") == []  # adding an active member: no news

    off = await _put(world, "peer-sam", active=False, etag=added.headers["ETag"])
    assert off.status_code == 200
    refused = await world.client.get("/v1/tasks", headers=peer)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "member_deactivated"
    # Whatever the role the token claims, and on every operation.
    as_lead = world.auth("team_lead", "demo", "peer-sam")
    assert (await world.client.get("/v1/team/members", headers=as_lead)).status_code == 403
    # Others are not affected, nor the same id in another program.
    assert (await world.client.get("/v1/tasks", headers=world.auth("peer"))).status_code == 200
    elsewhere = world.auth("peer", "other", "peer-sam")
    assert (await world.client.get("/v1/tasks", headers=elsewhere)).status_code == 200

    (event,) = await world.events("TeamMemberDeactivated")
    assert event["subject"] == "demo/peer-sam"  # the key: one member's events stay in order
    assert event["data"]["program_id"] == "demo"
    assert event["data"]["member_id"] == "peer-sam"
    assert set(event["data"]) == {"program_id", "member_id", "occurred_at"}  # no name, no phone

    # Renaming an inactive member changes nothing about access, and says nothing.
    renamed = await world.client.put(
        "/v1/team/members/peer-sam",
        json={"display_name": "Sam P.", "active": False},
        headers=world.auth("team_lead", "demo", "lead-ana") | {"If-Match": off.headers["ETag"]},
    )
    assert renamed.status_code == 200
    assert len(await world.events("TeamMemberDeactivated")) == 1

    back = await _put(world, "peer-sam", active=True, etag=renamed.headers["ETag"])
    assert back.status_code == 200
    assert (await world.client.get("/v1/tasks", headers=peer)).status_code == 200
    (reactivated,) = await world.events("TeamMemberReactivated")
    assert reactivated["subject"] == "demo/peer-sam"


async def test_a_member_added_inactive_is_refused_too(world: World) -> None:
    assert (await _put(world, "auth0|64f1c2", active=False)).status_code == 200
    refused = await world.client.get(
        "/v1/tasks", headers=world.auth("peer", "demo", "auth0|64f1c2")
    )
    assert refused.status_code == 403
    (event,) = await world.events("TeamMemberDeactivated")
    assert event["data"]["member_id"] == "auth0|64f1c2"


async def test_other_outreach_processes_learn_it_from_the_roster(world: World) -> None:
    """A second process over the same database (another replica) rereads the roster."""
    from services.outreach.roster import deactivated_members

    replica = TeamAccess(world.runtime.sessions, deactivated_members)
    await replica.refresh()
    assert not replica.deactivated("demo", "peer-kim")
    added = await _put(world, "peer-kim", active=True)
    await _put(world, "peer-kim", active=False, etag=added.headers["ETag"])
    await replica.refresh()
    assert replica.deactivated("demo", "peer-kim")


async def test_a_change_applied_during_a_reread_is_not_lost() -> None:
    gate = asyncio.Event()

    async def slow_read(_session: AsyncSession) -> set[tuple[str, str]]:
        await gate.wait()
        # What the database held when the read began: "early" committed before it, peer-sam's
        # change commits while the read is in flight.
        return {("demo", "early")}

    class Sessions:
        def __call__(self) -> Sessions:
            return self

        async def __aenter__(self) -> None:
            return None

        async def __aexit__(self, *_exc: object) -> None:
            return None

    access = TeamAccess(Sessions(), slow_read)  # type: ignore[arg-type]
    assert not access.loaded
    access.apply("demo", "early", active=False)
    assert not access.loaded  # a local change alone never lets anybody in or out early
    reading = asyncio.create_task(access.refresh())
    await asyncio.sleep(0)
    access.apply("demo", "peer-sam", active=False)
    gate.set()
    await reading
    assert access.loaded
    assert access.deactivated("demo", "peer-sam")
    assert access.deactivated("demo", "early")
    assert await access.readiness() == "ok"


async def test_dev_token_prints_a_token_for_every_team_service_in_development_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORTLINE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PORTLINE_ENV", "development")
    get_settings.cache_clear()
    try:
        assert main(["dev-token", "--role", "analyst", "--program", "guilford"]) == 0
        token = capsys.readouterr().out.strip()
        monkeypatch.setenv("PORTLINE_ENV", "test")
        get_settings.cache_clear()
        assert main(["dev-token", "--role", "admin"]) == 2
        assert "only in development" in capsys.readouterr().err
        assert main(["keys", "generate"]) == 0
        generated = capsys.readouterr().out
        assert "PORTLINE_SEAL_KEYS=" in generated
        assert "JWT" not in generated  # no service holds a key that can sign a team token
    finally:
        get_settings.cache_clear()
    keys = StaticKeys(DevelopmentKey.load(tmp_path).jwks)
    for audience in ("portline-scheduler", "portline-outreach", "portline-reporting"):
        verifier = TokenVerifier(
            issuers={DEV_ISSUER: keys}, audience=audience, algorithms=("EdDSA",)
        )
        principal = await verifier.verify(token)
        assert (principal.role, principal.program, principal.subject) == (
            "analyst",
            "guilford",
            "dev-user",
        )

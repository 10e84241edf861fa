"""A team member deactivated in outreach's roster loses access at once, in every service, and
gets it back when reactivated: real processes, Kafka and PostgreSQL (the services connect as
the runtime role), tokens from `portline dev-token`."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from tests.e2e.conftest import ServiceProcess, dev_token

pytestmark = pytest.mark.e2e


async def _until(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], status: int
) -> float:
    """Seconds until `url` answers `status`, polled every 50 ms for up to 30 s."""
    started = time.monotonic()
    while True:
        r = await client.get(url, headers=headers)
        if r.status_code == status:
            return time.monotonic() - started
        assert time.monotonic() - started < 30, f"{url}: still {r.status_code} {r.text}"
        await asyncio.sleep(0.05)


async def test_a_deactivated_member_is_refused_by_outreach_and_the_scheduler(
    scheduler_process: ServiceProcess, outreach_process: ServiceProcess
) -> None:
    env = outreach_process.env
    member = f"peer-{uuid.uuid4().hex[:8]}"
    lead = await dev_token(env, "team_lead", f"lead-{uuid.uuid4().hex[:8]}")
    peer = await dev_token(env, "peer", member)
    queue = f"{outreach_process.http}/v1/tasks"
    policy = f"{scheduler_process.http}/v1/policy"
    roster = f"{outreach_process.http}/v1/team/members/{member}"

    async with httpx.AsyncClient(timeout=10) as client:
        added = await client.put(roster, json={"display_name": "Sam P."}, headers=lead)
        assert added.status_code == 200, added.text
        assert (await client.get(queue, headers=peer)).status_code == 200
        assert (await client.get(policy, headers=peer)).status_code == 200

        deactivated = await client.put(
            roster,
            json={"display_name": "Sam P.", "active": False},
            headers=lead | {"If-Match": added.headers["ETag"]},
        )
        assert deactivated.status_code == 200, deactivated.text
        assert deactivated.json()["active"] is False

        # Outreach, which owns the roster, refuses the very next request.
        refused = await client.get(queue, headers=peer)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "member_deactivated"
        # The scheduler, once the event has crossed Kafka and been read.
        took = await _until(client, policy, peer, 403)
        assert took < 15, f"the scheduler took {took:.1f} s"
        refused = await client.get(policy, headers=peer)
        assert refused.json()["error"]["code"] == "member_deactivated"
        # A fresh token changes nothing: the member is refused, not the token.
        fresh = await dev_token(env, "peer", member)
        assert (await client.get(queue, headers=fresh)).status_code == 403
        # Nobody else is affected.
        assert (await client.get(queue, headers=lead)).status_code == 200
        assert (await client.get(policy, headers=lead)).status_code == 200

        reactivated = await client.put(
            roster,
            json={"display_name": "Sam P.", "active": True},
            headers=lead | {"If-Match": deactivated.headers["ETag"]},
        )
        assert reactivated.status_code == 200, reactivated.text
        assert (await client.get(queue, headers=peer)).status_code == 200
        await _until(client, policy, peer, 200)

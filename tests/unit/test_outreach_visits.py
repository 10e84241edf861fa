"""In-person visits on SQLite: scheduling (windows, deputy policy), moving, outcomes,
cancelling, listing, and the deputy's restricted routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from services.outreach.models import VISIT, VISIT_EVENT
from shared.events.scheduler import TaskKind
from tests.outreach_world import Seeded, World, outreach_world

PLACE = "bench by the Oak Park fountain"
START = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with outreach_world(tmp_path) as w:
        for member in ("peer-1", "peer-2", "deputy-1", "deputy-2"):
            await w.member(member)
        yield w


def _peer(world: World, subject: str = "peer-1") -> dict[str, str]:
    return world.auth("peer", subject=subject)


def _deputy(world: World, subject: str = "deputy-1") -> dict[str, str]:
    return world.auth("deputy", subject=subject)


def _body(seeded: Seeded, start: datetime = START, hours: float = 1, **extra: Any) -> dict:
    return {
        "task_id": str(seeded.task_id),
        "window_start": start.isoformat(),
        "window_end": (start + timedelta(hours=hours)).isoformat(),
        "meeting_place": PLACE,
        **extra,
    }


async def _schedule(world: World, seeded: Seeded, **extra: Any) -> httpx.Response:
    r = await world.client.post("/v1/visits", json=_body(seeded, **extra), headers=_peer(world))
    assert r.status_code == 201, r.text
    return r


async def _visit_task(world: World, deputy: str = "never") -> Seeded:
    return await world.seed_case(kind=TaskKind.IN_PERSON_VISIT, deputy=deputy)


def _error(r: httpx.Response) -> str:
    return r.json()["error"]["code"]


# -- scheduling ------------------------------------------------------------------------------


async def test_schedule_visit_publishes_and_seals_the_meeting_place(world: World) -> None:
    seeded = await _visit_task(world)
    r = await _schedule(world, seeded)
    visit = r.json()
    assert r.headers["ETag"] == '"1"'
    assert visit["status"] == "scheduled"
    assert visit["peer_id"] == "peer-1"
    assert visit["meeting_place"] == PLACE
    assert visit["with_deputy"] is False
    assert visit["deputy_id"] is None
    (scheduled,) = await world.events("VisitScheduled")
    assert scheduled["data"]["visit_id"] == visit["id"]
    assert scheduled["data"]["task_id"] == str(seeded.task_id)
    assert scheduled["data"]["with_deputy"] is False
    assert "Oak Park" not in str(await world.outbox())
    async with world.runtime.sessions() as s:
        sealed = (await s.execute(sa.select(VISIT.c.meeting_place_sealed))).scalar_one()
    assert "Oak Park" not in sealed
    again = await world.client.get(f"/v1/visits/{visit['id']}", headers=_peer(world))
    assert again.json()["meeting_place"] == PLACE


async def test_remote_contact_task_takes_no_visit(world: World) -> None:
    seeded = await world.seed_case(kind=TaskKind.REMOTE_CONTACT)
    r = await world.client.post("/v1/visits", json=_body(seeded), headers=_peer(world))
    assert r.status_code == 422
    assert _error(r) == "not_a_visit_task"
    assert await world.events("VisitScheduled") == []


@pytest.mark.parametrize("hours", [0, -1, 8.5])
async def test_window_must_be_positive_and_at_most_eight_hours(world: World, hours: float) -> None:
    seeded = await _visit_task(world)
    r = await world.client.post("/v1/visits", json=_body(seeded, hours=hours), headers=_peer(world))
    assert r.status_code == 422
    assert _error(r) == "invalid_window"


async def test_an_eight_hour_window_is_allowed(world: World) -> None:
    seeded = await _visit_task(world)
    r = await _schedule(world, seeded, hours=8)
    assert r.json()["window_end"] != r.json()["window_start"]


async def test_policy_never_refuses_a_deputy(world: World) -> None:
    seeded = await _visit_task(world, deputy="never")
    r = await world.client.post("/v1/visits", json=_body(seeded, deputy=True), headers=_peer(world))
    assert r.status_code == 422
    assert _error(r) == "deputy_not_allowed"


async def test_policy_on_request_sends_a_deputy_when_asked(world: World) -> None:
    seeded = await _visit_task(world, deputy="on_request")
    without = await _schedule(world, seeded)
    assert without.json()["with_deputy"] is False
    later = START + timedelta(hours=2)  # one person, one visit at a time
    asked = await _schedule(world, seeded, start=later, deputy=True, deputy_id="deputy-1")
    assert asked.json()["with_deputy"] is True
    assert asked.json()["deputy_id"] == "deputy-1"
    flags = [e["data"]["with_deputy"] for e in await world.events("VisitScheduled")]
    assert flags == [False, True]


async def test_policy_always_sends_a_deputy_unasked(world: World) -> None:
    seeded = await _visit_task(world, deputy="always")
    r = await _schedule(world, seeded)
    assert r.json()["with_deputy"] is True
    r = await _schedule(world, seeded, start=START + timedelta(hours=2), deputy=False)
    assert r.json()["with_deputy"] is True


async def test_deputy_id_needs_a_deputy_first(world: World) -> None:
    seeded = await _visit_task(world, deputy="on_request")
    r = await world.client.post(
        "/v1/visits", json=_body(seeded, deputy_id="deputy-1"), headers=_peer(world)
    )
    assert r.status_code == 422
    assert _error(r) == "deputy_not_requested"


@pytest.mark.parametrize("extra", [{"peer_id": "nobody"}, {"deputy": True, "deputy_id": "nobody"}])
async def test_unknown_peer_or_deputy_is_refused(world: World, extra: dict) -> None:
    seeded = await _visit_task(world, deputy="on_request")
    r = await world.client.post("/v1/visits", json=_body(seeded, **extra), headers=_peer(world))
    assert r.status_code == 422
    assert _error(r) == "unknown_team_member"
    assert await world.events("VisitScheduled") == []


async def test_a_member_of_another_program_is_unknown(world: World) -> None:
    await world.member("peer-x", program="other")
    seeded = await _visit_task(world)
    r = await world.client.post(
        "/v1/visits", json=_body(seeded, peer_id="peer-x"), headers=_peer(world)
    )
    assert r.status_code == 422
    assert _error(r) == "unknown_team_member"


# -- moving, outcomes, cancelling ------------------------------------------------------------


async def test_patch_needs_if_match_and_moves_the_window(world: World) -> None:
    seeded = await _visit_task(world)
    visit = await _schedule(world, seeded)
    url = f"/v1/visits/{visit.json()['id']}"
    later = START + timedelta(hours=3)
    move = {
        "window_start": later.isoformat(),
        "window_end": (later + timedelta(hours=2)).isoformat(),
    }
    r = await world.client.patch(url, json=move, headers=_peer(world))
    assert r.status_code == 428
    assert _error(r) == "precondition_required"
    r = await world.client.patch(url, json=move, headers=_peer(world) | {"If-Match": '"7"'})
    assert r.status_code == 412
    assert _error(r) == "version_mismatch"
    r = await world.client.patch(
        url, json=move, headers=_peer(world) | {"If-Match": visit.headers["ETag"]}
    )
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == '"2"'
    assert datetime.fromisoformat(r.json()["window_start"]) == later
    first, moved = await world.events("VisitScheduled")
    assert datetime.fromisoformat(moved["data"]["window_start"]) == later
    assert moved["data"]["window_end"] != first["data"]["window_end"]
    too_long = {"window_end": (later + timedelta(hours=9)).isoformat()}
    r = await world.client.patch(url, json=too_long, headers=_peer(world) | {"If-Match": '"2"'})
    assert r.status_code == 422
    assert _error(r) == "invalid_window"


async def test_changing_only_the_place_publishes_no_new_schedule(world: World) -> None:
    seeded = await _visit_task(world)
    visit = await _schedule(world, seeded)
    r = await world.client.patch(
        f"/v1/visits/{visit.json()['id']}",
        json={"meeting_place": "the corner store"},
        headers=_peer(world) | {"If-Match": '"1"'},
    )
    assert r.status_code == 200, r.text
    assert r.json()["meeting_place"] == "the corner store"
    assert len(await world.events("VisitScheduled")) == 1


async def test_reached_completes_the_visit_with_a_contact(world: World) -> None:
    seeded = await _visit_task(world)
    visit = await _schedule(world, seeded)
    url = f"/v1/visits/{visit.json()['id']}/outcome"
    r = await world.client.post(url, json={"outcome": "reached"}, headers=_peer(world))
    assert r.status_code == 428
    r = await world.client.post(
        url, json={"outcome": "reached"}, headers=_peer(world) | {"If-Match": '"1"'}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
    assert r.json()["outcome"] == "reached"
    (completed,) = await world.events("VisitCompleted")
    assert completed["data"]["reached"] is True
    (attempt,) = await world.events("AttemptLogged")
    assert attempt["data"]["channel"] == "in_person"
    assert attempt["data"]["outcome"] == "reached"
    (contact,) = await world.events("ContactMade")
    assert contact["data"]["channel"] == "in_person"
    # a completed visit takes no second outcome
    r = await world.client.post(
        url, json={"outcome": "not_found"}, headers=_peer(world) | {"If-Match": '"2"'}
    )
    assert r.status_code == 409
    assert _error(r) == "visit_closed"
    assert len(await world.events("VisitCompleted")) == 1


async def test_not_found_is_a_failed_in_person_attempt(world: World) -> None:
    seeded = await _visit_task(world)
    visit = await _schedule(world, seeded)
    r = await world.client.post(
        f"/v1/visits/{visit.json()['id']}/outcome",
        json={"outcome": "not_found", "notes": "nobody at the door"},
        headers=_peer(world) | {"If-Match": '"1"'},
    )
    assert r.status_code == 200, r.text
    (completed,) = await world.events("VisitCompleted")
    assert completed["data"]["reached"] is False
    (attempt,) = await world.events("AttemptLogged")
    assert attempt["data"]["channel"] == "in_person"
    assert attempt["data"]["outcome"] == "not_found"
    assert await world.events("ContactMade") == []
    assert "door" not in str(await world.outbox())
    async with world.runtime.sessions() as s:
        sealed = (await s.execute(sa.select(VISIT.c.notes_sealed))).scalar_one()
    assert "door" not in sealed


async def test_cancel_needs_if_match_and_closes_the_visit(world: World) -> None:
    seeded = await _visit_task(world)
    visit = await _schedule(world, seeded)
    url = f"/v1/visits/{visit.json()['id']}"
    r = await world.client.post(f"{url}/cancel", headers=_peer(world))
    assert r.status_code == 428
    r = await world.client.post(f"{url}/cancel", headers=_peer(world) | {"If-Match": '"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.headers["ETag"] == '"2"'
    r = await world.client.post(
        f"{url}/outcome", json={"outcome": "reached"}, headers=_peer(world) | {"If-Match": '"2"'}
    )
    assert r.status_code == 409
    assert _error(r) == "visit_closed"
    r = await world.client.patch(
        url, json={"meeting_place": "x"}, headers=_peer(world) | {"If-Match": '"2"'}
    )
    assert r.status_code == 409
    assert _error(r) == "visit_closed"


# -- listing ---------------------------------------------------------------------------------


async def test_list_filters_by_status_and_by_mine(world: World) -> None:
    seeded = await _visit_task(world)
    mine = await _schedule(world, seeded)
    theirs = await _schedule(world, seeded, start=START + timedelta(hours=2), peer_id="peer-2")
    done = await _schedule(world, seeded, start=START + timedelta(hours=4))
    await world.client.post(
        f"/v1/visits/{done.json()['id']}/cancel", headers=_peer(world) | {"If-Match": '"1"'}
    )
    r = await world.client.get("/v1/visits", headers=_peer(world))
    assert r.status_code == 200, r.text
    assert [v["id"] for v in r.json()["items"]] == [mine.json()["id"], theirs.json()["id"]]
    r = await world.client.get("/v1/visits", params={"mine": "true"}, headers=_peer(world))
    assert [v["id"] for v in r.json()["items"]] == [mine.json()["id"]]
    r = await world.client.get("/v1/visits", params={"status": "cancelled"}, headers=_peer(world))
    assert [v["id"] for v in r.json()["items"]] == [done.json()["id"]]
    other = await world.client.get("/v1/visits", headers=world.auth("peer", program="other"))
    assert other.json()["items"] == []


async def test_list_pages_with_next_cursor(world: World) -> None:
    seeded = await _visit_task(world)
    ids = [
        (await _schedule(world, seeded, start=START + timedelta(hours=i))).json()["id"]
        for i in range(3)
    ]
    seen: list[str] = []
    params: dict[str, str] = {"limit": "2"}
    for _ in range(len(ids) + 1):  # bounded: a cursor that is ignored must not loop forever
        r = await world.client.get("/v1/visits", params=params, headers=_peer(world))
        assert r.status_code == 200, r.text
        seen += [v["id"] for v in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
        params = {"limit": "2", "cursor": cursor}
    assert seen == ids


# -- the deputy's routes ---------------------------------------------------------------------


async def _deputy_visit(world: World, deputy_id: str = "deputy-1") -> str:
    seeded = await _visit_task(world, deputy="always")
    r = await _schedule(world, seeded, deputy_id=deputy_id)
    return r.json()["id"]


async def test_deputy_sees_only_their_own_visits(world: World) -> None:
    visit_id = await _deputy_visit(world)
    r = await world.client.get("/v1/deputy/visits", headers=_deputy(world))
    assert r.status_code == 200, r.text
    (item,) = r.json()["items"]
    assert item["id"] == visit_id
    assert item["meeting_place"] == PLACE
    assert item["peer"] == {"name": "Name of peer-1", "phone": "+13365550199"}
    assert "Jordan" not in r.text
    assert "case_id" not in item
    r = await world.client.get(f"/v1/deputy/visits/{visit_id}", headers=_deputy(world))
    assert r.status_code == 200
    assert r.json()["id"] == visit_id
    other = _deputy(world, "deputy-2")
    r = await world.client.get("/v1/deputy/visits", headers=other)
    assert r.json()["items"] == []
    r = await world.client.get(f"/v1/deputy/visits/{visit_id}", headers=other)
    assert r.status_code == 404
    r = await world.client.post(
        f"/v1/deputy/visits/{visit_id}/status", json={"status": "arrived"}, headers=other
    )
    assert r.status_code == 404


async def test_deputy_marks_arrived_departed_and_a_safety_concern(world: World) -> None:
    visit_id = await _deputy_visit(world)
    url = f"/v1/deputy/visits/{visit_id}/status"
    r = await world.client.post(url, json={"status": "arrived"}, headers=_deputy(world))
    assert r.status_code == 200, r.text
    assert r.json()["deputy_status"] == "arrived"
    assert r.json()["safety_concern"] is False
    r = await world.client.post(
        url,
        json={"status": "safety_concern", "note": "dog loose in the yard"},
        headers=_deputy(world),
    )
    assert r.status_code == 200, r.text
    assert r.json()["safety_concern"] is True
    assert r.json()["deputy_status"] == "arrived"
    r = await world.client.post(url, json={"status": "departed"}, headers=_deputy(world))
    assert r.json()["deputy_status"] == "departed"
    assert r.json()["safety_concern"] is True
    peer_view = await world.client.get(f"/v1/visits/{visit_id}", headers=_peer(world))
    assert peer_view.json()["safety_concern"] is True
    assert peer_view.json()["deputy_status"] == "departed"
    async with world.runtime.sessions() as s:
        rows = list(await s.execute(sa.select(VISIT_EVENT).order_by(VISIT_EVENT.c.id)))
    assert [e.kind for e in rows] == ["arrived", "safety_concern", "departed"]
    assert {e.actor_id for e in rows} == {"deputy-1"}
    assert rows[1].note_sealed is not None
    assert "dog" not in rows[1].note_sealed
    assert world.app.state.sealer.open(rows[1].note_sealed, context="outreach.note") == (
        "dog loose in the yard"
    )


async def test_a_cancelled_visit_refuses_deputy_marks(world: World) -> None:
    visit_id = await _deputy_visit(world)
    r = await world.client.post(
        f"/v1/visits/{visit_id}/cancel", headers=_peer(world) | {"If-Match": '"1"'}
    )
    assert r.status_code == 200, r.text
    r = await world.client.post(
        f"/v1/deputy/visits/{visit_id}/status", json={"status": "arrived"}, headers=_deputy(world)
    )
    assert r.status_code == 409
    assert _error(r) == "visit_closed"
    r = await world.client.get("/v1/deputy/visits", headers=_deputy(world))
    assert r.json()["items"] == []


@pytest.mark.parametrize("role", ["peer", "team_lead"])
async def test_peers_and_leads_may_not_use_deputy_routes(world: World, role: str) -> None:
    visit_id = await _deputy_visit(world)
    headers = world.auth(role)
    r = await world.client.get("/v1/deputy/visits", headers=headers)
    assert r.status_code == 403
    assert _error(r) == "forbidden_role"
    r = await world.client.post(
        f"/v1/deputy/visits/{visit_id}/status", json={"status": "arrived"}, headers=headers
    )
    assert r.status_code == 403


async def test_deputies_may_not_use_the_peer_routes(world: World) -> None:
    visit_id = await _deputy_visit(world)
    r = await world.client.get(f"/v1/visits/{visit_id}", headers=_deputy(world))
    assert r.status_code == 403
    r = await world.client.get("/v1/visits", headers=_deputy(world))
    assert r.status_code == 403

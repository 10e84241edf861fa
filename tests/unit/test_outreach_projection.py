"""Outreach's projection of the scheduler's cases and tasks and intake's reports, fed through
the real handlers and observed through the team API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from shared.envelope import Event
from shared.events import (
    CaseClosed,
    CaseOpened,
    Consent,
    EpisodeOpened,
    Location,
    OverdoseReported,
    ReportLinked,
    TaskCancelled,
    TaskCompleted,
    TaskDue,
    TaskExpired,
    TaskOverdue,
    TaskScheduled,
)
from shared.events.scheduler import TaskKind
from tests.outreach_world import Seeded, World, outreach_world

NOW = datetime.now(UTC)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with outreach_world(tmp_path) as w:
        await w.member("peer-1")
        yield w


def _peer(world: World) -> dict[str, str]:
    return world.auth("peer", subject="peer-1")


async def _task(world: World, task_id: object) -> httpx.Response:
    r = await world.client.get(f"/v1/tasks/{task_id}", headers=_peer(world))
    assert r.status_code == 200, r.text
    return r


async def _queue(world: World, status: str | None = None) -> list[dict]:
    params = {"status": status} if status else {}
    r = await world.client.get("/v1/tasks", params=params, headers=_peer(world))
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def _case(world: World, case_id: object) -> dict:
    r = await world.client.get(f"/v1/cases/{case_id}", headers=_peer(world))
    assert r.status_code == 200, r.text
    return r.json()


async def _feed(world: World, seeded: Seeded, event: Event) -> None:
    await world.feed(event, str(seeded.case_id))


def _closing(kind: str, seeded: Seeded) -> Event:
    common = {"case_id": seeded.case_id, "program_id": "demo", "task_id": seeded.task_id}
    if kind == "expired":
        return TaskExpired(**common, fired_at=NOW)
    if kind == "cancelled":
        return TaskCancelled(**common, reason="case_closed", cancelled_at=NOW)
    return TaskCompleted(**common, outcome="contact_made", completed_at=NOW)


def _overdose(
    world: World, report_id: uuid.UUID, name: tuple[str, str], revision: int = 1
) -> OverdoseReported:
    sealer = world.app.state.sealer
    identity = {"given": name[0], "family": name[1], "phones": ["336-555-0123"]}
    return OverdoseReported(
        report_id=report_id,
        revision=revision,
        program_id="demo",
        source_kind="ed",
        source_org="demo-ed",
        source_ref="MSG-1",
        incident_at=NOW - timedelta(hours=3),
        received_at=NOW - timedelta(hours=2),
        identity=sealer.seal_json(identity, context="identity"),
        deidentified=False,
        location=Location(county="Guilford", state="NC"),
        opioid=True,
        any_drug=True,
        reasons=[],
        consent=Consent.ACCEPTED,
    )


# -- task stages and closing -----------------------------------------------------------------


async def test_timers_move_the_stage_and_bump_the_version(world: World) -> None:
    seeded = await world.seed_case()
    before = await _task(world, seeded.task_id)
    assert before.json()["stage"] == "scheduled"
    common = {"case_id": seeded.case_id, "program_id": "demo", "task_id": seeded.task_id}
    await _feed(world, seeded, TaskDue(**common, fired_at=NOW))
    due = await _task(world, seeded.task_id)
    assert due.json()["stage"] == "due"
    assert due.json()["status"] == "open"
    assert due.json()["version"] == before.json()["version"] + 1
    assert due.headers["ETag"] != before.headers["ETag"]
    await _feed(world, seeded, TaskOverdue(**common, fired_at=NOW))
    overdue = await _task(world, seeded.task_id)
    assert overdue.json()["stage"] == "overdue"
    assert overdue.headers["ETag"] not in (before.headers["ETag"], due.headers["ETag"])
    # an edit with the ETag read before the timer fired is told to re-read
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/claim",
        headers=_peer(world) | {"If-Match": due.headers["ETag"]},
    )
    assert r.status_code == 412


@pytest.mark.parametrize("status", ["expired", "cancelled", "completed"])
async def test_closing_events_close_the_task(world: World, status: str) -> None:
    seeded = await world.seed_case()
    before = await _task(world, seeded.task_id)
    await _feed(world, seeded, _closing(status, seeded))
    after = await _task(world, seeded.task_id)
    assert after.json()["status"] == status
    assert after.headers["ETag"] != before.headers["ETag"]
    assert await _queue(world) == []
    assert [t["id"] for t in await _queue(world, status)] == [str(seeded.task_id)]
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/claim",
        headers=_peer(world) | {"If-Match": after.headers["ETag"]},
    )
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "task_closed"


@pytest.mark.parametrize(
    ("first", "later"),
    [("completed", "expired"), ("expired", "cancelled"), ("cancelled", "completed")],
)
async def test_a_closed_task_stays_closed(world: World, first: str, later: str) -> None:
    seeded = await world.seed_case()
    await _feed(world, seeded, _closing(first, seeded))
    closed = await _task(world, seeded.task_id)
    await _feed(world, seeded, _closing(later, seeded))
    after = await _task(world, seeded.task_id)
    assert after.json()["status"] == first
    assert after.headers["ETag"] == closed.headers["ETag"]
    assert await _queue(world, later) == []


async def test_duplicate_task_scheduled_is_idempotent(world: World) -> None:
    seeded = await world.seed_case()
    before = await _task(world, seeded.task_id)
    await _feed(
        world,
        seeded,
        TaskScheduled(
            case_id=seeded.case_id,
            program_id="demo",
            task_id=seeded.task_id,
            episode_id=seeded.episode_id,
            kind=TaskKind.REMOTE_CONTACT,
            priority=9,
            window_opens_at=NOW,
            due_at=NOW + timedelta(hours=1),
            expires_at=NOW + timedelta(hours=2),
            policy_version="test",
        ),
    )
    (task,) = await _queue(world)
    assert task["priority"] == before.json()["priority"]
    assert task["due_at"] == before.json()["due_at"]
    assert task["version"] == before.json()["version"]


# -- cases -----------------------------------------------------------------------------------


async def test_case_closed_closes_the_case_and_cancels_scheduled_visits(world: World) -> None:
    seeded = await world.seed_case(kind=TaskKind.IN_PERSON_VISIT)
    start = NOW + timedelta(days=1)
    r = await world.client.post(
        "/v1/visits",
        json={
            "task_id": str(seeded.task_id),
            "window_start": start.isoformat(),
            "window_end": (start + timedelta(hours=1)).isoformat(),
            "meeting_place": "the library steps",
        },
        headers=_peer(world),
    )
    assert r.status_code == 201, r.text
    visit_id = r.json()["id"]
    before = await world.client.get(f"/v1/cases/{seeded.case_id}", headers=_peer(world))
    await _feed(
        world,
        seeded,
        CaseClosed(case_id=seeded.case_id, program_id="demo", reason="expired", closed_at=NOW),
    )
    after = await world.client.get(f"/v1/cases/{seeded.case_id}", headers=_peer(world))
    assert after.json()["status"] == "closed"
    assert after.json()["close_reason"] == "expired"
    assert after.headers["ETag"] != before.headers["ETag"]
    visit = await world.client.get(f"/v1/visits/{visit_id}", headers=_peer(world))
    assert visit.json()["status"] == "cancelled"
    assert visit.json()["version"] == 2
    r = await world.client.get("/v1/visits", headers=_peer(world))
    assert r.json()["items"] == []
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/attempts",
        json={"channel": "phone", "outcome": "no_answer"},
        headers=_peer(world),
    )
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "case_closed"


async def test_case_closed_keeps_a_reason_already_given(world: World) -> None:
    seeded = await world.seed_case()
    lead = world.auth("team_lead", subject="lead")
    case = await world.client.get(f"/v1/cases/{seeded.case_id}", headers=lead)
    r = await world.client.post(
        f"/v1/cases/{seeded.case_id}/conclusion",
        json={"reason": "engaged"},
        headers=lead | {"If-Match": case.headers["ETag"]},
    )
    assert r.status_code == 200, r.text
    await _feed(
        world,
        seeded,
        CaseClosed(case_id=seeded.case_id, program_id="demo", reason="concluded", closed_at=NOW),
    )
    assert (await _case(world, seeded.case_id))["close_reason"] == "engaged"


async def test_a_repeat_overdose_clears_a_decline(world: World) -> None:
    seeded = await world.seed_case()
    r = await world.client.post(
        f"/v1/cases/{seeded.case_id}/decline", json={}, headers=_peer(world)
    )
    assert r.status_code == 200, r.text
    assert r.json()["declined"] is True
    declined_version = r.json()["version"]

    def episode(repeat: bool) -> EpisodeOpened:
        return EpisodeOpened(
            case_id=seeded.case_id,
            program_id="demo",
            episode_id=uuid.uuid4(),
            person_id=uuid.uuid4(),
            incident_at=NOW,
            repeat=repeat,
        )

    await _feed(world, seeded, episode(repeat=False))
    assert (await _case(world, seeded.case_id))["declined"] is True
    await _feed(world, seeded, episode(repeat=True))
    case = await _case(world, seeded.case_id)
    assert case["declined"] is False
    assert case["version"] > declined_version
    assert [e["repeat"] for e in case["episodes"]] == [False, False, True]


async def test_a_repeat_overdose_does_not_lift_do_not_contact(world: World) -> None:
    seeded = await world.seed_case()
    r = await world.client.post(
        f"/v1/cases/{seeded.case_id}/do-not-contact", json={}, headers=_peer(world)
    )
    assert r.status_code == 200, r.text
    await _feed(
        world,
        seeded,
        EpisodeOpened(
            case_id=seeded.case_id,
            program_id="demo",
            episode_id=uuid.uuid4(),
            person_id=uuid.uuid4(),
            incident_at=NOW,
            repeat=True,
        ),
    )
    assert (await _case(world, seeded.case_id))["do_not_contact"] is True


# -- reports ---------------------------------------------------------------------------------


async def test_a_higher_revision_replaces_the_identity_a_lower_one_does_not(
    world: World,
) -> None:
    seeded = await world.seed_case()
    (task,) = await _queue(world)
    assert task["person"]["name"] == "Jordan Rivera"
    await world.feed(_overdose(world, seeded.report_id, ("Jordan", "Rivers"), 2), "person")
    (task,) = await _queue(world)
    assert task["person"]["name"] == "Jordan Rivers"
    assert task["person"]["phones"] == ["336-555-0123"]
    await world.feed(_overdose(world, seeded.report_id, ("Old", "Name"), 1), "person")
    (task,) = await _queue(world)
    assert task["person"]["name"] == "Jordan Rivers"


async def test_a_link_before_its_report_shows_the_person_once_both_arrived(
    world: World,
) -> None:
    case_id, person_id, episode_id, report_id, task_id = (uuid.uuid4() for _ in range(5))
    subject = str(case_id)
    common = {"case_id": case_id, "program_id": "demo"}
    await world.feed(CaseOpened(**common, person_id=person_id, opened_at=NOW), subject)
    await world.feed(
        EpisodeOpened(
            **common, episode_id=episode_id, person_id=person_id, incident_at=NOW, repeat=False
        ),
        subject,
    )
    await world.feed(
        ReportLinked(**common, report_id=report_id, episode_id=episode_id, match="exact"), subject
    )
    await world.feed(
        TaskScheduled(
            **common,
            task_id=task_id,
            episode_id=episode_id,
            kind=TaskKind.REMOTE_CONTACT,
            priority=2,
            window_opens_at=NOW,
            due_at=NOW + timedelta(hours=24),
            expires_at=NOW + timedelta(hours=72),
            policy_version="test",
        ),
        subject,
    )
    (task,) = await _queue(world)
    assert task["person"]["name"] is None
    await world.feed(_overdose(world, report_id, ("Sam", "Okafor")), "person")
    (task,) = await _queue(world)
    assert task["id"] == str(task_id)
    assert task["person"]["name"] == "Sam Okafor"
    assert task["overdose"]["county"] == "Guilford"
    assert task["overdose"]["source_kind"] == "ed"


async def test_a_late_report_s_task_and_episode_show_late_in_the_queue_and_case(
    world: World,
) -> None:
    case_id, person_id, episode_id, report_id, task_id = (uuid.uuid4() for _ in range(5))
    subject = str(case_id)
    common = {"case_id": case_id, "program_id": "demo"}
    incident, received = NOW - timedelta(days=10), NOW - timedelta(minutes=5)
    await world.feed(CaseOpened(**common, person_id=person_id, opened_at=NOW), subject)
    await world.feed(
        EpisodeOpened(
            **common,
            episode_id=episode_id,
            person_id=person_id,
            incident_at=incident,
            repeat=False,
            received_at=received,
            windows_from=received,
            late=True,
            reasons=["late_report_windows_from_receipt", "remote_contact_scheduled"],
        ),
        subject,
    )
    await world.feed(
        ReportLinked(
            **common,
            report_id=report_id,
            episode_id=episode_id,
            match="new_person",
            received_at=received,
            late=True,
        ),
        subject,
    )
    await world.feed(
        TaskScheduled(
            **common,
            task_id=task_id,
            episode_id=episode_id,
            kind=TaskKind.REMOTE_CONTACT,
            priority=2,
            window_opens_at=received,
            due_at=received + timedelta(hours=24),
            expires_at=received + timedelta(hours=72),
            policy_version="test",
            late=True,
        ),
        subject,
    )
    (task,) = await _queue(world)
    assert task["late"] is True
    case = await _case(world, case_id)
    assert [t["late"] for t in case["tasks"]] == [True]
    (episode,) = case["episodes"]
    assert episode["late"] is True
    assert datetime.fromisoformat(episode["received_at"]) == received

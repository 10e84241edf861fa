"""The team API on SQLite: the queue, claims, attempts, services, referrals, decisions,
visits, audit. Cases arrive through outreach's real projection handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.outreach.models import ATTEMPT, AUDIT
from shared.events import TaskCompleted
from shared.events.scheduler import TaskKind
from shared.sealing import Keyring, Sealer
from tests.outreach_world import World, outreach_world


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with outreach_world(tmp_path) as w:
        for member in ("peer-1", "peer-2", "deputy-1"):
            await w.member(member)
        yield w


async def _get_task(world: World, task_id: object, role: str = "peer", subject: str = "peer-1"):
    r = await world.client.get(f"/v1/tasks/{task_id}", headers=world.auth(role, subject=subject))
    assert r.status_code == 200, r.text
    return r


async def test_queue_shows_what_a_peer_needs_and_nothing_more(world: World) -> None:
    seeded = await world.seed_case()
    r = await world.client.get("/v1/tasks", headers=world.auth("peer", subject="peer-1"))
    assert r.status_code == 200, r.text
    (task,) = r.json()["items"]
    assert task["id"] == str(seeded.task_id)
    assert task["person"] == {
        "name": "Jordan Rivera",
        "phones": ["336-555-0100"],
        "address": "12 Elm St, Greensboro, 27401",
        "language": "es",
    }
    assert task["overdose"]["county"] == "Guilford"
    assert task["overdose"]["address"] == "12 Elm St, Greensboro"
    text = r.text
    assert "1984" not in text
    assert "MRN-99" not in text
    assert "dob" not in text
    assert "mrn" not in text


async def test_a_report_sealed_under_a_key_outreach_lacks_does_not_break_the_queue(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A key id this service does not hold (a misconfigured rotation, another deployment's
    data) shows that person as unknown; the queue is still served, and the log says why
    without any identifier."""
    other = Sealer(Keyring({"elsewhere": bytes(range(32))}, active="elsewhere"))
    world.seal_with(other)
    lost = await world.seed_case(name=("Morgan", "Lost"))
    world.seal_with(None)
    kept = await world.seed_case()
    r = await world.client.get("/v1/tasks", headers=world.auth("peer", subject="peer-1"))
    assert r.status_code == 200, r.text
    by_id = {t["id"]: t for t in r.json()["items"]}
    assert by_id[str(lost.task_id)]["person"]["name"] is None
    assert by_id[str(lost.task_id)]["overdose"]["address"] is None
    assert by_id[str(kept.task_id)]["person"]["name"] == "Jordan Rivera"
    assert "Lost" not in caplog.text
    assert "could not be opened: UnknownKeyError" in caplog.text


async def test_queue_is_sorted_by_due_time_then_priority_and_pages(world: World) -> None:
    late = await world.seed_case(due_in=timedelta(hours=30))
    soon_low = await world.seed_case(due_in=timedelta(hours=5), priority=1)
    soon_high = await world.seed_case(due_in=timedelta(hours=5), priority=3)
    # the same due time for the two "soon" tasks would need equal timestamps; order by due first
    seen = []
    cursor = None
    while True:
        params = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
        r = await world.client.get("/v1/tasks", params=params, headers=world.auth("peer"))
        assert r.status_code == 200, r.text
        seen += [t["id"] for t in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen[-1] == str(late.task_id)
    assert set(seen[:2]) == {str(soon_low.task_id), str(soon_high.task_id)}
    bad = await world.client.get("/v1/tasks?cursor=nope", headers=world.auth("peer"))
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_cursor"


async def test_other_programs_tasks_are_invisible(world: World) -> None:
    mine = await world.seed_case("demo")
    theirs = await world.seed_case("other")
    r = await world.client.get("/v1/tasks", headers=world.auth("peer"))
    assert [t["id"] for t in r.json()["items"]] == [str(mine.task_id)]
    r = await world.client.get(f"/v1/tasks/{theirs.task_id}", headers=world.auth("peer"))
    assert r.status_code == 404


async def test_claim_needs_if_match_and_is_exclusive(world: World) -> None:
    seeded = await world.seed_case()
    url = f"/v1/tasks/{seeded.task_id}/claim"
    peer1 = world.auth("peer", subject="peer-1")
    r = await world.client.post(url, headers=peer1)
    assert r.status_code == 428
    assert r.json()["error"]["code"] == "precondition_required"
    r = await world.client.post(url, headers=peer1 | {"If-Match": '"99"'})
    assert r.status_code == 412
    assert r.json()["error"]["code"] == "version_mismatch"
    etag = (await _get_task(world, seeded.task_id)).headers["ETag"]
    r = await world.client.post(url, headers=peer1 | {"If-Match": etag})
    assert r.status_code == 200, r.text
    assert r.json()["assignee_id"] == "peer-1"
    assert r.headers["ETag"] != etag
    peer2 = world.auth("peer", subject="peer-2")
    r = await world.client.post(url, headers=peer2 | {"If-Match": r.headers["ETag"]})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "already_assigned"
    (assigned,) = await world.events("TaskAssigned")
    assert assigned["data"]["assignee_id"] == "peer-1"


async def test_handover_and_assign(world: World) -> None:
    seeded = await world.seed_case()
    etag = (await _get_task(world, seeded.task_id)).headers["ETag"]
    lead = world.auth("team_lead", subject="lead-1")
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/assign",
        json={"assignee_id": "nobody"},
        headers=lead | {"If-Match": etag},
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "unknown_team_member"
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/assign",
        json={"assignee_id": "peer-1"},
        headers=lead | {"If-Match": etag},
    )
    assert r.status_code == 200, r.text
    # peer-2 may not hand over peer-1's task; peer-1 may
    r2 = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/handover",
        json={"assignee_id": "peer-2"},
        headers=world.auth("peer", subject="peer-2") | {"If-Match": r.headers["ETag"]},
    )
    assert r2.status_code == 403
    assert r2.json()["error"]["code"] == "not_your_task"
    r3 = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/handover",
        json={"assignee_id": "peer-2"},
        headers=world.auth("peer", subject="peer-1") | {"If-Match": r.headers["ETag"]},
    )
    assert r3.status_code == 200
    assert r3.json()["assignee_id"] == "peer-2"


async def test_attempts_are_checked_logged_and_published(world: World) -> None:
    seeded = await world.seed_case()
    url = f"/v1/tasks/{seeded.task_id}/attempts"
    peer = world.auth("peer", subject="peer-1")
    r = await world.client.post(url, json={"channel": "text", "outcome": "not_found"}, headers=peer)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_outcome"
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await world.client.post(
        url, json={"channel": "phone", "outcome": "no_answer", "occurred_at": future}, headers=peer
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "time_in_future"
    r = await world.client.post(
        url,
        json={"channel": "phone", "outcome": "no_answer", "notes": "try evenings"},
        headers=peer,
    )
    assert r.status_code == 201, r.text
    assert r.json()["notes"] == "try evenings"
    (logged,) = await world.events("AttemptLogged")
    assert logged["data"]["outcome"] == "no_answer"
    assert "evenings" not in str(await world.outbox())  # notes never travel
    async with world.runtime.sessions() as s:
        sealed = (await s.execute(sa.select(ATTEMPT.c.notes_sealed))).scalar_one()
    assert "evenings" not in sealed  # and rest sealed
    queue = await world.client.get("/v1/tasks", headers=peer)
    (task,) = queue.json()["items"]
    assert task["attempts"][0]["outcome"] == "no_answer"
    assert task["notes"][0]["text"] == "try evenings"
    r = await world.client.post(url, json={"channel": "phone", "outcome": "reached"}, headers=peer)
    assert r.status_code == 201
    assert len(await world.events("ContactMade")) == 1


async def test_someone_elses_task_and_closed_tasks_refuse_attempts(world: World) -> None:
    seeded = await world.seed_case()
    etag = (await _get_task(world, seeded.task_id)).headers["ETag"]
    await world.client.post(
        f"/v1/tasks/{seeded.task_id}/claim",
        headers=world.auth("peer", subject="peer-1") | {"If-Match": etag},
    )
    body = {"channel": "phone", "outcome": "no_answer"}
    url = f"/v1/tasks/{seeded.task_id}/attempts"
    r = await world.client.post(url, json=body, headers=world.auth("peer", subject="peer-2"))
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "assigned_to_other"
    r = await world.client.post(url, json=body, headers=world.auth("team_lead", subject="lead"))
    assert r.status_code == 201
    await world.feed(
        TaskCompleted(
            case_id=seeded.case_id,
            program_id="demo",
            task_id=seeded.task_id,
            outcome="contact_made",
            completed_at=datetime.now(UTC),
        ),
        str(seeded.case_id),
    )
    r = await world.client.post(url, json=body, headers=world.auth("peer", subject="peer-1"))
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "task_closed"


async def test_services_and_referrals(world: World) -> None:
    seeded = await world.seed_case()
    peer = world.auth("peer", subject="peer-1")
    r = await world.client.post(
        f"/v1/cases/{seeded.case_id}/services",
        json={"items": [{"kind": "naloxone_kit", "count": 2}, {"kind": "fentanyl_test_strips"}]},
        headers=peer,
    )
    assert r.status_code == 201, r.text
    (provided,) = await world.events("ServicesProvided")
    assert provided["data"]["items"][0] == {"kind": "naloxone_kit", "count": 2}
    r = await world.client.post(
        f"/v1/cases/{seeded.case_id}/referrals",
        json={"kind": "moud_buprenorphine", "warm_handoff": True, "provider": "Clinic A"},
        headers=peer,
    )
    assert r.status_code == 201, r.text
    referral = r.json()
    assert referral["status"] == "offered"
    assert referral["provider"] == "Clinic A"
    url = f"/v1/referrals/{referral['id']}"
    r = await world.client.patch(url, json={"status": "accepted"}, headers=peer)
    assert r.status_code == 428
    etag = f'"{referral["version"]}"'
    r = await world.client.patch(
        url, json={"status": "care_started"}, headers=peer | {"If-Match": etag}
    )
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "invalid_transition"
    r = await world.client.patch(
        url, json={"status": "accepted"}, headers=peer | {"If-Match": etag}
    )
    assert r.status_code == 200
    etag = r.headers["ETag"]
    r = await world.client.patch(
        url, json={"status": "appointment"}, headers=peer | {"If-Match": etag}
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "appointment_time_required"
    when = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    r = await world.client.patch(
        url,
        json={"status": "appointment", "appointment_at": when},
        headers=peer | {"If-Match": etag},
    )
    assert r.status_code == 200
    changes = await world.events("ReferralStatusChanged")
    assert [c["data"]["status"] for c in changes] == ["accepted", "appointment"]
    case = await world.client.get(f"/v1/cases/{seeded.case_id}", headers=peer)
    assert case.status_code == 200
    assert case.json()["referrals"][0]["status"] == "appointment"
    assert case.json()["services"][0]["items"][0]["count"] == 2


async def test_do_not_contact_is_final(world: World) -> None:
    seeded = await world.seed_case(kind=TaskKind.IN_PERSON_VISIT)
    peer = world.auth("peer", subject="peer-1")
    r = await world.client.post(f"/v1/cases/{seeded.case_id}/do-not-contact", json={}, headers=peer)
    assert r.status_code == 200, r.text
    assert r.json()["do_not_contact"] is True
    assert len(await world.events("DoNotContactRequested")) == 1
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/attempts",
        json={"channel": "phone", "outcome": "no_answer"},
        headers=peer,
    )
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "do_not_contact"
    start = datetime.now(UTC) + timedelta(hours=1)
    r = await world.client.post(
        "/v1/visits",
        json={
            "task_id": str(seeded.task_id),
            "window_start": start.isoformat(),
            "window_end": (start + timedelta(hours=1)).isoformat(),
            "meeting_place": "library",
        },
        headers=peer,
    )
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "do_not_contact"
    r = await world.client.post(f"/v1/cases/{seeded.case_id}/decline", json={}, headers=peer)
    assert r.status_code == 409


async def test_conclusion_by_lead_only_with_if_match(world: World) -> None:
    seeded = await world.seed_case()
    url = f"/v1/cases/{seeded.case_id}/conclusion"
    r = await world.client.post(url, json={"reason": "engaged"}, headers=world.auth("peer"))
    assert r.status_code == 403
    lead = world.auth("team_lead", subject="lead")
    case = await world.client.get(f"/v1/cases/{seeded.case_id}", headers=lead)
    r = await world.client.post(
        url, json={"reason": "engaged"}, headers=lead | {"If-Match": case.headers["ETag"]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "closed"
    assert r.json()["close_reason"] == "engaged"
    (concluded,) = await world.events("OutreachConcluded")
    assert concluded["data"]["reason"] == "engaged"


async def test_audit_records_reads_and_writes_and_cannot_be_edited(world: World) -> None:
    seeded = await world.seed_case()
    peer = world.auth("peer", subject="peer-1")
    await world.client.get("/v1/tasks", headers=peer | {"X-Purpose": "morning queue"})
    await world.client.post(
        f"/v1/tasks/{seeded.task_id}/attempts",
        json={"channel": "phone", "outcome": "no_answer"},
        headers=peer,
    )
    r = await world.client.get("/v1/audit", headers=world.auth("peer"))
    assert r.status_code == 403
    r = await world.client.get(
        "/v1/audit", params={"case_id": str(seeded.case_id)}, headers=world.auth("admin")
    )
    assert r.status_code == 200, r.text
    entries = r.json()["items"]
    assert [(e["action"], e["resource"]) for e in entries] == [
        ("create", "attempt"),
        ("read", "task"),
    ]
    assert entries[1]["purpose"] == "morning queue"
    assert entries[1]["actor_id"] == "peer-1"
    assert entries[1]["role"] == "peer"
    other = await world.client.get("/v1/audit", headers=world.auth("admin", program="other"))
    assert other.json()["items"] == []
    async with world.runtime.engine.begin() as conn:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            await conn.execute(AUDIT.update().values(purpose="nothing to see"))
    async with world.runtime.engine.begin() as conn:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            await conn.execute(AUDIT.delete())


async def test_a_stated_purpose_is_free_text_and_is_stored_sealed(world: World) -> None:
    """X-Purpose may name the person ("call back Jordan Lee"): the audit log keeps it sealed,
    beside the operation's own purpose, and shows it to an admin in the clear."""
    seeded = await world.seed_case()
    peer = world.auth("peer", subject="peer-1")
    why = {"X-Purpose": "call back Jordan Lee on 336-555-0142"}
    await world.client.get(f"/v1/cases/{seeded.case_id}", headers=peer | why)
    await world.client.get(f"/v1/cases/{seeded.case_id}", headers=peer)
    async with world.runtime.sessions() as s:
        rows = (await s.execute(sa.select(AUDIT).order_by(AUDIT.c.id))).all()
    assert [(r.purpose, r.purpose_sealed is None) for r in rows] == [
        ("review a case", False),
        ("review a case", True),
    ]
    assert "Jordan" not in rows[0].purpose_sealed
    assert "0142" not in rows[0].purpose_sealed
    r = await world.client.get(
        "/v1/audit", params={"case_id": str(seeded.case_id)}, headers=world.auth("admin")
    )
    assert [e["purpose"] for e in r.json()["items"]] == [
        "review a case",
        "call back Jordan Lee on 336-555-0142",
    ]

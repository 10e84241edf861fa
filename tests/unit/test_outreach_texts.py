"""Texts through the team API on SQLite: sending from templates to a mocked Twilio-style
provider, its failures, and the signed STOP / START webhook."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from services.outreach.models import SMS_MESSAGE, SMS_OPT_OUT
from services.outreach.sms import request_signature
from services.outreach.views import SMS_PHONE
from shared.sealing import BlindIndexer
from tests.outreach_world import World, outreach_world

TOKEN = "tok-123456"
SID = "AC123"
MESSAGES_URL = f"https://sms.test/2010-04-01/Accounts/{SID}/Messages.json"
WEBHOOK_URL = "http://outreach.test/v1/sms/inbound"
PERSON_E164 = "+13365550100"  # the seeded person's "336-555-0100"
SMS_SETTINGS = {
    "outreach_sms_url": "https://sms.test",
    "outreach_sms_account_sid": SID,
    "outreach_sms_auth_token": TOKEN,
    "outreach_sms_from": "+13365550000",
    "outreach_public_url": "http://outreach.test",
}


@dataclass
class Provider:
    """A fake provider: records each request and answers with the next canned response."""

    requests: list[httpx.Request] = field(default_factory=list)
    status: int = 201
    body: dict = field(default_factory=lambda: {"sid": "SM0001", "status": "queued"})
    headers: dict[str, str] = field(default_factory=dict)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json=self.body, headers=self.headers)

    def form(self, index: int = -1) -> dict[str, str]:
        parsed = parse_qs(self.requests[index].content.decode())
        return {key: values[0] for key, values in parsed.items()}


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
async def world(tmp_path: Path, provider: Provider) -> AsyncIterator[World]:
    transport = httpx.MockTransport(provider.handle)
    async with outreach_world(tmp_path, sms_transport=transport, **SMS_SETTINGS) as w:
        for member in ("peer-1", "peer-2"):
            await w.member(member)
        yield w


def _peer(world: World, subject: str = "peer-1") -> dict[str, str]:
    return world.auth("peer", subject=subject)


async def _text(world: World, task_id: object, template: str = "first_contact") -> httpx.Response:
    return await world.client.post(
        f"/v1/tasks/{task_id}/texts", json={"template": template}, headers=_peer(world)
    )


async def _inbound(world: World, body: str, sender: str = PERSON_E164) -> httpx.Response:
    params = {"From": sender, "To": "+13365550000", "Body": body, "MessageSid": "SM9"}
    return await world.client.post(
        "/v1/sms/inbound",
        content=urlencode(params),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": request_signature(WEBHOOK_URL, params, TOKEN),
        },
    )


async def _messages(world: World) -> list[sa.Row]:
    async with world.runtime.sessions() as s:
        return list(await s.execute(sa.select(SMS_MESSAGE)))


# -- sending ---------------------------------------------------------------------------------


async def test_a_template_text_reaches_the_provider_and_is_an_attempt(
    world: World, provider: Provider
) -> None:
    seeded = await world.seed_case()
    r = await _text(world, seeded.task_id)
    assert r.status_code == 201, r.text
    text = r.json()
    assert text["template"] == "first_contact"
    assert text["status"] == "queued"
    (request,) = provider.requests
    assert str(request.url) == MESSAGES_URL
    form = provider.form()
    assert form["To"] == PERSON_E164
    assert form["From"] == "+13365550000"
    assert "Jordan" in form["Body"]
    assert "Name of peer-1" in form["Body"]
    assert "+13365550199" in form["Body"]  # the peer's work phone
    assert "Rivera" not in form["Body"]
    (row,) = await _messages(world)
    assert str(row.id) == text["id"]
    assert row.task_id == seeded.task_id
    assert row.template == "first_contact"
    assert row.status == "queued"
    assert row.provider_id == "SM0001"
    assert row.created_by == "peer-1"
    (attempt,) = await world.events("AttemptLogged")
    assert attempt["data"]["attempt_id"] == text["attempt_id"]
    assert attempt["data"]["channel"] == "text"
    assert attempt["data"]["outcome"] == "left_message"
    outbox = str(await world.outbox())
    assert "5550100" not in outbox
    assert "Jordan" not in outbox


async def test_templates_are_listed(world: World) -> None:
    r = await world.client.get("/v1/texts/templates", headers=_peer(world))
    assert r.status_code == 200, r.text
    templates = r.json()
    assert {"first_contact", "follow_up", "missed_you"} <= set(templates)
    assert "${first_name}" in templates["first_contact"]


async def test_unknown_template_is_refused_before_anything_is_sent(
    world: World, provider: Provider
) -> None:
    seeded = await world.seed_case()
    r = await _text(world, seeded.task_id, template="no_such_template")
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "unknown_template"
    assert provider.requests == []
    assert await _messages(world) == []
    assert await world.events("AttemptLogged") == []


async def test_provider_unavailable_is_503_with_retry_after(
    world: World, provider: Provider
) -> None:
    provider.status = 503
    provider.body = {"message": "busy"}
    provider.headers = {"Retry-After": "120"}
    seeded = await world.seed_case()
    r = await _text(world, seeded.task_id)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "sms_unavailable"
    assert r.headers["Retry-After"] == "120"
    (row,) = await _messages(world)
    assert row.status == "failed"
    assert await world.events("AttemptLogged") == []


async def test_provider_rejection_is_422(world: World, provider: Provider) -> None:
    provider.status = 400
    provider.body = {"code": 21610, "message": "Attempt to send to unsubscribed recipient"}
    seeded = await world.seed_case()
    r = await _text(world, seeded.task_id)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "sms_rejected"
    assert error["details"] == [{"provider_code": "21610", "status": 400}]
    assert "unsubscribed" not in r.text  # provider texts are never copied
    (row,) = await _messages(world)
    assert row.status == "rejected"
    assert await world.events("AttemptLogged") == []


async def test_texting_not_configured_is_a_conflict_and_its_webhook_is_not_there(
    tmp_path: Path,
) -> None:
    """Off by configuration is how this deployment is, not an outage: no 5xx."""
    async with outreach_world(tmp_path) as world:
        await world.member("peer-1")
        seeded = await world.seed_case()
        r = await _text(world, seeded.task_id)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "sms_not_configured"
        r = await world.client.post("/v1/sms/inbound", content=b"Body=STOP")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "sms_not_configured"


async def test_a_deputy_may_not_text(world: World, provider: Provider) -> None:
    seeded = await world.seed_case()
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/texts",
        json={"template": "first_contact"},
        headers=world.auth("deputy"),
    )
    assert r.status_code == 403
    assert provider.requests == []


async def test_texting_someone_elses_task_is_refused(world: World, provider: Provider) -> None:
    """A text is an attempt: like POST /attempts, a peer may not log one on a colleague's task."""
    seeded = await world.seed_case()
    task = await world.client.get(f"/v1/tasks/{seeded.task_id}", headers=_peer(world))
    claimed = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/claim",
        headers=_peer(world) | {"If-Match": task.headers["ETag"]},
    )
    assert claimed.status_code == 200, claimed.text
    r = await world.client.post(
        f"/v1/tasks/{seeded.task_id}/texts",
        json={"template": "first_contact"},
        headers=_peer(world, "peer-2"),
    )
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "assigned_to_other"
    assert provider.requests == []


# -- replies ---------------------------------------------------------------------------------


async def test_a_bad_webhook_signature_is_refused(world: World) -> None:
    params = {"From": PERSON_E164, "Body": "STOP"}
    r = await world.client.post(
        "/v1/sms/inbound",
        content=urlencode(params),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": request_signature(WEBHOOK_URL, params, "not-the-token"),
        },
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "invalid_signature"
    r = await world.client.post(
        "/v1/sms/inbound",
        content=urlencode(params),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 403
    async with world.runtime.sessions() as s:
        assert list(await s.execute(sa.select(SMS_OPT_OUT))) == []


async def test_stop_opts_out_and_start_opts_back_in(world: World, provider: Provider) -> None:
    seeded = await world.seed_case()
    r = await _inbound(world, "STOP")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/xml")
    assert "<Response>" in r.text
    async with world.runtime.sessions() as s:
        (opt_out,) = list(await s.execute(sa.select(SMS_OPT_OUT)))
    assert "5550100" not in opt_out.phone_key
    assert "3365550100" not in str(tuple(opt_out))
    # The number is kept sealed beside its index, so a key rotation can re-index it.
    sealer = world.app.state.sealer
    assert sealer.open(opt_out.phone_sealed, context=SMS_PHONE) == PERSON_E164
    assert (opt_out.version, opt_out.number_key) == ("b1", opt_out.phone_key)
    r = await _text(world, seeded.task_id)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "sms_opted_out"
    assert provider.requests == []
    assert await _messages(world) == []
    r = await _inbound(world, "Stop.")  # a second STOP changes nothing
    assert r.status_code == 200
    r = await _inbound(world, "START")
    assert r.status_code == 200
    async with world.runtime.sessions() as s:
        assert list(await s.execute(sa.select(SMS_OPT_OUT))) == []
    r = await _text(world, seeded.task_id)
    assert r.status_code == 201, r.text
    assert len(provider.requests) == 1


async def test_stop_matches_the_number_however_it_is_written(
    world: World, provider: Provider
) -> None:
    seeded = await world.seed_case()
    r = await _inbound(world, "stop", sender="(336) 555-0100")
    assert r.status_code == 200
    r = await _text(world, seeded.task_id)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "sms_opted_out"
    assert provider.requests == []


async def test_stop_inside_a_sentence_is_not_an_opt_out(world: World, provider: Provider) -> None:
    seeded = await world.seed_case()
    r = await _inbound(world, "stop by tomorrow")
    assert r.status_code == 200
    async with world.runtime.sessions() as s:
        assert list(await s.execute(sa.select(SMS_OPT_OUT))) == []
    r = await _text(world, seeded.task_id)
    assert r.status_code == 201, r.text
    assert len(provider.requests) == 1


async def test_another_numbers_stop_does_not_opt_this_person_out(
    world: World, provider: Provider
) -> None:
    seeded = await world.seed_case()
    r = await _inbound(world, "STOP", sender="+13365550111")
    assert r.status_code == 200
    r = await _text(world, seeded.task_id)
    assert r.status_code == 201, r.text


async def test_no_texts_after_do_not_contact(world: World, provider: Provider) -> None:
    seeded = await world.seed_case()
    r = await world.client.post(
        f"/v1/cases/{seeded.case_id}/do-not-contact", json={}, headers=_peer(world)
    )
    assert r.status_code == 200, r.text
    r = await _text(world, seeded.task_id)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "do_not_contact"
    assert provider.requests == []
    assert await _messages(world) == []


async def test_a_stop_recorded_under_the_old_blind_index_key_still_counts_during_a_rotation(
    tmp_path: Path, provider: Provider
) -> None:
    old, new = b"o" * 32, b"n" * 32
    rotating = {
        "blind_index_keys": SecretStr("b2:" + base64.b64encode(new).decode()),
        "blind_index_key": SecretStr(base64.b64encode(old).decode()),
    }
    transport = httpx.MockTransport(provider.handle)
    async with outreach_world(tmp_path, sms_transport=transport, **SMS_SETTINGS, **rotating) as w:
        await w.member("peer-1")
        seeded = await w.seed_case()
        async with w.runtime.sessions() as s, s.begin():  # the STOP came before the rotation
            key = BlindIndexer(old).phone(PERSON_E164)
            await s.execute(
                SMS_OPT_OUT.insert().values(phone_key=key, at=datetime.now(UTC), number_key=key)
            )
        r = await _text(w, seeded.task_id)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "sms_opted_out"
        # A STOP during the rotation is kept under both versions; START clears both.
        r = await _inbound(w, "START")
        assert r.status_code == 200
        r = await _inbound(w, "STOP")
        assert r.status_code == 200
        async with w.runtime.sessions() as s:
            kept = set((await s.execute(sa.select(SMS_OPT_OUT.c.phone_key))).scalars())
        assert kept == {BlindIndexer(k).phone(PERSON_E164) for k in (old, new)}
    assert provider.requests == []

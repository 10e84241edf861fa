"""Text messages: discreet templates sent through a Twilio-style provider, and STOP.

A text is an outreach attempt on a task (channel text, outcome left_message). A number that
replied STOP (or the like) gets no more texts until it replies START; the opt-out is kept by
the number's blind index, so no plaintext number is stored for it. Texting is off unless the
provider is configured (PORTLINE_OUTREACH_SMS_*).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from sqlalchemy.exc import IntegrityError

from services.outreach.access import Access, apply_rule, case_state, task_state
from services.outreach.api import ERRORS, Worker, record_attempt
from services.outreach.models import SMS_MESSAGE, SMS_OPT_OUT, TEAM_MEMBER
from services.outreach.rules import check_case_workable, check_may_work, check_task_workable
from services.outreach.schemas import TextBody, TextView
from services.outreach.sms import (
    SmsProvider,
    SmsRejectedError,
    SmsUnavailableError,
    TemplateBook,
    TemplateError,
    UnknownTemplateError,
    classify_inbound,
    verify_signature,
)
from services.outreach.views import person_of_case
from shared.http import ApiError
from shared.ids import new_uuid
from shared.sealing import BlindIndexer

__all__ = ["Texting", "router", "webhook_router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["texts"])
webhook_router = APIRouter(prefix="/v1/sms", tags=["texts"])

_MAX_WEBHOOK_BYTES = 64 * 1024
_TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


@dataclass(frozen=True)
class Texting:
    """What the text routes need, built once at start-up (app.state.texting)."""

    templates: TemplateBook
    program_name: str
    indexer: BlindIndexer
    provider: SmsProvider | None
    auth_token: str | None
    public_url: str


def _texting(request: Request) -> Texting:
    texting: Texting = request.app.state.texting
    return texting


@router.get(
    "/texts/templates",
    summary="The message templates texts can use",
    description="Templates never mention overdoses, drugs or services: a phone may be read "
    "by others.",
    responses=ERRORS,
)
async def list_templates(principal: Worker, request: Request) -> dict[str, str]:
    return _texting(request).templates.describe()


@router.post(
    "/tasks/{task_id}/texts",
    status_code=201,
    summary="Text the person from a template (an outreach attempt on the task)",
    responses=ERRORS,
)
async def send_text(
    task_id: uuid.UUID, body: TextBody, principal: Worker, request: Request
) -> TextView:
    access = Access.of(request, principal, "text the person")
    texting = _texting(request)
    if texting.provider is None:
        raise ApiError(503, "sms_not_configured", "Texting is not set up for this program.")
    async with access.runtime.uow() as uow:
        s = uow.session
        task = await access.task(s, task_id)
        case = await access.case(s, task.case_id)
        apply_rule(check_task_workable, task_state(task))
        apply_rule(check_case_workable, case_state(case))
        apply_rule(
            check_may_work, task_state(task), actor=access.actor, actor_is_lead=access.is_lead
        )
        person = await person_of_case(access, s, task.case_id)
        phone = next(iter(person.phones), None)
        if phone is None:
            raise ApiError(409, "no_phone", "There is no phone number for this person.")
        phone_key = texting.indexer.phone(phone)
        opted_out = (
            phone_key is not None
            and (
                await s.execute(sa.select(SMS_OPT_OUT).where(SMS_OPT_OUT.c.phone_key == phone_key))
            ).first()
        )
        if opted_out:
            raise ApiError(409, "sms_opted_out", "This number replied STOP; do not text it.")
        peer = (
            await s.execute(
                sa.select(TEAM_MEMBER).where(
                    TEAM_MEMBER.c.id == access.actor, TEAM_MEMBER.c.program_id == access.program
                )
            )
        ).first()
        variables = {
            "first_name": (person.name or "").split(" ")[0] or "there",
            "peer_name": peer.display_name if peer else "your peer",
            "peer_phone": (peer.phone if peer else None) or "",
            "program_name": texting.program_name,
        }
        try:
            text = texting.templates.render(body.template, variables)
        except UnknownTemplateError:
            raise ApiError(422, "unknown_template", f"No template {body.template!r}.") from None
        except TemplateError as exc:
            raise ApiError(422, "template_error", str(exc)) from None
        message_id = new_uuid()
        await s.execute(
            SMS_MESSAGE.insert().values(
                id=message_id,
                program_id=access.program,
                case_id=task.case_id,
                task_id=task.id,
                template=body.template,
                status="sending",
                created_by=access.actor,
                created_at=access.runtime.clock.now(),
            )
        )
        await uow.commit()  # the intent is durable before anything leaves
    try:
        sent = await texting.provider.send(to=phone, body=text)
    except SmsUnavailableError as exc:
        await _mark(access, message_id, "failed", None)
        retry = str(int(exc.retry_after_seconds or 30))
        raise ApiError(
            503,
            "sms_unavailable",
            "The SMS provider is unavailable; try again later.",
            headers={"Retry-After": retry},
        ) from None
    except SmsRejectedError as exc:
        await _mark(access, message_id, "rejected", None)
        raise ApiError(
            422,
            "sms_rejected",
            "The SMS provider refused this message.",
            details=[{"provider_code": exc.provider_code, "status": exc.status}],
        ) from None
    except ValueError:
        await _mark(access, message_id, "rejected", None)
        raise ApiError(
            409, "invalid_phone", "The person's phone number cannot take texts."
        ) from None
    async with access.runtime.uow() as uow:
        await uow.session.execute(
            SMS_MESSAGE.update()
            .where(SMS_MESSAGE.c.id == message_id)
            .values(status=sent.status[:32], provider_id=sent.provider_id[:64])
        )
        attempt = await record_attempt(
            access, uow, task, "text", "left_message", access.runtime.clock.now(), None
        )
        await uow.commit()
    return TextView(
        id=message_id, template=body.template, status=sent.status, attempt_id=attempt.id
    )


async def _mark(
    access: Access, message_id: uuid.UUID, status: str, provider_id: str | None
) -> None:
    async with access.runtime.uow() as uow:
        await uow.session.execute(
            SMS_MESSAGE.update()
            .where(SMS_MESSAGE.c.id == message_id)
            .values(status=status, provider_id=provider_id)
        )
        await uow.commit()


@webhook_router.post(
    "/inbound",
    summary="Inbound texts from the SMS provider (STOP / START), signed by the provider",
    description="Form-encoded like Twilio's webhook (From, Body), with X-Twilio-Signature "
    "over this URL and the form. STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE and "
    "OPTOUT opt the number out of texts; START, UNSTOP and YES opt it back in. Answers TwiML.",
    responses={403: ERRORS[403], 503: ERRORS[503]},
)
async def inbound(request: Request) -> Response:
    texting = _texting(request)
    if texting.auth_token is None:
        raise ApiError(503, "sms_not_configured", "Texting is not set up.")
    raw = await request.body()
    if len(raw) > _MAX_WEBHOOK_BYTES:
        raise ApiError(413, "payload_too_large", "The webhook body is too large.")
    try:
        params = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "The webhook body is not UTF-8 form data.") from None
    url = texting.public_url.rstrip("/") + request.url.path
    if not verify_signature(
        url, params, texting.auth_token, request.headers.get("x-twilio-signature")
    ):
        raise ApiError(403, "invalid_signature", "The webhook signature does not match.")
    kind = classify_inbound(params.get("Body", ""))
    phone_key = texting.indexer.phone(params.get("From", ""))
    if phone_key is not None and kind in ("opt_out", "opt_in"):
        runtime = request.app.state.runtime
        try:
            async with runtime.uow() as uow:
                exists = (
                    await uow.session.execute(
                        sa.select(SMS_OPT_OUT).where(SMS_OPT_OUT.c.phone_key == phone_key)
                    )
                ).first()
                if kind == "opt_out" and not exists:
                    await uow.session.execute(
                        SMS_OPT_OUT.insert().values(phone_key=phone_key, at=runtime.clock.now())
                    )
                elif kind == "opt_in" and exists:
                    await uow.session.execute(
                        SMS_OPT_OUT.delete().where(SMS_OPT_OUT.c.phone_key == phone_key)
                    )
                await uow.commit()
        except IntegrityError:
            pass  # the same STOP delivered twice at once: the number is opted out either way
        log.info("sms keyword", extra={"kind": kind})
    return Response(_TWIML_EMPTY, media_type="application/xml")

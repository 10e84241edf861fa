"""Text messages: discreet templates sent through a Twilio-style provider, and STOP.

A text is an outreach attempt on a task (channel text, outcome left_message). Sending is a
small saga of three units of work, because a provider call cannot sit inside a transaction:
the intent is committed first (``sending``), then the provider is called, then the outcome is
committed (the attempt and its event, or ``failed`` / ``rejected``). A number that replied STOP
(or the like) gets no more texts until it replies START; the opt-out is kept by the number's
blind index under every key version held, with the number sealed beside it so that it can be
re-indexed under a new version (`portline keys reindex`, ADR 0026).

Quiet hours (the program's policy, carried on each task): a text sent by hand in them is
refused (409 ``quiet_hours``, with when they end) unless the sender says the person asked to
hear now (``override_quiet_hours``), which is recorded with the message.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach.access import Access, apply_rule
from services.outreach.models import SMS_MESSAGE, SMS_OPT_OUT, TEAM_MEMBER
from services.outreach.rules import check_quiet_hours
from services.outreach.schemas import TextBody, TextView
from services.outreach.service.tasks import record_attempt, workable_task
from services.outreach.sms import (
    SmsProvider,
    SmsRejectedError,
    SmsUnavailableError,
    TemplateBook,
    TemplateError,
    UnknownTemplateError,
)
from services.outreach.views import person_of_case
from shared.events.scheduler import QuietHours
from shared.http import ApiError
from shared.ids import new_uuid
from shared.runtime import Runtime
from shared.sealing import BlindIndexer
from shared.uow import UnitOfWork

__all__ = ["Texting", "opted_out", "record_keyword", "send_text"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Texting:
    """What texting needs, built once at start-up (app.state.texting)."""

    templates: TemplateBook
    program_name: str
    indexer: BlindIndexer
    provider: SmsProvider | None
    auth_token: str | None
    public_url: str


def _quiet_hours(task: Any) -> QuietHours | None:
    return QuietHours.model_validate(json.loads(task.quiet_hours)) if task.quiet_hours else None


async def opted_out(session: AsyncSession, indexer: BlindIndexer, phone: str) -> bool:
    """Whether ``phone`` replied STOP (and not START since): looked up under every blind-index
    key version held, so a STOP recorded before a rotation still counts."""
    phone_keys = [k for held in indexer.held if (k := held.phone(phone))]
    if not phone_keys:
        return False
    found = await session.execute(
        sa.select(SMS_OPT_OUT.c.phone_key).where(SMS_OPT_OUT.c.phone_key.in_(phone_keys)).limit(1)
    )
    return found.first() is not None


async def _compose(
    uow: UnitOfWork, access: Access, texting: Texting, task: Any, body: TextBody
) -> tuple[str, str]:
    """The number to text and the rendered text, once every rule allows the text."""
    s = uow.session
    await workable_task(access, s, task)
    person = await person_of_case(access, s, task.case_id)
    phone = next(iter(person.phones), None)
    if phone is None:
        raise ApiError(409, "no_phone", "There is no phone number for this person.")
    if await opted_out(s, texting.indexer, phone):
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
    apply_rule(
        check_quiet_hours,
        access.runtime.clock.now(),
        _quiet_hours(task),
        "text",
        override=body.override_quiet_hours,
    )
    return phone, text


async def send_text(
    *, uow: UnitOfWork, access: Access, texting: Texting, task: Any, body: TextBody
) -> TextView:
    """Text the person from a template: an attempt on the task (module docs: the saga)."""
    if texting.provider is None:
        raise ApiError(409, "sms_not_configured", "Texting is not set up for this program.")
    phone, text = await _compose(uow, access, texting, task, body)
    message_id = new_uuid()
    await uow.session.execute(
        SMS_MESSAGE.insert().values(
            id=message_id,
            program_id=access.program,
            case_id=task.case_id,
            task_id=task.id,
            template=body.template,
            status="sending",
            quiet_hours_override=body.override_quiet_hours,
            created_by=access.actor,
            created_at=access.runtime.clock.now(),
        )
    )
    await uow.commit()  # the intent is durable before anything leaves
    try:
        sent = await texting.provider.send(to=phone, body=text)
    except SmsUnavailableError as exc:
        await _mark(access.runtime, message_id, "failed")
        retry = str(int(exc.retry_after_seconds or 30))
        raise ApiError(
            503,
            "sms_unavailable",
            "The SMS provider is unavailable; try again later.",
            headers={"Retry-After": retry},
        ) from None
    except SmsRejectedError as exc:
        await _mark(access.runtime, message_id, "rejected")
        raise ApiError(
            422,
            "sms_rejected",
            "The SMS provider refused this message.",
            details=[{"provider_code": exc.provider_code, "status": exc.status}],
        ) from None
    except ValueError:
        await _mark(access.runtime, message_id, "rejected")
        raise ApiError(
            409, "invalid_phone", "The person's phone number cannot take texts."
        ) from None
    async with access.runtime.uow() as done:
        await done.session.execute(
            SMS_MESSAGE.update()
            .where(SMS_MESSAGE.c.id == message_id)
            .values(status=sent.status[:32], provider_id=sent.provider_id[:64])
        )
        attempt = await record_attempt(
            access, done, task, "text", "left_message", access.runtime.clock.now(), None
        )
        await done.commit()
    return TextView(
        id=message_id, template=body.template, status=sent.status, attempt_id=attempt.id
    )


async def _mark(runtime: Runtime, message_id: uuid.UUID, status: str) -> None:
    async with runtime.uow() as uow:
        await uow.session.execute(
            SMS_MESSAGE.update().where(SMS_MESSAGE.c.id == message_id).values(status=status)
        )
        await uow.commit()


async def record_keyword(
    *,
    uow: UnitOfWork,
    kind: Literal["opt_out", "opt_in"],
    phone_keys: Mapping[str, str],
    phone_sealed: str | None,
    at: datetime,
) -> None:
    """STOP opts a number out of texts, START back in. The opt-out is kept by the number's
    blind index under every blind-index key version held (``phone_keys``: version → index), one
    row each sharing a group (``number_key``), with the number sealed beside them so that
    `portline keys reindex` can index it under a later version (ADR 0026). A STOP from a number
    already opted out seals its number on rows that had none (opted out before outreach_0013)."""
    s = uow.session
    keys = list(phone_keys.values())
    try:
        found = (
            await s.execute(
                sa.select(SMS_OPT_OUT.c.phone_key, SMS_OPT_OUT.c.number_key).where(
                    SMS_OPT_OUT.c.phone_key.in_(keys)
                )
            )
        ).all()
        groups = sorted({g for _, g in found})
        if kind == "opt_out":
            exists = {k for k, _ in found}
            group = groups[0] if groups else keys[0]
            rows = [
                {
                    "phone_key": k,
                    "at": at,
                    "version": v,
                    "number_key": group,
                    "phone_sealed": phone_sealed,
                }
                for v, k in phone_keys.items()
                if k not in exists
            ]
            if rows:
                await s.execute(SMS_OPT_OUT.insert(), rows)
            if groups and phone_sealed is not None:
                await s.execute(
                    SMS_OPT_OUT.update()
                    .where(
                        SMS_OPT_OUT.c.number_key.in_(groups), SMS_OPT_OUT.c.phone_sealed.is_(None)
                    )
                    .values(phone_sealed=phone_sealed)
                )
        elif groups:
            await s.execute(
                SMS_OPT_OUT.delete().where(
                    sa.or_(SMS_OPT_OUT.c.number_key.in_(groups), SMS_OPT_OUT.c.phone_key.in_(keys))
                )
            )
        await uow.commit()
    except IntegrityError:
        pass  # the same STOP delivered twice at once: the number is opted out either way
    log.info("sms keyword", extra={"kind": kind})

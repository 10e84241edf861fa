"""A person's case: reading it, contacts, services, referrals, and what the person or the lead
decides (a decline, a do-not-contact request, the conclusion of outreach).

Referrals and closed cases: a referral is *made* on an open case only (409 `case_closed`),
but a referral already made keeps moving after the case closes (PATCH /v1/referrals/{id}),
because care often starts after outreach has ended and reporting counts it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from services.outreach import casefile
from services.outreach.access import (
    Access,
    apply_rule,
    case_state,
    not_found,
    require_match,
    rowcount,
)
from services.outreach.models import CASE_NOTE, CONTACT, REFERRAL, SERVICE
from services.outreach.rules import (
    check_case_workable,
    check_occurred_at,
    check_referral_transition,
)
from services.outreach.schemas import (
    CaseView,
    ConclusionBody,
    ContactBody,
    ContactView,
    ReferralBody,
    ReferralUpdate,
    ReferralView,
    ServicesBody,
    ServicesView,
)
from services.outreach.service.tasks import overdose_at
from services.outreach.service.visits import cancel_scheduled_visits
from services.outreach.views import NOTE, PROVIDER, case_view, referral_view
from shared.events import (
    ContactMade,
    DoNotContactRequested,
    OutreachConcluded,
    OutreachDeclined,
    ReferralMade,
    ReferralStatusChanged,
    ServiceItem,
    ServicesProvided,
)
from shared.http import ApiError
from shared.ids import new_uuid
from shared.uow import UnitOfWork

__all__ = [
    "conclude",
    "decide",
    "make_referral",
    "read_case",
    "record_contact",
    "record_services",
    "update_referral",
]


async def read_case(*, uow: UnitOfWork, access: Access, case: Any) -> CaseView:
    """The whole case for the team; the read is audited."""
    view = await case_view(access, uow.session, case)
    await access.audit(uow.session, "read", "case", [(case.id, case.id)])
    await uow.commit()
    return view


async def _when(uow: UnitOfWork, access: Access, case: Any, at: datetime | None) -> datetime:
    """When the work happened: now by default; after the case's overdose, never ahead."""
    now = access.runtime.clock.now()
    occurred_at = at or now
    first = await overdose_at(uow.session, case_id=case.id)
    apply_rule(check_occurred_at, occurred_at, now=now, overdose_at=first)
    return occurred_at


async def record_contact(
    *, uow: UnitOfWork, access: Access, case: Any, body: ContactBody
) -> ContactView:
    """A contact outside a logged attempt (the person called in)."""
    s = uow.session
    apply_rule(check_case_workable, case_state(case))
    occurred_at = await _when(uow, access, case, body.occurred_at)
    if body.task_id is not None:
        task = await access.task(s, body.task_id)
        if task.case_id != case.id:
            raise ApiError(422, "task_not_in_case", "The task belongs to another case.")
    contact_id = new_uuid()
    await s.execute(
        CONTACT.insert().values(
            id=contact_id,
            program_id=access.program,
            case_id=case.id,
            task_id=body.task_id,
            channel=body.channel,
            notes_sealed=access.seal(body.notes, NOTE),
            occurred_at=occurred_at,
            created_by=access.actor,
            created_at=access.runtime.clock.now(),
        )
    )
    uow.publish(
        ContactMade(
            case_id=case.id,
            program_id=access.program,
            occurred_at=occurred_at,
            task_id=body.task_id,
            channel=body.channel,
        ),
        subject=str(case.id),
    )
    await access.audit(s, "create", "contact", [(contact_id, case.id)])
    await uow.commit()
    return ContactView(
        id=contact_id,
        channel=body.channel,
        task_id=body.task_id,
        occurred_at=occurred_at,
        by=access.actor,
        notes=body.notes,
    )


async def record_services(
    *, uow: UnitOfWork, access: Access, case: Any, body: ServicesBody
) -> ServicesView:
    """Naloxone, test strips, syringe services, education: given on an open case."""
    apply_rule(check_case_workable, case_state(case), contacting=False)
    occurred_at = await _when(uow, access, case, body.occurred_at)
    now = access.runtime.clock.now()
    items = [ServiceItem(kind=item.kind, count=item.count) for item in body.items]
    rows = [
        {
            "id": new_uuid(),
            "program_id": access.program,
            "case_id": case.id,
            "kind": item.kind,
            "count": item.count,
            "occurred_at": occurred_at,
            "created_by": access.actor,
            "created_at": now,
        }
        for item in items
    ]
    await uow.session.execute(SERVICE.insert(), rows)
    uow.publish(
        ServicesProvided(
            case_id=case.id, program_id=access.program, occurred_at=occurred_at, items=items
        ),
        subject=str(case.id),
    )
    await access.audit(uow.session, "create", "service", [(r["id"], case.id) for r in rows])
    await uow.commit()
    return ServicesView(items=items, occurred_at=occurred_at, by=access.actor)


async def make_referral(
    *, uow: UnitOfWork, access: Access, case: Any, body: ReferralBody
) -> ReferralView:
    """A referral on an open case (a closed one is 409 case_closed)."""
    s = uow.session
    apply_rule(check_case_workable, case_state(case), contacting=False)
    now = access.runtime.clock.now()
    referral_id = new_uuid()
    await s.execute(
        REFERRAL.insert().values(
            id=referral_id,
            program_id=access.program,
            case_id=case.id,
            kind=body.kind,
            status=body.status,
            warm_handoff=body.warm_handoff,
            provider_sealed=access.seal(body.provider, PROVIDER),
            notes_sealed=access.seal(body.notes, NOTE),
            version=1,
            created_by=access.actor,
            created_at=now,
            updated_at=now,
        )
    )
    uow.publish(
        ReferralMade(
            case_id=case.id,
            program_id=access.program,
            occurred_at=now,
            referral_id=referral_id,
            kind=body.kind,
            status=body.status,
            warm_handoff=body.warm_handoff,
        ),
        subject=str(case.id),
    )
    await access.audit(s, "create", "referral", [(referral_id, case.id)])
    row = (await s.execute(sa.select(REFERRAL).where(REFERRAL.c.id == referral_id))).one()
    await uow.commit()
    return referral_view(access, row)


async def update_referral(
    *,
    uow: UnitOfWork,
    access: Access,
    referral_id: uuid.UUID,
    body: ReferralUpdate,
    if_match: str | None,
) -> ReferralView:
    """A referral moves along its statuses, on an open or a closed case (module docs)."""
    if body.status == "appointment" and body.appointment_at is None:
        raise ApiError(422, "appointment_time_required", "An appointment needs appointment_at.")
    s = uow.session
    mine = (REFERRAL.c.id == referral_id, REFERRAL.c.program_id == access.program)
    row = (await s.execute(sa.select(REFERRAL).where(*mine))).first()
    if row is None:
        raise not_found("referral")
    require_match(if_match, row.version)
    apply_rule(check_referral_transition, row.status, body.status)
    now = access.runtime.clock.now()
    values: dict[str, Any] = {"status": body.status, "updated_at": now}
    if body.appointment_at is not None:
        values["appointment_at"] = body.appointment_at
    if body.notes is not None:
        values["notes_sealed"] = access.seal(body.notes, NOTE)
    updated = await s.execute(
        REFERRAL.update()
        .where(*mine, REFERRAL.c.version == row.version)
        .values(**values, version=row.version + 1)
    )
    if rowcount(updated) != 1:
        raise ApiError(409, "version_mismatch", "The referral changed meanwhile.")
    uow.publish(
        ReferralStatusChanged(
            case_id=row.case_id,
            program_id=access.program,
            occurred_at=now,
            referral_id=referral_id,
            status=body.status,
        ),
        subject=str(row.case_id),
    )
    await access.audit(s, "update", "referral", [(referral_id, row.case_id)])
    fresh = (await s.execute(sa.select(REFERRAL).where(*mine))).one()
    await uow.commit()
    return referral_view(access, fresh)


async def _note(access: Access, uow: UnitOfWork, case_id: uuid.UUID, text: str | None) -> None:
    if not text:
        return
    await uow.session.execute(
        CASE_NOTE.insert().values(
            id=new_uuid(),
            program_id=access.program,
            case_id=case_id,
            text_sealed=access.seal(text, NOTE),
            created_by=access.actor,
            created_at=access.runtime.clock.now(),
        )
    )


async def _fresh_view(uow: UnitOfWork, access: Access, case_id: uuid.UUID) -> CaseView:
    """The case as the change left it, audited, with the unit of work committed."""
    await access.audit(uow.session, "update", "case", [(case_id, case_id)])
    fresh = await casefile.read(uow.session, case_id)
    view = await case_view(access, uow.session, fresh)
    await uow.commit()
    return view


async def decide(
    *,
    uow: UnitOfWork,
    access: Access,
    case: Any,
    decision: Literal["decline", "do_not_contact"],
    notes: str | None,
) -> CaseView:
    """The person declines outreach, or asks never to be contacted again (final): open tasks
    stop (the scheduler's part) and no visit stays on the calendar."""
    apply_rule(check_case_workable, case_state(case), contacting=False)
    now = access.runtime.clock.now()
    if decision == "decline":
        await casefile.mark_declined(uow.session, case.id)
        event: OutreachDeclined | DoNotContactRequested = OutreachDeclined(
            case_id=case.id, program_id=access.program, occurred_at=now
        )
    else:
        await casefile.mark_do_not_contact(uow.session, case.id)
        event = DoNotContactRequested(case_id=case.id, program_id=access.program, occurred_at=now)
    await _note(access, uow, case.id, notes)
    await cancel_scheduled_visits(uow.session, case.id, now)
    uow.publish(event, subject=str(case.id))
    return await _fresh_view(uow, access, case.id)


async def conclude(
    *,
    uow: UnitOfWork,
    access: Access,
    case: Any,
    body: ConclusionBody,
    if_match: str | None,
) -> CaseView:
    """A team lead concludes outreach with a reason; the scheduler closes what is open."""
    require_match(if_match, case.version)
    if case.status == "closed":
        raise ApiError(409, "case_closed", "The case is already closed.")
    now = access.runtime.clock.now()
    await casefile.close(uow.session, case.id, reason=body.reason, closed_at=now)
    await _note(access, uow, case.id, body.notes)
    uow.publish(
        OutreachConcluded(
            case_id=case.id, program_id=access.program, occurred_at=now, reason=body.reason
        ),
        subject=str(case.id),
    )
    return await _fresh_view(uow, access, case.id)

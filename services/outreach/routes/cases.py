"""A person's case: contacts, services, referrals, declines, do-not-contact, conclusion."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import Response

from services.outreach.access import tagged
from services.outreach.deps import (
    LEADS,
    WORKERS,
    CurrentAccess,
    CurrentCase,
    Edit,
    Operations,
    Uow,
)
from services.outreach.schemas import (
    CaseView,
    ConclusionBody,
    ContactBody,
    ContactView,
    NoteBody,
    ReferralBody,
    ReferralUpdate,
    ReferralView,
    ServicesBody,
    ServicesView,
)
from services.outreach.service import cases

__all__ = ["api"]

api = Operations("/v1", "outreach")


@api.get("/cases/{case_id}", WORKERS, "review a case", 404)
async def get_case(
    case: CurrentCase, access: CurrentAccess, uow: Uow, response: Response
) -> CaseView:
    """A person's case: contact details, episodes, tasks, contacts, services, referrals and
    visits"""
    return tagged(response, await cases.read_case(uow=uow, access=access, case=case))


@api.post("/cases/{case_id}/contacts", WORKERS, "record a contact", 404, 409, created=True)
async def record_contact(
    body: ContactBody, case: CurrentCase, access: CurrentAccess, uow: Uow
) -> ContactView:
    """Record a contact made outside a logged attempt (e.g. the person called in)"""
    return await cases.record_contact(uow=uow, access=access, case=case, body=body)


@api.post("/cases/{case_id}/services", WORKERS, "record services", 404, 409, created=True)
async def record_services(
    body: ServicesBody, case: CurrentCase, access: CurrentAccess, uow: Uow
) -> ServicesView:
    """Record services given: naloxone kits, fentanyl test strips, syringe services, education

    At most 1000 of a kind at once; occurred_at is not before the overdose, nor in the future.
    """
    return await cases.record_services(uow=uow, access=access, case=case, body=body)


@api.post("/cases/{case_id}/referrals", WORKERS, "make a referral", 404, 409, created=True)
async def make_referral(
    body: ReferralBody, case: CurrentCase, access: CurrentAccess, uow: Uow, response: Response
) -> ReferralView:
    """Refer the person: MOUD, detox, treatment, mental health, housing, food, ...

    Only on an open case (409 `case_closed`); a referral already made keeps moving after the
    case closes (PATCH /v1/referrals/{id}), because care often starts after outreach ends.
    """
    return tagged(response, await cases.make_referral(uow=uow, access=access, case=case, body=body))


@api.patch("/referrals/{referral_id}", WORKERS, "update a referral", 404, 409, 412, 428)
async def update_referral(
    referral_id: uuid.UUID, body: ReferralUpdate, access: CurrentAccess, uow: Uow, edit: Edit
) -> ReferralView:
    """Move a referral along: offered → accepted → appointment → care started, or declined /
    lost (send If-Match)

    Also after the case closed: care often starts after outreach ends.
    """
    view = await cases.update_referral(
        uow=uow, access=access, referral_id=referral_id, body=body, if_match=edit.if_match
    )
    return edit.tag(view)


def _deciding(
    decision: Literal["decline", "do_not_contact"], doc: str
) -> Callable[..., Awaitable[CaseView]]:
    """What the person decides: one flow, two doors."""

    async def decide(
        body: NoteBody, case: CurrentCase, access: CurrentAccess, uow: Uow
    ) -> CaseView:
        return await cases.decide(
            uow=uow, access=access, case=case, decision=decision, notes=body.notes
        )

    decide.__name__ = decide.__qualname__ = decision
    decide.__doc__ = doc
    return decide


api.post("/cases/{case_id}/decline", WORKERS, "record a decline", 404, 409)(
    _deciding(
        "decline",
        """The person declines outreach: open tasks are cancelled, nothing new is planned

        Declined is honoured. A later overdose may open new outreach, as the policy says; a
        do-not-contact request is final.""",
    )
)
api.post("/cases/{case_id}/do-not-contact", WORKERS, "record a do-not-contact request", 404, 409)(
    _deciding(
        "do_not_contact",
        """The person asks never to be contacted again (final)

        Cancels open tasks and scheduled visits; no attempt, contact, visit or text is accepted
        for this person afterwards. This cannot be undone through the API.""",
    )
)


@api.post("/cases/{case_id}/conclusion", LEADS, "conclude outreach", 404, 409, 412, 428)
async def conclude(
    body: ConclusionBody, case: CurrentCase, access: CurrentAccess, uow: Uow, edit: Edit
) -> CaseView:
    """Conclude outreach with a reason (team leads; send If-Match with the case ETag)

    The scheduler closes the case and cancels what is still open.
    """
    condition = edit.if_match
    return edit.tag(
        await cases.conclude(uow=uow, access=access, case=case, body=body, if_match=condition)
    )

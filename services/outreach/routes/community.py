"""Referrals from the community, entered by the team (service.community)."""

from __future__ import annotations

from fastapi import Request, Response

from services.outreach.deps import WORKERS, CurrentAccess, Operations, Uow
from services.outreach.schemas import CommunityReferralBody, CommunityReferralView
from services.outreach.service import community
from shared.identity import Protector

__all__ = ["api"]

api = Operations("/v1", "outreach")


@api.post("/community-referrals", WORKERS, "enter a community referral", created=True)
async def enter_community_referral(
    body: CommunityReferralBody,
    access: CurrentAccess,
    uow: Uow,
    request: Request,
    response: Response,
) -> CommunityReferralView:
    """Enter a referral from the community (self, family, syringe services, jail, ...)

    The person enters the queue like anyone EMS, an ED or law enforcement reported: the
    scheduler links them (the same person reported elsewhere is one case), plans a remote
    contact under the program's policy, and honours a decline or a do-not-contact request.
    Identity and notes are stored sealed; the entry is audited. The answer's `id` is the
    report id: `GET /v1/tasks?report_id=` finds its task once the scheduler linked it.
    """
    protector: Protector = request.app.state.protector
    view = await community.enter_referral(uow=uow, access=access, protector=protector, body=body)
    response.headers["Location"] = f"/v1/community-referrals/{view.id}"
    return view

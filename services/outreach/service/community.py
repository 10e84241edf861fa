"""Referrals from the community, entered by the team: the person themself, family or a friend,
a syringe services program, a jail at release, another community partner.

A referral becomes a report like any other: outreach seals the person's identity and computes
their blind keys exactly as intake does (``shared.identity``), keeps the identity as a report
row for the queue, and publishes ``CommunityReferralReceived`` for the scheduler, which links,
plans and escalates it under the program's policy (do-not-contact and declines included).
The entry is audited.
"""

from __future__ import annotations

from services.outreach.access import Access, apply_rule
from services.outreach.models import COMMUNITY_REFERRAL, REPORT
from services.outreach.rules import check_occurred_at
from services.outreach.schemas import CommunityReferralBody, CommunityReferralView
from services.outreach.views import NOTE
from shared.events import CommunityReferralReceived, Consent
from shared.http import ApiError
from shared.identity import Address, Identity, Protector, person_key
from shared.ids import new_uuid
from shared.uow import UnitOfWork

__all__ = ["enter_referral"]


async def enter_referral(
    *, uow: UnitOfWork, access: Access, protector: Protector, body: CommunityReferralBody
) -> CommunityReferralView:
    """The referral, as a report the scheduler links and plans like any other."""
    now = access.runtime.clock.now()
    if body.overdose_at is not None:
        if not body.overdose:
            raise ApiError(
                422, "overdose_time_without_overdose", "overdose_at needs overdose = true."
            )
        apply_rule(
            check_occurred_at, body.overdose_at, now=now, overdose_at=None, field="overdose_at"
        )
    p = body.person
    address = Address(
        street=p.street, city=p.city, state=p.state, postal_code=p.postal_code, county=p.county
    )
    identity = Identity(
        family=p.family_name,
        given=p.given_name,
        dob=p.date_of_birth,
        phones=tuple(p.phones),
        address=address,
        language=p.language,
    )
    if identity.deidentified:
        raise ApiError(
            422,
            "person_unidentified",
            "Give the person's name or a phone number: a referral must say whom to reach.",
        )
    referral_id = new_uuid()
    keys = protector.blind_fields(identity, facility=None)
    location = protector.location(address)
    sealed = protector.seal_identity(identity)
    s = uow.session
    await s.execute(
        COMMUNITY_REFERRAL.insert().values(
            id=referral_id,
            program_id=access.program,
            referrer=body.referrer,
            consent=body.consent,
            overdose=body.overdose,
            notes_sealed=access.seal(body.notes, NOTE),
            created_by=access.actor,
            created_at=now,
        )
    )
    await s.execute(  # the identity the queue shows, as a report of intake's would be kept
        REPORT.insert().values(
            id=referral_id,
            program_id=access.program,
            revision=1,
            source_kind="community",
            incident_at=body.overdose_at or now,
            received_at=now,
            identity_sealed=sealed,
            address_sealed=location.address,
            county=location.county,
            state=location.state,
            consent=body.consent,
        )
    )
    uow.publish(
        CommunityReferralReceived(
            referral_id=referral_id,
            program_id=access.program,
            referrer=body.referrer,
            identity=sealed,
            **keys,
            deidentified=False,
            location=location,
            consent=Consent(body.consent),
            overdose=body.overdose,
            incident_at=body.overdose_at,
            received_at=now,
            entered_by=access.actor,
        ),
        subject=person_key(keys["blind_keys"], referral_id),
    )
    await access.audit(s, "create", "community_referral", [(referral_id, None)])
    await uow.commit()
    return CommunityReferralView(
        id=referral_id,
        referrer=body.referrer,
        consent=body.consent,
        overdose=body.overdose,
        created_at=now,
        created_by=access.actor,
    )

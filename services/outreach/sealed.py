"""Outreach's sealed columns and the context each is sealed under, for `portline keys reseal`
(shared/reseal.py). A new sealed column is added here in the same change that adds it."""

from __future__ import annotations

from services.outreach.access import PURPOSE
from services.outreach.models import (
    ATTEMPT,
    AUDIT,
    CASE_NOTE,
    COMMUNITY_REFERRAL,
    CONTACT,
    REFERRAL,
    REPORT,
    SMS_OPT_OUT,
    VISIT,
    VISIT_EVENT,
)
from services.outreach.views import NOTE, PLACE, PROVIDER, SMS_PHONE
from shared.reseal import SealedColumn

__all__ = ["COLUMNS"]

COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn(REPORT, "identity_sealed", ("identity",)),
    SealedColumn(REPORT, "address_sealed", ("address",)),
    SealedColumn(ATTEMPT, "notes_sealed", (NOTE,)),
    SealedColumn(CONTACT, "notes_sealed", (NOTE,)),
    SealedColumn(CASE_NOTE, "text_sealed", (NOTE,)),
    SealedColumn(REFERRAL, "provider_sealed", (PROVIDER,)),
    SealedColumn(REFERRAL, "notes_sealed", (NOTE,)),
    SealedColumn(VISIT, "meeting_place_sealed", (PLACE,)),
    SealedColumn(VISIT, "notes_sealed", (NOTE,)),
    SealedColumn(VISIT_EVENT, "note_sealed", (NOTE,)),
    SealedColumn(COMMUNITY_REFERRAL, "notes_sealed", (NOTE,)),
    SealedColumn(SMS_OPT_OUT, "phone_sealed", (SMS_PHONE,)),
    SealedColumn(AUDIT, "purpose_sealed", (PURPOSE,), append_only=True),
)

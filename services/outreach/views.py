"""Building the team's views from the store, a page at a time (a few queries per page, not
per row). Sealed fields are opened here and only for the fields a view shows."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.outreach.access import Access
from services.outreach.models import (
    ATTEMPT,
    CASE_NOTE,
    CONTACT,
    EPISODE,
    REFERRAL,
    REPORT,
    REPORT_LINK,
    SERVICE,
    TASK,
    TEAM_MEMBER,
    VISIT,
)
from services.outreach.rules import person_card
from services.outreach.schemas import (
    FAMILY_SUPPORT_GUIDANCE,
    AttemptView,
    CaseView,
    ContactView,
    DeputyPeer,
    DeputyVisit,
    EpisodeView,
    NoteView,
    OverdoseView,
    PersonView,
    ReferralView,
    ServicesView,
    TaskView,
    VisitView,
)
from shared.events import ServiceItem
from shared.sealing import SealingError

__all__ = [
    "NOTE",
    "PLACE",
    "SMS_PHONE",
    "attempt_view",
    "case_view",
    "deputy_visits",
    "person_of_case",
    "referral_view",
    "task_views",
    "visit_view",
]

NOTE = "outreach.note"
PLACE = "outreach.place"
PROVIDER = "outreach.provider"
SMS_PHONE = "outreach.sms_phone"  # an opted-out number (sms_opt_out.phone_sealed)

log = logging.getLogger(__name__)


async def _reports(
    session: AsyncSession, case_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[Any]]:
    """Each case's reports, newest first."""
    rows = await session.execute(
        sa.select(REPORT, REPORT_LINK.c.case_id, REPORT_LINK.c.episode_id)
        .join(REPORT_LINK, REPORT_LINK.c.report_id == REPORT.c.id)
        .where(REPORT_LINK.c.case_id.in_(list(set(case_ids))))
        .order_by(REPORT.c.received_at.desc())
    )
    by_case: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for row in rows:
        by_case[row.case_id].append(row)
    return by_case


def _open(access: Access, report: Any, token: str, context: str) -> dict[str, Any] | None:
    """A report's sealed part, or None when this service's keys cannot open it (a key id it
    does not hold, or damaged data): that report's person shows as unknown, and the rest of
    the page is still served."""
    try:
        opened: dict[str, Any] = access.sealer.open_json(token, context=context)
    except SealingError as exc:
        log.error(
            "a report's %s could not be opened: %s",
            context,
            type(exc).__name__,
            extra={"report_id": str(getattr(report, "id", "")), "context": context},
        )
        return None
    return opened


def _person(access: Access, reports: Sequence[Any]) -> PersonView:
    with_identity = next((r for r in reports if r.identity_sealed), None)
    identity = address = None
    if with_identity is not None:
        identity = _open(access, with_identity, with_identity.identity_sealed, "identity")
        if with_identity.address_sealed:
            address = _open(access, with_identity, with_identity.address_sealed, "address")
    card = person_card(identity, address)
    return PersonView(
        name=card.name, phones=list(card.phones), address=card.address, language=card.language
    )


def _overdose(access: Access, reports: Sequence[Any]) -> OverdoseView:
    if not reports:
        return OverdoseView(
            incident_at=None, address=None, county=None, state=None, source_kind=None
        )
    received = [r.received_at for r in reports if r.received_at is not None]
    first = min(reports, key=lambda r: r.incident_at)
    placed = next((r for r in reports if r.address_sealed), None)
    address = None
    if placed is not None:
        parts = _open(access, placed, placed.address_sealed, "address") or {}
        address = ", ".join(str(parts[k]) for k in ("street", "city") if parts.get(k)) or None
    return OverdoseView(
        incident_at=first.incident_at,
        address=address,
        county=next((r.county for r in reports if r.county), None),
        state=next((r.state for r in reports if r.state), None),
        source_kind=first.source_kind,
        received_at=min(received, default=None),
    )


async def person_of_case(access: Access, session: AsyncSession, case_id: uuid.UUID) -> PersonView:
    reports = await _reports(session, [case_id])
    return _person(access, reports.get(case_id, []))


def attempt_view(access: Access, row: Any) -> AttemptView:
    return AttemptView(
        id=row.id,
        task_id=row.task_id,
        channel=row.channel,
        outcome=row.outcome,
        occurred_at=row.occurred_at,
        by=row.created_by,
        notes=access.open(row.notes_sealed, NOTE),
    )


async def task_views(access: Access, session: AsyncSession, tasks: Sequence[Any]) -> list[TaskView]:
    """Tasks with what a peer needs to act on each: the person, the overdose, prior attempts
    and notes on the case."""
    if not tasks:
        return []
    case_ids = {t.case_id for t in tasks}
    reports = await _reports(session, case_ids)
    attempts: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for row in await session.execute(
        sa.select(ATTEMPT)
        .where(ATTEMPT.c.case_id.in_(case_ids))
        .order_by(ATTEMPT.c.occurred_at, ATTEMPT.c.id)
    ):
        attempts[row.case_id].append(row)
    notes_of: dict[uuid.UUID, list[NoteView]] = defaultdict(list)
    for row in await session.execute(
        sa.select(CONTACT).where(
            CONTACT.c.case_id.in_(case_ids), CONTACT.c.notes_sealed.isnot(None)
        )
    ):
        text = access.open(row.notes_sealed, NOTE)
        if text:
            notes_of[row.case_id].append(NoteView(at=row.occurred_at, by=row.created_by, text=text))
    for row in await session.execute(sa.select(CASE_NOTE).where(CASE_NOTE.c.case_id.in_(case_ids))):
        text = access.open(row.text_sealed, NOTE)
        if text:
            notes_of[row.case_id].append(NoteView(at=row.created_at, by=row.created_by, text=text))
    persons = {cid: _person(access, reports.get(cid, [])) for cid in case_ids}
    households = {  # family support: the household's address, nobody named to contact
        cid: PersonView(name=None, phones=[], address=person.address, language=person.language)
        for cid, person in persons.items()
    }
    views = []
    for t in tasks:
        case_reports = reports.get(t.case_id, [])
        episode_reports = [r for r in case_reports if r.episode_id == t.episode_id]
        case_attempts = [attempt_view(access, a) for a in attempts.get(t.case_id, [])]
        notes = [
            NoteView(at=a.occurred_at, by=a.by, text=a.notes) for a in case_attempts if a.notes
        ]
        notes.extend(notes_of.get(t.case_id, []))
        notes.sort(key=lambda n: n.at)
        views.append(
            TaskView(
                id=t.id,
                case_id=t.case_id,
                kind=t.kind,
                status=t.status,
                stage=t.stage,
                priority=t.priority,
                window_opens_at=t.window_opens_at,
                due_at=t.due_at,
                expires_at=t.expires_at,
                deputy=t.deputy,
                late=t.late,
                assignee_id=t.assignee_id,
                guidance=FAMILY_SUPPORT_GUIDANCE if t.kind == "family_support" else None,
                version=t.version,
                person=(households if t.kind == "family_support" else persons)[t.case_id],
                overdose=_overdose(access, episode_reports or case_reports),
                attempts=case_attempts,
                notes=notes,
            )
        )
    return views


def referral_view(access: Access, row: Any) -> ReferralView:
    return ReferralView(
        id=row.id,
        case_id=row.case_id,
        kind=row.kind,
        status=row.status,
        warm_handoff=row.warm_handoff,
        provider=access.open(row.provider_sealed, PROVIDER),
        appointment_at=row.appointment_at,
        notes=access.open(row.notes_sealed, NOTE),
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def visit_view(access: Access, row: Any) -> VisitView:
    return VisitView(
        id=row.id,
        case_id=row.case_id,
        task_id=row.task_id,
        window_start=row.window_start,
        window_end=row.window_end,
        meeting_place=access.open(row.meeting_place_sealed, PLACE) or "",
        peer_id=row.peer_id,
        with_deputy=row.with_deputy,
        deputy_id=row.deputy_id,
        status=row.status,
        outcome=row.outcome,
        deputy_status=row.deputy_status,
        safety_concern=row.safety_concern,
        version=row.version,
    )


async def case_view(access: Access, session: AsyncSession, case: Any) -> CaseView:
    cid = case.id
    reports = await _reports(session, [cid])
    tasks = list(
        await session.execute(
            sa.select(TASK).where(TASK.c.case_id == cid).order_by(TASK.c.due_at, TASK.c.id)
        )
    )
    episodes = await session.execute(
        sa.select(EPISODE).where(EPISODE.c.case_id == cid).order_by(EPISODE.c.incident_at)
    )
    contacts = await session.execute(
        sa.select(CONTACT).where(CONTACT.c.case_id == cid).order_by(CONTACT.c.occurred_at)
    )
    services: dict[tuple[Any, str], list[ServiceItem]] = defaultdict(list)
    for row in await session.execute(
        sa.select(SERVICE).where(SERVICE.c.case_id == cid).order_by(SERVICE.c.occurred_at)
    ):
        services[(row.occurred_at, row.created_by)].append(
            ServiceItem(kind=row.kind, count=row.count)
        )
    referrals = await session.execute(
        sa.select(REFERRAL).where(REFERRAL.c.case_id == cid).order_by(REFERRAL.c.created_at)
    )
    visits = await session.execute(
        sa.select(VISIT).where(VISIT.c.case_id == cid).order_by(VISIT.c.window_start)
    )
    return CaseView(
        id=cid,
        status="closed" if case.status == "closed" else "open",
        close_reason=case.close_reason,
        do_not_contact=case.do_not_contact,
        declined=case.declined,
        deceased=case.deceased_at is not None,
        version=case.version,
        person=_person(access, reports.get(cid, [])),
        episodes=[
            EpisodeView(
                id=e.id,
                incident_at=e.incident_at,
                repeat=e.repeat,
                received_at=e.received_at,
                late=e.late,
                fatal=e.fatal,
                source_kind=e.source_kind,
            )
            for e in episodes
        ],
        tasks=await task_views(access, session, tasks),
        contacts=[
            ContactView(
                id=c.id,
                channel=c.channel,
                task_id=c.task_id,
                occurred_at=c.occurred_at,
                by=c.created_by,
                notes=access.open(c.notes_sealed, NOTE),
            )
            for c in contacts
        ],
        services=[
            ServicesView(items=items, occurred_at=at, by=by) for (at, by), items in services.items()
        ],
        referrals=[referral_view(access, r) for r in referrals],
        visits=[visit_view(access, v) for v in visits],
    )


async def deputy_visits(
    access: Access, session: AsyncSession, visits: Sequence[Any]
) -> list[DeputyVisit]:
    """The deputy's view: built from the visit and the peer's work contact only."""
    peers = {v.peer_id for v in visits}
    members = {
        m.id: m
        for m in await session.execute(
            sa.select(TEAM_MEMBER).where(
                TEAM_MEMBER.c.id.in_(peers), TEAM_MEMBER.c.program_id == access.program
            )
        )
    }
    out = []
    for v in visits:
        member = members.get(v.peer_id)
        out.append(
            DeputyVisit(
                id=v.id,
                window_start=v.window_start,
                window_end=v.window_end,
                meeting_place=access.open(v.meeting_place_sealed, PLACE) or "",
                peer=DeputyPeer(
                    name=member.display_name if member else v.peer_id,
                    phone=member.phone if member else None,
                ),
                status=v.status,
                deputy_status=v.deputy_status,
                safety_concern=v.safety_concern,
            )
        )
    return out

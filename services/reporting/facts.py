"""Events become fact rows: one function per event type, registered in one table (`FACTS`).

Pure: nothing here touches the database. A batch of events becomes a `FactBatch`, the rows
each table gains (in event order) and what must be derived again afterwards: the cases, people
and reports the events touched (see `summary.py` and `store.py`). Rows hold no identity: the
sealed identity, blind keys and street address of a report are never copied.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from services.reporting.models import (
    ATTEMPT,
    CASE,
    CASE_DECISION,
    CONTACT,
    COUNTY,
    DAY,
    DEATH,
    EPISODE,
    HOT_SPOT,
    PARTNER,
    PERSON_MERGE,
    PROGRAM,
    REFERRAL,
    REFERRAL_STATUS,
    REJECTED,
    REPORT,
    SERVICE,
    TASK,
    VISIT,
)
from services.reporting.programs import ProgramBook
from shared.envelope import Envelope, Event
from shared.events import (
    AttemptLogged,
    CaseClosed,
    CaseOpened,
    CommunityReferralReceived,
    ContactMade,
    DeathRecorded,
    DoNotContactRequested,
    EpisodeOpened,
    HotSpotConcluded,
    InboundRejected,
    OutreachConcluded,
    OutreachDeclined,
    OverdoseReported,
    PersonsMerged,
    ReferralMade,
    ReferralStatusChanged,
    ReportLinked,
    ServicesProvided,
    TaskCancelled,
    TaskCompleted,
    TaskExpired,
    TaskScheduled,
    VisitCompleted,
    VisitScheduled,
)

__all__ = [
    "CONSENT_DECLINED_REASON",
    "FACTS",
    "UNKNOWN",
    "FactBatch",
    "FactContext",
    "county_key",
    "facts_of",
]

UNKNOWN = "unknown"
"""The group of a fact whose county, source or partner the report did not give."""

CONSENT_DECLINED_REASON = "consent_declined_no_tasks"
"""The scheduler's plan reason for an overdose whose person declined a follow-up at the scene."""

_COUNTY_SUFFIXES = (" county", " parish", " borough", " city and borough")


def county_key(raw: str | None) -> str:
    """How a county is grouped: spacing and case evened out, a trailing "County" dropped;
    a FIPS code as given; missing as "unknown"."""
    if raw is None or not raw.strip():
        return UNKNOWN
    text = " ".join(raw.split())
    if text.isdigit():
        return text[:64]
    lowered = text.casefold()
    for suffix in _COUNTY_SUFFIXES:
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            text = text[: -len(suffix)]
            break
    return text.title()[:64]


@dataclass(frozen=True)
class FactContext:
    programs: ProgramBook
    late_after: timedelta
    """For reports the scheduler never links: received this long after the overdose is late."""


@dataclass
class FactBatch:
    """The rows a batch of events adds, per table in event order, and what they touched."""

    rows: dict[sa.Table, list[dict[str, Any]]] = field(default_factory=dict)
    cases: set[uuid.UUID] = field(default_factory=set)
    people: set[uuid.UUID] = field(default_factory=set)
    reports: set[uuid.UUID] = field(default_factory=set)
    applied: int = 0

    def add(self, table: sa.Table, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)


def _periods(ctx: FactContext, program_id: str, when: datetime, batch: FactBatch) -> dict[str, Any]:
    periods = ctx.programs.for_program(program_id).periods(when)
    batch.add(DAY, {**periods.as_row(), "year": periods.day.year})
    return periods.as_row()


def _county(batch: FactBatch, program_id: str, raw: str | None, state: str | None) -> str:
    county = county_key(raw)
    batch.add(COUNTY, {"program_id": program_id, "county": county, "state": state})
    return county


def _program(batch: FactBatch, program_id: str, seen_at: datetime) -> None:
    batch.add(PROGRAM, {"program_id": program_id, "first_seen_at": seen_at})


def _report_row(
    ctx: FactContext,
    batch: FactBatch,
    *,
    report_id: uuid.UUID,
    program_id: str,
    revision: int,
    source_kind: str | None,
    source_org: str | None,
    incident_at: datetime | None,
    received_at: datetime | None,
    county: str | None,
    state: str | None,
    deidentified: bool,
    overdose: bool,
    fatal: bool,
    consent: str | None,
) -> dict[str, Any]:
    """A report's own facts; the local periods, lag and late mark follow from its times."""
    row: dict[str, Any] = {
        "report_id": report_id,
        "program_id": program_id,
        "revision": revision,
        "source_kind": source_kind or UNKNOWN,
        "source_org": source_org or UNKNOWN,
        "incident_at": None,
        "received_at": received_at,
        "day": None,
        "week": None,
        "month": None,
        "quarter": None,
        "county": _county(batch, program_id, county, state),
        "state": state,
        "deidentified": deidentified,
        "overdose": overdose,
        "fatal": fatal,
        "consent": consent,
        "lag_hours": None,
        "late_by_age": None,
        "episode_id": None,
        "match": None,
        "late_by_policy": None,
    }
    if incident_at is not None and received_at is not None:
        # An overdose time after the report's receipt is taken as the receipt (as the
        # scheduler does): a local time sent without its offset, or a skewed clock.
        incident = min(incident_at, received_at)
        lag = received_at - incident
        row.update(
            incident_at=incident,
            lag_hours=lag.total_seconds() / 3600,
            late_by_age=lag >= ctx.late_after,
            **_periods(ctx, program_id, incident, batch),
        )
    return row


def _partner(
    batch: FactBatch,
    *,
    source_org: str,
    source_kind: str,
    program_id: str | None,
    at: datetime,
    rejected: bool,
) -> None:
    batch.add(
        PARTNER,
        {
            "source_org": source_org,
            "program_id": program_id,
            "source_kind": source_kind,
            "first_message_at": at,
            "last_message_at": at,
            "last_report_at": None if rejected else at,
            "last_rejected_at": at if rejected else None,
        },
    )


# -- intake ----------------------------------------------------------------------------------


def _overdose_reported(e: OverdoseReported, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    _program(b, e.program_id, e.received_at)
    b.add(
        REPORT,
        _report_row(
            ctx,
            b,
            report_id=e.report_id,
            program_id=e.program_id,
            revision=e.revision,
            source_kind=e.source_kind,
            source_org=e.source_org,
            incident_at=e.incident_at,
            received_at=e.received_at,
            county=e.location.county,
            state=e.location.state,
            deidentified=e.deidentified,
            overdose=True,
            fatal=e.fatal,
            consent=e.consent.value,
        ),
    )
    _partner(
        b,
        source_org=e.source_org,
        source_kind=e.source_kind,
        program_id=e.program_id,
        at=e.received_at,
        rejected=False,
    )
    b.reports.add(e.report_id)


def _inbound_rejected(e: InboundRejected, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        REJECTED,
        {
            "inbound_id": e.inbound_id,
            "source_kind": e.source_kind,
            "source_org": e.source_org,
            "reason_code": e.reason_code[:64],
            "received_at": e.received_at,
        },
    )
    _partner(
        b,
        source_org=e.source_org,
        source_kind=e.source_kind,
        program_id=None,
        at=e.received_at,
        rejected=True,
    )


# -- scheduler -------------------------------------------------------------------------------


def _case_row(program_id: str, case_id: uuid.UUID, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "case_id": case_id,
        "program_id": program_id,
        "person_id": None,
        "opened_at": None,
        "closed_at": None,
        "close_reason": None,
    }
    row.update(values)
    return row


def _case_opened(e: CaseOpened, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(CASE, _case_row(e.program_id, e.case_id, person_id=e.person_id, opened_at=e.opened_at))


def _case_closed(e: CaseClosed, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        CASE,
        _case_row(e.program_id, e.case_id, closed_at=e.closed_at, close_reason=e.reason[:32]),
    )


def _episode_opened(e: EpisodeOpened, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    _program(b, e.program_id, e.incident_at)
    b.add(
        EPISODE,
        {
            "episode_id": e.episode_id,
            "program_id": e.program_id,
            "case_id": e.case_id,
            "person_id": e.person_id,
            "deidentified": False,
            "incident_at": e.incident_at,
            **_periods(ctx, e.program_id, e.incident_at, b),
            "windows_from": e.windows_from,
            "received_at": e.received_at,
            "county": _county(b, e.program_id, e.county, e.state),
            "state": e.state,
            "source_kind": e.source_kind or UNKNOWN,
            "source_org": e.source_org or UNKNOWN,
            "overdose": e.overdose,
            "fatal_reported": e.fatal,
            "late": e.late,
            "repeat": e.repeat,
            "consent_declined": CONSENT_DECLINED_REASON in e.reasons,
            # what the person's other episodes make it is derived (store.derive_people);
            # most people have one, so it starts there and is rarely written again
            "person_episodes": 1,
        },
    )
    b.cases.add(e.case_id)
    b.people.add(e.person_id)


def _report_linked(e: ReportLinked, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    row = _report_row(
        ctx,
        b,
        report_id=e.report_id,
        program_id=e.program_id,
        revision=0,  # any revision of the report's own event says more
        source_kind=e.source_kind,
        source_org=e.source_org,
        incident_at=e.incident_at,
        received_at=e.received_at,
        county=None,
        state=None,
        deidentified=False,
        overdose=True,
        fatal=False,
        consent=None,
    )
    row.update(episode_id=e.episode_id, match=e.match, late_by_policy=e.late)
    b.add(REPORT, row)
    b.reports.add(e.report_id)


def _persons_merged(e: PersonsMerged, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    """Two people are one: the merged person's episodes count as the person's (merges.py)."""
    b.add(
        PERSON_MERGE,
        {
            "merged_person_id": e.merged_person_id,
            "person_id": e.person_id,
            "program_id": e.program_id,
            "merged_at": e.merged_at,
        },
    )
    b.people.add(e.person_id)


def _task_row(program_id: str, case_id: uuid.UUID, task_id: uuid.UUID, **v: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task_id": task_id,
        "program_id": program_id,
        "case_id": case_id,
        "episode_id": None,
        "kind": None,
        "late": None,
        "window_opens_at": None,
        "due_at": None,
        "expires_at": None,
        "status": None,
        "close_reason": None,
        "closed_at": None,
    }
    row.update(v)
    return row


def _task_scheduled(e: TaskScheduled, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        TASK,
        _task_row(
            e.program_id,
            e.case_id,
            e.task_id,
            episode_id=e.episode_id,
            kind=e.kind.value,
            late=e.late,
            window_opens_at=e.window_opens_at,
            due_at=e.due_at,
            expires_at=e.expires_at,
        ),
    )
    b.cases.add(e.case_id)


def _task_completed(e: TaskCompleted, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        TASK,
        _task_row(
            e.program_id,
            e.case_id,
            e.task_id,
            status="completed",
            close_reason=e.outcome[:64],
            closed_at=e.completed_at,
        ),
    )


def _task_cancelled(e: TaskCancelled, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        TASK,
        _task_row(
            e.program_id,
            e.case_id,
            e.task_id,
            status="cancelled",
            close_reason=e.reason[:64],
            closed_at=e.cancelled_at,
        ),
    )


def _task_expired(e: TaskExpired, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        TASK,
        _task_row(
            e.program_id,
            e.case_id,
            e.task_id,
            status="expired",
            close_reason="window_closed",
            closed_at=e.fired_at,
        ),
    )


def _death_recorded(e: DeathRecorded, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        DEATH,
        {
            "episode_id": e.episode_id,
            "program_id": e.program_id,
            "case_id": e.case_id,
            "source_kind": e.source_kind,
            "recorded_at": e.recorded_at,
        },
    )
    b.cases.add(e.case_id)


# -- outreach --------------------------------------------------------------------------------


def _attempt_logged(e: AttemptLogged, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        ATTEMPT,
        {
            "attempt_id": e.attempt_id,
            "program_id": e.program_id,
            "case_id": e.case_id,
            "task_id": e.task_id,
            "channel": e.channel,
            "outcome": e.outcome,
            "occurred_at": e.occurred_at,
        },
    )
    b.cases.add(e.case_id)


def _contact_made(e: ContactMade, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        CONTACT,
        {
            "event_id": env.id,
            "program_id": e.program_id,
            "case_id": e.case_id,
            "task_id": e.task_id,
            "channel": e.channel,
            "occurred_at": e.occurred_at,
        },
    )
    b.cases.add(e.case_id)


def _services_provided(e: ServicesProvided, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    for index, item in enumerate(e.items):
        b.add(
            SERVICE,
            {
                "item_id": f"{env.id}:{index}",
                "program_id": e.program_id,
                "case_id": e.case_id,
                "kind": item.kind,
                "count": item.count,
                "occurred_at": e.occurred_at,
            },
        )
    b.cases.add(e.case_id)


def _hot_spot_concluded(e: HotSpotConcluded, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    """What the team distributed where a county's overdoses spiked: no case, no person."""
    _program(b, e.program_id, e.concluded_at)
    b.add(
        HOT_SPOT,
        {
            "task_id": e.task_id,
            "program_id": e.program_id,
            **_periods(ctx, e.program_id, e.concluded_at, b),
            "county": _county(b, e.program_id, e.county, e.state),
            "naloxone_kits": e.naloxone_kits,
            "test_strips": e.test_strips,
            "people_warned": e.warnings_given,
            "contacts_checked": e.contacts_checked,
            "concluded_at": e.concluded_at,
        },
    )


def _referral_made(e: ReferralMade, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        REFERRAL,
        {
            "referral_id": e.referral_id,
            "program_id": e.program_id,
            "case_id": e.case_id,
            "kind": e.kind,
            "warm_handoff": e.warm_handoff,
            "made_at": e.occurred_at,
        },
    )
    _referral_status(e.program_id, e.case_id, e.referral_id, e.status, e.occurred_at, env, b)


def _referral_status(
    program_id: str,
    case_id: uuid.UUID,
    referral_id: uuid.UUID,
    status: str,
    at: datetime,
    env: Envelope,
    b: FactBatch,
) -> None:
    b.add(
        REFERRAL_STATUS,
        {
            "event_id": env.id,
            "program_id": program_id,
            "case_id": case_id,
            "referral_id": referral_id,
            "status": status,
            "occurred_at": at,
        },
    )
    b.cases.add(case_id)


def _referral_status_changed(
    e: ReferralStatusChanged, env: Envelope, ctx: FactContext, b: FactBatch
) -> None:
    _referral_status(e.program_id, e.case_id, e.referral_id, e.status, e.occurred_at, env, b)


def _visit_row(
    program_id: str, case_id: uuid.UUID, visit_id: uuid.UUID, **v: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "visit_id": visit_id,
        "program_id": program_id,
        "case_id": case_id,
        "task_id": None,
        "scheduled_at": None,
        "completed_at": None,
        "reached": None,
    }
    row.update(v)
    return row


def _visit_scheduled(e: VisitScheduled, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        VISIT,
        _visit_row(
            e.program_id, e.case_id, e.visit_id, task_id=e.task_id, scheduled_at=e.occurred_at
        ),
    )
    b.cases.add(e.case_id)


def _visit_completed(e: VisitCompleted, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
    b.add(
        VISIT,
        _visit_row(
            e.program_id, e.case_id, e.visit_id, completed_at=e.occurred_at, reached=e.reached
        ),
    )
    b.cases.add(e.case_id)


def _decision(decision: str, reason: str | None) -> Callable[..., None]:
    def record(e: Any, env: Envelope, ctx: FactContext, b: FactBatch) -> None:
        b.add(
            CASE_DECISION,
            {
                "event_id": env.id,
                "program_id": e.program_id,
                "case_id": e.case_id,
                "decision": decision,
                "reason": getattr(e, "reason", reason),
                "occurred_at": e.occurred_at,
            },
        )
        b.cases.add(e.case_id)

    return record


def _community_referral(
    e: CommunityReferralReceived, env: Envelope, ctx: FactContext, b: FactBatch
) -> None:
    _program(b, e.program_id, e.received_at)
    b.add(
        REPORT,
        _report_row(
            ctx,
            b,
            report_id=e.referral_id,
            program_id=e.program_id,
            revision=1,
            source_kind="community",
            source_org=e.referrer,
            incident_at=e.incident_at or e.received_at,
            received_at=e.received_at,
            county=e.location.county,
            state=e.location.state,
            deidentified=e.deidentified,
            overdose=e.overdose,
            fatal=False,
            consent=e.consent.value,
        ),
    )
    b.reports.add(e.referral_id)


FactBuilder = Callable[[Any, Envelope, FactContext, FactBatch], None]

FACTS: dict[str, tuple[type[Event], FactBuilder]] = {
    model.event_type: (model, builder)
    for model, builder in (
        (OverdoseReported, _overdose_reported),
        (InboundRejected, _inbound_rejected),
        (CaseOpened, _case_opened),
        (CaseClosed, _case_closed),
        (EpisodeOpened, _episode_opened),
        (ReportLinked, _report_linked),
        (PersonsMerged, _persons_merged),
        (TaskScheduled, _task_scheduled),
        (TaskCompleted, _task_completed),
        (TaskCancelled, _task_cancelled),
        (TaskExpired, _task_expired),
        (DeathRecorded, _death_recorded),
        (AttemptLogged, _attempt_logged),
        (ContactMade, _contact_made),
        (ServicesProvided, _services_provided),
        (HotSpotConcluded, _hot_spot_concluded),
        (ReferralMade, _referral_made),
        (ReferralStatusChanged, _referral_status_changed),
        (VisitScheduled, _visit_scheduled),
        (VisitCompleted, _visit_completed),
        (OutreachDeclined, _decision("declined", None)),
        (DoNotContactRequested, _decision("do_not_contact", None)),
        (OutreachConcluded, _decision("concluded", None)),
        (CommunityReferralReceived, _community_referral),
    )
}
"""Every event reporting counts, by type, with the function that turns it into facts. Types
not here (timers firing, task assignments) change no figure and are skipped unread."""


def facts_of(envelopes: list[Envelope], ctx: FactContext) -> FactBatch:
    """The facts a batch of events adds, in their order."""
    batch = FactBatch()
    for envelope in envelopes:
        entry = FACTS.get(envelope.type)
        if entry is None:
            continue
        model, builder = entry
        event = envelope.event()
        if not isinstance(event, model):
            continue
        builder(event, envelope, ctx, batch)
        batch.applied += 1
    return batch

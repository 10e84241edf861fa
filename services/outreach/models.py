"""Outreach's own tables.

Two kinds live here:
- what outreach learns from other services' events (cases, episodes, report links and tasks
  from the scheduler; the sealed identity and place of each report from intake), kept as read
  models. Reports and their links come from two topics in either order, so they are two tables
  joined when read;
- the team's own work: attempts, contacts, services, referrals, visits, texts, the audit log.

Identity, addresses, meeting places and free-text notes are stored sealed (shared.sealing);
everything a query filters on is in the clear and free of PHI.
"""

from __future__ import annotations

import sqlalchemy as sa

from shared.db import UTCDateTime, bigint_pk

__all__ = [
    "ATTEMPT",
    "AUDIT",
    "CASE",
    "CASE_NOTE",
    "COMMUNITY_REFERRAL",
    "CONTACT",
    "EPISODE",
    "HOT_SPOT",
    "METADATA",
    "NOTICE",
    "REFERRAL",
    "REPORT",
    "REPORT_LINK",
    "SERVICE",
    "SMS_MESSAGE",
    "SMS_OPT_OUT",
    "TASK",
    "TEAM_MEMBER",
    "VISIT",
    "VISIT_EVENT",
]

METADATA = sa.MetaData()


def _id() -> sa.Column[object]:
    return sa.Column("id", sa.Uuid(), primary_key=True)


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def _program() -> sa.Column[object]:
    return sa.Column("program_id", sa.String(64), nullable=False)


def _actor(name: str = "created_by") -> sa.Column[object]:
    return sa.Column(name, sa.String(128), nullable=False)


CASE = sa.Table(
    "case_file",
    METADATA,
    _id(),
    _program(),
    sa.Column("person_id", sa.Uuid(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | concluding | closed
    _ts("opened_at"),
    _ts("closed_at", True),
    sa.Column("close_reason", sa.String(32)),
    sa.Column("do_not_contact", sa.Boolean(), nullable=False, default=False),
    sa.Column("declined", sa.Boolean(), nullable=False, default=False),
    _ts("deceased_at", True),  # from DeathRecorded: no outreach to the person, ever
    sa.Column("version", sa.Integer(), nullable=False, default=1),
    sa.Column("merged_into", sa.Uuid()),  # folded into this case when two people were one
)

EPISODE = sa.Table(
    "episode",
    METADATA,
    _id(),
    sa.Column("case_id", sa.Uuid(), nullable=False, index=True),
    _program(),
    _ts("incident_at"),
    sa.Column("repeat", sa.Boolean(), nullable=False),
    _ts("received_at", True),
    sa.Column("late", sa.Boolean(), nullable=False, default=False),
    sa.Column("fatal", sa.Boolean(), nullable=False, default=False),
    sa.Column("source_kind", sa.String(16)),
)

REPORT = sa.Table(
    "report",
    METADATA,
    _id(),
    _program(),
    sa.Column("revision", sa.Integer(), nullable=False),
    sa.Column("source_kind", sa.String(16)),
    _ts("incident_at", True),
    _ts("received_at", True),
    sa.Column("identity_sealed", sa.Text()),
    sa.Column("address_sealed", sa.Text()),
    sa.Column("county", sa.String(64)),
    sa.Column("state", sa.String(8)),
    sa.Column("consent", sa.String(16)),
)

REPORT_LINK = sa.Table(
    "report_link",
    METADATA,
    sa.Column("report_id", sa.Uuid(), primary_key=True),  # from ReportLinked
    _program(),
    sa.Column("case_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("episode_id", sa.Uuid(), nullable=False),
)

TASK = sa.Table(
    "task",
    METADATA,
    _id(),
    _program(),
    sa.Column("case_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("episode_id", sa.Uuid(), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | completed | cancelled | expired
    sa.Column("stage", sa.String(16), nullable=False),  # scheduled | due | overdue
    sa.Column("priority", sa.Integer(), nullable=False),
    _ts("window_opens_at"),
    _ts("due_at"),
    _ts("expires_at"),
    sa.Column("policy_version", sa.String(64), nullable=False),
    sa.Column("deputy", sa.String(16), nullable=False),
    sa.Column("late", sa.Boolean(), nullable=False, default=False),
    sa.Column("quiet_hours", sa.Text()),  # JSON of TaskScheduled.quiet_hours, when planned
    sa.Column("assignee_id", sa.String(128)),
    _ts("assigned_at", True),
    sa.Column("outcome", sa.String(64)),
    _ts("closed_at", True),
    sa.Column("version", sa.Integer(), nullable=False),
    _ts("updated_at"),
    sa.Index("ix_task_queue", "program_id", "status", "due_at"),
)

ATTEMPT = sa.Table(
    "attempt",
    METADATA,
    _id(),
    _program(),
    sa.Column("case_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("task_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("notes_sealed", sa.Text()),
    _ts("occurred_at"),
    _actor(),
    _ts("created_at"),
)

CONTACT = sa.Table(
    "contact",
    METADATA,
    _id(),
    _program(),
    sa.Column("case_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("task_id", sa.Uuid()),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("notes_sealed", sa.Text()),
    _ts("occurred_at"),
    _actor(),
    _ts("created_at"),
)

CASE_NOTE = sa.Table(
    "case_note",
    METADATA,
    _id(),
    _program(),
    sa.Column("case_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("text_sealed", sa.Text(), nullable=False),
    _actor(),
    _ts("created_at"),
)

SERVICE = sa.Table(
    "service_given",
    METADATA,
    _id(),
    _program(),
    sa.Column("case_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("count", sa.Integer(), nullable=False),
    _ts("occurred_at"),
    _actor(),
    _ts("created_at"),
)

REFERRAL = sa.Table(
    "referral",
    METADATA,
    _id(),
    _program(),
    sa.Column("case_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("warm_handoff", sa.Boolean(), nullable=False),
    sa.Column("provider_sealed", sa.Text()),
    _ts("appointment_at", True),
    sa.Column("notes_sealed", sa.Text()),
    sa.Column("version", sa.Integer(), nullable=False),
    _actor(),
    _ts("created_at"),
    _ts("updated_at"),
)

VISIT = sa.Table(
    "visit",
    METADATA,
    _id(),
    _program(),
    sa.Column("case_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("task_id", sa.Uuid(), nullable=False, index=True),
    _ts("window_start"),
    _ts("window_end"),
    sa.Column("meeting_place_sealed", sa.Text(), nullable=False),
    sa.Column("peer_id", sa.String(128), nullable=False),
    sa.Column("deputy_id", sa.String(128)),
    sa.Column("with_deputy", sa.Boolean(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # scheduled | completed | cancelled
    sa.Column("outcome", sa.String(16)),
    sa.Column("notes_sealed", sa.Text()),
    sa.Column("deputy_status", sa.String(16)),  # arrived | departed
    sa.Column("safety_concern", sa.Boolean(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    _actor(),
    _ts("created_at"),
    _ts("updated_at"),
)

VISIT_EVENT = sa.Table(
    "visit_event",
    METADATA,
    bigint_pk(),
    sa.Column("visit_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # arrived | departed | safety_concern
    sa.Column("note_sealed", sa.Text()),
    _actor("actor_id"),
    _ts("at"),
)

TEAM_MEMBER = sa.Table(
    "team_member",
    METADATA,
    sa.Column("id", sa.String(128), primary_key=True),  # the token's subject
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("display_name", sa.String(128), nullable=False),
    sa.Column("phone", sa.String(32)),  # a work phone, not PHI
    sa.Column("active", sa.Boolean(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    _ts("updated_at"),
)

SMS_OPT_OUT = sa.Table(
    "sms_opt_out",
    METADATA,
    sa.Column("phone_key", sa.String(64), primary_key=True),  # blind index of the number
    _ts("at"),
    sa.Column("version", sa.String(32), nullable=False, server_default="b1"),  # of phone_key
    # The rows of one number's opt-out (one per blind-index version) share it: the phone_key of
    # the first row recorded for the number.
    sa.Column("number_key", sa.String(64), nullable=False, index=True),
    sa.Column("phone_sealed", sa.Text()),  # the number, sealed (views.SMS_PHONE), for reindex
    sa.Index("ix_sms_opt_out_version", "version", "number_key"),
)

SMS_MESSAGE = sa.Table(
    "sms_message",
    METADATA,
    _id(),
    _program(),
    sa.Column("case_id", sa.Uuid(), nullable=False, index=True),
    sa.Column("task_id", sa.Uuid()),
    sa.Column("template", sa.String(64), nullable=False),
    sa.Column("provider_id", sa.String(64)),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("quiet_hours_override", sa.Boolean(), nullable=False, default=False),
    _actor(),
    _ts("created_at"),
)

AUDIT = sa.Table(
    "audit_log",
    METADATA,
    bigint_pk(),
    _ts("at"),
    sa.Column("actor_id", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # read | create | update
    sa.Column("resource", sa.String(32), nullable=False),
    sa.Column("resource_id", sa.String(64)),
    sa.Column("case_id", sa.Uuid(), index=True),
    sa.Column("purpose", sa.String(200), nullable=False),  # the operation's, fixed text
    sa.Column("purpose_sealed", sa.Text()),  # the caller's X-Purpose, free text
    sa.Column("request_id", sa.String(64)),
)

NOTICE = sa.Table(
    "notice",
    METADATA,
    _id(),
    _program(),
    sa.Column("member_id", sa.String(128), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=False),
    sa.Column("task_id", sa.Uuid()),
    sa.Column("kind", sa.String(32), nullable=False),  # person_deceased
    _ts("created_at"),
    _ts("dismissed_at", True),
    sa.Index("ix_notice_member", "program_id", "member_id", "dismissed_at"),
)
"""What a team member must be told in their queue, not by a knock on a door: the person of a
task they held has died."""

COMMUNITY_REFERRAL = sa.Table(
    "community_referral",
    METADATA,
    _id(),  # also the report id the scheduler links
    _program(),
    sa.Column("referrer", sa.String(32), nullable=False),
    sa.Column("consent", sa.String(16), nullable=False),
    sa.Column("overdose", sa.Boolean(), nullable=False),
    sa.Column("notes_sealed", sa.Text()),
    _actor(),
    _ts("created_at"),
)
"""A referral from the community the team entered; its identity is kept as a report row."""

HOT_SPOT = sa.Table(
    "hot_spot_task",
    METADATA,
    _id(),  # the scheduler's task id (HotSpotTaskScheduled)
    _program(),
    sa.Column("county", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16)),
    sa.Column("status", sa.String(16), nullable=False),  # open | concluded
    sa.Column("alert_ids", sa.Text(), nullable=False),  # JSON list, first to latest
    sa.Column("detector", sa.String(16), nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("observed", sa.Float(), nullable=False),
    sa.Column("expected", sa.Float()),
    _ts("window_start"),
    _ts("window_end"),
    sa.Column("priority", sa.Integer(), nullable=False),
    sa.Column("policy_version", sa.String(64), nullable=False),
    _ts("opened_at"),
    _ts("due_at"),
    sa.Column("naloxone_kits", sa.Integer()),
    sa.Column("test_strips", sa.Integer()),
    sa.Column("warnings_given", sa.Integer()),
    sa.Column("contacts_checked", sa.Integer()),
    sa.Column("note_sealed", sa.Text()),
    sa.Column("concluded_by", sa.String(128)),
    _ts("concluded_at", True),
    sa.Column("version", sa.Integer(), nullable=False),
    _ts("updated_at"),
    sa.Index("ix_hot_spot_task_queue", "program_id", "status", "due_at"),
)
"""Outreach where a county's overdoses spiked: no person, no case. A team lead concludes it
with what the team distributed (published as HotSpotConcluded)."""

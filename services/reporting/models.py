"""Reporting's own tables: facts per episode, report, task, attempt, contact, visit, service,
referral and case decision, and the dimensions they are counted by (program, county, source,
partner, day).

No identity lives here: no name, date of birth, phone, address, blind key, sealed token or
note. Opaque ids (case, person, episode, report, task) are kept so facts can be joined and
distinct people counted; they identify nobody outside PORTline.

Facts are keyed by the id their event carries, so applying an event twice changes nothing.
The outcome columns of `rpt_episode` (first attempt, reached, services, ...) are derived from
the other facts whenever they change (`services.reporting.summary`), so they do not depend on
the order in which events arrived.
"""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa

from shared.db import UTCDateTime

__all__ = [
    "ALERT",
    "ALERT_DECISION",
    "ATTEMPT",
    "CASE",
    "CASE_DECISION",
    "CONTACT",
    "COUNTY",
    "DAY",
    "DEATH",
    "EPISODE",
    "EPISODE_OUTCOMES",
    "FACT_TABLES",
    "FEED_ALERT",
    "HOT_SPOT",
    "METADATA",
    "PARTNER",
    "PERSON_MERGE",
    "PROGRAM",
    "READ_MODEL_TABLES",
    "REBUILD",
    "REFERRAL",
    "REFERRAL_STATUS",
    "REJECTED",
    "REPORT",
    "SERVICE",
    "SOURCE",
    "TASK",
    "VISIT",
    "Flag",
]

METADATA = sa.MetaData()


def _key(length: int) -> sa.types.TypeEngine[str]:
    """Text that facts are grouped by: compared as bytes on PostgreSQL (COLLATE "C"), which
    sorts and hashes several times faster than a locale's rules; groups need no locale."""
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _ts(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def _periods(nullable: bool = False) -> list[sa.Column[object]]:
    """The local calendar periods of a fact's date, on the program's clock."""
    return [
        sa.Column("day", sa.Date(), nullable=nullable),
        sa.Column("week", sa.Date(), nullable=nullable),  # the Monday of its ISO week
        sa.Column("month", sa.Date(), nullable=nullable),  # the first of its month
        sa.Column("quarter", sa.Date(), nullable=nullable),  # the first day of its quarter
    ]


class Flag(enum.IntFlag):
    """What an episode counts towards, as one integer (`rpt_episode.flags`, kept by the
    database from the episode's columns), so that a query groups by it instead of
    evaluating every condition per row and figure. The last six depend on the moment of the
    question, so queries add them (`query.py`)."""

    OVERDOSE = 1 << 0  # a non-fatal overdose
    DEATH = 1 << 1  # a fatal overdose
    DECLINED_AT_SCENE = 1 << 2
    TIMED_FIRST_ATTEMPT = 1 << 3  # a remote-contact task and a first attempt: in the median
    NAMED = 1 << 4  # a person: counted among people
    MULTI = 1 << 5  # the person has other episodes: people are counted apart (query.py)
    ALIVE = 1 << 6  # not fatal: the person was referred
    TASK = 1 << 7  # a remote-contact or in-person task
    ATTEMPTED = 1 << 8
    TASK_ATTEMPTED = 1 << 9
    REACHED = 1 << 10
    ENGAGED = 1 << 11
    DECLINED_OUTREACH = 1 << 12
    DO_NOT_CONTACT = 1 << 13
    REMOTE = 1 << 14  # a remote-contact task
    FIRST_24H = 1 << 15  # a remote-contact task first attempted within 24 h
    FIRST_72H = 1 << 16
    AGAIN_30D = 1 << 17  # another overdose of the person followed within 30 days
    AGAIN_90D = 1 << 18
    # added by queries, from the moment of the question
    DUE_24H = 1 << 20  # a remote-contact task whose first 24 h passed, or attempted within
    DUE_72H = 1 << 21
    PASSED_30D = 1 << 22  # a non-fatal overdose at least 30 days ago
    REPEAT_30D = 1 << 23  # ... followed by another within 30 days
    PASSED_90D = 1 << 24
    REPEAT_90D = 1 << 25


_STORED_FLAGS = {
    Flag.OVERDOSE: "overdose AND NOT fatal",
    Flag.DEATH: "overdose AND fatal",
    Flag.DECLINED_AT_SCENE: "consent_declined",
    Flag.TIMED_FIRST_ATTEMPT: "remote_task AND first_attempt_hours IS NOT NULL",
    Flag.NAMED: "person_id IS NOT NULL",
    Flag.MULTI: "person_episodes > 1",
    Flag.ALIVE: "NOT fatal",
    Flag.TASK: "outreach_task",
    Flag.ATTEMPTED: "first_attempt_at IS NOT NULL",
    Flag.TASK_ATTEMPTED: "outreach_task AND first_attempt_at IS NOT NULL",
    Flag.REACHED: "reached_at IS NOT NULL",
    Flag.ENGAGED: "engaged",
    Flag.DECLINED_OUTREACH: "declined_outreach",
    Flag.DO_NOT_CONTACT: "do_not_contact",
    Flag.REMOTE: "remote_task",
    Flag.FIRST_24H: "remote_task AND first_attempt_hours <= 24",
    Flag.FIRST_72H: "remote_task AND first_attempt_hours <= 72",
    Flag.AGAIN_30D: "next_overdose_hours <= 720",
    Flag.AGAIN_90D: "next_overdose_hours <= 2160",
}
FLAGS_SQL = " + ".join(
    f"(CASE WHEN {condition} THEN {int(flag)} ELSE 0 END)"
    for flag, condition in _STORED_FLAGS.items()
)
"""The expression the database keeps `rpt_episode.flags` by (a generated column)."""


EPISODE = sa.Table(
    "rpt_episode",
    METADATA,
    sa.Column("episode_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", _key(64), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=True),
    sa.Column("person_id", sa.Uuid(), nullable=True),
    sa.Column("deidentified", sa.Boolean(), nullable=False),
    _ts("incident_at", nullable=False),
    *_periods(),
    _ts("windows_from"),
    _ts("received_at"),
    sa.Column("county", _key(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=True),
    sa.Column("source_kind", _key(32), nullable=False),
    sa.Column("source_org", _key(100), nullable=False),
    sa.Column("overdose", sa.Boolean(), nullable=False),
    sa.Column("fatal_reported", sa.Boolean(), nullable=False),
    sa.Column("late", sa.Boolean(), nullable=False),
    sa.Column("repeat", sa.Boolean(), nullable=False),
    sa.Column("consent_declined", sa.Boolean(), nullable=False),
    # Outcomes, derived from the other facts (summary.py); a de-identified episode keeps them
    # at their defaults, since nobody can be reached.
    sa.Column("fatal", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("remote_task", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("outreach_task", sa.Boolean(), nullable=False, server_default=sa.false()),
    _ts("first_attempt_at"),
    sa.Column("first_attempt_hours", sa.Float(), nullable=True),
    _ts("reached_at"),
    sa.Column("engaged", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("declined_outreach", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("do_not_contact", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("visits_completed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("naloxone_kits", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("test_strips", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_overdose_hours", sa.Float(), nullable=True),
    sa.Column("person_episodes", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("flags", sa.Integer(), sa.Computed(FLAGS_SQL, persisted=True)),
    # No covering index here: the outcome columns change as work is done, and an index that
    # includes them would turn every such update into an index write (measured: twice the
    # cost of applying a batch); queries read the rows' flags anyway.
    sa.Index("ix_rpt_episode_program_day", "program_id", "day"),
    sa.Index("ix_rpt_episode_case", "case_id"),
    sa.Index("ix_rpt_episode_person", "person_id"),
    postgresql_with={"fillfactor": 80},  # room for the outcome updates (HOT)
)

EPISODE_OUTCOMES = (
    "fatal",
    "remote_task",
    "outreach_task",
    "first_attempt_at",
    "first_attempt_hours",
    "reached_at",
    "engaged",
    "declined_outreach",
    "do_not_contact",
    "visits_completed",
    "naloxone_kits",
    "test_strips",
)
"""The columns of rpt_episode that summary.py derives for a case's episodes."""

REPORT = sa.Table(
    "rpt_report",
    METADATA,
    sa.Column("report_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", _key(64), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False),  # 0: only ReportLinked seen yet
    sa.Column("source_kind", _key(32), nullable=False),
    sa.Column("source_org", _key(100), nullable=False),
    # The times (and so the periods) are null while only a ReportLinked v1 has been seen.
    _ts("incident_at"),
    _ts("received_at"),
    *_periods(nullable=True),
    sa.Column("county", _key(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=True),
    sa.Column("deidentified", sa.Boolean(), nullable=False),
    sa.Column("overdose", sa.Boolean(), nullable=False),
    sa.Column("fatal", sa.Boolean(), nullable=False),
    sa.Column("consent", sa.String(16), nullable=True),
    sa.Column("lag_hours", sa.Float(), nullable=True),
    sa.Column("late_by_age", sa.Boolean(), nullable=True),
    # From the scheduler's ReportLinked: the episode, and the policy's own late mark.
    sa.Column("episode_id", sa.Uuid(), nullable=True),
    sa.Column("match", sa.String(16), nullable=True),
    sa.Column("late_by_policy", sa.Boolean(), nullable=True),
    sa.Index(
        "ix_rpt_report_program_day",
        "program_id",
        "day",
        postgresql_include=[
            "week",
            "month",
            "quarter",
            "county",
            "source_kind",
            "source_org",
            "late_by_policy",
            "late_by_age",
            "lag_hours",
        ],
    ),
    sa.Index("ix_rpt_report_partner", "source_org", "received_at"),
)

CASE = sa.Table(
    "rpt_case",
    METADATA,
    sa.Column("case_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("person_id", sa.Uuid(), nullable=True),
    _ts("opened_at"),
    _ts("closed_at"),
    sa.Column("close_reason", sa.String(32), nullable=True),
)

PERSON_MERGE = sa.Table(
    "rpt_person_merge",
    METADATA,
    # A lead confirmed two people are one (PersonsMerged): the person merged away, and the one
    # they were merged into. Opaque ids only. Episodes carry the person they count as now
    # (the end of the chain of merges), see merges.py.
    sa.Column("merged_person_id", sa.Uuid(), primary_key=True),
    sa.Column("person_id", sa.Uuid(), nullable=False),
    sa.Column("program_id", sa.String(64), nullable=False),
    _ts("merged_at", nullable=False),
    sa.Index("ix_rpt_person_merge_person", "person_id"),
)

TASK = sa.Table(
    "rpt_task",
    METADATA,
    sa.Column("task_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=False),
    sa.Column("episode_id", sa.Uuid(), nullable=True),
    sa.Column("kind", sa.String(32), nullable=True),
    sa.Column("late", sa.Boolean(), nullable=True),
    _ts("window_opens_at"),
    _ts("due_at"),
    _ts("expires_at"),
    sa.Column("status", sa.String(16), nullable=True),  # completed, cancelled, expired; null: open
    sa.Column("close_reason", sa.String(64), nullable=True),
    _ts("closed_at"),
    sa.Index("ix_rpt_task_case", "case_id"),
)

ATTEMPT = sa.Table(
    "rpt_attempt",
    METADATA,
    sa.Column("attempt_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=False),
    sa.Column("task_id", sa.Uuid(), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    _ts("occurred_at", nullable=False),
    sa.Index("ix_rpt_attempt_case", "case_id"),
)

CONTACT = sa.Table(
    "rpt_contact",
    METADATA,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=False),
    sa.Column("task_id", sa.Uuid(), nullable=True),
    sa.Column("channel", sa.String(16), nullable=False),
    _ts("occurred_at", nullable=False),
    sa.Index("ix_rpt_contact_case", "case_id"),
)

VISIT = sa.Table(
    "rpt_visit",
    METADATA,
    sa.Column("visit_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=False),
    sa.Column("task_id", sa.Uuid(), nullable=True),
    _ts("scheduled_at"),
    _ts("completed_at"),
    sa.Column("reached", sa.Boolean(), nullable=True),
    sa.Index("ix_rpt_visit_case", "case_id"),
)

SERVICE = sa.Table(
    "rpt_service",
    METADATA,
    sa.Column("item_id", sa.String(80), primary_key=True),  # the event id and the item's place
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("count", sa.Integer(), nullable=False),
    _ts("occurred_at", nullable=False),
    sa.Index("ix_rpt_service_case", "case_id"),
)

REFERRAL = sa.Table(
    "rpt_referral",
    METADATA,
    sa.Column("referral_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", _key(64), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("warm_handoff", sa.Boolean(), nullable=False),
    _ts("made_at", nullable=False),
    # Derived (summary.py): the episode it is counted under, and whether care started.
    sa.Column("episode_id", sa.Uuid(), nullable=True),
    sa.Column("care_started", sa.Boolean(), nullable=False, server_default=sa.false()),
    # ...and the groups of that episode, so referrals are counted without a join
    *_periods(nullable=True),
    sa.Column("county", _key(64), nullable=True),
    sa.Column("source_kind", _key(32), nullable=True),
    sa.Column("source_org", _key(100), nullable=True),
    sa.Index("ix_rpt_referral_case", "case_id"),
    sa.Index("ix_rpt_referral_episode", "episode_id"),
    sa.Index(
        "ix_rpt_referral_program_day",
        "program_id",
        "day",
        postgresql_include=[
            "week",
            "month",
            "quarter",
            "county",
            "source_kind",
            "source_org",
            "episode_id",
            "warm_handoff",
            "care_started",
        ],
    ),
)

REFERRAL_STATUS = sa.Table(
    "rpt_referral_status",
    METADATA,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=False),
    sa.Column("referral_id", sa.Uuid(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    _ts("occurred_at", nullable=False),
    sa.Index("ix_rpt_referral_status_case", "case_id"),
)

CASE_DECISION = sa.Table(
    "rpt_case_decision",
    METADATA,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=False),
    sa.Column("decision", sa.String(32), nullable=False),  # declined, do_not_contact, concluded
    sa.Column("reason", sa.String(32), nullable=True),
    _ts("occurred_at", nullable=False),
    sa.Index("ix_rpt_case_decision_case", "case_id"),
)

DEATH = sa.Table(
    "rpt_death",
    METADATA,
    sa.Column("episode_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("case_id", sa.Uuid(), nullable=False),
    sa.Column("source_kind", sa.String(32), nullable=False),
    _ts("recorded_at", nullable=False),
    sa.Index("ix_rpt_death_case", "case_id"),
)

REJECTED = sa.Table(
    "rpt_rejected",
    METADATA,
    sa.Column("inbound_id", sa.Uuid(), primary_key=True),
    sa.Column("source_kind", sa.String(32), nullable=False),
    sa.Column("source_org", sa.String(100), nullable=False),
    sa.Column("reason_code", sa.String(64), nullable=False),
    _ts("received_at", nullable=False),
    sa.Index("ix_rpt_rejected_partner", "source_org", "received_at"),
)

# -- dimensions ------------------------------------------------------------------------------

PROGRAM = sa.Table(
    "rpt_program",
    METADATA,
    sa.Column("program_id", sa.String(64), primary_key=True),
    _ts("first_seen_at", nullable=False),
)

COUNTY = sa.Table(
    "rpt_county",
    METADATA,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("county", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=True),
)

SOURCE = sa.Table(
    "rpt_source",
    METADATA,
    sa.Column("source_kind", sa.String(32), primary_key=True),
    sa.Column("label", sa.String(64), nullable=False),
)

PARTNER = sa.Table(
    "rpt_partner",
    METADATA,
    sa.Column("source_org", sa.String(100), primary_key=True),
    # Null for a partner only ever seen in rejected messages (which name no program).
    sa.Column("program_id", sa.String(64), nullable=True),
    sa.Column("source_kind", sa.String(32), nullable=False),
    _ts("first_message_at", nullable=False),
    _ts("last_message_at", nullable=False),
    _ts("last_report_at"),
    _ts("last_rejected_at"),
)

DAY = sa.Table(
    "rpt_day",
    METADATA,
    sa.Column("day", sa.Date(), primary_key=True),
    sa.Column("week", sa.Date(), nullable=False),
    sa.Column("month", sa.Date(), nullable=False),
    sa.Column("quarter", sa.Date(), nullable=False),
    sa.Column("year", sa.Integer(), nullable=False),
)

REBUILD = sa.Table(
    "rpt_rebuild",
    METADATA,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # running, done or interrupted
    _ts("started_at", nullable=False),
    _ts("finished_at"),
    sa.Column("events", sa.BigInteger(), nullable=False),
)

# -- alerts (kept by a rebuild: they are what the program was told, and what it decided) ------

ALERT = sa.Table(
    "rpt_alert",
    METADATA,
    sa.Column("alert_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("county", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=True),
    sa.Column("detector", sa.String(16), nullable=False),  # ewma, odmap
    sa.Column("level", sa.String(16), nullable=False),  # warning, alert
    sa.Column("status", sa.String(16), nullable=False),  # open, acknowledged, dismissed
    _ts("window_start", nullable=False),
    _ts("window_end", nullable=False),
    sa.Column("observed", sa.Float(), nullable=False),
    sa.Column("expected", sa.Float(), nullable=True),
    sa.Column("p_value", sa.Float(), nullable=True),
    sa.Column("threshold", sa.Integer(), nullable=True),
    _ts("detected_at", nullable=False),
    _ts("updated_at", nullable=False),
    sa.UniqueConstraint("program_id", "county", "detector", "window_start", name="uq_rpt_alert"),
    sa.Index("ix_rpt_alert_program", "program_id", "detected_at"),
)

ALERT_DECISION = sa.Table(
    "rpt_alert_decision",
    METADATA,
    sa.Column("alert_id", sa.Uuid(), primary_key=True),
    sa.Column("decision", sa.String(16), nullable=False),  # acknowledged, dismissed
    sa.Column("decided_by", sa.String(128), nullable=False),  # the lead's token subject
    _ts("decided_at", nullable=False),
    # The lead's note, free text: the one text reporting keeps, sealed like outreach's notes
    # (it may name someone), and never published.
    sa.Column("note_sealed", sa.Text(), nullable=True),
)

FEED_ALERT = sa.Table(
    "rpt_feed_alert",
    METADATA,
    sa.Column("alert_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("source_org", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # silent, rejects_rising
    _ts("raised_at", nullable=False),
    _ts("cleared_at"),
    sa.Index("ix_rpt_feed_alert_partner", "program_id", "source_org", "kind", "raised_at"),
)

HOT_SPOT = sa.Table(
    "rpt_hot_spot",
    METADATA,
    sa.Column("task_id", sa.Uuid(), primary_key=True),
    sa.Column("program_id", _key(64), nullable=False),
    *_periods(),  # of the conclusion, on the program's clock
    sa.Column("county", _key(64), nullable=False),
    sa.Column("naloxone_kits", sa.Integer(), nullable=False),
    sa.Column("test_strips", sa.Integer(), nullable=False),
    sa.Column("people_warned", sa.Integer(), nullable=False),
    sa.Column("contacts_checked", sa.Integer(), nullable=False),
    _ts("concluded_at", nullable=False),
    sa.Index("ix_rpt_hot_spot_program_day", "program_id", "day"),
)
"""A concluded hot-spot task (outreach's HotSpotConcluded): what the team distributed where a
county's overdoses spiked, counted in the services metrics by the conclusion's date."""

FACT_TABLES = (
    EPISODE,
    REPORT,
    CASE,
    PERSON_MERGE,
    TASK,
    ATTEMPT,
    CONTACT,
    VISIT,
    SERVICE,
    REFERRAL,
    REFERRAL_STATUS,
    CASE_DECISION,
    DEATH,
    REJECTED,
    HOT_SPOT,
)
READ_MODEL_TABLES = (*FACT_TABLES, PROGRAM, COUNTY, PARTNER, DAY)
"""What a rebuild empties (the static source dimension stays)."""

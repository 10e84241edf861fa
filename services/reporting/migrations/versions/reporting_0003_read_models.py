"""Reporting's read models: facts per episode, report, task, attempt, contact, visit, service,
referral, case decision and death; dimensions for program, county, source, partner and day.

No column holds identity: no name, date of birth, phone, address, blind key, sealed token or
note (tests/unit/test_reporting_no_identity.py checks it).

Revision ID: reporting_0003
Revises: reporting_0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "reporting_0003"
down_revision: str | None = "reporting_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SOURCES = [
    ("ems", "Emergency medical services"),
    ("ed", "Emergency department"),
    ("law_enforcement", "Law enforcement"),
    ("community", "Community referral"),
    ("unknown", "Not given"),
]


def upgrade() -> None:
    op.create_table(
        "rpt_attempt",
        sa.Column("attempt_id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rpt_attempt_case", "rpt_attempt", ["case_id"])
    op.create_table(
        "rpt_case",
        sa.Column("case_id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("person_id", sa.Uuid(), nullable=True),
        sa.Column("opened_at", UTCDateTime(), nullable=True),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.Column("close_reason", sa.String(32), nullable=True),
    )
    op.create_table(
        "rpt_case_decision",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rpt_case_decision_case", "rpt_case_decision", ["case_id"])
    op.create_table(
        "rpt_contact",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rpt_contact_case", "rpt_contact", ["case_id"])
    op.create_table(
        "rpt_county",
        sa.Column("program_id", sa.String(64), primary_key=True),
        sa.Column("county", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=True),
    )
    op.create_table(
        "rpt_day",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("quarter", sa.Date(), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
    )
    op.create_table(
        "rpt_death",
        sa.Column("episode_id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("source_kind", sa.String(32), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rpt_death_case", "rpt_death", ["case_id"])
    op.create_table(
        "rpt_episode",
        sa.Column("episode_id", sa.Uuid(), primary_key=True),
        sa.Column(
            "program_id",
            sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("case_id", sa.Uuid(), nullable=True),
        sa.Column("person_id", sa.Uuid(), nullable=True),
        sa.Column("deidentified", sa.Boolean(), nullable=False),
        sa.Column("incident_at", UTCDateTime(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("quarter", sa.Date(), nullable=False),
        sa.Column("windows_from", UTCDateTime(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=True),
        sa.Column(
            "county",
            sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column(
            "source_kind",
            sa.String(32).with_variant(sa.String(32, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "source_org",
            sa.String(100).with_variant(sa.String(100, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("overdose", sa.Boolean(), nullable=False),
        sa.Column("fatal_reported", sa.Boolean(), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("repeat", sa.Boolean(), nullable=False),
        sa.Column("consent_declined", sa.Boolean(), nullable=False),
        sa.Column("fatal", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("remote_task", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("outreach_task", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("first_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("first_attempt_hours", sa.Float(), nullable=True),
        sa.Column("reached_at", UTCDateTime(), nullable=True),
        sa.Column("engaged", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("declined_outreach", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("do_not_contact", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("visits_completed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("naloxone_kits", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("test_strips", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_overdose_hours", sa.Float(), nullable=True),
        sa.Column("person_episodes", sa.Integer(), nullable=False, server_default="0"),
        sa.Column(
            "flags",
            sa.Integer(),
            sa.Computed(
                "(CASE WHEN overdose AND NOT fatal THEN 1 ELSE 0 END) + (CASE WHEN overdose AND fatal THEN 2 ELSE 0 END) + (CASE WHEN consent_declined THEN 4 ELSE 0 END) + (CASE WHEN remote_task AND first_attempt_hours IS NOT NULL THEN 8 ELSE 0 END) + (CASE WHEN person_id IS NOT NULL THEN 16 ELSE 0 END) + (CASE WHEN person_episodes > 1 THEN 32 ELSE 0 END) + (CASE WHEN NOT fatal THEN 64 ELSE 0 END) + (CASE WHEN outreach_task THEN 128 ELSE 0 END) + (CASE WHEN first_attempt_at IS NOT NULL THEN 256 ELSE 0 END) + (CASE WHEN outreach_task AND first_attempt_at IS NOT NULL THEN 512 ELSE 0 END) + (CASE WHEN reached_at IS NOT NULL THEN 1024 ELSE 0 END) + (CASE WHEN engaged THEN 2048 ELSE 0 END) + (CASE WHEN declined_outreach THEN 4096 ELSE 0 END) + (CASE WHEN do_not_contact THEN 8192 ELSE 0 END) + (CASE WHEN remote_task THEN 16384 ELSE 0 END) + (CASE WHEN remote_task AND first_attempt_hours <= 24 THEN 32768 ELSE 0 END) + (CASE WHEN remote_task AND first_attempt_hours <= 72 THEN 65536 ELSE 0 END) + (CASE WHEN next_overdose_hours <= 720 THEN 131072 ELSE 0 END) + (CASE WHEN next_overdose_hours <= 2160 THEN 262144 ELSE 0 END)",
                persisted=True,
            ),
        ),
        postgresql_with={"fillfactor": 80},
    )
    op.create_index("ix_rpt_episode_case", "rpt_episode", ["case_id"])
    op.create_index("ix_rpt_episode_person", "rpt_episode", ["person_id"])
    op.create_index("ix_rpt_episode_program_day", "rpt_episode", ["program_id", "day"])
    op.create_table(
        "rpt_partner",
        sa.Column("source_org", sa.String(100), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=True),
        sa.Column("source_kind", sa.String(32), nullable=False),
        sa.Column("first_message_at", UTCDateTime(), nullable=False),
        sa.Column("last_message_at", UTCDateTime(), nullable=False),
        sa.Column("last_report_at", UTCDateTime(), nullable=True),
        sa.Column("last_rejected_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "rpt_program",
        sa.Column("program_id", sa.String(64), primary_key=True),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "rpt_rebuild",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("events", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "rpt_referral",
        sa.Column("referral_id", sa.Uuid(), primary_key=True),
        sa.Column(
            "program_id",
            sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("warm_handoff", sa.Boolean(), nullable=False),
        sa.Column("made_at", UTCDateTime(), nullable=False),
        sa.Column("episode_id", sa.Uuid(), nullable=True),
        sa.Column("care_started", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("week", sa.Date(), nullable=True),
        sa.Column("month", sa.Date(), nullable=True),
        sa.Column("quarter", sa.Date(), nullable=True),
        sa.Column(
            "county",
            sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "source_kind",
            sa.String(32).with_variant(sa.String(32, collation="C"), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "source_org",
            sa.String(100).with_variant(sa.String(100, collation="C"), "postgresql"),
            nullable=True,
        ),
    )
    op.create_index("ix_rpt_referral_case", "rpt_referral", ["case_id"])
    op.create_index("ix_rpt_referral_episode", "rpt_referral", ["episode_id"])
    op.create_index(
        "ix_rpt_referral_program_day",
        "rpt_referral",
        ["program_id", "day"],
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
    )
    op.create_table(
        "rpt_referral_status",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("referral_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rpt_referral_status_case", "rpt_referral_status", ["case_id"])
    op.create_table(
        "rpt_rejected",
        sa.Column("inbound_id", sa.Uuid(), primary_key=True),
        sa.Column("source_kind", sa.String(32), nullable=False),
        sa.Column("source_org", sa.String(100), nullable=False),
        sa.Column("reason_code", sa.String(64), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rpt_rejected_partner", "rpt_rejected", ["source_org", "received_at"])
    op.create_table(
        "rpt_report",
        sa.Column("report_id", sa.Uuid(), primary_key=True),
        sa.Column(
            "program_id",
            sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column(
            "source_kind",
            sa.String(32).with_variant(sa.String(32, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "source_org",
            sa.String(100).with_variant(sa.String(100, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("incident_at", UTCDateTime(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=True),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("week", sa.Date(), nullable=True),
        sa.Column("month", sa.Date(), nullable=True),
        sa.Column("quarter", sa.Date(), nullable=True),
        sa.Column(
            "county",
            sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("deidentified", sa.Boolean(), nullable=False),
        sa.Column("overdose", sa.Boolean(), nullable=False),
        sa.Column("fatal", sa.Boolean(), nullable=False),
        sa.Column("consent", sa.String(16), nullable=True),
        sa.Column("lag_hours", sa.Float(), nullable=True),
        sa.Column("late_by_age", sa.Boolean(), nullable=True),
        sa.Column("episode_id", sa.Uuid(), nullable=True),
        sa.Column("match", sa.String(16), nullable=True),
        sa.Column("late_by_policy", sa.Boolean(), nullable=True),
    )
    op.create_index("ix_rpt_report_partner", "rpt_report", ["source_org", "received_at"])
    op.create_index(
        "ix_rpt_report_program_day",
        "rpt_report",
        ["program_id", "day"],
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
    )
    op.create_table(
        "rpt_service",
        sa.Column("item_id", sa.String(80), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rpt_service_case", "rpt_service", ["case_id"])
    op.create_table(
        "rpt_source",
        sa.Column("source_kind", sa.String(32), primary_key=True),
        sa.Column("label", sa.String(64), nullable=False),
    )
    op.create_table(
        "rpt_task",
        sa.Column("task_id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("episode_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(32), nullable=True),
        sa.Column("late", sa.Boolean(), nullable=True),
        sa.Column("window_opens_at", UTCDateTime(), nullable=True),
        sa.Column("due_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("close_reason", sa.String(64), nullable=True),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_rpt_task_case", "rpt_task", ["case_id"])
    op.create_table(
        "rpt_visit",
        sa.Column("visit_id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.String(64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("scheduled_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("reached", sa.Boolean(), nullable=True),
    )
    op.create_index("ix_rpt_visit_case", "rpt_visit", ["case_id"])
    source = sa.table("rpt_source", sa.column("source_kind"), sa.column("label"))
    op.bulk_insert(source, [{"source_kind": k, "label": label} for k, label in SOURCES])


def downgrade() -> None:
    raise NotImplementedError("PORTline migrations are forward-only")

"""The scheduler's own tables: people, their keys, cases, episodes, report links, tasks, and
the append-only audit log of who read a person's data here."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.db import UTCDateTime, bigint_pk

__all__ = [
    "AUDIT",
    "CASE",
    "EPISODE",
    "HOT_SPOT_TASK",
    "PERSON",
    "PERSON_KEY",
    "POSSIBLE_MATCH",
    "REPORT_LINK",
    "TASK",
    "AuditRecord",
    "Case",
    "Episode",
    "HotSpotTask",
    "Person",
    "PersonKey",
    "PossibleMatch",
    "ReportLink",
    "Task",
]


def _ts(nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(UTCDateTime(), nullable=nullable)


class Person(SQLModel, table=True):
    """Someone the program may reach out to. Identity stays sealed."""

    __tablename__ = "person"

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    program_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    identity_sealed: str | None = Field(default=None, sa_column=sa.Column(sa.Text()))
    do_not_contact: bool = Field(default=False, sa_column=sa.Column(sa.Boolean(), nullable=False))
    deceased_at: datetime | None = Field(default=None, sa_column=_ts(True))
    """When a report said the person died: nothing is ever planned to reach them again."""
    created_at: datetime = Field(sa_column=_ts())


class PersonKey(SQLModel, table=True):
    """A blind index a person is known by (from any of their linked reports), under the
    blind-index key version that computed it (a rotation holds two: ADR 0026)."""

    __tablename__ = "person_key"
    __table_args__ = (sa.Index("ix_person_key_version_person", "version", "person_id"),)

    person_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    kind: str = Field(sa_column=sa.Column(sa.String(16), primary_key=True))
    value: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    version: str = Field(
        default="b1", sa_column=sa.Column(sa.String(32), nullable=False, server_default="b1")
    )


class PossibleMatch(SQLModel, table=True):
    """An uncertain link, for a team lead to confirm (merge) or split (keep apart)."""

    __tablename__ = "possible_match"

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    program_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    report_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), nullable=False))
    person_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), nullable=False))
    candidate_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), nullable=False))
    reasons: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    level: str = Field(
        default="review", sa_column=sa.Column(sa.String(8), nullable=False, server_default="review")
    )
    """``review``, or ``flag``: low priority (the same overdose, too little else agrees)."""
    weight: float | None = Field(default=None, sa_column=sa.Column(sa.Float()))
    explanation: str | None = Field(default=None, sa_column=sa.Column(sa.Text()))
    """JSON: every piece of evidence with its level, weight and reason (matching.Explanation);
    kept with the lead's decision, so the weights can be re-estimated."""
    created_at: datetime = Field(sa_column=_ts())
    resolved_at: datetime | None = Field(default=None, sa_column=_ts(True))


class Case(SQLModel, table=True):
    """One person's outreach, from the first overdose until a lead concludes it."""

    __tablename__ = "outreach_case"

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    program_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    person_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    priority: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    opened_at: datetime = Field(sa_column=_ts())
    closed_at: datetime | None = Field(default=None, sa_column=_ts(True))
    close_reason: str | None = Field(default=None, sa_column=sa.Column(sa.String(32)))
    declined: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean(), nullable=False, default=False)
    )
    """The person declined outreach on this case; a repeat overdose reopens it."""


class Episode(SQLModel, table=True):
    """One overdose, reported by EMS, the ED, or both."""

    __tablename__ = "episode"

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    program_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    case_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid()))
    person_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid()))
    incident_at: datetime = Field(sa_column=_ts())
    received_at: datetime | None = Field(default=None, sa_column=_ts(True))
    windows_from: datetime | None = Field(
        default=None, sa_column=_ts(True)
    )  # incident, or receipt of a late report
    late: bool = Field(default=False, sa_column=sa.Column(sa.Boolean(), nullable=False))
    fatal: bool = Field(default=False, sa_column=sa.Column(sa.Boolean(), nullable=False))
    overdose: bool = Field(default=True, sa_column=sa.Column(sa.Boolean(), nullable=False))
    sources: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    county: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    """Where the overdose happened, as its first report gave it (evidence for linking)."""
    hospital: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    """EMS's destination or the reporting ED, as the first report naming one gave it
    (evidence for linking)."""
    transported: bool = Field(
        default=False,
        sa_column=sa.Column(sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    """An EMS run of it says it transported the person (NEMSIS eDisposition.30), whether or
    not it named where (evidence for linking)."""
    consent: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    deidentified: bool = Field(sa_column=sa.Column(sa.Boolean(), nullable=False))
    repeat: bool = Field(sa_column=sa.Column(sa.Boolean(), nullable=False))
    plan_reasons: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    created_at: datetime = Field(sa_column=_ts())


class ReportLink(SQLModel, table=True):
    """Which episode a report (and its latest revision) belongs to."""

    __tablename__ = "report_link"

    report_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    episode_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), nullable=False))
    source_kind: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    revision: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    match: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    weight: float | None = Field(default=None, sa_column=sa.Column(sa.Float()))
    explanation: str | None = Field(default=None, sa_column=sa.Column(sa.Text()))
    """JSON, for a report linked automatically: why it is the person's."""
    linked_at: datetime = Field(sa_column=_ts())


class Task(SQLModel, table=True):
    """Time-boxed outreach work: remote contact, in-person visit, follow-up."""

    __tablename__ = "task"

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    program_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    case_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), nullable=False))
    episode_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), nullable=False))
    kind: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    priority: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    window_opens_at: datetime = Field(sa_column=_ts())
    due_at: datetime = Field(sa_column=_ts())
    expires_at: datetime = Field(sa_column=_ts())
    policy_version: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    with_deputy: bool = Field(sa_column=sa.Column(sa.Boolean(), nullable=False))
    late: bool = Field(default=False, sa_column=sa.Column(sa.Boolean(), nullable=False))
    failed_attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer(), nullable=False))
    created_at: datetime = Field(sa_column=_ts())
    closed_at: datetime | None = Field(default=None, sa_column=_ts(True))
    outcome: str | None = Field(default=None, sa_column=sa.Column(sa.String(32)))


class HotSpotTask(SQLModel, table=True):
    """Outreach where a county's overdoses spiked (reporting's SpikeDetected): no person, no
    case. At most one is open per program and county; later alerts are attached to it."""

    __tablename__ = "hot_spot_task"
    __table_args__ = (
        sa.Index(
            "uq_hot_spot_task_open",
            "program_id",
            "county",
            unique=True,
            postgresql_where=sa.text("status = 'open'"),
            sqlite_where=sa.text("status = 'open'"),
        ),
    )

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    program_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    county: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    state: str | None = Field(default=None, sa_column=sa.Column(sa.String(16)))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))  # open | concluded
    alert_ids: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    """JSON list of the alerts behind the task, first to latest."""
    detector: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    level: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    observed: float = Field(sa_column=sa.Column(sa.Float(), nullable=False))
    expected: float | None = Field(default=None, sa_column=sa.Column(sa.Float()))
    window_start: datetime = Field(sa_column=_ts())
    window_end: datetime = Field(sa_column=_ts())
    priority: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    policy_version: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    opened_at: datetime = Field(sa_column=_ts())
    due_at: datetime = Field(sa_column=_ts())
    closed_at: datetime | None = Field(default=None, sa_column=_ts(True))


class AuditRecord(SQLModel, table=True):
    """Who read or changed a person's data, when and why: append-only (the database refuses
    UPDATE, DELETE and TRUNCATE, and the services' role may only INSERT and SELECT)."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_program_id_id", "program_id", "id"),)

    id: int | None = Field(default=None, sa_column=bigint_pk())
    at: datetime = Field(sa_column=_ts())
    actor_id: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    role: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    program_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    action: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))  # read | update
    resource: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    resource_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    case_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid(), index=True))
    purpose: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    purpose_sealed: str | None = Field(default=None, sa_column=sa.Column(sa.Text()))
    request_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))


AUDIT: sa.Table = AuditRecord.__table__  # type: ignore[attr-defined]
PERSON: sa.Table = Person.__table__  # type: ignore[attr-defined]
PERSON_KEY: sa.Table = PersonKey.__table__  # type: ignore[attr-defined]
POSSIBLE_MATCH: sa.Table = PossibleMatch.__table__  # type: ignore[attr-defined]
CASE: sa.Table = Case.__table__  # type: ignore[attr-defined]
EPISODE: sa.Table = Episode.__table__  # type: ignore[attr-defined]
REPORT_LINK: sa.Table = ReportLink.__table__  # type: ignore[attr-defined]
TASK: sa.Table = Task.__table__  # type: ignore[attr-defined]
HOT_SPOT_TASK: sa.Table = HotSpotTask.__table__  # type: ignore[attr-defined]

"""Intake's own tables: programs, partners and their keys, inbound messages, reports.

Minimum necessary: a message that is not an overdose leaves only a SHA-256 of its
MSH-3/MSH-4/MSH-10 (for deduplication) and its ACK behind. A raw message is kept, sealed,
only when it was rejected, so that it can be fixed and replayed; an overdose report keeps
what its event carries (identity sealed), not the raw message.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.db import UTCDateTime

__all__ = [
    "API_KEY",
    "IDEMPOTENCY",
    "INBOUND",
    "PARTNER",
    "PARTNER_CERTIFICATE",
    "PARTNER_FACILITY",
    "PARTNER_NETWORK",
    "PROGRAM",
    "REPORT",
    "ApiKey",
    "Channel",
    "IdempotencyRecord",
    "InboundMessage",
    "InboundStatus",
    "Partner",
    "PartnerCertificate",
    "PartnerFacility",
    "PartnerNetwork",
    "Program",
    "Report",
]


class Channel(StrEnum):
    MLLP = "mllp"
    HTTP_HL7 = "http_hl7"
    HTTP_EMS = "http_ems"
    HTTP_LE = "http_le"


class InboundStatus(StrEnum):
    ACCEPTED = "accepted"
    """An overdose report (or a revision of one) was published."""
    NOT_OVERDOSE = "not_overdose"
    """Screened, counted and acknowledged; nothing identifying kept."""
    REJECTED = "rejected"
    """Could never succeed as sent; the raw message is kept sealed for replay."""
    REPLAYED = "replayed"
    """A rejected message that was later replayed successfully."""


def _ts(nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(UTCDateTime(), nullable=nullable)


class Program(SQLModel, table=True):
    """A PORT program: its time zone and which overdose definition it uses."""

    __tablename__ = "program"

    id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    timezone: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    definition: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))


class Partner(SQLModel, table=True):
    """An EMS agency or hospital that reports to one program."""

    __tablename__ = "partner"

    id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    program_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    kind: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    created_at: datetime = Field(sa_column=_ts())
    disabled_at: datetime | None = Field(default=None, sa_column=_ts(True))
    mllp_auth: str | None = Field(default=None, sa_column=sa.Column(sa.String(16)))
    """What an MLLP connection must show to speak for this hospital: "certificate",
    "network" or "both"; None derives it from what is registered (partners.mllp_rule)."""


class PartnerFacility(SQLModel, table=True):
    """An MLLP sending facility (MSH-4, first component, upper-cased) a hospital may use."""

    __tablename__ = "partner_facility"

    facility: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    partner_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))


class PartnerNetwork(SQLModel, table=True):
    """A source network (CIDR) a hospital's MLLP connections may come from (a site-to-site VPN,
    an interface engine's addresses)."""

    __tablename__ = "partner_network"

    partner_id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    network: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))


class PartnerCertificate(SQLModel, table=True):
    """A TLS client certificate that authenticates one hospital's MLLP connections, by the
    SHA-256 fingerprint of its DER encoding."""

    __tablename__ = "partner_certificate"

    fingerprint: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    partner_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, index=True))
    subject: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    not_after: datetime | None = Field(default=None, sa_column=_ts(True))
    added_at: datetime = Field(sa_column=_ts())


class ApiKey(SQLModel, table=True):
    """A partner's API key; only a hash of the secret part is kept."""

    __tablename__ = "api_key"

    key_id: str = Field(sa_column=sa.Column(sa.String(32), primary_key=True))
    partner_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    secret_hash: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    label: str = Field(default="", sa_column=sa.Column(sa.String(200), nullable=False))
    created_at: datetime = Field(sa_column=_ts())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(True))


class InboundMessage(SQLModel, table=True):
    """One received message (or one record of a multi-record EMS submission)."""

    __tablename__ = "inbound_message"

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    channel: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    partner_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    dedupe_key: str | None = Field(
        default=None, sa_column=sa.Column(sa.String(64), unique=True, nullable=True)
    )
    received_at: datetime = Field(sa_column=_ts())
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    reason_code: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text()))
    ack: str | None = Field(default=None, sa_column=sa.Column(sa.Text()))
    report_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid()))
    revision: int | None = Field(default=None, sa_column=sa.Column(sa.Integer()))
    raw_sealed: str | None = Field(default=None, sa_column=sa.Column(sa.Text()))
    replayed_at: datetime | None = Field(default=None, sa_column=_ts(True))


class Report(SQLModel, table=True):
    """An overdose report as last published; later messages about the same visit revise it."""

    __tablename__ = "report"

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    source_key: str = Field(sa_column=sa.Column(sa.String(64), unique=True, nullable=False))
    partner_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    source_kind: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    revision: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    content_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    opioid: bool = Field(sa_column=sa.Column(sa.Boolean(), nullable=False))
    any_drug: bool = Field(sa_column=sa.Column(sa.Boolean(), nullable=False))
    created_at: datetime = Field(sa_column=_ts())
    updated_at: datetime = Field(sa_column=_ts())


class IdempotencyRecord(SQLModel, table=True):
    """The response given to a partner's request with an Idempotency-Key, replayed on retry."""

    __tablename__ = "idempotency_record"

    partner_id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    key: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    request_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    status_code: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    response: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    created_at: datetime = Field(sa_column=_ts())


PROGRAM: sa.Table = Program.__table__  # type: ignore[attr-defined]
PARTNER: sa.Table = Partner.__table__  # type: ignore[attr-defined]
PARTNER_FACILITY: sa.Table = PartnerFacility.__table__  # type: ignore[attr-defined]
PARTNER_NETWORK: sa.Table = PartnerNetwork.__table__  # type: ignore[attr-defined]
PARTNER_CERTIFICATE: sa.Table = PartnerCertificate.__table__  # type: ignore[attr-defined]
API_KEY: sa.Table = ApiKey.__table__  # type: ignore[attr-defined]
INBOUND: sa.Table = InboundMessage.__table__  # type: ignore[attr-defined]
REPORT: sa.Table = Report.__table__  # type: ignore[attr-defined]
IDEMPOTENCY: sa.Table = IdempotencyRecord.__table__  # type: ignore[attr-defined]

"""Intake's units of work: screen, classify, store, publish — then acknowledge.

A batch of messages is stored by at most two commits running side by side: the routine
messages (valid, not overdoses) in one statement on PostgreSQL, and everything else in one
unit of work, where the inbound records, the report revisions and the outbox rows commit
together (on PostgreSQL, overdoses with no rejection or replay beside them write all that in
one statement of the overdose store instead). A message's ACK is released only after the
commit that stored it, and a routine message does not wait for an overdose's commit. A
message that was already received (same MSH-3/MSH-4/MSH-10) gets its original ACK back and
creates nothing. A message that can never succeed is rejected (AR) and kept sealed so that
it can be fixed and replayed; a database failure answers AE so that the sender retries.

Only messages that themselves meet the program's definition create or revise a report. An A08
update without the overdose codes does not withdraw a report: updates often carry a partial
picture of the visit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo

import asyncpg
import sqlalchemy as sa

from services.intake.classify import Decision, Definition, classify_ed, classify_ems
from services.intake.classify import Medication as ClassifyMedication
from services.intake.hl7 import (
    HL7Error,
    MissingFieldError,
    ParseError,
    Screened,
    build_ack,
    check_supported,
    normalize,
    read_header,
    screen,
    split_messages,
)
from services.intake.metrics import BATCH_SIZE, INTAKE_MESSAGES
from services.intake.models import INBOUND, REPORT, Channel, InboundStatus
from services.intake.overdose_store import OverdoseStore, StoredReport
from services.intake.parse_pool import parse_inline
from services.intake.partners import PartnerContext, PartnerDirectory, facility_key
from services.intake.records import AdtMessage, EmsRunReport, HL7Header
from services.intake.reports import Protector, content_hash, ed_report, ems_report, person_key
from services.intake.routine_store import RoutineRow, RoutineStore
from shared.clock import Clock
from shared.envelope import Envelope
from shared.events import InboundRejected, OverdoseReported
from shared.ids import new_uuid
from shared.inbox import is_transient
from shared.uow import UnitOfWork

__all__ = [
    "EmsIntake",
    "EmsOutcome",
    "EmsSubmission",
    "HL7Intake",
    "HL7Submission",
    "PreparedSubmission",
    "UnknownFacilityError",
]

log = logging.getLogger(__name__)

AckCode = Literal["AA", "AE", "AR"]
FullParse = Callable[[str, Screened, tzinfo], Awaitable[AdtMessage]]


@dataclass(frozen=True, slots=True)
class HL7Submission:
    """One MLLP frame or HTTP body. `partner` is set when the edge authenticated one (HTTP)."""

    raw: bytes
    channel: Channel
    partner: PartnerContext | None = None
    replay_of: uuid.UUID | None = None
    """The rejected inbound record this is a replay of: a replay that fails again updates
    that record instead of adding another."""


class UnknownFacilityError(HL7Error):
    """MSH-4 names a facility that is not on this partner's (or this listener's) allow-list."""

    code = "unknown_sending_facility"
    default_hl7_error_code = "103"  # table value not found: MSH-4 is not on the allow-list


@dataclass(slots=True)
class _Prepared:
    raw: str
    header: HL7Header | None
    channel: Channel
    partner: PartnerContext | None = None
    error: HL7Error | None = None
    transient: bool = False
    dedupe_key: str | None = None
    decision: Decision | None = None
    screened: Screened | None = None
    adt: AdtMessage | None = None
    overdose: bool = False
    ack: str | None = None
    replay_of: uuid.UUID | None = None
    submitter: PartnerContext | None = None
    settled: bool = False
    """The commit that stored this message (or failed to) is over: its ACK may leave."""


PreparedSubmission = list[_Prepared]
"""One submission's messages, screened and classified by :meth:`HL7Intake.prepare`."""


def _header_or_none(message: str) -> HL7Header | None:
    try:
        return read_header(message)
    except HL7Error:
        return None


def _dedupe_key(header: HL7Header) -> str:
    triple = f"{header.sending_application}|{header.sending_facility}|{header.control_id}"
    return hashlib.sha256(triple.encode()).hexdigest()


def _source_key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


class HL7Intake:
    """Receives HL7 v2 ADT from MLLP and HTTP and answers every message with an ACK."""

    def __init__(
        self,
        *,
        uow_factory: Callable[[], UnitOfWork],
        directory: PartnerDirectory,
        protector: Protector,
        clock: Clock,
        new_id: Callable[[], uuid.UUID] = new_uuid,
        routine_store: RoutineStore | None = None,
        overdose_store: OverdoseStore | None = None,
        full_parse: FullParse = parse_inline,
    ) -> None:
        self._routine_store = routine_store
        self._overdose_store = overdose_store
        self._full_parse = full_parse
        self._uow = uow_factory
        self._directory = directory
        self._protector = protector
        self._clock = clock
        self._new_id = new_id

    async def receive(
        self,
        submissions: Sequence[HL7Submission],
        *,
        reply: Callable[[int, str], None] | None = None,
    ) -> list[str]:
        """The ACK text for each submission (several ACKs, one per message, for a batch):
        :meth:`prepare` each, then :meth:`commit` them together."""
        return await self.commit([await self.prepare(s) for s in submissions], reply=reply)

    async def commit(
        self,
        prepared: Sequence[PreparedSubmission],
        *,
        reply: Callable[[int, str], None] | None = None,
    ) -> list[str]:
        """Store prepared submissions in one group commit; the ACK text for each.

        Routine messages (valid, not overdoses) and the rest are stored by two independent
        commits running side by side, and `reply(index, ack)` answers each submission as
        soon as the commits holding its messages are done: an overdose's full parse and
        its larger transaction never hold up the ordinary visits that arrived with it.
        """
        flat = [p for group in prepared for p in group]
        now = self._clock.now()
        BATCH_SIZE.observe(len(flat))
        answered = [False] * len(prepared)

        def release() -> None:
            for index, group in enumerate(prepared):
                if not answered[index] and all(p.settled for p in group):
                    answered[index] = True
                    if reply is not None:
                        reply(index, _joined(group))

        routine, general = self._partition(flat)
        if routine and general:
            await asyncio.gather(
                self._commit(routine, now, self._store_routine, release),
                self._commit(general, now, self._store_general, release),
            )
        elif routine:  # the common case: no task to spawn
            await self._commit(routine, now, self._store_routine, release)
        else:
            await self._commit(general, now, self._store_general, release)
        for label, count in Counter(_status_label(p) for p in flat).items():
            INTAKE_MESSAGES.labels("hl7", label).inc(count)
        return [_joined(group) for group in prepared]

    def _partition(self, items: list[_Prepared]) -> tuple[list[_Prepared], list[_Prepared]]:
        """(routine, general). Without the PostgreSQL fast path everything is general; a
        routine message sharing its dedupe key with a general one goes with it."""
        if self._routine_store is None:
            return [], items
        general = [p for p in items if not _routine(p)]
        taken = {p.dedupe_key for p in general if p.dedupe_key is not None}
        routine: list[_Prepared] = []
        for p in items:
            if _routine(p):
                (general if p.dedupe_key in taken else routine).append(p)
        return routine, general

    async def _commit(
        self,
        items: list[_Prepared],
        now: datetime,
        store: Callable[[list[_Prepared], datetime], Awaitable[None]],
        settled: Callable[[], None],
    ) -> None:
        """Store the items and set their ACKs (AE for all of them when that failed), then
        mark them settled: only now may their ACKs leave."""
        try:
            try:
                await store(items, now)
            except (sa.exc.IntegrityError, asyncpg.UniqueViolationError):
                # Another replica stored one of these messages meanwhile: the retry finds it.
                await store(items, now)
        except Exception as exc:
            if not is_transient(exc):
                log.exception("intake batch failed", extra={"messages": len(items)})
            else:
                log.warning("database unavailable; answering AE", extra={"messages": len(items)})
            for p in items:
                p.ack = self._ack(p, "AE", now, text="Temporarily unable to store; resend.")
        for p in items:
            p.settled = True
        settled()

    async def prepare(self, submission: HL7Submission) -> PreparedSubmission:
        """Split, screen and classify a submission's messages, ready for :meth:`commit`.

        The service runs this as each frame or request arrives, outside the group commit:
        the next batch is prepared while the database commits the one before (the event
        loop would otherwise sit idle for that round trip, ADR 0012)."""
        text = normalize(submission.raw)
        try:
            messages = split_messages(text)
        except HL7Error as exc:
            prepared = [_Prepared(raw=text, header=None, channel=submission.channel, error=exc)]
        else:
            prepared = [await self._prepare_one(m, submission) for m in messages]
        for p in prepared:
            p.replay_of = submission.replay_of
        return prepared

    async def _prepare_one(self, message: str, submission: HL7Submission) -> _Prepared:
        """Screen and classify one message. Overdose candidates are fully parsed later, by
        the general commit, so that the routine messages beside them do not wait for it."""
        channel = submission.channel
        try:
            screened = screen(message)  # reads the header too: the one pass most messages get
        except HL7Error as exc:
            return _Prepared(
                raw=message, header=_header_or_none(message), channel=channel, error=exc
            )
        header = screened.header
        p = _Prepared(raw=message, header=header, channel=channel, screened=screened)
        try:
            p.partner = await self._partner_for(header, submission)
        except Exception as exc:
            if not is_transient(exc):
                raise
            p.transient = True
            return p
        if p.partner is None:
            p.submitter = submission.partner  # who sent it over HTTP, for the record
            p.error = UnknownFacilityError(
                "The sending facility (MSH-4) is not allowed to send to this program.",
                location=("MSH", 1, 4),
            )
            return p
        try:
            check_supported(header)
            if not header.control_id:
                raise MissingFieldError.for_field("MSH", 10)
        except HL7Error as exc:
            p.error = exc
            return p
        p.dedupe_key = _dedupe_key(header)
        p.decision = classify_ed(codes=screened.codes, texts=screened.texts)
        p.overdose = p.decision.is_overdose(Definition(p.partner.definition))
        return p

    async def _parse_candidate(self, p: _Prepared) -> None:
        """The full hl7apy parse of an overdose candidate; its failure becomes the message's
        answer (AR, or AE when the parse worker died)."""
        assert p.screened is not None
        assert p.partner is not None
        try:
            p.adt = await self._full_parse(p.raw, p.screened, ZoneInfo(p.partner.timezone))
        except HL7Error as exc:
            p.error = exc
        except BrokenProcessPool:
            p.transient = True  # the parse worker died; a fresh one takes the resend
        except Exception:
            # A parser bug, not the partner's: refuse (AR) and keep the message sealed, so
            # that it is replayed once the bug is fixed. Nothing is lost.
            log.exception("full parse failed", extra={"messages": 1})
            p.error = ParseError("The message could not be parsed; it is kept for replay.")

    async def _partner_for(
        self, header: HL7Header, submission: HL7Submission
    ) -> PartnerContext | None:
        if submission.partner is None:
            return await self._directory.by_facility(header.sending_facility)
        allowed = await self._directory.facilities_of(submission.partner.partner_id)
        return submission.partner if facility_key(header.sending_facility) in allowed else None

    async def _store_general(self, items: list[_Prepared], now: datetime) -> None:
        """One unit of work: inbound records, report revisions, rejections and outbox rows."""
        for p in items:
            if p.overdose and p.error is None and p.adt is None and not p.transient:
                await self._parse_candidate(p)  # only candidates pay for the full parse
        if any(p.transient for p in items):
            raise ConnectionError("partner directory or parse worker unavailable")
        store = self._overdose_store
        if store is not None and all(p.error is None and p.replay_of is None for p in items):
            await self._store_overdoses(store, items, now)
            return
        async with self._uow() as uow:
            keys = [p.dedupe_key for p in items if p.dedupe_key and p.error is None]
            known: dict[str, str] = {}
            if keys:
                rows = await uow.session.execute(
                    sa.select(INBOUND.c.dedupe_key, INBOUND.c.ack).where(
                        INBOUND.c.dedupe_key.in_(keys)
                    )
                )
                known = {k: a for k, a in rows.all() if a is not None}
            reports = await _ReportBook.load(
                uow, [self._source_key(p) for p in items if p.overdose and p.error is None]
            )
            inbound: list[dict[str, Any]] = []
            for p in items:
                if p.error is not None:
                    p.ack = self._ack(p, "AR", now, error=p.error)
                    if p.replay_of is not None:
                        await self._still_rejected(uow, p)
                    else:
                        inbound.append(self._reject(uow, p, p.channel, now))
                    continue
                assert p.dedupe_key is not None
                assert p.partner is not None
                if p.dedupe_key in known:
                    p.ack = known[p.dedupe_key]
                    continue
                row: dict[str, Any] = {
                    "id": self._new_id(),
                    "channel": p.channel.value,
                    "partner_id": p.partner.partner_id,
                    "dedupe_key": p.dedupe_key,
                    "received_at": now,
                    "status": InboundStatus.NOT_OVERDOSE.value,
                    "reason_code": None,
                    "reason": None,
                    "report_id": None,
                    "revision": None,
                    "raw_sealed": None,
                    "replayed_at": None,
                }
                if p.overdose:
                    report_id, revision = self._report(uow.publish, reports, p, now)
                    row.update(
                        status=InboundStatus.ACCEPTED.value, report_id=report_id, revision=revision
                    )
                p.ack = self._ack(p, "AA", now)
                row["ack"] = p.ack
                known[p.dedupe_key] = p.ack
                inbound.append(row)
            if inbound:
                await uow.session.execute(INBOUND.insert(), inbound)
            await reports.flush(uow)
            await uow.commit()

    async def _store_overdoses(
        self, store: OverdoseStore, items: list[_Prepared], now: datetime
    ) -> None:
        """Valid messages, overdoses (and routine resends of one) on PostgreSQL: a read of
        the ACKs of resends, one of the reports, one statement for all writes (see
        overdose_store). The same decisions as the general unit of work."""
        keys = [p.dedupe_key for p in items if p.dedupe_key is not None]
        known = await store.acks(keys)
        reports = _ReportBook.of(
            await store.reports([self._source_key(p) for p in items if p.overdose])
        )
        writes = store.writes()
        for p in items:
            assert p.dedupe_key is not None
            assert p.partner is not None
            if p.dedupe_key in known:
                p.ack = known[p.dedupe_key]
                continue
            report_id: uuid.UUID | None = None
            revision: int | None = None
            status = InboundStatus.NOT_OVERDOSE
            if p.overdose:
                report_id, revision = self._report(writes.publish, reports, p, now)
                status = InboundStatus.ACCEPTED
            p.ack = known[p.dedupe_key] = self._ack(p, "AA", now)
            writes.inbound.append(
                {
                    "id": self._new_id(),
                    "channel": p.channel.value,
                    "partner_id": p.partner.partner_id,
                    "status": status.value,
                    "report_id": report_id,
                    "revision": revision,
                    "dedupe_key": p.dedupe_key,
                    "ack": p.ack,
                }
            )
        writes.new_reports, writes.revised_reports = reports.pending()
        await store.write(writes, now)

    async def _store_routine(self, items: list[_Prepared], now: datetime) -> None:
        """Routine messages in one statement (PostgreSQL fast path)."""
        store = self._routine_store
        assert store is not None
        rows: dict[str, RoutineRow] = {}
        for p in items:
            assert p.dedupe_key is not None
            assert p.partner is not None
            if p.dedupe_key not in rows:
                inbound_id = self._new_id()
                rows[p.dedupe_key] = RoutineRow(
                    id=inbound_id,
                    channel=p.channel.value,
                    partner_id=p.partner.partner_id,
                    dedupe_key=p.dedupe_key,
                    ack=self._ack(p, "AA", now, control_id=inbound_id.hex[:20]),
                )
        acks = await store.store(list(rows.values()), InboundStatus.NOT_OVERDOSE.value, now)
        for p in items:
            assert p.dedupe_key is not None
            p.ack = acks[p.dedupe_key]

    def _source_key(self, p: _Prepared) -> str:
        assert p.header is not None
        assert p.partner is not None
        assert p.adt is not None
        visit = p.adt.visit_number or f"msh10:{p.header.control_id}"
        return _source_key(
            "ed", p.partner.partner_id, facility_key(p.header.sending_facility), visit
        )

    def _report(
        self,
        publish: Callable[..., Envelope],
        reports: _ReportBook,
        p: _Prepared,
        now: datetime,
    ) -> tuple[uuid.UUID, int]:
        assert p.partner is not None
        assert p.decision is not None
        assert p.adt is not None
        adt = p.adt
        source_key = self._source_key(p)
        current = reports.get(source_key)
        report_id = current.report_id if current else self._new_id()
        digest = content_hash(
            report_id,
            adt.identity,
            adt.admit_at,
            adt.diagnosis_codes,
            adt.chief_complaints,
            adt.discharge_disposition,
            p.decision,
        )
        if current and current.content_hash == digest:
            return report_id, current.revision
        revision = current.revision + 1 if current else 1
        event = ed_report(
            adt,
            p.decision,
            program_id=p.partner.program_id,
            partner_id=p.partner.partner_id,
            report_id=report_id,
            revision=revision,
            received_at=now,
            protector=self._protector,
        )
        reports.put(source_key, p.partner.partner_id, "ed", event, digest, now)
        publish(event, subject=person_key(event.blind_keys, report_id))
        return report_id, revision

    def _reject(
        self, uow: UnitOfWork, p: _Prepared, channel: Channel, now: datetime
    ) -> dict[str, Any]:
        assert p.error is not None
        inbound_id = self._new_id()
        known = p.partner or p.submitter
        partner_id = known.partner_id if known else None
        source_org = partner_id or (facility_key(p.header.sending_facility) if p.header else "")
        uow.publish(
            InboundRejected(
                inbound_id=inbound_id,
                source_kind="ed",
                source_org=source_org or "unknown",
                reason_code=p.error.code,
                reason=p.error.message,
                received_at=now,
            ),
            subject=source_org or "unknown",
        )
        return {
            "id": inbound_id,
            "channel": channel.value,
            "partner_id": partner_id,
            "dedupe_key": None,
            "received_at": now,
            "status": InboundStatus.REJECTED.value,
            "reason_code": p.error.code,
            "reason": p.error.message,
            "ack": p.ack,
            "report_id": None,
            "revision": None,
            "raw_sealed": self._protector.sealer.seal(p.raw, context="inbound"),
            "replayed_at": None,
        }

    async def _still_rejected(self, uow: UnitOfWork, p: _Prepared) -> None:
        assert p.error is not None
        await uow.session.execute(
            INBOUND.update()
            .where(INBOUND.c.id == p.replay_of)
            .values(reason_code=p.error.code, reason=p.error.message, ack=p.ack)
        )

    def _ack(
        self,
        p: _Prepared,
        code: AckCode,
        now: datetime,
        *,
        error: HL7Error | None = None,
        text: str | None = None,
        control_id: str | None = None,
    ) -> str:
        return build_ack(
            p.header,
            code,
            now=now,
            control_id=control_id or self._new_id().hex[:20],
            error=error,
            text=text,
        )


def _joined(group: Sequence[_Prepared]) -> str:
    """One submission's answer: an ACK per message it held."""
    return "\r".join(p.ack or "" for p in group)


def _routine(p: _Prepared) -> bool:
    """A valid message that is not an overdose and not a replay: the fast path's case."""
    return p.error is None and not p.overdose and p.replay_of is None and not p.transient


def _status_label(p: _Prepared) -> str:
    if p.ack and "|AE|" in p.ack:
        return "error"
    if p.error is not None:
        return "rejected"
    return "overdose" if p.overdose else "not_overdose"


@dataclass(slots=True)
class _ReportState:
    report_id: uuid.UUID
    revision: int
    content_hash: str
    exists: bool
    dirty: bool = False
    row: dict[str, Any] | None = None


class _ReportBook:
    """The reports a batch touches, read once and written once."""

    def __init__(self, states: dict[str, _ReportState]) -> None:
        self._states = states

    @classmethod
    async def load(cls, uow: UnitOfWork, source_keys: list[str]) -> _ReportBook:
        states: dict[str, _ReportState] = {}
        if source_keys:
            rows = await uow.session.execute(
                sa.select(
                    REPORT.c.source_key, REPORT.c.id, REPORT.c.revision, REPORT.c.content_hash
                ).where(REPORT.c.source_key.in_(set(source_keys)))
            )
            for key, rid, revision, digest in rows.all():
                states[key] = _ReportState(rid, revision, digest, exists=True)
        return cls(states)

    @classmethod
    def of(cls, stored: dict[str, StoredReport]) -> _ReportBook:
        """The book of reports read by the PostgreSQL overdose store."""
        return cls(
            {
                key: _ReportState(r.report_id, r.revision, r.content_hash, exists=True)
                for key, r in stored.items()
            }
        )

    def get(self, source_key: str) -> _ReportState | None:
        return self._states.get(source_key)

    def put(
        self,
        source_key: str,
        partner_id: str,
        kind: str,
        event: OverdoseReported,
        digest: str,
        now: datetime,
    ) -> None:
        state = self._states.get(source_key)
        if state is None:
            state = _ReportState(event.report_id, event.revision, digest, exists=False)
            self._states[source_key] = state
        state.revision = event.revision
        state.content_hash = digest
        state.dirty = True
        state.row = {
            "id": event.report_id,
            "source_key": source_key,
            "partner_id": partner_id,
            "source_kind": kind,
            "revision": event.revision,
            "content_hash": digest,
            "opioid": event.opioid,
            "any_drug": event.any_drug,
            "created_at": now,
            "updated_at": now,
        }

    def pending(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """What changed since the last call: (new reports, revised reports), as rows."""
        new: list[dict[str, Any]] = []
        revised: list[dict[str, Any]] = []
        for state in self._states.values():
            if not state.dirty or state.row is None:
                continue
            state.dirty = False
            (revised if state.exists else new).append(state.row)
            state.exists = True
        return new, revised

    async def flush(self, uow: UnitOfWork) -> None:
        """Write what changed: new reports in one statement, revisions one by one."""
        new, revised = self.pending()
        for row in revised:
            await uow.session.execute(
                REPORT.update()
                .where(REPORT.c.id == row["id"])
                .values(
                    revision=row["revision"],
                    content_hash=row["content_hash"],
                    opioid=row["opioid"],
                    any_drug=row["any_drug"],
                    updated_at=row["updated_at"],
                )
            )
        if new:
            await uow.session.execute(REPORT.insert(), new)


# --- EMS ------------------------------------------------------------------------------------

EmsStatus = Literal["accepted", "revised", "unchanged", "duplicate", "not_overdose", "rejected"]


@dataclass(frozen=True, slots=True)
class EmsSubmission:
    """One run report (already parsed) from an authenticated EMS partner."""

    partner: PartnerContext
    index: int
    report: EmsRunReport | None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class EmsOutcome:
    index: int
    pcr_number: str | None
    status: EmsStatus
    overdose: bool
    opioid: bool
    any_drug: bool
    report_id: uuid.UUID | None
    revision: int | None
    reasons: tuple[tuple[str, str, str], ...]
    error_code: str | None = None
    error_message: str | None = None


def classify_run(run: EmsRunReport) -> Decision:
    return classify_ems(
        impressions=[("eSituation", code) for code in run.impressions],
        medications=[ClassifyMedication(m.rxnorm, m.response) for m in run.medications],
        narrative=[("eNarrative.01", run.narrative)] if run.narrative else [],
    )


def _report_keys(submissions: Sequence[EmsSubmission], indices: list[int]) -> dict[int, str]:
    """The report source key of each valid record among `indices`."""
    return {
        i: _source_key("ems", s.partner.partner_id, s.report.pcr_number)
        for i, s in ((i, submissions[i]) for i in indices)
        if s.report is not None
    }


def _ems_outcome(
    s: EmsSubmission,
    decision: Decision,
    status: EmsStatus,
    report_id: uuid.UUID | None,
    revision: int | None,
) -> EmsOutcome:
    assert s.report is not None
    return EmsOutcome(
        s.index,
        s.report.pcr_number,
        status,
        decision.is_overdose(Definition(s.partner.definition)),
        decision.opioid,
        decision.any_drug,
        report_id,
        revision,
        tuple((str(r.code), r.source, r.detail) for r in decision.reasons),
    )


class EmsIntake:
    """Receives EMS run reports; idempotent per agency and PCR number."""

    def __init__(
        self,
        *,
        uow_factory: Callable[[], UnitOfWork],
        protector: Protector,
        clock: Clock,
        new_id: Callable[[], uuid.UUID] = new_uuid,
        routine_store: RoutineStore | None = None,
        overdose_store: OverdoseStore | None = None,
    ) -> None:
        self._routine_store = routine_store
        self._overdose_store = overdose_store if routine_store is not None else None
        self._uow = uow_factory
        self._protector = protector
        self._clock = clock
        self._new_id = new_id

    async def receive(self, submissions: Sequence[EmsSubmission]) -> list[EmsOutcome]:
        now = self._clock.now()
        outcomes: list[EmsOutcome | None] = [None] * len(submissions)
        decisions: dict[int, Decision] = {}
        for i, s in enumerate(submissions):
            if s.report is None:
                outcomes[i] = EmsOutcome(
                    s.index,
                    None,
                    "rejected",
                    False,
                    False,
                    False,
                    None,
                    None,
                    (),
                    s.error_code or "invalid_record",
                    s.error_message or "The record is invalid.",
                )
            else:
                decisions[i] = classify_run(s.report)
        general = list(range(len(submissions)))
        routine: list[int] = []
        if self._routine_store is not None:
            routine = [
                i
                for i, d in decisions.items()
                if not d.is_overdose(Definition(submissions[i].partner.definition))
            ]
            taken = set(routine)
            general = [i for i in general if i not in taken]
        # As for HL7: the two commits run side by side, neither waits for the other.
        commits: list[Awaitable[None]] = []
        if routine:
            assert self._routine_store is not None
            commits.append(
                self._store_routine(
                    self._routine_store, submissions, decisions, routine, outcomes, now
                )
            )
        if any(submissions[i].report is not None for i in general):
            if self._overdose_store is not None:
                # Beside the routine fast path, the general records are overdoses only.
                store = self._overdose_store
                commits.append(
                    self._store_overdoses(store, submissions, decisions, general, outcomes, now)
                )
            else:
                commits.append(self._store_general(submissions, decisions, general, outcomes, now))
        if len(commits) == 1:
            await commits[0]
        elif commits:
            for result in await asyncio.gather(*commits, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
        done = [o for o in outcomes if o is not None]
        for status, count in Counter(o.status for o in done).items():
            INTAKE_MESSAGES.labels("ems", status).inc(count)
        return done

    async def _store_routine(
        self,
        store: RoutineStore,
        submissions: Sequence[EmsSubmission],
        decisions: dict[int, Decision],
        indices: list[int],
        outcomes: list[EmsOutcome | None],
        now: datetime,
    ) -> None:
        """Records that are not overdoses, in one round trip (see routine_store)."""
        rows: dict[str, RoutineRow] = {}
        source_keys: dict[str, str] = {}
        for i in indices:
            s = submissions[i]
            assert s.report is not None
            source_key = _source_key("ems", s.partner.partner_id, s.report.pcr_number)
            dedupe = _source_key("seen", source_key)
            if dedupe not in rows:
                rows[dedupe] = RoutineRow(
                    id=self._new_id(),
                    channel=Channel.HTTP_EMS.value,
                    partner_id=s.partner.partner_id,
                    dedupe_key=dedupe,
                    ack="",
                )
                source_keys[dedupe] = source_key
        inserted, reports = await store.store_ems(
            list(rows.values()),
            list(source_keys.values()),
            InboundStatus.NOT_OVERDOSE.value,
            now,
        )
        first: set[str] = set()
        for i in indices:
            s = submissions[i]
            assert s.report is not None
            source_key = _source_key("ems", s.partner.partner_id, s.report.pcr_number)
            dedupe = _source_key("seen", source_key)
            if source_key in reports:
                report_id, revision = reports[source_key]
                status: EmsStatus = "unchanged"
            elif dedupe in inserted and dedupe not in first:
                first.add(dedupe)
                report_id, revision, status = None, None, "not_overdose"
            else:
                report_id, revision, status = None, None, "duplicate"
            outcomes[i] = _ems_outcome(s, decisions[i], status, report_id, revision)

    async def _store_general(
        self,
        submissions: Sequence[EmsSubmission],
        decisions: dict[int, Decision],
        indices: list[int],
        outcomes: list[EmsOutcome | None],
        now: datetime,
    ) -> None:
        async with self._uow() as uow:
            keys = _report_keys(submissions, indices)
            reports = await _ReportBook.load(uow, list(keys.values()))
            # Only records that are not overdoses are deduplicated by their "seen" key. This
            # unit of work runs where the PostgreSQL stores do not (SQLite), for every record.
            seen_keys = [
                _source_key("seen", key)
                for i, key in keys.items()
                if not decisions[i].is_overdose(Definition(submissions[i].partner.definition))
            ]
            seen: set[str] = set()
            if seen_keys:
                seen = set(
                    (
                        await uow.session.execute(
                            sa.select(INBOUND.c.dedupe_key).where(
                                INBOUND.c.dedupe_key.in_(seen_keys)
                            )
                        )
                    ).scalars()
                )
            inbound: list[dict[str, Any]] = []
            for i in keys:
                outcomes[i] = self._one(
                    uow.publish, reports, seen, submissions[i], decisions[i], keys[i], now, inbound
                )
            if inbound:
                await uow.session.execute(INBOUND.insert(), inbound)
            await reports.flush(uow)
            await uow.commit()

    async def _store_overdoses(
        self,
        store: OverdoseStore,
        submissions: Sequence[EmsSubmission],
        decisions: dict[int, Decision],
        indices: list[int],
        outcomes: list[EmsOutcome | None],
        now: datetime,
    ) -> None:
        """Overdoses on PostgreSQL: one read of their reports, one statement for all writes
        (see overdose_store). The same decisions as the general unit of work."""
        keys = _report_keys(submissions, indices)
        assert all(
            decisions[i].is_overdose(Definition(submissions[i].partner.definition)) for i in keys
        ), "only overdoses take the overdose store"
        reports = _ReportBook.of(await store.reports(list(keys.values())))
        writes = store.writes()
        for i in keys:
            outcomes[i] = self._one(
                writes.publish,
                reports,
                set(),
                submissions[i],
                decisions[i],
                keys[i],
                now,
                writes.inbound,
            )
        writes.new_reports, writes.revised_reports = reports.pending()
        await store.write(writes, now)

    def _one(
        self,
        publish: Callable[..., Envelope],
        reports: _ReportBook,
        seen: set[str],
        s: EmsSubmission,
        decision: Decision,
        source_key: str,
        now: datetime,
        inbound: list[dict[str, Any]],
    ) -> EmsOutcome:
        run = s.report
        assert run is not None
        overdose = decision.is_overdose(Definition(s.partner.definition))
        current = reports.get(source_key)

        def outcome(
            status: EmsStatus, report_id: uuid.UUID | None, revision: int | None
        ) -> EmsOutcome:
            return _ems_outcome(s, decision, status, report_id, revision)

        if not overdose and current is None:
            dedupe = _source_key("seen", source_key)
            if dedupe in seen:
                return outcome("duplicate", None, None)
            seen.add(dedupe)
            inbound.append(self._inbound(s, now, InboundStatus.NOT_OVERDOSE, dedupe))
            return outcome("not_overdose", None, None)
        if not overdose:
            # A later version no longer meets the definition: the report stands (see module doc).
            return outcome(
                "unchanged",
                current.report_id if current else None,
                current.revision if current else None,
            )
        report_id = current.report_id if current else self._new_id()
        digest = content_hash(report_id, run, decision)
        if current and current.content_hash == digest:
            return outcome("duplicate", report_id, current.revision)
        revision = current.revision + 1 if current else 1
        event = ems_report(
            run,
            decision,
            program_id=s.partner.program_id,
            partner_id=s.partner.partner_id,
            report_id=report_id,
            revision=revision,
            received_at=now,
            protector=self._protector,
        )
        reports.put(source_key, s.partner.partner_id, "ems", event, digest, now)
        publish(event, subject=person_key(event.blind_keys, report_id))
        row = self._inbound(s, now, InboundStatus.ACCEPTED, None)
        row.update(report_id=report_id, revision=revision)
        inbound.append(row)
        return outcome("revised" if current else "accepted", report_id, revision)

    def _inbound(
        self, s: EmsSubmission, now: datetime, status: InboundStatus, dedupe: str | None
    ) -> dict[str, Any]:
        return {
            "id": self._new_id(),
            "channel": Channel.HTTP_EMS.value,
            "partner_id": s.partner.partner_id,
            "dedupe_key": dedupe,
            "received_at": now,
            "status": status.value,
            "reason_code": None,
            "reason": None,
            "ack": None,
            "report_id": None,
            "revision": None,
            "raw_sealed": None,
            "replayed_at": None,
        }

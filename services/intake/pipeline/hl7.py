"""The HL7 pipeline: screen, classify, decide, store through the port — then acknowledge.

A batch of messages is stored by at most two commits running side by side: the routine
messages (valid, not overdoses) as :class:`~services.intake.store.RoutineWrites`, and
everything else as one :class:`~services.intake.store.BatchWrites` after one lookup, where the
inbound records, the report revisions and the outbox rows commit together. A message's ACK
is released only after the commit that stored it, and a routine message does not wait for an
overdose's commit. A message that was already received (same partner, MSH-3, MSH-4 and
MSH-10) gets its original ACK back and creates nothing. A message that can never succeed is
rejected (AR) and kept sealed so that it can be fixed and replayed; a database failure
answers AE so that the sender retries.

The edge authenticates every submission before it gets here (an MLLP connection by its client
certificate or source network, an HTTP request by its API key): ``HL7Submission.sender`` names
the partners it may speak for. A message whose MSH-4 is not one of those partners' facilities,
or that comes from a sender nobody authenticated, gets the same answer as a facility nobody
registered (AR, ``unknown_sending_facility``), so the answer reveals nothing; and nothing of it
is stored: a counter is enough (``portline_intake_refused_total``).

Only messages that themselves meet the program's definition create a report. An A08 update
without the overdose codes does not withdraw one: updates often carry a partial picture of the
visit. But an A03 or A08 that says the patient died (PID-30, PID-29, PV1-36 expired) revises
the visit's report to fatal even without the codes, so that nobody is sent to reach them; it
never creates a report of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from services.intake.classify import Decision, Definition, classify_ed
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
from services.intake.metrics import BATCH_SIZE, INTAKE_MESSAGES, INTAKE_REFUSED
from services.intake.models import Channel, InboundStatus
from services.intake.parse_pool import parse_inline
from services.intake.partners import PartnerContext, PartnerDirectory, facility_key
from services.intake.pipeline.book import ReportBook
from services.intake.records import AdtMessage, HL7Header
from services.intake.reports import Protector, content_hash, ed_report, person_key
from services.intake.store import (
    BatchWrites,
    InboundRecord,
    IntakeStore,
    RejectedAgain,
    RoutineWrites,
    StoreConflict,
)
from shared.clock import Clock
from shared.events import InboundRejected
from shared.ids import new_uuid
from shared.inbox import is_transient
from shared.outbox_rows import EventTooLargeError
from shared.tracing import current_traceparent

__all__ = [
    "EventTooLarge",
    "HL7Intake",
    "HL7Submission",
    "PreparedSubmission",
    "UnknownFacilityError",
    "dedupe_key",
    "source_key",
]

log = logging.getLogger(__name__)

AckCode = Literal["AA", "AE", "AR"]
FullParse = Callable[[str, Screened, tzinfo], Awaitable[AdtMessage]]


@dataclass(frozen=True, slots=True)
class HL7Submission:
    """One MLLP frame or HTTP body, and the partners its sender was authenticated for (an
    empty set: nobody; every message is then refused)."""

    raw: bytes
    channel: Channel
    sender: frozenset[str]
    replay_of: uuid.UUID | None = None
    """The rejected inbound record this is a replay of: a replay that fails again updates
    that record instead of adding another."""
    traceparent: str | None = field(default_factory=current_traceparent)
    """The trace of the request or frame it came in (shared.tracing): its events carry it."""


class UnknownFacilityError(HL7Error):
    """MSH-4 names a facility the sender may not speak for (or nobody registered, or the
    sender is not authenticated): one answer for all three, so it reveals nothing."""

    code = "unknown_sending_facility"
    default_hl7_error_code = "103"  # table value not found: MSH-4 is not on the allow-list


class EventTooLarge(HL7Error):
    """The report this message makes would be larger than the broker accepts."""

    code = "event_too_large"
    default_hl7_error_code = "102"  # data type error: a field's content is too long


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
    death: bool = False
    """Not an overdose by itself, but says the patient died: revises the visit's report."""
    ack: str | None = None
    replay_of: uuid.UUID | None = None
    recorded_for: str | None = None
    """The partner a rejection is recorded under; None: the message is refused, not kept."""
    settled: bool = False
    """The commit that stored this message (or failed to) is over: its ACK may leave."""
    traceparent: str | None = None


PreparedSubmission = list[_Prepared]
"""One submission's messages, screened and classified by :meth:`HL7Intake.prepare`."""


_REFUSAL = "The sending facility (MSH-4) is not allowed to send to this program."


def _header_or_none(message: str) -> HL7Header | None:
    try:
        return read_header(message)
    except HL7Error:
        return None


def _hash(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def dedupe_key(partner_id: str, header: HL7Header) -> str:
    """Resends are matched within one partner: no partner can shadow another's messages."""
    return _hash(partner_id, header.sending_application, header.sending_facility, header.control_id)


def source_key(*parts: str) -> str:
    """A report's or record's key: a hash of its source's parts (never raw partner input)."""
    return _hash(*parts)


class HL7Intake:
    """Receives HL7 v2 ADT from MLLP and HTTP and answers every message with an ACK."""

    def __init__(
        self,
        *,
        store: IntakeStore,
        directory: PartnerDirectory,
        protector: Protector,
        clock: Clock,
        source: str = "/portline/intake",
        new_id: Callable[[], uuid.UUID] = new_uuid,
        full_parse: FullParse = parse_inline,
        max_event_bytes: int | None = None,
    ) -> None:
        self._store = store
        self._full_parse = full_parse
        self._directory = directory
        self._protector = protector
        self._clock = clock
        self._source = source
        self._new_id = new_id
        self._max_event_bytes = max_event_bytes

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

        routine, general = _partition([p for p in flat if not p.settled])
        if routine and general:
            await asyncio.gather(
                self._commit(routine, now, self._store_routine, release),
                self._commit(general, now, self._store_general, release),
            )
        elif routine:  # the common case: no task to spawn
            await self._commit(routine, now, self._store_routine, release)
        elif general:
            await self._commit(general, now, self._store_general, release)
        else:
            release()
        for label, count in Counter(_status_label(p) for p in flat).items():
            INTAKE_MESSAGES.labels("hl7", label).inc(count)
        return [_joined(group) for group in prepared]

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
            except StoreConflict:
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
        sole = next(iter(submission.sender)) if len(submission.sender) == 1 else None
        try:
            messages = split_messages(text)
        except HL7Error as exc:
            prepared = [
                _Prepared(
                    raw=text, header=None, channel=submission.channel, error=exc, recorded_for=sole
                )
            ]
        else:
            if not submission.sender:  # nobody authenticated: refused unread, nothing kept
                prepared = [
                    _Prepared(raw=m, header=_header_or_none(m), channel=submission.channel)
                    for m in messages
                ]
            else:
                prepared = [await self._prepare_one(m, submission, sole) for m in messages]
        now = self._clock.now()
        for p in prepared:
            p.replay_of = submission.replay_of
            p.traceparent = submission.traceparent
            if p.recorded_for is None and not p.transient:
                self._refuse_unkept(p, now, unauthenticated=not submission.sender)
        return prepared

    @staticmethod
    def answered(prepared: PreparedSubmission) -> str | None:
        """The submission's answer when none of its messages needs storing (every one was
        refused): the edge answers at once, without a commit."""
        if all(p.settled for p in prepared):
            return _joined(prepared)
        return None

    def busy(self, prepared: PreparedSubmission) -> str:
        """The answer when the submission could not even be queued: AE, resend later."""
        now = self._clock.now()
        for p in prepared:
            if not p.settled:
                p.ack = self._ack(p, "AE", now, text="Intake is busy; resend.")
        INTAKE_MESSAGES.labels("hl7", "busy").inc(len(prepared))
        return _joined(prepared)

    def _refuse_unkept(self, p: _Prepared, now: datetime, *, unauthenticated: bool) -> None:
        """AR for a message nobody may send as it is; nothing of it is stored."""
        p.error = UnknownFacilityError(_REFUSAL, location=("MSH", 1, 4))
        p.ack = self._ack(p, "AR", now, error=p.error)
        p.settled = True
        reason = "unauthenticated" if unauthenticated else "facility_not_allowed"
        INTAKE_REFUSED.labels(p.channel.value, reason).inc()

    async def _prepare_one(
        self, message: str, submission: HL7Submission, sole: str | None
    ) -> _Prepared:
        """Screen and classify one message from an authenticated sender. Overdose candidates
        are fully parsed later, by the general commit, so that the routine messages beside
        them do not wait for it. A message that cannot be screened is recorded under its
        sender when that is one partner (else refused, unkept)."""
        channel = submission.channel
        try:
            screened = screen(message)  # reads the header too: the one pass most messages get
        except HL7Error as exc:
            return _Prepared(
                raw=message,
                header=_header_or_none(message),
                channel=channel,
                error=exc,
                recorded_for=sole,
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
            return p  # refused by prepare(), unkept
        p.recorded_for = p.partner.partner_id
        try:
            check_supported(header)
            if not header.control_id:
                raise MissingFieldError.for_field("MSH", 10)
        except HL7Error as exc:
            p.error = exc
            return p
        p.dedupe_key = dedupe_key(p.partner.partner_id, header)
        p.decision = classify_ed(codes=screened.codes, texts=screened.texts)
        p.overdose = p.decision.is_overdose(Definition(p.partner.definition))
        p.death = screened.death and not p.overdose
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
        """The partner whose facility MSH-4 names, if the sender may speak for it."""
        owner = await self._directory.by_facility(header.sending_facility)
        return owner if owner is not None and owner.partner_id in submission.sender else None

    async def _store_routine(self, items: list[_Prepared], now: datetime) -> None:
        """Routine messages: the first copy of each is stored, a resend gets its ACK back."""
        rows: dict[str, InboundRecord] = {}
        for p in items:
            assert p.dedupe_key is not None
            assert p.partner is not None
            if p.dedupe_key not in rows:
                inbound_id = self._new_id()
                rows[p.dedupe_key] = InboundRecord(
                    id=inbound_id,
                    channel=p.channel.value,
                    partner_id=p.partner.partner_id,
                    status=InboundStatus.NOT_OVERDOSE.value,
                    dedupe_key=p.dedupe_key,
                    ack=self._ack(p, "AA", now, control_id=inbound_id.hex[:20]),
                )
        result = await self._store.write_routine(RoutineWrites(list(rows.values()), now))
        for p in items:
            assert p.dedupe_key is not None
            p.ack = result.acks[p.dedupe_key]

    async def _store_general(self, items: list[_Prepared], now: datetime) -> None:
        """One lookup, then one commit: inbound records, reports, rejections, outbox rows."""
        for p in items:
            if (p.overdose or p.death) and p.error is None and p.adt is None and not p.transient:
                await self._parse_candidate(p)  # only candidates pay for the full parse
        if any(p.transient for p in items):
            raise ConnectionError("partner directory or parse worker unavailable")
        known = await self._store.lookup(
            dedupe_keys=[p.dedupe_key for p in items if p.dedupe_key and p.error is None],
            source_keys=[
                self._source_key(p) for p in items if (p.overdose or p.death) and p.error is None
            ],
        )
        acks = dict(known.acks)
        reports = ReportBook(known.reports)
        writes = BatchWrites(source=self._source, now=now, max_event_bytes=self._max_event_bytes)
        for p in items:
            if p.error is None and p.dedupe_key in acks:
                p.ack = acks[p.dedupe_key]  # a resend: its first copy's answer
            elif p.error is None:
                self._accept(writes, reports, p, now)
            if p.error is not None:
                self._refuse(writes, p, now)
            else:
                assert p.dedupe_key is not None
                assert p.ack is not None
                acks[p.dedupe_key] = p.ack
                if p.replay_of is not None and "|AA|" in p.ack:
                    writes.replayed.append(p.replay_of)
        writes.new_reports, writes.revised_reports = reports.pending()
        await self._store.write(writes)

    def _accept(
        self, writes: BatchWrites, reports: ReportBook, p: _Prepared, now: datetime
    ) -> None:
        """A valid message received for the first time: its record, and its report if it is
        an overdose. A report too large to publish turns the message into a rejection."""
        assert p.dedupe_key is not None
        assert p.partner is not None
        record = InboundRecord(
            id=self._new_id(),
            channel=p.channel.value,
            partner_id=p.partner.partner_id,
            status=InboundStatus.NOT_OVERDOSE.value,
            dedupe_key=p.dedupe_key,
        )
        revises = p.death and reports.get(self._source_key(p)) is not None
        if p.overdose or revises:
            try:
                record.report_id, record.revision = self._report(writes, reports, p, now)
            except EventTooLargeError:
                p.error = EventTooLarge(
                    "The report this message makes is larger than intake can publish."
                )
                return
            record.status = InboundStatus.ACCEPTED.value
        p.ack = record.ack = self._ack(p, "AA", now)
        writes.inbound.append(record)

    def _refuse(self, writes: BatchWrites, p: _Prepared, now: datetime) -> None:
        """AR, and the message kept sealed for replay (or its earlier record updated)."""
        assert p.error is not None
        p.ack = self._ack(p, "AR", now, error=p.error)
        if p.replay_of is not None:
            writes.rejected_again.append(
                RejectedAgain(p.replay_of, p.error.code, p.error.message, p.ack)
            )
            return
        partner_id = p.recorded_for
        assert partner_id is not None  # unrecorded refusals are answered in prepare()
        inbound_id = self._new_id()
        writes.publish(
            InboundRejected(
                inbound_id=inbound_id,
                source_kind="ed",
                source_org=partner_id,
                reason_code=p.error.code,
                reason=p.error.message,
                received_at=now,
            ),
            subject=partner_id,
            traceparent=p.traceparent,
        )
        writes.inbound.append(
            InboundRecord(
                id=inbound_id,
                channel=p.channel.value,
                partner_id=partner_id,
                status=InboundStatus.REJECTED.value,
                ack=p.ack,
                reason_code=p.error.code,
                reason=p.error.message,
                raw_sealed=self._protector.sealer.seal(p.raw, context="inbound"),
            )
        )

    def _source_key(self, p: _Prepared) -> str:
        assert p.header is not None
        assert p.partner is not None
        assert p.adt is not None
        visit = p.adt.visit_number or f"msh10:{p.header.control_id}"
        return source_key(
            "ed", p.partner.partner_id, facility_key(p.header.sending_facility), visit
        )

    def _report(
        self, writes: BatchWrites, reports: ReportBook, p: _Prepared, now: datetime
    ) -> tuple[uuid.UUID, int]:
        """The report this overdose creates or revises, published; (report id, revision)."""
        assert p.partner is not None
        assert p.decision is not None
        assert p.adt is not None
        adt = p.adt
        key = self._source_key(p)
        current = reports.get(key)
        report_id = current.report_id if current else self._new_id()
        digest = content_hash(
            report_id,
            adt.identity,
            adt.admit_at,
            adt.diagnosis_codes,
            adt.chief_complaints,
            adt.discharge_disposition,
            adt.death_indicator,
            adt.died_at,
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
            kept=(current.opioid, current.any_drug) if current else None,
        )
        writes.publish(  # may refuse
            event, subject=person_key(event.blind_keys, report_id), traceparent=p.traceparent
        )
        reports.put(key, p.partner.partner_id, "ed", event, digest)
        return report_id, revision

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


def _partition(items: list[_Prepared]) -> tuple[list[_Prepared], list[_Prepared]]:
    """(routine, general); a routine message sharing its dedupe key with a general one goes
    with it, so that one commit decides both copies."""
    general = [p for p in items if not _routine(p)]
    taken = {p.dedupe_key for p in general if p.dedupe_key is not None}
    routine: list[_Prepared] = []
    for p in items:
        if _routine(p):
            (general if p.dedupe_key in taken else routine).append(p)
    return routine, general


def _joined(group: Sequence[_Prepared]) -> str:
    """One submission's answer: an ACK per message it held."""
    return "\r".join(p.ack or "" for p in group)


def _routine(p: _Prepared) -> bool:
    """A valid message that is not an overdose (nor a death that may revise one) and not a
    replay: the fast path's case."""
    return (
        p.error is None
        and not p.overdose
        and not p.death
        and p.replay_of is None
        and not p.transient
    )


def _status_label(p: _Prepared) -> str:
    if p.ack and "|AE|" in p.ack:
        return "error"
    if p.error is not None:
        return "rejected"
    return "overdose" if p.overdose else "not_overdose"

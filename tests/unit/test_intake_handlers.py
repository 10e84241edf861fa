"""Intake's units of work on the embedded database: ACK semantics, dedupe, revisions, rejects."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake.models import INBOUND, Channel
from services.intake.partners import (
    PartnerDirectory,
    add_facility,
    create_partner,
    issue_key,
    remove_facility,
)
from services.intake.pipeline import EmsIntake, EmsSubmission, HL7Intake, HL7Submission
from services.intake.records import EmsMedication, EmsRunReport, Identity
from services.intake.replay import replay_rejected
from services.intake.reports import Protector
from services.intake.seed import DEMO_EMS, seed_demo
from services.intake.store import BatchWrites, RoutineResult, RoutineWrites
from services.intake.store.sqlite import SqliteStore
from shared.clock import ManualClock
from shared.db import create_engine, session_factory
from shared.envelope import Envelope
from shared.events import InboundRejected, OverdoseReported
from shared.migrations import upgrade
from shared.outbox import OUTBOX
from shared.sealing import BlindIndexer, Keyring, Sealer
from tests.hl7_builder import ack_fields, adt, routine

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
HOSPITAL = frozenset({"demo-hospital"})
"""An MLLP connection authenticated for the demo hospital (as from loopback in development)."""


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/intake.db", service="intake")
    await upgrade(engine, service="intake")
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def protector() -> Protector:
    return Protector(Sealer(Keyring({"t1": b"k" * 32}, "t1")), BlindIndexer(b"b" * 32))


@pytest.fixture
async def intake(
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
    protector: Protector,
    tmp_path: Path,
) -> HL7Intake:
    await seed_demo(sessions, clock=clock, var_dir=tmp_path)
    return HL7Intake(
        store=SqliteStore(sessions),
        directory=PartnerDirectory(sessions, ttl_seconds=0),
        protector=protector,
        clock=clock,
    )


def mllp(message: str) -> HL7Submission:
    return HL7Submission(message.encode(), Channel.MLLP, HOSPITAL)


async def events(sessions: async_sessionmaker[AsyncSession]) -> list[Envelope]:
    async with sessions() as s:
        rows = (await s.execute(sa.select(OUTBOX.c.payload).order_by(OUTBOX.c.id))).scalars()
        return [Envelope.from_bytes(r) for r in rows]


async def inbound(sessions: async_sessionmaker[AsyncSession]) -> list[sa.Row[tuple[str, str]]]:
    async with sessions() as s:
        return list(
            await s.execute(
                sa.select(
                    INBOUND.c.status,
                    INBOUND.c.reason_code,
                    INBOUND.c.raw_sealed,
                    INBOUND.c.revision,
                ).order_by(INBOUND.c.received_at)
            )
        )


async def test_overdose_is_stored_published_sealed_and_acked_aa(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession], protector: Protector
) -> None:
    (ack,) = await intake.receive([mllp(adt("MSG-1"))])
    assert ack_fields(ack) == ("AA", "MSG-1", "")

    (env,) = await events(sessions)
    event = env.event()
    assert isinstance(event, OverdoseReported)
    assert (event.opioid, event.any_drug, event.revision, event.source_kind) == (
        True,
        True,
        1,
        "ed",
    )
    assert event.program_id == "demo"
    assert event.incident_at == datetime(2026, 11, 20, 19, 15, tzinfo=UTC)
    assert {r.code for r in event.reasons} >= {"icd10_opioid_poisoning", "text_overdose_term"}
    # PHI only sealed: the name, DOB, phone and street never appear in the payload.
    payload = env.model_dump_json()
    for phi in ("Doe", "Jane", "1990", "5550100", "Elm St", "MRNV1001"):
        assert phi not in payload
    assert event.identity is not None
    opened = protector.sealer.open_json(event.identity, context="identity")
    assert (opened["family"], opened["given"], opened["dob"]) == ("Doe", "Jane", "1990-01-01")
    assert event.blind_keys.name_dob == protector.indexer.name_dob("DOE", "jane", "1990-01-01")
    assert env.subject == event.blind_keys.name_dob
    assert event.location.county == "37081"
    rows = await inbound(sessions)
    assert [(r.status, r.raw_sealed) for r in rows] == [("accepted", None)]


async def test_not_an_overdose_is_acked_counted_and_nothing_identifying_kept(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    (ack,) = await intake.receive([mllp(routine("MSG-2"))])
    assert ack_fields(ack)[0] == "AA"
    assert await events(sessions) == []
    async with sessions() as s:
        row = (await s.execute(sa.select(INBOUND))).one()
    assert row.status == "not_overdose"
    assert row.raw_sealed is None
    assert row.report_id is None
    assert "Doe" not in json.dumps([str(v) for v in row])


async def test_resent_message_gets_the_original_ack_and_creates_nothing(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession], clock: ManualClock
) -> None:
    (first,) = await intake.receive([mllp(adt("MSG-3"))])
    clock.set(datetime(2026, 11, 21, 10, 0, tzinfo=UTC))
    again = await intake.receive([mllp(adt("MSG-3")), mllp(adt("MSG-3"))])
    assert again == [first, first]
    assert len(await events(sessions)) == 1
    assert len(await inbound(sessions)) == 1


async def test_same_message_twice_in_one_batch_is_one_event(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    acks = await intake.receive([mllp(adt("MSG-4")), mllp(adt("MSG-4"))])
    assert acks[0] == acks[1]
    assert len(await events(sessions)) == 1


async def test_prepared_messages_are_stored_only_by_their_commit(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """The service prepares each frame as it arrives and commits the batch later."""
    overdose = await intake.prepare(mllp(adt("MSG-P1")))
    visit = await intake.prepare(mllp(routine("MSG-P2")))
    assert await inbound(sessions) == []
    acks = await intake.commit([overdose, visit])
    assert [ack_fields(a)[:2] for a in acks] == [("AA", "MSG-P1"), ("AA", "MSG-P2")]
    assert sorted(r.status for r in await inbound(sessions)) == ["accepted", "not_overdose"]
    assert len(await events(sessions)) == 1


async def test_a08_update_of_the_same_visit_revises_the_report(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await intake.receive([mllp(adt("MSG-5", trigger="A04"))])
    await intake.receive([mllp(adt("MSG-6", trigger="A08", dx="T40.411A"))])
    # an update that says nothing new (a resend under a new control id) publishes nothing
    await intake.receive([mllp(adt("MSG-7", trigger="A08", dx="T40.411A"))])
    first, second = (e.event() for e in await events(sessions))
    assert isinstance(first, OverdoseReported)
    assert isinstance(second, OverdoseReported)
    assert second.report_id == first.report_id
    assert (first.revision, second.revision) == (1, 2)
    assert any(r.detail == "T40411A" for r in second.reasons)
    assert [r.revision for r in await inbound(sessions)] == [1, 2, 2]


async def test_a_different_visit_is_a_different_report(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await intake.receive([mllp(adt("MSG-8", visit="V1")), mllp(adt("MSG-9", visit="V2"))])
    a, b = (e.event() for e in await events(sessions))
    assert isinstance(a, OverdoseReported)
    assert isinstance(b, OverdoseReported)
    assert a.report_id != b.report_id


@pytest.mark.parametrize(
    ("message", "reason", "err3", "msa2"),
    [
        (adt("MSG-11", trigger="A31"), "unsupported_message_type", "201", "MSG-11"),
        ("PID|1||not a message", "not_hl7", "100", ""),
        (adt("MSG-12", version="3.0"), "unsupported_message_type", "203", "MSG-12"),
    ],
)
async def test_what_can_never_succeed_is_rejected_ar_and_kept_sealed(
    intake: HL7Intake,
    sessions: async_sessionmaker[AsyncSession],
    protector: Protector,
    message: str,
    reason: str,
    err3: str,
    msa2: str,
) -> None:
    (ack,) = await intake.receive([mllp(message)])
    assert ack_fields(ack) == ("AR", msa2, err3)
    (row,) = await inbound(sessions)
    assert (row.status, row.reason_code) == ("rejected", reason)
    assert protector.sealer.open(row.raw_sealed, context="inbound") == message.rstrip("\r")
    (env,) = await events(sessions)
    rejected = env.event()
    assert isinstance(rejected, InboundRejected)
    assert rejected.reason_code == reason
    assert "Doe" not in env.model_dump_json()


async def test_http_partner_may_only_send_as_its_own_facilities(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    directory = PartnerDirectory(sessions, ttl_seconds=0)
    async with sessions() as s:
        key = json.loads((Path(str(s.bind.url.database)).parent / "demo-keys.json").read_text())
    hospital = await directory.by_api_key(key["demo-hospital"])
    assert hospital is not None
    sender = frozenset({hospital.partner_id})
    ok, foreign = await intake.receive(
        [
            HL7Submission(adt("MSG-13").encode(), Channel.HTTP_HL7, sender),
            HL7Submission(adt("MSG-14", facility="OTHER").encode(), Channel.HTTP_HL7, sender),
        ]
    )
    assert ack_fields(ok)[0] == "AA"
    assert ack_fields(foreign)[:2] == ("AR", "MSG-14")


async def test_database_failure_answers_ae_and_loses_nothing_once_it_is_back(
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
    protector: Protector,
    tmp_path: Path,
) -> None:
    await seed_demo(sessions, clock=clock, var_dir=tmp_path)
    down = True

    class FlakyStore(SqliteStore):
        async def write(self, writes: BatchWrites) -> None:
            if down:
                raise sa.exc.OperationalError("COMMIT", {}, ConnectionRefusedError("db down"))
            await super().write(writes)

        async def write_routine(self, writes: RoutineWrites) -> RoutineResult:
            if down:
                raise sa.exc.OperationalError("COMMIT", {}, ConnectionRefusedError("db down"))
            return await super().write_routine(writes)

    intake = HL7Intake(
        store=FlakyStore(sessions),
        directory=PartnerDirectory(sessions, ttl_seconds=0),
        protector=protector,
        clock=clock,
    )
    (ack,) = await intake.receive([mllp(adt("MSG-15"))])
    assert ack_fields(ack)[:2] == ("AE", "MSG-15")
    assert await events(sessions) == []
    assert await inbound(sessions) == []

    down = False
    (ack,) = await intake.receive([mllp(adt("MSG-15"))])
    assert ack_fields(ack)[0] == "AA"
    assert len(await events(sessions)) == 1


async def test_rejected_message_is_replayed_once_its_cause_is_fixed(
    sessions: async_sessionmaker[AsyncSession],
    protector: Protector,
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    await seed_demo(sessions, clock=clock, var_dir=tmp_path)
    fixed = False

    async def parse(message: str, screened: object, tz: object) -> object:
        if not fixed:
            raise RuntimeError("a parser bug")
        from services.intake.parse_pool import parse_inline

        return await parse_inline(message, screened, tz)  # type: ignore[arg-type]

    intake = HL7Intake(
        store=SqliteStore(sessions),
        directory=PartnerDirectory(sessions, ttl_seconds=0),
        protector=protector,
        clock=clock,
        full_parse=parse,  # type: ignore[arg-type]
    )
    (ack,) = await intake.receive([mllp(adt("MSG-16"))])
    assert ack_fields(ack)[:3] == ("AR", "MSG-16", "100")
    results = await replay_rejected(sessions, intake, protector.sealer)
    assert [(r.ack_code, r.hl7_error_code) for r in results] == [("AR", "100")]
    assert len(await inbound(sessions)) == 1  # a failed replay adds no second record

    fixed = True
    results = await replay_rejected(sessions, intake, protector.sealer)
    assert [r.ack_code for r in results] == ["AA"]
    statuses = sorted(r.status for r in await inbound(sessions))
    assert statuses == ["accepted", "replayed"]
    kinds = [e.type for e in await events(sessions)]
    assert kinds == ["InboundRejected", "OverdoseReported"]
    assert await replay_rejected(sessions, intake, protector.sealer) == []


async def test_a_sender_not_allowed_for_a_facility_is_refused_like_an_unknown_one_unkept(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession], clock: ManualClock
) -> None:
    """No enumeration: another hospital's facility, a facility nobody registered and a sender
    nobody authenticated all get the same answer, and none of them leaves a trace."""
    async with sessions() as s, s.begin():
        await create_partner(
            s, partner_id="other-hospital", program_id="demo", name="O", kind="hospital", now=T0
        )
        await add_facility(s, partner_id="other-hospital", facility="OTHER_HOSP")
    before = _refused("mllp", "facility_not_allowed")
    theirs, nobodys = await intake.receive(
        [mllp(adt("MSG-A", facility="OTHER_HOSP")), mllp(adt("MSG-B", facility="ELSEWHERE"))]
    )
    (stranger,) = await intake.receive(
        [HL7Submission(adt("MSG-C").encode(), Channel.MLLP, frozenset())]
    )
    answers = [theirs, nobodys, stranger]
    assert [ack_fields(a) for a in answers] == [
        ("AR", "MSG-A", "103"),
        ("AR", "MSG-B", "103"),
        ("AR", "MSG-C", "103"),
    ]

    def shape(ack: str) -> list[str]:
        """All but the echoed MSH-4 and MSH-10 and the ACK's own time and control id."""
        segments = ack.split("\r")
        msh = segments[0].split("|")
        msa = segments[1].split("|")
        return ["|".join(msh[:5] + msh[7:9] + msh[10:]), msa[0], msa[1], *msa[3:], *segments[2:]]

    assert shape(theirs) == shape(nobodys) == shape(stranger)
    assert await inbound(sessions) == []
    assert await events(sessions) == []
    assert _refused("mllp", "facility_not_allowed") == before + 2
    (other,) = await intake.receive(
        [
            HL7Submission(
                adt("MSG-D", facility="OTHER_HOSP").encode(),
                Channel.MLLP,
                frozenset({"other-hospital"}),
            )
        ]
    )
    assert ack_fields(other)[0] == "AA"  # its own hospital's connection may


async def test_a_resend_is_matched_within_its_partner_only(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A message id is a partner's own: once a facility passes to another partner, that
    partner's message with the same MSH-3/4/10 is new, not the first partner's resend."""
    (first,) = await intake.receive([mllp(adt("SAME-1", facility="MOVING"))])
    assert ack_fields(first)[0] == "AR"  # nobody has MOVING yet
    async with sessions() as s, s.begin():
        await add_facility(s, partner_id="demo-hospital", facility="MOVING")
    (mine,) = await intake.receive([mllp(adt("SAME-1", facility="MOVING"))])
    async with sessions() as s, s.begin():
        await remove_facility(s, partner_id="demo-hospital", facility="MOVING")
        await create_partner(
            s, partner_id="other-hospital", program_id="demo", name="O", kind="hospital", now=T0
        )
        await add_facility(s, partner_id="other-hospital", facility="MOVING")
    theirs = HL7Submission(
        adt("SAME-1", facility="MOVING").encode(), Channel.MLLP, frozenset({"other-hospital"})
    )
    (second,) = await intake.receive([theirs])
    assert ack_fields(mine)[0] == ack_fields(second)[0] == "AA"
    assert mine != second  # a new message of its own partner, not the other's resend
    async with sessions() as s:
        keys = list((await s.execute(sa.select(INBOUND.c.dedupe_key))).scalars())
    assert len(keys) == 2
    assert all("MOVING" not in (k or "") for k in keys)  # hashed, never raw partner input


async def test_an_a08_revises_only_its_own_partner_s_report(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """The same facility, visit and MRN from another partner (a facility that changed hands)
    is that partner's own report: its A08 creates a report and never revises the first
    partner's."""
    async with sessions() as s, s.begin():
        await add_facility(s, partner_id="demo-hospital", facility="MOVING")
    (first,) = await intake.receive([mllp(adt("REV-1", facility="MOVING", visit="VM1"))])
    async with sessions() as s, s.begin():
        await remove_facility(s, partner_id="demo-hospital", facility="MOVING")
        await create_partner(
            s, partner_id="other-hospital", program_id="demo", name="O", kind="hospital", now=T0
        )
        await add_facility(s, partner_id="other-hospital", facility="MOVING")
    a08 = adt("REV-2", facility="MOVING", visit="VM1", trigger="A08", dx="T40.411A")
    (second,) = await intake.receive(
        [HL7Submission(a08.encode(), Channel.MLLP, frozenset({"other-hospital"}))]
    )
    assert ack_fields(first)[0] == ack_fields(second)[0] == "AA"
    mine, theirs = (e.event() for e in await events(sessions))
    assert isinstance(mine, OverdoseReported)
    assert isinstance(theirs, OverdoseReported)
    assert (mine.source_org, theirs.source_org) == ("demo-hospital", "other-hospital")
    assert theirs.report_id != mine.report_id
    assert (mine.revision, theirs.revision) == (1, 1)  # a report of its own, not a revision


async def test_the_same_pcr_number_from_two_agencies_is_two_reports(
    ems: EmsIntake, sessions: async_sessionmaker[AsyncSession], tmp_path: Path, clock: ManualClock
) -> None:
    await seed_demo(sessions, clock=clock, var_dir=tmp_path)
    ours = await ems_partner(sessions, tmp_path)
    async with sessions() as s, s.begin():
        await create_partner(
            s, partner_id="other-ems", program_id="demo", name="Other EMS", kind="ems", now=T0
        )
        key = (await issue_key(s, partner_id="other-ems", now=T0)).api_key
    theirs = await PartnerDirectory(sessions, ttl_seconds=0).by_api_key(key)
    assert theirs is not None
    (a,) = await ems.receive([EmsSubmission(ours, 0, run("PCR-SAME"))])
    changed = run("PCR-SAME", narrative="naloxone given, improved")
    (b,) = await ems.receive([EmsSubmission(theirs, 0, changed)])
    assert (a.status, b.status) == ("accepted", "accepted")  # not a revision of ours
    assert a.report_id != b.report_id
    assert (a.revision, b.revision) == (1, 1)
    (again,) = await ems.receive([EmsSubmission(ours, 0, run("PCR-SAME"))])
    assert (again.status, again.report_id) == ("duplicate", a.report_id)


def _refused(channel: str, reason: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "portline_intake_refused_total", {"channel": channel, "reason": reason}
    )
    return value or 0.0


# --- EMS --------------------------------------------------------------------------------


@pytest.fixture
async def ems(
    sessions: async_sessionmaker[AsyncSession], clock: ManualClock, protector: Protector
) -> EmsIntake:
    return EmsIntake(
        store=SqliteStore(sessions),
        protector=protector,
        clock=clock,
    )


def run(
    pcr: str, *, consent: str = "accepted", improved: bool = True, **kw: object
) -> EmsRunReport:
    return EmsRunReport(
        pcr_number=pcr,
        agency_id="A1",
        identity=Identity(family="Roe", given="Sam", phones=("336-555-0199",)),
        incident_at=datetime(2026, 11, 20, 22, 0, tzinfo=UTC),
        scene=None,
        impressions=("R40.20",),
        medications=(EmsMedication("7242", "9916001" if improved else "9916003"),),
        drug_use_indicators=(),
        consent=consent,
        leave_behind=("naloxone_kit",),
        **kw,  # type: ignore[arg-type]
    )


async def ems_partner(sessions: async_sessionmaker[AsyncSession], tmp_path: Path):  # type: ignore[no-untyped-def]
    keys = json.loads((tmp_path / "demo-keys.json").read_text())
    partner = await PartnerDirectory(sessions, ttl_seconds=0).by_api_key(keys[DEMO_EMS])
    assert partner is not None
    return partner


async def test_ems_run_reports_are_idempotent_per_pcr_and_revise_when_changed(
    intake: HL7Intake,
    ems: EmsIntake,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    partner = await ems_partner(sessions, tmp_path)
    sub = lambda i, r: EmsSubmission(partner, i, r)  # noqa: E731
    out = await ems.receive([sub(0, run("P1")), sub(1, run("P2", improved=False))])
    assert [(o.status, o.overdose) for o in out] == [("accepted", True), ("not_overdose", False)]
    out = await ems.receive([sub(0, run("P1")), sub(1, run("P2", improved=False))])
    assert [o.status for o in out] == ["duplicate", "duplicate"]
    out = await ems.receive([sub(0, run("P1", narrative="naloxone given, improved"))])
    assert [(o.status, o.revision) for o in out] == [("revised", 2)]
    first, second = (e.event() for e in await events(sessions))
    assert isinstance(first, OverdoseReported)
    assert isinstance(second, OverdoseReported)
    assert first.report_id == second.report_id
    assert first.naloxone_given
    assert first.consent == "accepted"
    assert first.leave_behind == ["naloxone_kit"]


async def test_declined_consent_is_reported_as_declined(
    intake: HL7Intake,
    ems: EmsIntake,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    partner = await ems_partner(sessions, tmp_path)
    (out,) = await ems.receive([EmsSubmission(partner, 0, run("P9", consent="declined"))])
    assert out.status == "accepted"
    (env,) = await events(sessions)
    event = env.event()
    assert isinstance(event, OverdoseReported)
    assert event.consent == "declined"


async def test_invalid_ems_record_is_reported_and_the_rest_accepted(
    intake: HL7Intake,
    ems: EmsIntake,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    partner = await ems_partner(sessions, tmp_path)
    out = await ems.receive(
        [
            EmsSubmission(partner, 0, None, "missing_pcr_number", "no eRecord.01"),
            EmsSubmission(partner, 1, run(str(uuid.uuid4()))),
        ]
    )
    assert [(o.index, o.status, o.error_code) for o in out] == [
        (0, "rejected", "missing_pcr_number"),
        (1, "accepted", None),
    ]


async def test_a_parser_failure_is_refused_and_kept_for_replay_and_a_dead_worker_is_ae(
    sessions: async_sessionmaker[AsyncSession],
    clock: ManualClock,
    protector: Protector,
    tmp_path: Path,
) -> None:
    from concurrent.futures.process import BrokenProcessPool

    await seed_demo(sessions, clock=clock, var_dir=tmp_path)
    failure: BaseException = RuntimeError("hl7apy bug")

    async def broken_parse(*_args: object) -> object:
        raise failure

    intake = HL7Intake(
        store=SqliteStore(sessions),
        directory=PartnerDirectory(sessions, ttl_seconds=0),
        protector=protector,
        clock=clock,
        full_parse=broken_parse,  # type: ignore[arg-type]
    )
    (ack,) = await intake.receive([mllp(adt("BUG-1"))])
    assert ack_fields(ack)[:2] == ("AR", "BUG-1")
    (row,) = await inbound(sessions)
    assert (row.status, row.reason_code) == ("rejected", "parse_error")
    assert row.raw_sealed is not None

    failure = BrokenProcessPool("worker died")
    (ack,) = await intake.receive([mllp(adt("BUG-2"))])
    assert ack_fields(ack)[:2] == ("AE", "BUG-2")
    assert len(await inbound(sessions)) == 1


# --- deaths -------------------------------------------------------------------------------


def _expired_a03(control: str, visit: str) -> str:
    """A discharge (A03) that says only that the patient expired: PV1-36 = 20, no codes."""
    message = adt(control, trigger="A03", dx=None, complaint=None, visit=visit)
    segments = message.rstrip("\r").split("\r")
    pv1 = next(i for i, seg in enumerate(segments) if seg.startswith("PV1|"))
    fields = segments[pv1].split("|")
    fields += [""] * (37 - len(fields))
    fields[36] = "20"
    segments[pv1] = "|".join(fields)
    return "\r".join(segments) + "\r"


async def test_a_later_a03_saying_expired_revises_the_visit_s_report_to_fatal(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    (first,) = await intake.receive([mllp(adt("VIS-1", visit="V-DIES"))])
    assert ack_fields(first)[0] == "AA"
    (later,) = await intake.receive([mllp(_expired_a03("VIS-2", "V-DIES"))])
    assert ack_fields(later)[0] == "AA"
    opened, revised = (e.event() for e in await events(sessions))
    assert isinstance(opened, OverdoseReported)
    assert isinstance(revised, OverdoseReported)
    assert (revised.report_id, revised.revision) == (opened.report_id, 2)
    assert (opened.fatal, revised.fatal) == (False, True)
    assert revised.opioid  # the report stays what it was: an opioid overdose
    assert "hl7_discharge_expired" in {r.code for r in revised.reasons}


async def test_an_a03_saying_expired_for_a_visit_without_a_report_creates_none(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    (ack,) = await intake.receive([mllp(_expired_a03("VIS-3", "V-OTHER"))])
    assert ack_fields(ack)[0] == "AA"
    assert await events(sessions) == []
    assert [r.status for r in await inbound(sessions)] == ["not_overdose"]


async def test_an_oversized_name_is_refused_ar_102_and_kept_for_replay(
    intake: HL7Intake, sessions: async_sessionmaker[AsyncSession]
) -> None:
    (ack,) = await intake.receive([mllp(adt("BIG-1", family="X" * 5000))])
    assert ack_fields(ack) == ("AR", "BIG-1", "102")
    (row,) = await inbound(sessions)
    assert (row.status, row.reason_code) == ("rejected", "field_too_long")


@pytest.mark.parametrize(
    ("field", "at_most", "location", "value"),
    [
        ("family", "Y" * 100, "PID^1^5", "X" * 101),
        ("given", "Y" * 100, "PID^1^5", "X" * 101),
        ("street", "9" * 200, "PID^1^11", "9" * 201),
        ("city", "Y" * 100, "PID^1^11", "X" * 101),
        ("phone", "^PRN^PH^^^336^" + "5" * 28, "PID^1^13", "^PRN^PH^^^336^" + "5" * 40),
        ("mrn", "M" * 64, "PID^1^3", "M" * 65),
    ],
)
async def test_each_identity_field_is_capped_refused_ar_102_beyond_and_kept_for_replay(
    intake: HL7Intake,
    sessions: async_sessionmaker[AsyncSession],
    field: str,
    at_most: str,
    location: str,
    value: str,
) -> None:
    """Names, address, phone and MRN have a longest value: at it the overdose is accepted,
    one character beyond it is refused (never cut), kept sealed, and nothing is published."""
    (fits,) = await intake.receive([mllp(adt("CAP-OK", visit="VCAP1", **{field: at_most}))])
    assert ack_fields(fits)[0] == "AA"
    (ack,) = await intake.receive([mllp(adt("CAP-BIG", visit="VCAP2", **{field: value}))])
    assert ack_fields(ack) == ("AR", "CAP-BIG", "102")
    err = next(seg for seg in ack.split("\r") if seg.startswith("ERR|")).split("|")
    assert err[2] == location
    assert value not in ack  # the refusal names the field, never echoes it
    rows = await inbound(sessions)
    assert [(r.status, r.reason_code) for r in rows] == [
        ("accepted", None),
        ("rejected", "field_too_long"),
    ]
    assert len(await events(sessions)) == 2  # the accepted report and the refusal's notice
    assert {e.type for e in await events(sessions)} == {"OverdoseReported", "InboundRejected"}


async def test_a_fatal_ems_overdose_and_a_later_version_saying_so_are_fatal(
    intake: HL7Intake,
    ems: EmsIntake,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    partner = await ems_partner(sessions, tmp_path)
    (dead,) = await ems.receive([EmsSubmission(partner, 0, run("F-1", fatal=True))])
    assert dead.status == "accepted"
    (alive,) = await ems.receive([EmsSubmission(partner, 0, run("F-2"))])
    # a later version of F-2 no longer meets the definition but says the patient died
    (later,) = await ems.receive(
        [EmsSubmission(partner, 0, run("F-2", improved=False, release_acuity="4219009"))]
    )
    assert (alive.status, later.status, later.revision) == ("accepted", "revised", 2)
    # a death that was never an overdose report creates none
    (other,) = await ems.receive(
        [EmsSubmission(partner, 0, run("F-3", improved=False, arrest_end="3018003"))]
    )
    assert other.status == "not_overdose"
    fatal = [e.event() for e in await events(sessions)]
    assert [(e.source_ref, e.revision, e.fatal) for e in fatal] == [  # type: ignore[attr-defined]
        ("F-1", 1, True),
        ("F-2", 1, False),
        ("F-2", 2, True),
    ]

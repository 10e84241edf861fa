"""Full parse of overdose candidates (hl7apy, with the positional fallback)."""

from __future__ import annotations

import logging
import tracemalloc
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.intake.hl7 import (
    ParseError,
    normalize,
    parse_adt,
    parse_hl7_date,
    parse_hl7_datetime,
    screen,
    split_messages,
)
from services.intake.hl7 import parse as parse_module
from services.intake.hl7.screen import Separators
from services.intake.records import Address, AdtMessage, Identity

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"
NEW_YORK = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
PLUS_ONE = timezone(timedelta(hours=1))


def _fixture(name: str) -> str:
    return normalize((FIXTURES / name).read_bytes())


def _parse(message: str, **kwargs: object) -> AdtMessage:
    return parse_adt(message, screen(message), **kwargs)  # type: ignore[arg-type]


def _adt(
    pid: str = "PID|1||123^^^HOSP^MR||DOE^JANE",
    *,
    pv1: str | None = "PV1|1|E",
    evn: str | None = None,
    version: str = "2.5.1",
    trigger: str = "A04",
    msh7: str = "20240302014500",
    extra: tuple[str, ...] = (),
) -> str:
    msh = f"MSH|^~\\&|APP|FAC|PORTLINE|HD|{msh7}||ADT^{trigger}|CTRL-9|P|{version}"
    segments = [msh]
    if evn is not None:
        segments.append(evn)
    segments.append(pid)
    if pv1 is not None:
        segments.append(pv1)
    segments.extend(extra)
    return "\r".join(segments)


def _hl7apy_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read with hl7apy only: the positional reading has nothing to fill gaps with."""
    monkeypatch.setattr(parse_module, "_segments_positional", lambda *args: {})


def _positional_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("hl7apy unavailable")

    monkeypatch.setattr(parse_module, "_segments_hl7apy", broken)


@pytest.fixture(params=["hl7apy", "positional"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through hl7apy alone, and again through the positional reader alone."""
    if request.param == "hl7apy":
        _hl7apy_alone(monkeypatch)
    else:
        _positional_alone(monkeypatch)
    return str(request.param)


# ---------------------------------------------------------------------------------------
# Synthetic overdose messages
# ---------------------------------------------------------------------------------------


def test_nist_overdose_a04_v251(reader: str) -> None:
    message = _fixture("nist_ss_overdose_a04_v251.hl7")
    adt = parse_adt(message, screen(message))
    assert adt == AdtMessage(
        header=screen(message).header,
        identity=Identity(
            family="TESTPERSON",
            given="ALEX",
            middle="J",
            dob=date(1990, 4, 15),
            sex="M",
            phones=("4145550123",),
            address=Address(
                street="100 MAIN ST",
                city="MILWAUKEE",
                state="WI",
                postal_code="53217",
                county="55079",
            ),
            mrn="MRN-OD-0001",
            mrn_authority="LakeMichMC",
            language=None,
        ),
        visit_number="VN-OD-0001",
        patient_class="E",
        admit_at=datetime(2024, 3, 2, 1, 30, tzinfo=NEW_YORK),
        discharge_disposition="01",
        diagnosis_codes=("T40.1X1A",),
        chief_complaints=(("pv2_3", "OD on heroin"), ("obx_8661_1", "overdose fentanyl")),
    )
    assert adt.header.message_structure == "ADT_A04"  # as sent; only hl7apy's copy changes


def test_overdose_a01_v23_bom_crlf(reader: str) -> None:
    message = _fixture("overdose_a01_v23_bom_crlf.hl7")
    adt = parse_adt(message, screen(message), default_tz=CHICAGO)
    assert adt.header.version == "2.3"
    assert adt.header.trigger_event == "A01"
    assert adt.identity == Identity(
        family="ROE",
        given="JAMIE",
        middle="Q",
        dob=date(1985, 11, 3),
        sex="F",
        phones=("(413)555-0147", "(413)555-0188"),
        address=Address(
            street="22 ELM ST",
            city="SPRINGFIELD",
            state="MA",
            postal_code="01103",
            county="25013",
        ),
        mrn="55501",
        mrn_authority="GENHOSP",
        language="SPA",
    )
    assert adt.visit_number == "V0002"
    assert adt.admit_at == datetime(2024, 3, 2, 2, 0, tzinfo=CHICAGO)
    assert adt.diagnosis_codes == ("T40.411A",)
    assert adt.chief_complaints == (
        ("pv2_3", "Overdose"),
        ("obx_8661_1", "found down, narcan x2 by EMS"),
    )


def test_overdose_a08_v28_nonstandard_structure(reader: str) -> None:
    message = _fixture("overdose_a08_v28.hl7")
    adt = parse_adt(message, screen(message))
    assert adt.header.message_structure == "ADT_A08"
    assert adt.identity == Identity(
        family="VAN DER BERG",
        given="CHRIS",
        middle="T",
        dob=date(1977, 12, 31),
        sex="U",
        phones=("5125550199", "5125550100"),
        address=Address(
            street="1000 Hospital Lane",
            city="AUSTIN",
            state="TX",
            postal_code="78701",
            county="48453",
        ),
        mrn="77001",
        mrn_authority="UNIVHOSP",
        language="ENG",
    )
    assert adt.visit_number == "UV-0003"
    assert adt.discharge_disposition == "07"
    assert adt.admit_at == datetime(2024, 3, 2, 2, 45, 0, 500_000, tzinfo=PLUS_ONE)
    assert adt.diagnosis_codes == ("T42.4X2A", "F11.220")
    assert adt.chief_complaints == (
        ("pv2_3", "Took too many pills"),
        ("obx_8661_1", "overdose fentanyl"),
    )


def test_batch_fixture_messages_parse(reader: str) -> None:
    messages = split_messages(_fixture("batch_fhs_bhs_two_messages.hl7"))
    parsed = [parse_adt(m, screen(m)) for m in messages]
    assert [a.identity.family for a in parsed] == ["KOOPA", "LAKITU"]
    assert parsed[0].visit_number == "V6601"
    assert parsed[1].chief_complaints == (("pv2_3", "heroin overdose"),)


def test_negative_fixture_deidentified(reader: str) -> None:
    adt = _parse(_fixture("not_overdose_a03_v251.hl7"))
    assert adt.identity.deidentified
    assert adt.identity.mrn == "44444"
    assert adt.identity.address == Address(postal_code="53217", county="55079")


@pytest.mark.parametrize("version", ["2.3", "2.5.1", "2.8"])
@pytest.mark.parametrize(
    ("trigger", "structure"),
    [("A01", "ADT_A01"), ("A03", "ADT_A03"), ("A04", "ADT_A04"), ("A08", "ADT_A08")],
)
def test_versions_and_structures_go_through_hl7apy(
    version: str, trigger: str, structure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hl7apy_alone(monkeypatch)
    message = "\r".join(
        [
            f"MSH|^~\\&|A|B|||20240302||ADT^{trigger}^{structure}|C1|P|{version}",
            "EVN||20240302013000",
            "PID|1||123^^^H^MR||DOE^JANE||19900101|F",
            "PV1|1|E|||||||||||||||||V1",
            "PV2|||^OD on heroin",
            "DG1|1||T40.1X1A^Heroin^I10C",
        ]
    )
    adt = _parse(message)
    assert adt.identity.family == "DOE"
    assert adt.visit_number == "V1"
    assert adt.admit_at == datetime(2024, 3, 2, 1, 30, tzinfo=NEW_YORK)
    assert adt.diagnosis_codes == ("T40.1X1A",)


def test_msh2_doubled_backslash_goes_through_hl7apy(monkeypatch: pytest.MonkeyPatch) -> None:
    _hl7apy_alone(monkeypatch)
    message = normalize(
        b"MSH|^~\\\\&|SE050|050|PACS|050|20120912011230||ADT^A01|102|T|2.6\n"
        b"PID|0010||PID1234^5^M11^A^MR^HOSP||DOE^JOHN^A^||19800202|F\n"
        b"PV1|1|E|||||||||||||||||48390\n"
    )
    adt = _parse(message)
    assert (adt.identity.family, adt.identity.mrn, adt.visit_number) == ("DOE", "PID1234", "48390")


@pytest.mark.parametrize("version", ["2.7.1", "2.4.1"])
def test_patch_versions_hl7apy_lacks_are_mapped(
    version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hl7apy_alone(monkeypatch)
    assert _parse(_adt(version=version)).identity.family == "DOE"


def test_hl7apy_library_lookup_is_memoized(monkeypatch: pytest.MonkeyPatch) -> None:
    """hl7apy looks its version library up for every element it builds; after a full parse,
    every module that calls the lookup uses one memoized copy, and an unsupported version
    still raises (errors are not cached)."""
    import hl7apy
    import hl7apy.core
    import hl7apy.factories
    from hl7apy.exceptions import UnsupportedVersion

    _hl7apy_alone(monkeypatch)
    assert _parse(_adt(version="2.5.1")).identity.family == "DOE"
    lookup = hl7apy.core.load_library
    assert hl7apy.load_library is lookup is hl7apy.factories.load_library
    assert lookup.cache_info().hits > 0
    assert lookup("2.5.1") is lookup("2.5.1")
    with pytest.raises(UnsupportedVersion):
        lookup("9.9")
    with pytest.raises(UnsupportedVersion):
        lookup("9.9")


def test_hl7apy_failure_falls_back_and_logs_no_content(caplog: pytest.LogCaptureFixture) -> None:
    message = _adt(pid="PID|1||SECRET-MRN^^^H^MR||SECRETNAME^JANE", version="2.9")
    with caplog.at_level(logging.DEBUG, logger=parse_module.__name__):
        adt = _parse(message)
    assert (adt.identity.family, adt.identity.mrn) == ("SECRETNAME", "SECRET-MRN")
    assert caplog.records, "the fallback should leave a debug record"
    for record in caplog.records:
        assert record.levelno == logging.DEBUG
        text = record.getMessage() + repr(record.__dict__)
        assert "SECRET" not in text


def test_hl7apy_gaps_are_filled_by_position(caplog: pytest.LogCaptureFixture) -> None:
    # hl7apy's v2.6 library has no XTN.1: it keeps "(905)111-1111" unnamed and writes it
    # back as XTN.18. The field is read by position instead.
    message = _adt(
        pid="PID|1||1^^^^MR||SECRETNAME^J||19800202|F|||||(905)111-1111^PRN^PH|(905)111-2222",
        version="2.6",
    )
    seps = Separators.of(screen(message).header)
    found, misplaced = parse_module._segments_hl7apy(message, screen(message).header, seps)
    assert ("PID", 13) in misplaced
    assert found["PID"][13] != ["(905)111-1111^PRN^PH"]
    with caplog.at_level(logging.DEBUG, logger=parse_module.__name__):
        adt = _parse(message)
    assert adt.identity.phones == ("(905)111-1111", "(905)111-2222")
    assert any("position" in record.getMessage() for record in caplog.records)
    assert not any("SECRET" in repr(record.__dict__) for record in caplog.records)


def _spy_on_hl7apy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    given: list[str] = []
    real = parse_module._segments_hl7apy

    def spy(message: str, *args: object) -> object:
        given.append(message)
        return real(message, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(parse_module, "_segments_hl7apy", spy)
    return given


def test_hl7apy_is_given_only_the_segments_read(monkeypatch: pytest.MonkeyPatch) -> None:
    given = _spy_on_hl7apy(monkeypatch)
    obx = "OBX|1|ST|8661-1^CC^LN||OD"
    message = _adt(evn="EVN|A04|20240302", extra=("DG1|1||T40.1X1A", obx, "PID|2||OTHER"))
    adt = _parse(message)
    assert [segment[:3] for segment in given[0].split("\r")] == ["MSH", "EVN", "PID", "PV1"]
    assert (adt.identity.family, adt.identity.mrn) == ("DOE", "123")


def test_hl7apy_is_given_only_the_fields_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fields nobody reads are emptied in hl7apy's copy (they were most of its cost), and
    MSH only gives the encoding characters and version; the fields read keep their positions
    and give the same record as the positional reading."""
    import hl7apy.parser

    given: list[tuple[str, str]] = []
    real = hl7apy.parser.parse_segments

    def spy(text: str, version: str, *args: object, **kwargs: object) -> object:
        given.append((text, version))
        return real(text, version, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hl7apy.parser, "parse_segments", spy)
    message = _adt(
        pid="PID|1||123^^^HOSP^MR||DOE^JANE^Q||19800202|F|||1 Main St^^Durham^NC^27701^^H"
        "||^PRN^PH^^^919^5550100|||||ACCT-77^^^HOSP|999-99-9999",
        pv1="PV1|1|E|ED^^^HOSP||||1234^WELBY^MARCUS^^^DR|||MED||||7|||||VN-1"
        + "|" * 25
        + "20240302014500",
        evn="EVN|A04|20240302014500|||OP-1^OPERATOR",
        version="2.7.1",  # hl7apy has no library for it: given as 2.7
    )
    adt = _parse(message)
    assert adt == _positional_reading(monkeypatch, message)
    ((text, version),) = given
    assert version == "2.7"
    evn, pid, pv1 = (segment.split("|") for segment in text.split("\r"))
    assert evn == ["EVN", "", "20240302014500"]
    assert pid[1] == ""
    assert (pid[3], pid[5]) == ("123^^^HOSP^MR", "DOE^JANE^Q")
    assert pid[11] == "1 Main St^^Durham^NC^27701^^H"
    assert pv1[3] == pv1[7] == pv1[10] == ""
    assert (pv1[2], pv1[19], pv1[44]) == ("E", "VN-1", "20240302014500")
    for unread in ("MSH", "CTRL-9", "OP-1", "ACCT-77", "999-99-9999", "ED^", "WELBY", "MED"):
        assert unread not in text
    assert (adt.identity.family, adt.identity.mrn, adt.visit_number) == ("DOE", "123", "VN-1")


def _positional_reading(monkeypatch: pytest.MonkeyPatch, message: str) -> AdtMessage:
    with monkeypatch.context() as patched:
        _positional_alone(patched)
        return _parse(message)


def test_declared_separators_hold_in_the_copy_hl7apy_is_given(reader: str) -> None:
    """hl7apy reads the message's own separators from the (reduced) MSH it is given: a
    segment parsed outside a message would be written back with the standard ones."""
    message = (
        "MSH|#~\\&|APP|FAC|PORTLINE|HD|20240302014500||ADT#A04|C1|P|2.5.1\r"
        "PID|1||123###HOSP#MR||DOE#JANE#Q||19800202|F|||1 Main St##Durham#NC#27701##H"
        "||#PRN#PH###919#5550100\rPV1|1|E"
    )
    identity = _parse(message).identity
    assert (identity.family, identity.given, identity.middle) == ("DOE", "JANE", "Q")
    assert (identity.mrn, identity.mrn_authority) == ("123", "HOSP")
    assert identity.phones == ("9195550100",)
    assert identity.address is not None
    assert (identity.address.street, identity.address.city) == ("1 Main St", "Durham")


def test_a_candidate_too_large_for_hl7apy_is_read_by_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by fuzzing: hl7apy took close to a minute over a 1 MiB candidate."""
    given = _spy_on_hl7apy(monkeypatch)
    phones = "~".join(f"^PRN^PH^^^336^{n:07d}" for n in range(200))
    message = _adt(pid=f"PID|1||123^^^HOSP^MR||DOE^JANE||19800202|F|||||{phones}")
    adt = _parse(message)
    assert given == []
    assert (adt.identity.family, adt.identity.mrn) == ("DOE", "123")
    assert len(adt.identity.phones) == 200
    assert adt.identity.phones[:2] == ("3360000000", "3360000001")


def test_a_segment_of_many_fields_is_split_no_further_than_needed() -> None:
    """Found by fuzzing: a 900 KB PID of 300,000 fields cost the positional reading 80 MiB
    (an object and a list per field) and a second; only fields up to PID-15 are read."""
    message = _adt(pid="PID|1||123^^^HOSP^MR||DOE^JANE" + "|xy" * 300_000)
    screened = screen(message)
    tracemalloc.start()
    try:
        adt = parse_adt(message, screened)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (adt.identity.family, adt.identity.sex, adt.identity.language) == ("DOE", "xy", "xy")
    assert peak < 16 * 1024 * 1024


def test_missing_pid_is_a_parse_error(reader: str) -> None:
    message = "MSH|^~\\&|A|B|||2024||ADT^A04|C1|P|2.5.1\rEVN||2024\rPV1|1|E"
    with pytest.raises(ParseError) as info:
        _parse(message)
    assert info.value.code == "parse_error"
    assert info.value.hl7_error_code == "100"
    assert info.value.location == ("PID", 1)


# ---------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pid5", "expected"),
    [
        pytest.param("DOE^JANE^Q^JR", ("DOE", "JANE", "Q"), id="plain"),
        pytest.param("VAN DER BERG&van der&Berg^CHRIS", ("VAN DER BERG", "CHRIS", None), id="fn"),
        pytest.param("^^^^^^~DOE^JANE^^^^^L", ("DOE", "JANE", None), id="empty-first-rep"),
        pytest.param("~^JANE", (None, "JANE", None), id="given-only"),
        pytest.param("DOE^JANE~ALIAS^NICK", ("DOE", "JANE", None), id="first-rep-wins"),
        pytest.param("O\\T\\BRIEN^SEAN", ("O&BRIEN", "SEAN", None), id="escaped"),
        pytest.param('""^""', (None, None, None), id="hl7-null"),
        pytest.param("", (None, None, None), id="empty"),
        pytest.param(" DOE ^ JANE ", ("DOE", "JANE", None), id="stripped"),
    ],
)
def test_names(reader: str, pid5: str, expected: tuple[str | None, ...]) -> None:
    identity = _parse(_adt(pid=f"PID|1||1^^^^MR||{pid5}")).identity
    assert (identity.family, identity.given, identity.middle) == expected


@pytest.mark.parametrize(
    ("pid7", "expected"),
    [
        ("19850101", date(1985, 1, 1)),
        ("198501011230", date(1985, 1, 1)),
        ("19850101000000+0700", date(1985, 1, 1)),
        ("19610615173619", date(1961, 6, 15)),
        ("19850101^D", date(1985, 1, 1)),
        ("1985", None),
        ("198501", None),
        ("19851301", None),
        ("19850230", None),
        ("10131113", None),
        ("1985-01-01", None),
        ("19850101XYZ", None),
        ("", None),
        ('""', None),
    ],
)
def test_dob(reader: str, pid7: str, expected: date | None) -> None:
    assert _parse(_adt(pid=f"PID|1||1^^^^MR||DOE^J||{pid7}|F")).identity.dob == expected


@pytest.mark.parametrize(
    ("pid13", "pid14", "expected"),
    [
        pytest.param("(555)555-0123", "", ("(555)555-0123",), id="xtn-1"),
        pytest.param("^PRN^PH^^1^555^5550123", "", ("5555550123",), id="area-number"),
        pytest.param("^PRN^PH^^^^5550123", "", ("5550123",), id="number-only"),
        pytest.param(
            "(555)555-0123^HOME^JP:1^^1^555^5550123~(555)555-0124^HOME",
            "",
            ("(555)555-0123", "(555)555-0124"),
            id="repetitions",
        ),
        pytest.param("8885551212", "8885559999", ("8885551212", "8885559999"), id="business"),
        pytest.param("8885551212", "8885551212", ("8885551212",), id="dedupe"),
        pytest.param(
            "^NET^Internet^someone@example.org~5125550100^PRN^CP",
            "",
            ("5125550100",),
            id="email-skipped",
        ),
        pytest.param("^^^^^^^^^^^5125550100", "", ("5125550100",), id="unformatted-xtn-12"),
        pytest.param(
            "^Home^Tel~07777111111^Mobile Number^Tel", "^Business", ("07777111111",), id="text"
        ),
        pytest.param('""', "", (), id="hl7-null"),
        pytest.param("", "", (), id="none"),
    ],
)
def test_phones(reader: str, pid13: str, pid14: str, expected: tuple[str, ...]) -> None:
    pid = f"PID|1||1^^^^MR||DOE^J||19900101|F|||||{pid13}|{pid14}"
    assert _parse(_adt(pid=pid)).identity.phones == expected


@pytest.mark.parametrize(
    ("pid11", "pid12", "expected"),
    [
        pytest.param(
            "22 ELM ST^APT 2^SPRINGFIELD^MA^01103^USA^H^^25013",
            "",
            Address("22 ELM ST", "SPRINGFIELD", "MA", "01103", "25013"),
            id="full",
        ),
        pytest.param(
            "22 ELM ST^^SPRINGFIELD^MA^01103",
            "GL",
            Address("22 ELM ST", "SPRINGFIELD", "MA", "01103", "GL"),
            id="county-from-pid-12",
        ),
        pytest.param(
            "22 ELM ST^^X^MA^01103^^^^25013",
            "GL",
            Address("22 ELM ST", "X", "MA", "01103", "25013"),
            id="xad-9-wins",
        ),
        pytest.param(
            "1 WORK RD^^OFFICE^MA^1^^O~9 HOME LN^^HOMETOWN^MA^2^^H",
            "",
            Address("9 HOME LN", "HOMETOWN", "MA", "2"),
            id="home-type-preferred",
        ),
        pytest.param(
            "^^^^^^~1 MAIL ST^^TOWN^MA^3^^M~2 OFFICE^^TOWN^MA^4^^O",
            "",
            Address("1 MAIL ST", "TOWN", "MA", "3"),
            id="first-non-empty",
        ),
        pytest.param(
            "1000 Hospital Lane&Hospital Lane&1000^Ste 5^AUSTIN^TX^78701",
            "",
            Address("1000 Hospital Lane", "AUSTIN", "TX", "78701"),
            id="sad",
        ),
        pytest.param(
            "1000&Hospital Lane^Ste. 123^Ann Arbor ^MI^99999^USA^M^^&W",
            "",
            Address("1000 Hospital Lane", "Ann Arbor", "MI", "99999", "W"),
            id="sad-house-number-and-cwe-county-text",
        ),
        pytest.param(
            "1 A ST^^B^C^D^^^^48453&Travis County",
            "",
            Address("1 A ST", "B", "C", "D", "48453"),
            id="cwe-county-code",
        ),
        pytest.param("^^^^^^", "", None, id="empty"),
        pytest.param("", "", None, id="absent"),
        pytest.param("", "Travis^Travis County", Address(county="Travis"), id="county-only"),
        pytest.param(
            'Flat 1^15 Main Street^^London^N1 1AA^""^home^^""',
            '""',
            Address("Flat 1", None, "London", "N1 1AA"),
            id="hl7-null",
        ),
    ],
)
def test_address(reader: str, pid11: str, pid12: str, expected: Address | None) -> None:
    pid = f"PID|1||1^^^^MR||DOE^J||19900101|F|||{pid11}|{pid12}"
    assert _parse(_adt(pid=pid)).identity.address == expected


@pytest.mark.parametrize(
    ("pid3", "expected"),
    [
        pytest.param("123^^^HOSP^MR", ("123", "HOSP"), id="mr"),
        pytest.param(
            "X-77^^^OTHER^PI~77001^^^UNIV&1.2.3&ISO^MR", ("77001", "UNIV"), id="mr-second"
        ),
        pytest.param("999^^^SSA^SS~555^^^H^PI", ("999", "SSA"), id="no-mr-first"),
        pytest.param("19050114293307.1082", ("19050114293307.1082", None), id="bare"),
        pytest.param("999998^^^Case Note^MRN", ("999998", "Case Note"), id="mrn-type"),
        pytest.param("^^^H^MR~42^^^K^PI", ("42", "K"), id="empty-rep-skipped"),
        pytest.param("", (None, None), id="absent"),
    ],
)
def test_mrn(reader: str, pid3: str, expected: tuple[str | None, str | None]) -> None:
    identity = _parse(_adt(pid=f"PID|1||{pid3}||DOE^J")).identity
    assert (identity.mrn, identity.mrn_authority) == expected


def test_sex_and_language(reader: str) -> None:
    pid = "PID|1||1^^^^MR||DOE^J||19900101|F^Female^HL70001|||||||SPA^Spanish^HL70296"
    identity = _parse(_adt(pid=pid)).identity
    assert (identity.sex, identity.language) == ("F", "SPA")


# ---------------------------------------------------------------------------------------
# Visit and times
# ---------------------------------------------------------------------------------------


def _pv1(fields: dict[int, str]) -> str:
    return "|".join(["PV1"] + [fields.get(n, "") for n in range(1, max(fields) + 1)])


def test_visit_fields(reader: str) -> None:
    pv1 = _pv1(
        {
            1: "1",
            2: "E^Emergency",
            3: "ED^01",
            19: "V-77^^^H^VN",
            36: "01^Home",
            44: "20240302013000-0500",
        }
    )
    adt = _parse(_adt(pv1=pv1))
    assert adt.patient_class == "E"
    assert adt.visit_number == "V-77"
    assert adt.discharge_disposition == "01"
    assert adt.admit_at == datetime(2024, 3, 2, 1, 30, tzinfo=timezone(timedelta(hours=-5)))


def _pv1_44(value: str) -> str:
    return _pv1({1: "1", 2: "E", 44: value})


@pytest.mark.parametrize(
    ("pv1", "evn", "msh7", "expected"),
    [
        pytest.param(
            _pv1_44("202403020130"),
            "EVN||202403020000||||202403020100",
            "20240302020000",
            datetime(2024, 3, 2, 1, 30, tzinfo=NEW_YORK),
            id="pv1-44",
        ),
        pytest.param(
            _pv1_44("202403020130^M"),
            None,
            "2024",
            datetime(2024, 3, 2, 1, 30, tzinfo=NEW_YORK),
            id="pv1-44-ts-precision-component",
        ),
        pytest.param(
            "PV1|1|E",
            "EVN|A04|202403020000||||202403020100",
            "20240302020000",
            datetime(2024, 3, 2, 0, 0, tzinfo=NEW_YORK),
            id="evn-2",
        ),
        pytest.param(
            "PV1|1|E",
            "EVN|A04|||||202403020100",
            "20240302020000",
            datetime(2024, 3, 2, 1, 0, tzinfo=NEW_YORK),
            id="evn-6",
        ),
        pytest.param(
            "PV1|1|E",
            "EVN|A04",
            "20240302020000+0000",
            datetime(2024, 3, 2, 2, 0, tzinfo=UTC),
            id="msh-7",
        ),
        pytest.param(
            _pv1_44("garbage"),
            "EVN|A04|2024030",
            "20240302020000",
            datetime(2024, 3, 2, 2, 0, tzinfo=NEW_YORK),
            id="bad-values-skipped",
        ),
        pytest.param(None, None, "", None, id="none"),
    ],
)
def test_admit_at_fallbacks(
    reader: str, pv1: str | None, evn: str | None, msh7: str, expected: datetime | None
) -> None:
    adt = _parse(_adt(pv1=pv1, evn=evn, msh7=msh7))
    assert adt.admit_at == expected
    if expected is not None:
        assert adt.admit_at is not None
        assert adt.admit_at.tzinfo is not None


def test_missing_pv1_and_evn(reader: str) -> None:
    adt = _parse(_adt(pv1=None))
    assert (adt.patient_class, adt.visit_number, adt.discharge_disposition) == (None, None, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("202403020130", datetime(2024, 3, 2, 1, 30, tzinfo=NEW_YORK)),
        ("20240302013015", datetime(2024, 3, 2, 1, 30, 15, tzinfo=NEW_YORK)),
        ("20240302013015.5", datetime(2024, 3, 2, 1, 30, 15, 500_000, tzinfo=NEW_YORK)),
        ("20240302013015.1234", datetime(2024, 3, 2, 1, 30, 15, 123_400, tzinfo=NEW_YORK)),
        ("20240302013015.12345678", datetime(2024, 3, 2, 1, 30, 15, 123_456, tzinfo=NEW_YORK)),
        ("202403020130-0500", datetime(2024, 3, 2, 1, 30, tzinfo=timezone(-timedelta(hours=5)))),
        ("20240302013015+0000", datetime(2024, 3, 2, 1, 30, 15, tzinfo=UTC)),
        (
            "20210817151943.4+0200",
            datetime(2021, 8, 17, 15, 19, 43, 400_000, tzinfo=timezone(timedelta(hours=2))),
        ),
        (
            "198908181126+0215",
            datetime(1989, 8, 18, 11, 26, tzinfo=timezone(timedelta(hours=2, minutes=15))),
        ),
        ("20240302", datetime(2024, 3, 2, tzinfo=NEW_YORK)),
        ("2024030201", datetime(2024, 3, 2, 1, tzinfo=NEW_YORK)),
        (" 202403020130 ", datetime(2024, 3, 2, 1, 30, tzinfo=NEW_YORK)),
        ("", None),
        ("2024", None),
        ("202403", None),
        ("2024030", None),
        ("20241302013000", None),
        ("20240230013000", None),
        ("20240302253000", None),
        ("2024030201300", None),
        ("202403020130+05", None),
        ("202403020130+2500", None),
        ("202403020130+0560", None),
        ("20240302.5", None),
        ("20240302013015.", None),
        ("20240302013015.x", None),
        ("2024-03-02T01:30", None),
        ("garbage", None),
        ("\u0662\u0660\u0662\u0664\u0660\u0663\u0660\u0662", None),
        # No UTC equivalent (found while fuzzing: the scheduler could not convert these).
        ("00010101000000+0100", None),
        ("99991231235959-0100", None),
        ("00010101000000-0100", datetime(1, 1, 1, tzinfo=timezone(-timedelta(hours=1)))),
    ],
)
def test_parse_hl7_datetime(value: str, expected: datetime | None) -> None:
    parsed = parse_hl7_datetime(value, NEW_YORK)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() is not None


def test_parse_hl7_datetime_default_tz_applies_dst() -> None:
    winter = parse_hl7_datetime("202401150900", NEW_YORK)
    summer = parse_hl7_datetime("202407150900", NEW_YORK)
    assert winter is not None
    assert summer is not None
    assert winter.utcoffset() == timedelta(hours=-5)
    assert summer.utcoffset() == timedelta(hours=-4)
    assert parse_hl7_datetime("202407150900", UTC) == datetime(2024, 7, 15, 9, tzinfo=UTC)


def test_default_tz_argument(reader: str) -> None:
    adt = _parse(_adt(pv1=_pv1_44("202407150900")), default_tz=CHICAGO)
    assert adt.admit_at is not None
    assert adt.admit_at.utcoffset() == timedelta(hours=-5)


def test_parse_hl7_date() -> None:
    assert parse_hl7_date("19850101") == date(1985, 1, 1)
    assert parse_hl7_date(None) is None
    assert parse_hl7_date("18491231") is None
    assert parse_hl7_date("18500101") == date(1850, 1, 1)

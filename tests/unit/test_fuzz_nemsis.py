"""Fuzzing the NEMSIS v3.5 parser: arbitrary bytes, and mutations of the fixtures.

parse_ems_dataset either returns one result per PatientCareReport (a report, or a
missing_pcr_number or field_too_long error) or raises one of its declared document errors,
never another exception; a DTD or an entity declaration is always refused as xml_forbidden;
errors carry neither document content nor the parser's exception; every time has a UTC
equivalent; and each document stays within the time and memory bounds of tests/fuzzing.py.

The mutations work on the fixtures' element trees (drop, duplicate, reorder, move, rename
and re-namespace elements, change text and attributes, nest deeply) and then on the bytes
(encodings and their declarations, DTDs, entity references, truncation).
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.nemsis import (
    DEFAULT_MAX_BYTES,
    NEMSIS_NS,
    EmsRecordResult,
    FieldTooLong,
    MissingPcrNumber,
    NotNemsis,
    TooManyRecords,
    XmlForbidden,
    XmlMalformed,
    XmlTooLarge,
    parse_ems_dataset,
)
from tests.fuzzing import at_limit, fuzz, note, run_bounded

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nemsis"
DOCUMENT_ERRORS = (XmlTooLarge, XmlForbidden, XmlMalformed, NotNemsis, TooManyRecords)
# Values in the fixtures that must never reach an error message.
PHI = ("Quackenbush", "Zebulon", "Fairweather", "Ottoline", "336-555-0100", "Synthetic Lane")
ZONES: tuple[tzinfo, ...] = (UTC, ZoneInfo("America/New_York"), ZoneInfo("Pacific/Kiritimati"))
N = f"{{{NEMSIS_NS}}}"
XSI = "{http://www.w3.org/2001/XMLSchema-instance}"


def _check_time(value: datetime | None) -> None:
    if value is not None:
        assert value.utcoffset() is not None
        value.astimezone(UTC)  # OverflowError if it has no UTC equivalent


def _check_results(results: list[EmsRecordResult]) -> None:
    assert [r.index for r in results] == list(range(len(results)))
    for result in results:
        assert (result.report is None) != (result.error is None)
        if result.error is not None:
            assert isinstance(result.error, MissingPcrNumber | FieldTooLong)
            continue
        report = result.report
        assert report is not None
        assert isinstance(report.pcr_number, str)
        assert report.pcr_number
        _check_time(report.incident_at)
        for medication in report.medications:
            assert medication.rxnorm
            _check_time(medication.given_at)
        assert report.consent in ("accepted", "declined", "unknown")


def _parse(data: bytes, zone: tzinfo = UTC, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Parse under the bounds; the outcome: "results" or the document error's code."""
    outcome = run_bounded(
        lambda: parse_ems_dataset(data, max_bytes=max_bytes, default_tz=zone),
        input_bytes=len(data),
    )
    error = outcome.error
    if error is None:
        _check_results(outcome.value)
        code = "results"
    else:
        if not isinstance(error, DOCUMENT_ERRORS):
            raise error
        assert error.__cause__ is None
        assert error.__context__ is None
        assert not any(value in str(error) for value in PHI)
        code = error.code
    note(code)
    return code


# ---------------------------------------------------------------------------------------
# Arbitrary bytes
# ---------------------------------------------------------------------------------------

_xml_pieces = st.sampled_from(
    [
        "<EMSDataSet>",
        f'<EMSDataSet xmlns="{NEMSIS_NS}">',
        "<Header>",
        "<PatientCareReport>",
        "<eRecord.01>",
        "</eRecord.01>",
        "<eTimes.01>2026-11-20T22:14:00-05:00</eTimes.01>",
        "<eMedications.MedicationGroup>",
        "<eMedications.03>7242</eMedications.03>",
        "</PatientCareReport>",
        "</Header>",
        "</EMSDataSet>",
        '<?xml version="1.0"?>',
        "<!DOCTYPE a>",
        "<![CDATA[",
        "]]>",
        "&amp;",
        "&#x0;",
        "&e;",
        "<!--",
        "-->",
        "<?pi x?>",
    ]
)


@fuzz(examples=150)
@given(
    data=st.binary(max_size=2048)
    | st.lists(_xml_pieces | st.text(max_size=8), max_size=40).map(lambda p: "".join(p).encode()),
    zone=st.sampled_from(ZONES),
)
def test_arbitrary_bytes(data: bytes, zone: tzinfo) -> None:
    _parse(data, zone)


@fuzz(examples=50)
@given(data=st.binary(min_size=1, max_size=4096))
def test_a_document_over_max_bytes_is_refused_before_parsing(data: bytes) -> None:
    assert _parse(data, max_bytes=len(data) - 1) == "xml_too_large"


# ---------------------------------------------------------------------------------------
# Mutations of the fixtures
# ---------------------------------------------------------------------------------------

_FIXTURES = {path.name: ET.fromstring(path.read_bytes()) for path in sorted(FIXTURES.glob("*.xml"))}
_NAMES = sorted({el.tag for tree in _FIXTURES.values() for el in tree.iter()})
MAX_ELEMENTS = 20_000  # a mutated document's; the fixtures have about 150
_TIME_ELEMENTS = {"eTimes.01", "eTimes.03", "eTimes.06", "eTimes.07", "eMedications.01"}
_MUTATIONS = (
    "time",
    "drop",
    "duplicate",
    "reorder",
    "move",
    "rename",
    "namespace",
    "text",
    "huge_text",
    "attribute",
    "nest",
)
_texts = st.text(max_size=30) | st.sampled_from(
    [
        "",
        " ",
        "7242",
        "9916001",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "2026-02-30T10:00:00",
        "2026-11-20T22:14:00.123456789Z",
        "1990-04-02-25:00",
        "yes, no",
        "naloxone, narcan, fts",
    ]
)


# xs:dateTime from year 1 to 9999, with offsets up to the extremes.
_times = st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]) | st.builds(
    lambda moment, offset: moment.isoformat() + offset,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)),
    st.sampled_from(["", "Z", "+00:00", "+01:00", "-01:00", "+14:00", "-12:00", "+23:59"]),
)


def _elements(root: ET.Element) -> list[tuple[ET.Element, ET.Element]]:
    """Every (parent, child) pair, in document order."""
    return [(parent, child) for parent in root.iter() for child in parent]


def _mutate(draw: st.DrawFn, root: ET.Element) -> None:
    """One structural mutation of the tree, in place."""
    pairs = _elements(root)
    if not pairs:
        return
    kind = draw(st.sampled_from(_MUTATIONS))
    times = [pair for pair in pairs if pair[1].tag.rpartition("}")[2] in _TIME_ELEMENTS]
    parent, child = draw(st.sampled_from(times if kind == "time" and times else pairs))
    position = list(parent).index(child)
    if kind == "time":
        child.text = draw(_times)
    elif kind == "drop":
        parent.remove(child)
    elif kind == "duplicate":  # up to MAX_ELEMENTS in all, or copies compound past GBs
        room = MAX_ELEMENTS - sum(1 for _ in root.iter())
        times = min(draw(st.integers(1, 30)), room // sum(1 for _ in child.iter()))
        for _ in range(times):
            parent.insert(position, copy.deepcopy(child))
    elif kind == "reorder":
        children = list(child)
        order = draw(st.permutations(range(len(children))))
        for element in children:
            child.remove(element)
        child.extend(children[i] for i in order)
    elif kind == "move":
        inside = set(child.iter())
        outside = [el for el in root.iter() if el not in inside]
        target = draw(st.sampled_from(outside))
        parent.remove(child)
        target.insert(draw(st.integers(0, len(target))), child)
    elif kind == "rename":
        namespace = child.tag.partition("}")[0] + "}" if child.tag.startswith("{") else ""
        local = draw(st.sampled_from(_NAMES)).rpartition("}")[2]
        child.tag = namespace + local
    elif kind == "namespace":  # NEMSIS, none, another
        local = child.tag.rpartition("}")[2]
        prefix = draw(st.sampled_from([N, "", "{http://example.org/other}", "{}"]))
        child.tag = prefix + local if prefix != "{}" else local
    elif kind == "text":
        child.text = draw(_texts)
    elif kind == "huge_text":
        child.text = draw(st.sampled_from(["x", "é", "7242 ", "<&>"])) * draw(
            st.integers(1000, 200_000)
        )
    elif kind == "attribute":
        name = draw(
            st.sampled_from([f"{XSI}nil", "nil", "NV", "PN", "CodeType", "UUID"])
            | st.from_regex(r"[a-z]{1,8}", fullmatch=True)
        )
        child.set(name, draw(st.sampled_from(["true", "1", "false", "9924003", ""]) | _texts))
    else:  # nest: wrap in levels of the same or another element (deeper: at the size limit)
        depth = draw(st.integers(1, 200))  # ElementTree serializes and copies by recursion
        wrapper_tag = draw(st.sampled_from([child.tag, f"{N}eMedications.MedicationGroup", "w"]))
        parent.remove(child)
        outer = inner = ET.Element(wrapper_tag)
        for _ in range(depth - 1):
            inner = ET.SubElement(inner, wrapper_tag)
        inner.append(child)
        parent.insert(position, outer)


_ENCODINGS = ("utf-8", "utf-16", "iso-8859-1", "us-ascii")
_DTDS = (
    "<!DOCTYPE EMSDataSet>",
    '<!DOCTYPE EMSDataSet [<!ENTITY name "Quackenbush">]>',
    '<!DOCTYPE EMSDataSet [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>',
    '<!DOCTYPE EMSDataSet SYSTEM "http://example.org/nemsis.dtd">',
    '<!DOCTYPE EMSDataSet [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    "<!DOCTYPE EMSDataSet [<!ENTITY % p \"<!ENTITY q 'r'>\"> %p;]>",
)


def _serialize(root: ET.Element, encoding: str, dtd: str = "") -> bytes:
    body = ET.tostring(root, encoding="unicode")
    declaration = f'<?xml version="1.0" encoding="{encoding}"?>'
    return (declaration + dtd + body).encode(encoding, "xmlcharrefreplace")


def _mutated_tree(draw: st.DrawFn) -> ET.Element:
    root = copy.deepcopy(_FIXTURES[draw(st.sampled_from(sorted(_FIXTURES)))])
    for _ in range(draw(st.integers(0, 4))):
        _mutate(draw, root)
    return root


@st.composite
def mutated_documents(draw: st.DrawFn) -> bytes:
    data = _serialize(_mutated_tree(draw), draw(st.sampled_from(_ENCODINGS)))
    damage = draw(st.sampled_from(["none", "none", "truncate", "insert", "declaration"]))
    position = draw(st.integers(0, len(data)))
    if damage == "truncate":
        data = data[:position]
    elif damage == "insert":
        piece = draw(st.sampled_from([b"&e;", b"&#0;", b"&#xD800;", b"\xff\xfe", b"<", b"]]>"]))
        data = data[:position] + piece + data[position:]
    elif damage == "declaration" and (end := data.find(b"?>")) != -1:
        # An encoding the bytes are not in, or one that does not exist.
        declared = draw(st.sampled_from(["utf-16", "utf-8", "latin-1", "ebcdic-cp-us", "nope"]))
        data = f'<?xml version="1.0" encoding="{declared}"?>'.encode() + data[end + 2 :]
    return data


@fuzz(examples=300)
@given(data=mutated_documents(), zone=st.sampled_from(ZONES))
def test_mutated_fixtures(data: bytes, zone: tzinfo) -> None:
    _parse(data, zone)


@st.composite
def documents_with_a_dtd(draw: st.DrawFn) -> bytes:
    return _serialize(
        _mutated_tree(draw), draw(st.sampled_from(_ENCODINGS)), draw(st.sampled_from(_DTDS))
    )


@fuzz(examples=40)
@given(data=documents_with_a_dtd())
def test_a_dtd_or_entity_declaration_is_always_refused(data: bytes) -> None:
    assert _parse(data) == "xml_forbidden"


# ---------------------------------------------------------------------------------------
# At the size limit: the shapes that grow with the input
# ---------------------------------------------------------------------------------------


def _document(pcr_body: str, *, headers: str = "", pcrs: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><EMSDataSet xmlns="{NEMSIS_NS}">{headers}'
        "<Header><DemographicGroup><dAgency.02>A</dAgency.02></DemographicGroup>"
        f"<PatientCareReport><eRecord><eRecord.01>P-1</eRecord.01></eRecord>{pcr_body}"
        f"</PatientCareReport>{pcrs}</Header></EMSDataSet>"
    ).encode()


def _fill(open_unit: str, close_unit: str = "") -> str:
    """``open_unit`` (and ``close_unit`` after them, for nesting) repeated up to the size."""
    size = at_limit(DEFAULT_MAX_BYTES) - 400
    times = size // (len(open_unit.encode()) + len(close_unit.encode()))
    return open_unit * times + close_unit * times


def _numbered(template: str) -> str:
    """``template`` filled with 0, 1, 2 ... up to the size: distinct repetitions."""
    size = at_limit(DEFAULT_MAX_BYTES) - 400
    count = size // len(template.format(*["9" * 6] * template.count("{}")).encode())
    return "".join(template.format(*[i] * template.count("{}")) for i in range(count))


_GROUP = "eMedications.MedicationGroup"
_SHAPES = {
    "nested medication groups": lambda: _document(
        _fill(f"<{_GROUP}><eMedications.03>7242</eMedications.03>", f"</{_GROUP}>")
    ),
    "nested elements": lambda: _document(_fill("<a>", "</a>")),
    "nested results groups": lambda: _document(
        _fill(
            "<eCustomResults.ResultsGroup><eCustomResults.01>yes</eCustomResults.01>"
            "<eCustomResults.02>itDisposition.PeerFollowUp</eCustomResults.02>",
            "</eCustomResults.ResultsGroup>",
        )
    ),
    "distinct impressions": lambda: _document(_numbered("<eSituation.12>T{}</eSituation.12>")),
    "many patient care reports": lambda: _document(
        "", pcrs=_fill("<PatientCareReport><eRecord.01>P</eRecord.01></PatientCareReport>")
    ),
    "many headers": lambda: _document("", headers=_fill("<Header></Header>")),
    "huge narrative": lambda: _document(f"<eNarrative.01>{_fill('x')}</eNarrative.01>"),
    "many attributes": lambda: _document("<ePatient.02" + _numbered(" a{}='1'") + "/>"),
    "many namespaces": lambda: _document("<ePatient.02" + _numbered(" xmlns:p{}='urn:{}'") + "/>"),
}


@pytest.mark.parametrize("shape", sorted(_SHAPES))
def test_shapes_at_the_size_limit(shape: str) -> None:
    """Nested medication groups took 100 s at 1.2 MB before each group's subtree was walked
    once; the other shapes are there to stay linear too."""
    data = _SHAPES[shape]()
    assert len(data) <= at_limit(DEFAULT_MAX_BYTES)
    assert _parse(data) in ("results", "too_many_records")

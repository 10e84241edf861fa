"""NEMSIS v3.5 EMSDataSet XML -> :class:`~services.intake.records.EmsRunReport`: pure, no I/O.

An EMS agency posts one EMSDataSet document holding one or many PatientCareReports (PCRs).
:func:`parse_ems_dataset` returns one :class:`EmsRecordResult` per PCR, so one bad PCR in a
batch does not reject the good ones; problems with the document as a whole raise.

Errors
    Every error is an :class:`EmsInputError` (a ``ValueError``) with a stable ``code`` and a
    human ``message``. Messages are fixed strings (plus, at most, numbers such as a size
    limit or a record index): they never contain PHI or any other document content, and the
    underlying parser exception is not attached (``__cause__`` and ``__context__`` are None).

    ========================  ==================  ============================================
    class                     code                raised when
    ========================  ==================  ============================================
    :class:`XmlTooLarge`      xml_too_large       more than ``max_bytes`` (checked first,
                                                  before any parsing)
    :class:`XmlForbidden`     xml_forbidden       a DTD, entity declaration or external
                                                  reference (defusedxml ``DTDForbidden``,
                                                  ``EntitiesForbidden``,
                                                  ``ExternalReferenceForbidden``)
    :class:`XmlMalformed`     xml_malformed       not well-formed XML (or an encoding expat
                                                  cannot read)
    :class:`NotNemsis`        not_nemsis          the root is not ``EMSDataSet`` in the NEMSIS
                                                  namespace (or in no namespace)
    :class:`TooManyRecords`   too_many_records    more than ``max_records`` PCRs
    :class:`MissingPcrNumber` missing_pcr_number  *per record*: a PCR without eRecord.01; it
                                                  is returned in :attr:`EmsRecordResult.error`,
                                                  never raised
    :class:`FieldTooLong`     field_too_long      *per record*: a value longer than the JSON
                                                  run report allows for the same field (a
                                                  name, an address part, a phone, the PCR
                                                  number, the narrative); returned likewise
    ========================  ==================  ============================================

Reading rules (tests pin each one)
    * Namespaces: elements are matched by local name when they are in the NEMSIS namespace
      (``http://www.nemsis.org``) or in no namespace; elements in any other namespace are
      ignored. Element numbers are unique across the data set, so within a PCR an element is
      found wherever it sits (``ePatient.02`` inside or outside ``ePatient.PatientNameGroup``).
    * A "not value" is absent: ``xsi:nil="true"``, any ``NV`` attribute, or empty text. A
      ``PN`` attribute on an element that still has a value keeps the value (e.g. 8801029
      "Approximate" on a time) - except for medications, see below. Values are stripped.
    * Header: ``EMSDataSet > Header+ > (DemographicGroup, eCustomConfiguration?,
      PatientCareReport+)``. :attr:`EmsRecordResult.index` is the 0-based position of the PCR
      in the whole document (across Headers).
    * ``pcr_number`` = eRecord.01.
    * ``agency_id`` = dAgency.02 (EMS Agency Number) of the PCR's own Header, else the PCR's
      eResponse.01.
    * Identity (ePatient): family .02, given .03, middle .04, dob .17 (``YYYY-MM-DD``, an
      optional zone suffix is ignored; an impossible date is absent), sex = .25 (Sex, v3.5.1)
      else .13 (Gender, deprecated) - the NEMSIS code as sent, phones = every .18 in order
      (duplicates dropped; ``PhoneNumberType`` is not kept), address = home street .05,
      city .06 (GNIS code), county .07 (ANSI/FIPS code), state .08 (ANSI code), ZIP .09
      (``None`` when all are absent), language = the first .24 (ISO 639-2, e.g. ``eng``),
      mrn = ``None`` (EMS has none). The national extract carries no name or phone, so its
      identity is ``deidentified``.
    * ``incident_at`` = the earliest present of eTimes.01 (PSAP call), .03 (unit notified),
      .06 (arrived on scene), .07 (arrived at patient). Times are ``xs:dateTime``
      (``2023-03-01T15:20:00-05:00``, ``Z``, fractional seconds allowed); a time without
      an offset is read in ``default_tz`` (America/New_York unless given). All returned
      datetimes are timezone-aware. A value that is not a valid dateTime, or that has no UTC
      equivalent (year 1 east of UTC, year 9999 west of it), is absent.
    * ``scene`` (eScene): street .15, city .17 (GNIS code), state .18, ZIP .19, county .21
      (FIPS); ``None`` when all are absent. The apartment (.16) and cross street (.20) are
      not kept.
    * ``impressions`` = eSituation.11 (primary) then every eSituation.12, duplicates dropped.
    * ``medications``: one :class:`EmsMedication` per ``eMedications.MedicationGroup`` with
      ``rxnorm`` = eMedications.03, ``response`` = eMedications.07 (the NEMSIS code: 9916001
      Improved, 9916003 Unchanged, 9916005 Worse), ``given_at`` = eMedications.01. A group
      is skipped when eMedications.03 is absent, carries a ``PN`` attribute (the medication
      was *not* given: contraindicated, refused, allergy, ...), or has a ``CodeType`` other
      than 9924003 RxNorm (ICD-10 / SNOMED-CT procedures-as-medications). An element
      belongs to its nearest group: a group nested in another keeps its own. Medications given
      before EMS arrived (eMedications.02 = 9923003, e.g. bystander naloxone) are kept: the
      record has no field to mark them.
    * ``drug_use_indicators`` = every eHistory.17 code.
    * Death (``services.intake.death`` decides): ``initial_acuity`` = eSituation.13,
      ``release_acuity`` = eDisposition.19, ``arrest_end`` = eArrest.18, ``outcomes`` = every
      eOutcome.01 and eOutcome.02.
    * Dispositions (v3.5 IncidentDispositionGroup): ``unit_disposition`` = eDisposition.27,
      ``patient_evaluation_care`` = .28 (4228003/4228007 refused), ``crew_disposition`` =
      .29, ``transport_disposition`` = .30 (4230009 patient refused transport). Reason for
      refusal/release (.31, repeatable) is not kept: the record has no field for it.
    * ``narrative`` = eNarrative.01.
    * ``consent`` ("may a peer follow up with you?"): from every
      ``eCustomResults.ResultsGroup`` whose eCustomResults.02 equals ``consent_element``
      (exact, after stripping), the values eCustomResults.01 are mapped case-insensitively
      by :func:`consent_from_value`: ``yes y true accepted accept 1 9923003`` ->
      ``accepted``; ``no n false declined decline refused 0 9923001`` -> ``declined``;
      anything else, nil or missing -> ``unknown``. When a report carries several answers,
      any ``declined`` wins (a refusal is never overridden), then any ``accepted``.
    * ``leave_behind``: the values of the ``leave_behind_element`` custom result, each split
      on commas, mapped by :func:`leave_behind_from_value` to the fixed vocabulary
      :data:`LEAVE_BEHIND_ITEMS` (``naloxone_kit``, ``resource_information``,
      ``fentanyl_test_strips``; a few synonyms such as ``narcan`` are accepted). Unknown
      tokens are dropped (they could be free text); order kept, duplicates dropped. NEMSIS
      has no standard element for this, so the default is empty.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Final
from xml.etree.ElementTree import Element, ParseError
from zoneinfo import ZoneInfo

import defusedxml
import defusedxml.ElementTree as SafeET

from services.intake.records import Address, EmsMedication, EmsRunReport, Identity

__all__ = [
    "DEFAULT_CONSENT_ELEMENT",
    "DEFAULT_LEAVE_BEHIND_ELEMENT",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_TZ",
    "LEAVE_BEHIND_ITEMS",
    "NEMSIS_NS",
    "EmsInputError",
    "EmsRecordResult",
    "FieldTooLong",
    "MissingPcrNumber",
    "NotNemsis",
    "TooManyRecords",
    "XmlForbidden",
    "XmlMalformed",
    "XmlTooLarge",
    "consent_from_value",
    "leave_behind_from_value",
    "parse_ems_dataset",
]

NEMSIS_NS: Final = "http://www.nemsis.org"
_XSI_NIL: Final = "{http://www.w3.org/2001/XMLSchema-instance}nil"

DEFAULT_MAX_BYTES: Final = 5 * 1024 * 1024
DEFAULT_MAX_RECORDS: Final = 500
DEFAULT_CONSENT_ELEMENT: Final = "itDisposition.PeerFollowUp"
DEFAULT_LEAVE_BEHIND_ELEMENT: Final = "itDisposition.LeaveBehind"
DEFAULT_TZ: Final[tzinfo] = ZoneInfo("America/New_York")

LEAVE_BEHIND_ITEMS: Final = ("naloxone_kit", "resource_information", "fentanyl_test_strips")
"""The vocabulary of :attr:`EmsRunReport.leave_behind` (shared with the JSON run report)."""

_RXNORM_CODE_TYPE: Final = "9924003"
_MEDICATION_GROUP: Final = "eMedications.MedicationGroup"


# --------------------------------------------------------------------------- errors


class EmsInputError(ValueError):
    """An EMS run report that cannot be (fully) used. ``message`` never contains PHI."""

    code: str = "ems_input_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class XmlTooLarge(EmsInputError):
    code = "xml_too_large"


class XmlForbidden(EmsInputError):
    code = "xml_forbidden"


class XmlMalformed(EmsInputError):
    code = "xml_malformed"


class NotNemsis(EmsInputError):
    code = "not_nemsis"


class MissingPcrNumber(EmsInputError):
    code = "missing_pcr_number"


class FieldTooLong(EmsInputError):
    code = "field_too_long"


# The JSON run report's limits, for the same fields in NEMSIS XML: refused beyond, never cut.
_LIMITS: dict[str, int] = {
    "eRecord.01": 64,
    "ePatient.02": 100,
    "ePatient.03": 100,
    "ePatient.04": 100,
    "ePatient.05": 200,
    "ePatient.06": 100,
    "ePatient.07": 64,
    "ePatient.08": 8,
    "ePatient.09": 16,
    "ePatient.18": 20,
    "ePatient.24": 35,
    "eScene.15": 200,
    "eScene.17": 100,
    "eScene.18": 8,
    "eScene.19": 16,
    "eScene.21": 64,
    "eNarrative.01": 10_000,
}


def _check_lengths(idx: _Index) -> None:
    for name, limit in _LIMITS.items():
        for value in idx.values(name):
            if len(value) > limit:
                raise FieldTooLong(f"{name} is longer than {limit} characters")


class TooManyRecords(EmsInputError):
    code = "too_many_records"


@dataclass(frozen=True, slots=True)
class EmsRecordResult:
    """One PatientCareReport: exactly one of ``report`` and ``error`` is set."""

    index: int
    """0-based position of the PatientCareReport in the document."""
    report: EmsRunReport | None
    error: EmsInputError | None


# --------------------------------------------------------------------------- value maps

_CONSENT_ACCEPTED: Final = frozenset({"yes", "y", "true", "accepted", "accept", "1", "9923003"})
_CONSENT_DECLINED: Final = frozenset(
    {"no", "n", "false", "declined", "decline", "refused", "0", "9923001"}
)

_LEAVE_BEHIND_SYNONYMS: Final = {
    "naloxone_kit": "naloxone_kit",
    "naloxone": "naloxone_kit",
    "narcan": "naloxone_kit",
    "resource_information": "resource_information",
    "resource_info": "resource_information",
    "resources": "resource_information",
    "fentanyl_test_strips": "fentanyl_test_strips",
    "fentanyl_test_strip": "fentanyl_test_strips",
    "test_strips": "fentanyl_test_strips",
    "fts": "fentanyl_test_strips",
}


def consent_from_value(value: str | None) -> str:
    """Map one "may a peer follow up?" answer to ``accepted``, ``declined`` or ``unknown``."""
    if value is None:
        return "unknown"
    v = value.strip().lower()
    if v in _CONSENT_ACCEPTED:
        return "accepted"
    if v in _CONSENT_DECLINED:
        return "declined"
    return "unknown"


def _combine_consent(answers: Iterable[str]) -> str:
    seen = set(answers)
    if "declined" in seen:
        return "declined"
    if "accepted" in seen:
        return "accepted"
    return "unknown"


def leave_behind_from_value(value: str | None) -> tuple[str, ...]:
    """Comma-separated leave-behind items -> known vocabulary items, in order, unique."""
    if not value:
        return ()
    out: list[str] = []
    for token in value.split(","):
        key = re.sub(r"[\s\-]+", "_", token.strip().lower())
        item = _LEAVE_BEHIND_SYNONYMS.get(key)
        if item is not None and item not in out:
            out.append(item)
    return tuple(out)


# --------------------------------------------------------------------------- XML helpers


def _local(tag: object) -> str | None:
    """Local name of a NEMSIS or un-namespaced element; None for anything else."""
    if not isinstance(tag, str):
        return None
    if tag.startswith("{"):
        ns, sep, name = tag[1:].partition("}")
        return name if sep and ns == NEMSIS_NS else None
    return tag


def _children(el: Element, name: str) -> Iterator[Element]:
    for child in el:
        if _local(child.tag) == name:
            yield child


def _value(el: Element | None) -> str | None:
    """Stripped text, or None for absent / nil / NV / empty."""
    if el is None:
        return None
    nil = el.get(_XSI_NIL) or el.get("nil")
    if nil is not None and nil.strip().lower() in ("true", "1"):
        return None
    if el.get("NV") is not None:
        return None
    text = (el.text or "").strip()
    return text or None


class _Index:
    """NEMSIS elements by local name, in document order: every one below ``root``, or
    those given to :meth:`add`."""

    def __init__(self, root: Element | None = None) -> None:
        self._by_name: defaultdict[str, list[Element]] = defaultdict(list)
        if root is not None:
            for el in root.iter():
                name = _local(el.tag)
                if name is not None:
                    self._by_name[name].append(el)

    def add(self, el: Element) -> None:
        name = _local(el.tag)
        if name is not None:
            self._by_name[name].append(el)

    def all(self, name: str) -> list[Element]:
        return self._by_name.get(name, [])

    def first(self, name: str) -> str | None:
        """The first present value of ``name``."""
        for el in self.all(name):
            v = _value(el)
            if v is not None:
                return v
        return None

    def values(self, name: str) -> tuple[str, ...]:
        """Every present value of ``name``, in order, duplicates dropped."""
        present = (_value(el) for el in self.all(name))
        return tuple(dict.fromkeys(v for v in present if v is not None))


_DATETIME_RE: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?", re.ASCII
)
_DATE_RE: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:Z|[+-]\d{2}:\d{2})?", re.ASCII)


def _parse_datetime(value: str | None, default_tz: tzinfo) -> datetime | None:
    if value is None or not _DATETIME_RE.fullmatch(value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=default_tz)
    try:
        parsed.astimezone(UTC)
    except OverflowError:  # no UTC equivalent (year 1 east of UTC): consumers could not use it
        return None
    return parsed


def _parse_date(value: str | None) -> date | None:
    if value is None:
        return None
    m = _DATE_RE.fullmatch(value)
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def _address(
    idx: _Index, street: str, city: str, state: str, zip_: str, county: str
) -> Address | None:
    address = Address(
        street=idx.first(street),
        city=idx.first(city),
        state=idx.first(state),
        postal_code=idx.first(zip_),
        county=idx.first(county),
    )
    return None if address == Address() else address


# --------------------------------------------------------------------------- extraction


def _custom_results(idx: _Index, element_id: str) -> list[str | None]:
    """eCustomResults.01 values of every results group for ``element_id`` (None = nil)."""
    out: list[str | None] = []
    for group in idx.all("eCustomResults.ResultsGroup"):
        ref = next(
            (_value(el) for el in _children(group, "eCustomResults.02")),
            None,
        )
        if ref is None or ref != element_id:
            continue
        values = [_value(el) for el in _children(group, "eCustomResults.01")]
        out.extend(values or [None])
    return out


def _medication_groups(idx: _Index) -> list[_Index]:
    """Each eMedications.MedicationGroup's elements, in document order. An element belongs
    to its nearest group, so a group nested in another keeps its own. Each group's subtree
    is walked once: indexing every group's whole subtree was quadratic in the nesting (a
    1 MB document of nested groups took 100 s)."""
    groups: dict[int, _Index] = {}  # by id() of the group element, in document order
    for top in idx.all(_MEDICATION_GROUP):
        if id(top) in groups:
            continue  # nested in a group already walked
        stack: list[tuple[Element, _Index | None]] = [(top, None)]
        while stack:  # depth first in document order, without recursion: nesting is unbounded
            el, group = stack.pop()
            if _local(el.tag) == _MEDICATION_GROUP:
                group = groups[id(el)] = _Index()
            elif group is not None:
                group.add(el)
            stack.extend((child, group) for child in reversed(el))
    return list(groups.values())


def _medications(idx: _Index, default_tz: tzinfo) -> tuple[EmsMedication, ...]:
    meds: list[EmsMedication] = []
    for g in _medication_groups(idx):
        med_el = next(iter(g.all("eMedications.03")), None)
        rxnorm = _value(med_el)
        if med_el is None or rxnorm is None or med_el.get("PN") is not None:
            continue
        code_type = (med_el.get("CodeType") or "").strip()
        if code_type and code_type != _RXNORM_CODE_TYPE:
            continue
        meds.append(
            EmsMedication(
                rxnorm=rxnorm,
                response=g.first("eMedications.07"),
                given_at=_parse_datetime(g.first("eMedications.01"), default_tz),
            )
        )
    return tuple(meds)


def _identity(idx: _Index) -> Identity:
    return Identity(
        family=idx.first("ePatient.02"),
        given=idx.first("ePatient.03"),
        middle=idx.first("ePatient.04"),
        dob=_parse_date(idx.first("ePatient.17")),
        sex=idx.first("ePatient.25") or idx.first("ePatient.13"),
        phones=idx.values("ePatient.18"),
        address=_address(
            idx, "ePatient.05", "ePatient.06", "ePatient.08", "ePatient.09", "ePatient.07"
        ),
        mrn=None,
        mrn_authority=None,
        language=idx.first("ePatient.24"),
    )


def _incident_at(idx: _Index, default_tz: tzinfo) -> datetime | None:
    times = [
        t
        for name in ("eTimes.01", "eTimes.03", "eTimes.06", "eTimes.07")
        if (t := _parse_datetime(idx.first(name), default_tz)) is not None
    ]
    return min(times) if times else None


def _parse_pcr(
    pcr: Element,
    *,
    header_agency: str | None,
    consent_element: str,
    leave_behind_element: str,
    default_tz: tzinfo,
) -> EmsRunReport:
    idx = _Index(pcr)
    pcr_number = idx.first("eRecord.01")
    if pcr_number is None:
        raise MissingPcrNumber("PatientCareReport has no PCR number (eRecord.01)")
    _check_lengths(idx)

    primary = idx.first("eSituation.11")
    impressions = dict.fromkeys([primary] if primary is not None else [])
    impressions.update(dict.fromkeys(idx.values("eSituation.12")))

    consent = _combine_consent(
        consent_from_value(v) for v in _custom_results(idx, consent_element.strip())
    )
    leave_behind: list[str] = []
    for v in _custom_results(idx, leave_behind_element.strip()):
        leave_behind += [i for i in leave_behind_from_value(v) if i not in leave_behind]

    return EmsRunReport(
        pcr_number=pcr_number,
        agency_id=header_agency or idx.first("eResponse.01"),
        identity=_identity(idx),
        incident_at=_incident_at(idx, default_tz),
        scene=_address(idx, "eScene.15", "eScene.17", "eScene.18", "eScene.19", "eScene.21"),
        impressions=tuple(impressions),
        medications=_medications(idx, default_tz),
        drug_use_indicators=idx.values("eHistory.17"),
        unit_disposition=idx.first("eDisposition.27"),
        patient_evaluation_care=idx.first("eDisposition.28"),
        crew_disposition=idx.first("eDisposition.29"),
        transport_disposition=idx.first("eDisposition.30"),
        destination=idx.first("eDisposition.02") or idx.first("eDisposition.01"),
        consent=consent,
        narrative=idx.first("eNarrative.01"),
        leave_behind=tuple(leave_behind),
        initial_acuity=idx.first("eSituation.13"),
        release_acuity=idx.first("eDisposition.19"),
        arrest_end=idx.first("eArrest.18"),
        outcomes=(*idx.values("eOutcome.01"), *idx.values("eOutcome.02")),
    )


def _header_agency(header: Element) -> str | None:
    for group in _children(header, "DemographicGroup"):
        for el in _children(group, "dAgency.02"):
            v = _value(el)
            if v is not None:
                return v
    return None


def _parse_xml(data: bytes) -> Element:
    # The EmsInputError is raised outside the except blocks so that it carries no
    # __context__: parser exceptions can quote entity names or document text.
    error: EmsInputError
    try:
        root: Element = SafeET.fromstring(data, forbid_dtd=True)
        return root
    except defusedxml.DefusedXmlException:
        # DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden, NotSupportedError
        error = XmlForbidden("DTDs, entity declarations and external references are not allowed")
    except (ParseError, ValueError, LookupError):
        # ParseError: not well-formed; ValueError/LookupError: an encoding expat cannot use.
        error = XmlMalformed("the document is not well-formed XML")
    raise error


def parse_ems_dataset(
    data: bytes,
    *,
    consent_element: str = DEFAULT_CONSENT_ELEMENT,
    leave_behind_element: str = DEFAULT_LEAVE_BEHIND_ELEMENT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_records: int = DEFAULT_MAX_RECORDS,
    default_tz: tzinfo = DEFAULT_TZ,
) -> list[EmsRecordResult]:
    """Parse a NEMSIS v3.5 EMSDataSet document into one result per PatientCareReport.

    Raises :class:`XmlTooLarge`, :class:`XmlForbidden`, :class:`XmlMalformed`,
    :class:`NotNemsis` or :class:`TooManyRecords` for the document; a PCR that cannot be
    used (:class:`MissingPcrNumber`) is reported in its :class:`EmsRecordResult`.
    ``TypeError`` when ``data`` is not bytes (a caller bug, not bad input).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("parse_ems_dataset expects bytes")
    if len(data) > max_bytes:
        raise XmlTooLarge(f"the document is larger than {max_bytes} bytes")
    root = _parse_xml(bytes(data))
    if not (isinstance(root.tag, str) and root.tag in ("EMSDataSet", f"{{{NEMSIS_NS}}}EMSDataSet")):
        raise NotNemsis("the root element is not a NEMSIS EMSDataSet")

    pcrs: list[tuple[Element, str | None]] = []
    for header in _children(root, "Header"):
        agency = _header_agency(header)
        pcrs.extend((pcr, agency) for pcr in _children(header, "PatientCareReport"))
        if len(pcrs) > max_records:
            raise TooManyRecords(f"the document holds more than {max_records} PatientCareReports")

    results: list[EmsRecordResult] = []
    for index, (pcr, agency) in enumerate(pcrs):
        try:
            report = _parse_pcr(
                pcr,
                header_agency=agency,
                consent_element=consent_element,
                leave_behind_element=leave_behind_element,
                default_tz=default_tz,
            )
        except EmsInputError as exc:
            results.append(EmsRecordResult(index=index, report=None, error=exc))
        else:
            results.append(EmsRecordResult(index=index, report=report, error=None))
    return results

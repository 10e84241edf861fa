"""`portline intake check`: what intake would decide about every message in some files.

The integration analyst's tool while onboarding a feed: for each message it prints the
overdose decision, the reasons and the normalized event, with PHI masked unless asked.
It touches no database and no broker; sealing uses throwaway keys, and the event shows the
identity in the clear (or masked) in place of the sealed token.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from services.intake.classify import Decision, Definition, classify_ed
from services.intake.ems_json import EmsRunReportBatch, to_record
from services.intake.hl7 import (
    HL7Error,
    check_supported,
    normalize,
    parse_adt,
    read_header,
    screen,
    split_messages,
)
from services.intake.nemsis import EmsInputError, parse_ems_dataset
from services.intake.pipeline import classify_run
from services.intake.records import Address, EmsRunReport, Identity
from services.intake.reports import Protector, ed_report, ems_report
from shared.events import OverdoseReported
from shared.sealing import BlindIndexer, Keyring, Sealer

__all__ = ["check_file", "mask", "render_text"]

_PROGRAM = "check"


def _throwaway_protector() -> Protector:
    return Protector(
        Sealer(Keyring({"check": os.urandom(32)}, "check")), BlindIndexer(os.urandom(32))
    )


def mask(value: object) -> object:
    """Keep the shape of a value, hide its content: 'Smith' -> 'S****'."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    text = str(value)
    return text[:1] + "*" * (len(text) - 1) if len(text) > 1 else "*"


def _identity_view(identity: Identity, address: Address | None, show_phi: bool) -> dict[str, Any]:
    data = asdict(identity)
    data["dob"] = identity.dob.isoformat() if isinstance(identity.dob, date) else None
    if address is not None:
        data["incident_address"] = asdict(address)
    return data if show_phi else {k: mask(v) for k, v in data.items()}


def _event_view(
    event: OverdoseReported, identity: Identity, address: Address | None, show_phi: bool
) -> dict[str, Any]:
    view = event.model_dump(mode="json")
    view["identity"] = _identity_view(identity, address, show_phi)
    view["location"]["address"] = "(sealed)" if event.location.address else None
    view["blind_keys"] = {k: ("(present)" if v else None) for k, v in view["blind_keys"].items()}
    return view


def _decision_fields(decision: Decision | None, definition: Definition) -> dict[str, Any]:
    if decision is None:
        return {"overdose": False, "opioid": False, "any_drug": False, "reasons": []}
    return {
        "overdose": decision.is_overdose(definition),
        "opioid": decision.opioid,
        "any_drug": decision.any_drug,
        "reasons": [
            {"code": str(r.code), "source": r.source, "detail": r.detail} for r in decision.reasons
        ],
    }


def _error(exc: HL7Error | EmsInputError | ValidationError | ValueError) -> dict[str, str]:
    if isinstance(exc, HL7Error | EmsInputError):
        return {"code": exc.code, "message": exc.message}
    if isinstance(exc, ValidationError):
        return {"code": "validation_error", "message": f"{exc.error_count()} field(s) invalid"}
    return {"code": "invalid", "message": str(exc)}


def _hl7(path: Path, text: str, definition: Definition, show_phi: bool) -> Iterator[dict[str, Any]]:
    try:
        messages = split_messages(normalize(text))
    except HL7Error as exc:
        yield {
            "file": str(path),
            "index": 0,
            "format": "hl7",
            **_decision_fields(None, definition),
            "event": None,
            "error": _error(exc),
        }
        return
    zone = ZoneInfo("America/New_York")
    for index, message in enumerate(messages):
        result: dict[str, Any] = {"file": str(path), "index": index, "format": "hl7"}
        try:
            header = read_header(message)
            result["message_type"] = f"{header.message_code}^{header.trigger_event}"
            result["control_id"] = header.control_id
            check_supported(header)
            screened = screen(message)
            decision = classify_ed(codes=screened.codes, texts=screened.texts)
            result.update(_decision_fields(decision, definition))
            event = None
            if result["overdose"]:
                adt = parse_adt(message, screened, default_tz=zone)
                report = ed_report(
                    adt,
                    decision,
                    program_id=_PROGRAM,
                    partner_id=header.sending_facility,
                    report_id=uuid.uuid4(),
                    revision=1,
                    received_at=datetime.now(UTC),
                    protector=_throwaway_protector(),
                )
                event = _event_view(report, adt.identity, None, show_phi)
            result["event"] = event
            result["error"] = None
        except HL7Error as exc:
            result.update(
                _decision_fields(None, definition) | {"event": None, "error": _error(exc)}
            )
        yield result


def _ems_results(
    path: Path,
    fmt: str,
    runs: Sequence[tuple[int, EmsRunReport | None, dict[str, str] | None]],
    definition: Definition,
    show_phi: bool,
) -> Iterator[dict[str, Any]]:
    for index, run, error in runs:
        result: dict[str, Any] = {"file": str(path), "index": index, "format": fmt}
        if run is None:
            yield result | _decision_fields(None, definition) | {"event": None, "error": error}
            continue
        decision = classify_run(run)
        result["pcr_number"] = run.pcr_number
        result["consent"] = run.consent
        result.update(_decision_fields(decision, definition))
        event = None
        if result["overdose"]:
            report = ems_report(
                run,
                decision,
                program_id=_PROGRAM,
                partner_id=run.agency_id or "unknown",
                report_id=uuid.uuid4(),
                revision=1,
                received_at=datetime.now(UTC),
                protector=_throwaway_protector(),
            )
            event = _event_view(report, run.identity, run.scene, show_phi)
        yield result | {"event": event, "error": None}


def check_file(
    path: Path, *, definition: Definition = Definition.OPIOID, show_phi: bool = False
) -> list[dict[str, Any]]:
    """One result per message (HL7) or record (NEMSIS XML, JSON run report) in the file."""
    data = path.read_bytes()
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n\x0b")[:1]
    if head == b"<":
        try:
            parsed = parse_ems_dataset(data)
        except EmsInputError as exc:
            return [
                {
                    "file": str(path),
                    "index": 0,
                    "format": "nemsis",
                    **_decision_fields(None, definition),
                    "event": None,
                    "error": _error(exc),
                }
            ]
        runs = [(r.index, r.report, _error(r.error) if r.error else None) for r in parsed]
        return list(_ems_results(path, "nemsis", runs, definition, show_phi))
    if head in (b"{", b"["):
        try:
            raw = json.loads(data)
            items = raw["reports"] if isinstance(raw, dict) and "reports" in raw else [raw]
            batch = EmsRunReportBatch.model_validate({"reports": items})
            runs_json = [(i, to_record(r), None) for i, r in enumerate(batch.reports)]
        except (ValueError, ValidationError) as exc:
            return [
                {
                    "file": str(path),
                    "index": 0,
                    "format": "json",
                    **_decision_fields(None, definition),
                    "event": None,
                    "error": _error(exc),
                }
            ]
        return list(_ems_results(path, "json", runs_json, definition, show_phi))
    return list(_hl7(path, data.decode("utf-8", "replace"), definition, show_phi))


def render_text(result: dict[str, Any]) -> str:
    """A human line (or a few) for one result."""
    kind = result.get("message_type") or result.get("pcr_number") or result["format"]
    if result.get("error"):
        verdict = f"REJECTED {result['error']['code']}: {result['error']['message']}"
    elif result["overdose"]:
        verdict = "OVERDOSE (opioid)" if result["opioid"] else "OVERDOSE (any drug)"
    else:
        verdict = "not an overdose"
    lines = [f"{result['file']} #{result['index']} {kind}: {verdict}"]
    for r in result["reasons"]:
        lines.append(f"    - {r['code']} [{r['source']}] {r['detail']}")
    if result.get("event") is not None:
        lines.append("    event: " + json.dumps(result["event"], sort_keys=True))
    return "\n".join(lines)

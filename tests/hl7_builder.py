"""Synthetic HL7 v2 ADT messages for tests and benchmarks (no real person, no real facility)."""

from __future__ import annotations

from datetime import datetime

VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def adt(
    control_id: str,
    *,
    facility: str = "DEMO_HOSPITAL",
    app: str = "EPIC",
    trigger: str = "A04",
    version: str = "2.5.1",
    dx: str | None = "T40.1X1A",
    complaint: str | None = "OD on heroin",
    visit: str = "V1001",
    family: str = "Doe",
    given: str = "Jane",
    dob: str = "19900101",
    phone: str = "^PRN^PH^^^336^5550100",
    admit: str = "202611201415-0500",
    mrn: str | None = None,
    street: str = "12 Elm St",
    city: str = "Greensboro",
) -> str:
    """An ED ADT message; with the defaults, an opioid overdose. The MRN (PID-3.1) defaults to
    ``MRN<visit>``; the home address (PID-11) is in Greensboro, NC 27401, Guilford County."""
    segments = [
        f"MSH|^~\\&|{app}|{facility}|PORTLINE|PORT|{admit}||ADT^{trigger}^ADT_A01|{control_id}|P|{version}",
        f"EVN|{trigger}|{admit}",
        f"PID|1||{mrn or f'MRN{visit}'}^^^{facility}^MR||{family}^{given}^Q||{dob}|F|||"
        f"{street}^^{city}^NC^27401^^H^^37081||{phone}|||||",
        f"PV1|1|E|ED^^^{facility}||||||||||||||||{visit}|||||||||||||||||||||||||{admit}",
    ]
    if complaint is not None:
        segments.append(f"PV2|||^{complaint}")
    if dx is not None:
        segments.append(f"DG1|1||{dx}^Poisoning^I10C||{admit}|F")
    return "\r".join(segments) + "\r"


def hl7_time(when: datetime) -> str:
    """An HL7 v2 TS to the minute with its offset (``YYYYMMDDHHMM+ZZZZ``), for relative times."""
    return when.strftime("%Y%m%d%H%M%z")


def routine(control_id: str, **kw: str) -> str:
    """An ED visit that is not an overdose."""
    return adt(control_id, dx="R07.9", complaint="chest pain", **kw)


def framed(message: str | bytes) -> bytes:
    body = message.encode() if isinstance(message, str) else message
    return VT + body + FS + CR


def ack_fields(ack: str) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control id, ERR-3 code or '') of the first ACK in the text."""
    msa = next(s for s in ack.split("\r") if s.startswith("MSA|")).split("|")
    err = next((s for s in ack.split("\r") if s.startswith("ERR|")), "")
    err_code = err.split("|")[3].split("^")[0] if err.count("|") >= 3 else ""
    return msa[1], msa[2] if len(msa) > 2 else "", err_code

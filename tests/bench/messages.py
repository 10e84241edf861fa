"""Deterministic synthetic feeds for the intake benchmark: ED ADT messages and EMS run reports.

Everything is made up (names, visits, phone numbers); a seeded random generator makes every
run send exactly the same bytes. Overdoses are a small, exact share of the feed, as in a real
hospital or HIE feed where almost every ED visit is something else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from tests.hl7_builder import adt, framed

__all__ = ["EmsCase", "HL7Case", "ems_reports", "hl7_messages"]

FACILITY = "DEMO_HOSPITAL"

# (chief complaint as triage types it, ICD-10-CM code the visit ends with)
ROUTINE_VISITS: tuple[tuple[str, str], ...] = (
    ("chest pain", "R07.9"),
    ("abd pain", "R10.9"),
    ("fall", "W19.XXXA"),
    ("laceration to hand", "S61.412A"),
    ("SOB", "R06.02"),
    ("fever", "R50.9"),
    ("URI sx", "J06.9"),
    ("headache", "R51.9"),
    ("back pain", "M54.50"),
    ("cough", "R05.9"),
    ("dizziness", "R42"),
    ("N/V/D", "R11.2"),
    ("ankle injury", "S93.401A"),
    ("syncope", "R55"),
    ("UTI sx", "N39.0"),
    ("rash", "R21"),
    ("MVC", "V43.52XA"),
    ("toothache", "K08.89"),
    ("palpitations", "R00.2"),
    ("sore throat", "J02.9"),
    ("seizure", "R56.9"),
    ("wrist pain", "S63.501A"),
)
OVERDOSE_VISITS: tuple[tuple[str, str | None], ...] = (
    ("OD on heroin", "T40.1X1A"),
    ("fentanyl overdose", "T40.411A"),
    ("unresponsive, narcan given", "T40.2X1A"),
    ("possible opioid OD", None),
    ("opioid overdose, naloxone given", "T40.601A"),
)
# Trigger events with their share of an ED feed: registrations and updates dominate.
TRIGGERS: tuple[tuple[str, int], ...] = (("A04", 40), ("A08", 35), ("A03", 15), ("A01", 10))
FAMILY = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Clark", "Lewis",
)  # fmt: skip
GIVEN = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas",
    "Sarah", "Carlos", "Maria", "Jordan", "Alex", "Sam", "Taylor", "Casey", "Riley",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class HL7Case:
    control_id: str
    message: str
    frame: bytes
    overdose: bool


@dataclass(frozen=True, slots=True)
class EmsCase:
    pcr_number: str
    body: dict[str, Any]
    overdose: bool


def _pick_trigger(rng: random.Random) -> str:
    return rng.choices([t for t, _ in TRIGGERS], weights=[w for _, w in TRIGGERS])[0]


def _admit(rng: random.Random) -> str:
    day = rng.randint(1, 28)
    return f"202611{day:02d}{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}-0500"


def hl7_messages(
    count: int, *, prefix: str, seed: int, overdose_share: float = 0.005
) -> list[HL7Case]:
    """`count` ED messages with unique MSH-10 `<prefix><n>`; exactly round(count * share)
    of them are opioid overdoses, at seeded random positions."""
    rng = random.Random(f"{seed}:{prefix}")
    overdoses = set(rng.sample(range(count), round(count * overdose_share)))
    cases: list[HL7Case] = []
    for i in range(count):
        control_id = f"{prefix}{i:07d}"
        trigger = _pick_trigger(rng)
        common: dict[str, Any] = {
            "facility": FACILITY,
            "trigger": trigger,
            "visit": f"V{prefix}{i:07d}",
            "family": rng.choice(FAMILY),
            "given": rng.choice(GIVEN),
            "dob": f"{rng.randint(1940, 2008)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            "phone": f"^PRN^PH^^^336^555{rng.randint(0, 9999):04d}",
            "admit": _admit(rng),
        }
        if i in overdoses:
            complaint, od_dx = rng.choice(OVERDOSE_VISITS)
            message = adt(control_id, complaint=complaint, dx=od_dx, **common)
        else:
            complaint, dx = rng.choice(ROUTINE_VISITS)
            # Registrations usually carry only the chief complaint; the code comes later.
            routine_dx = None if trigger == "A04" and rng.random() < 0.6 else dx
            message = adt(control_id, complaint=complaint, dx=routine_dx, **common)
        cases.append(HL7Case(control_id, message, framed(message), i in overdoses))
    return cases


ROUTINE_IMPRESSIONS = ("R07.9", "S06.0X0A", "R55", "I63.9", "R56.9", "E16.2", "R06.02", "S72.001A")
ROUTINE_MEDICATIONS = ("1191", "435", "26225", "4917", "6470")  # aspirin, albuterol, ...
EMS_NARRATIVE_ROUTINE = "Pt found sitting, A&Ox4, c/o symptoms as above. Transported w/o incident."
EMS_NARRATIVE_OD = "Found unresponsive, pinpoint pupils, RR 6. Naloxone 4 mg IN, improved."


def ems_reports(
    count: int, *, prefix: str, seed: int, overdose_share: float = 0.1
) -> list[EmsCase]:
    """`count` JSON run reports with unique PCR numbers; round(count * share) are opioid
    overdoses (naloxone given, improved)."""
    rng = random.Random(f"{seed}:ems:{prefix}")
    overdoses = set(rng.sample(range(count), round(count * overdose_share)))
    cases: list[EmsCase] = []
    for i in range(count):
        pcr = f"{prefix}-{i:07d}"
        day, hour, minute = rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 50)
        incident_at = f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:00-05:00"
        given_at = f"2026-11-{day:02d}T{hour:02d}:{minute + 9:02d}:00-05:00"
        od = i in overdoses
        body: dict[str, Any] = {
            "pcr_number": pcr,
            "agency_id": "NC-EMS-041",
            "incident_at": incident_at,
            "patient": {
                "family_name": rng.choice(FAMILY),
                "given_name": rng.choice(GIVEN),
                "date_of_birth": f"{rng.randint(1940, 2008)}-{rng.randint(1, 12):02d}-"
                f"{rng.randint(1, 28):02d}",
                "sex": rng.choice("FM"),
                "phones": [f"336-555-{rng.randint(0, 9999):04d}"],
                "address": {
                    "street": f"{rng.randint(1, 9999)} Example Ave",
                    "city": "Greensboro",
                    "state": "NC",
                    "postal_code": "27401",
                },
            },
            "scene": {"city": "Greensboro", "state": "NC", "postal_code": "27406"},
            "disposition": {"unit": "4227001", "transport": "4230001"},
        }
        if od:
            body["impressions"] = rng.choice((["T40.411A"], ["F11.920"], []))
            body["medications"] = [{"rxnorm": "7242", "response": "improved", "given_at": given_at}]
            body["peer_follow_up"] = rng.choice(("accepted", "declined", "unknown"))
            body["leave_behind"] = ["naloxone_kit", "resource_information"]
            body["narrative"] = EMS_NARRATIVE_OD
        else:
            body["impressions"] = [rng.choice(ROUTINE_IMPRESSIONS)]
            if rng.random() < 0.5:
                body["medications"] = [{"rxnorm": rng.choice(ROUTINE_MEDICATIONS)}]
            body["narrative"] = EMS_NARRATIVE_ROUTINE
        cases.append(EmsCase(pcr, body, od))
    return cases

"""The development seed: program `demo`, an EMS agency and a hospital (MSH-4 DEMO_HOSPITAL).

Their API keys are issued once and kept in var/demo-keys.json (development only), so every
`make run` prints the same working keys. The demo hospital may send over MLLP from loopback
(127.0.0.0/8 and ::1): on this machine, and nowhere else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake.models import PARTNER, PARTNER_FACILITY
from services.intake.partners import (
    PartnerDirectory,
    add_facility,
    add_network,
    create_partner,
    create_program,
    issue_key,
)
from shared.clock import Clock

__all__ = ["DEMO_FACILITY", "DEMO_NETWORKS", "DEMO_PROGRAM", "DemoPartners", "seed_demo"]

DEMO_NETWORKS = ("127.0.0.0/8", "::1/128")

DEMO_PROGRAM = "demo"
DEMO_EMS = "demo-ems"
DEMO_HOSPITAL = "demo-hospital"
DEMO_FACILITY = "DEMO_HOSPITAL"


@dataclass(frozen=True)
class DemoPartners:
    program_id: str
    ems_partner: str
    ems_api_key: str
    hospital_partner: str
    hospital_api_key: str
    hospital_facility: str


def _read_keys(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_keys(path: Path, keys: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(keys, indent=2))
    os.chmod(tmp, 0o600)
    tmp.replace(path)


async def _ensure_partner(
    session: AsyncSession, partner_id: str, name: str, kind: str, clock: Clock
) -> None:
    found = await session.execute(sa.select(PARTNER.c.id).where(PARTNER.c.id == partner_id))
    if found.first() is None:
        await create_partner(
            session,
            partner_id=partner_id,
            program_id=DEMO_PROGRAM,
            name=name,
            kind=kind,
            now=clock.now(),
        )


async def seed_demo(
    sessions: async_sessionmaker[AsyncSession], *, clock: Clock, var_dir: Path
) -> DemoPartners:
    """Create the demo program and partners if missing; reuse or issue their API keys."""
    keys_file = var_dir / "demo-keys.json"
    async with sessions() as session, session.begin():
        await create_program(
            session,
            program_id=DEMO_PROGRAM,
            name="Demo PORT program",
            timezone="America/New_York",
            definition="opioid",
        )
        await _ensure_partner(session, DEMO_EMS, "Demo County EMS", "ems", clock)
        await _ensure_partner(session, DEMO_HOSPITAL, "Demo Regional Hospital", "hospital", clock)
        facility = await session.execute(
            sa.select(PARTNER_FACILITY.c.facility).where(
                PARTNER_FACILITY.c.facility == DEMO_FACILITY
            )
        )
        if facility.first() is None:
            await add_facility(session, partner_id=DEMO_HOSPITAL, facility=DEMO_FACILITY)
        for network in DEMO_NETWORKS:
            await add_network(session, partner_id=DEMO_HOSPITAL, network=network)

    stored = _read_keys(keys_file)
    directory = PartnerDirectory(sessions, ttl_seconds=0)
    for partner_id in (DEMO_EMS, DEMO_HOSPITAL):
        key = stored.get(partner_id)
        context = await directory.by_api_key(key) if key else None
        if context is None or context.partner_id != partner_id:
            async with sessions() as session, session.begin():
                issued = await issue_key(
                    session, partner_id=partner_id, now=clock.now(), label="development seed"
                )
            stored[partner_id] = issued.api_key
    _write_keys(keys_file, stored)
    return DemoPartners(
        program_id=DEMO_PROGRAM,
        ems_partner=DEMO_EMS,
        ems_api_key=stored[DEMO_EMS],
        hospital_partner=DEMO_HOSPITAL,
        hospital_api_key=stored[DEMO_HOSPITAL],
        hospital_facility=DEMO_FACILITY,
    )

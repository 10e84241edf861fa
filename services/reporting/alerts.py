"""Spike alerts: the detectors of `spikes.py` run on each county's overdoses, their findings
kept as alerts (one per program, county, detector and window) and published as
`SpikeDetected`, and the leads' decisions on them.

When detection runs (`Watch`, in `watch.py`): after each batch of reports, for the counties
the batch touched, inside the batch's own unit of work; and on a timer, for every county.
Both ask `detect_program`, which writes and publishes through the unit of work it is given,
so an alert and its event commit together, once.

* **EWMA** (NSSP-ESSENCE) on the county's overdoses per day by incident date (the program's
  clock), every overdose episode counted, fatal or not. The days tested are today and
  yesterday: reports of yesterday's overdoses keep arriving. The window is the local day.
* **ODMAP**: the fullest `window` (24 h) holding an overdose of the last `window`. A spike
  that grows (a sixth overdose in the same hours) updates the alert it overlaps instead of
  raising another; the alert's window is where the spike started and where it has reached.

An alert is raised at `warning` or `alert` (ODMAP alerts only) and never lowered; a
warning that becomes an alert is published again under the same `alert_id`. No alert names a
person, a report or an episode: a county, counts and times.

The functions for readers (`list_alerts`, `decide`) are what `GET /v1/alerts` and its
acknowledge and dismiss routes call, and what a dashboard panel may call too.

Exceptions::

    AlertError
    ├── AlertNotFound     no alert of that id in the caller's program
    └── AlertDecided      the alert was acknowledged or dismissed already
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.reporting.facts import UNKNOWN
from services.reporting.models import ALERT, ALERT_DECISION, COUNTY, EPISODE
from services.reporting.programs import Detector, ProgramRules
from services.reporting.spikes import ewma_tail, history_days, odmap
from shared.events import SpikeDetected
from shared.sealing import Sealer
from shared.uow import UnitOfWork

__all__ = [
    "NOTE_CONTEXT",
    "AlertDecided",
    "AlertError",
    "AlertNotFound",
    "AlertStatus",
    "AlertView",
    "Decision",
    "Finding",
    "daily_counts",
    "decide",
    "detect_program",
    "ewma_findings",
    "findings_for",
    "incidents_since",
    "list_alerts",
    "odmap_findings",
    "record",
]

AlertStatus = Literal["open", "acknowledged", "dismissed"]
Decision = Literal["acknowledged", "dismissed"]
NOTE_CONTEXT = "reporting.alert_note"
"""The sealing context of a lead's note on an alert."""

EWMA_DAYS = 2
"""The days the EWMA tests at each run: today and yesterday."""

_RANK = {"none": 0, "warning": 1, "alert": 2}


class AlertError(Exception):
    code: str = "alert_error"


class AlertNotFound(AlertError):
    code = "alert_not_found"


class AlertDecided(AlertError):
    code = "alert_decided"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """What a detector found in one county: an alert to raise, or to raise to a higher
    level or a larger count."""

    program_id: str
    county: str
    detector: Detector
    level: Literal["warning", "alert"]
    window_start: datetime
    window_end: datetime
    observed: float
    expected: float | None = None
    p_value: float | None = None
    threshold: int | None = None


# -- the detectors over a county's data (pure) -----------------------------------------------


def _day_window(rules: ProgramRules, day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), tzinfo=rules.zone)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=rules.zone)
    return start, end


def ewma_findings(
    rules: ProgramRules, county: str, counts: dict[date, int], today: date
) -> list[Finding]:
    """The EWMA's warnings and alerts for the county's last `EWMA_DAYS` days up to `today`,
    from its overdoses per local day (days missing from `counts` had none)."""
    params = rules.spikes.ewma
    length = history_days(params) + EWMA_DAYS - 1
    first = today - timedelta(days=length - 1)
    series = [counts.get(first + timedelta(days=i), 0) for i in range(length)]
    found = []
    for offset, result in enumerate(ewma_tail(series, params, days=EWMA_DAYS)):
        if result is None or result.level == "none":
            continue
        day = today - timedelta(days=EWMA_DAYS - 1 - offset)
        start, end = _day_window(rules, day)
        found.append(
            Finding(
                program_id=rules.program_id,
                county=county,
                detector="ewma",
                level=result.level,
                window_start=start,
                window_end=end,
                observed=result.observed,
                expected=round(result.expected, 4),
                p_value=result.p_value,
            )
        )
    return found


def odmap_findings(
    rules: ProgramRules, county: str, incidents: Sequence[datetime], now: datetime
) -> list[Finding]:
    """The ODMAP rule for the county: the fullest window holding an overdose of the last
    `window` before `now` (`incidents` go back two windows)."""
    params = rules.spikes.odmap
    best = None
    for at in incidents:
        if not now - params.window <= at <= now:
            continue
        spike = odmap(incidents, at, params)
        if spike is not None and (
            best is None or (spike.observed, spike.window_end) > (best.observed, best.window_end)
        ):
            best = spike
    if best is None:
        return []
    return [
        Finding(
            program_id=rules.program_id,
            county=county,
            detector="odmap",
            level="alert",
            window_start=best.window_start,
            window_end=best.window_end,
            observed=best.observed,
            threshold=params.threshold,
        )
    ]


# -- reading the counts ----------------------------------------------------------------------


async def daily_counts(
    session: AsyncSession, program_id: str, counties: Sequence[str] | None, start: date, end: date
) -> dict[str, dict[date, int]]:
    """Overdoses per county and local day in [start, end] (counties of unknown excluded)."""
    query = (
        sa.select(EPISODE.c.county, EPISODE.c.day, sa.func.count())
        .where(
            EPISODE.c.program_id == program_id,
            EPISODE.c.overdose,
            EPISODE.c.day >= start,
            EPISODE.c.day <= end,
            EPISODE.c.county != UNKNOWN,
        )
        .group_by(EPISODE.c.county, EPISODE.c.day)
    )
    if counties is not None:
        query = query.where(EPISODE.c.county.in_(counties))
    out: dict[str, dict[date, int]] = defaultdict(dict)
    for county, day, n in await session.execute(query):
        out[county][day] = int(n)
    return out


async def incidents_since(
    session: AsyncSession, program_id: str, counties: Sequence[str] | None, since: datetime
) -> dict[str, list[datetime]]:
    """Each county's overdose times since `since`."""
    query = sa.select(EPISODE.c.county, EPISODE.c.incident_at).where(
        EPISODE.c.program_id == program_id,
        EPISODE.c.overdose,
        EPISODE.c.incident_at >= since,
        EPISODE.c.county != UNKNOWN,
    )
    if counties is not None:
        query = query.where(EPISODE.c.county.in_(counties))
    out: dict[str, list[datetime]] = defaultdict(list)
    for county, at in await session.execute(query):
        out[county].append(at)
    return out


async def findings_for(
    session: AsyncSession,
    rules: ProgramRules,
    now: datetime,
    counties: Sequence[str] | None = None,
) -> list[Finding]:
    """Every detector's findings for the program's counties (all of them, or these)."""
    found: list[Finding] = []
    today = rules.local_date(now)
    if "ewma" in rules.spikes.detectors:
        length = history_days(rules.spikes.ewma) + EWMA_DAYS - 1
        start = today - timedelta(days=length - 1)
        series = await daily_counts(session, rules.program_id, counties, start, today)
        for county in sorted(series):
            found.extend(ewma_findings(rules, county, series[county], today))
    if "odmap" in rules.spikes.detectors:
        window = rules.spikes.odmap.window
        incidents = await incidents_since(session, rules.program_id, counties, now - 2 * window)
        for county in sorted(incidents):
            found.extend(odmap_findings(rules, county, incidents[county], now))
    return found


# -- keeping alerts --------------------------------------------------------------------------


async def _existing(session: AsyncSession, finding: Finding) -> Any:
    query = sa.select(ALERT).where(
        ALERT.c.program_id == finding.program_id,
        ALERT.c.county == finding.county,
        ALERT.c.detector == finding.detector,
    )
    if finding.detector == "odmap":  # a spike that grows is the alert it overlaps
        query = query.where(
            ALERT.c.window_end >= finding.window_start,
            ALERT.c.window_start <= finding.window_end,
        )
    else:
        query = query.where(ALERT.c.window_start == finding.window_start)
    return (await session.execute(query.order_by(ALERT.c.window_start).limit(1))).first()


async def _states(
    session: AsyncSession, program_id: str, counties: Iterable[str]
) -> dict[str, Any]:
    wanted = sorted(set(counties))
    if not wanted:
        return {}
    rows = await session.execute(
        sa.select(COUNTY.c.county, COUNTY.c.state).where(
            COUNTY.c.program_id == program_id, COUNTY.c.county.in_(wanted)
        )
    )
    return {county: state for county, state in rows}


def _event(row: Any, state: str | None, now: datetime) -> SpikeDetected:
    return SpikeDetected(
        alert_id=row["alert_id"],
        program_id=row["program_id"],
        county=row["county"],
        state=state,
        detector=row["detector"],
        level=row["level"],
        observed=row["observed"],
        expected=row["expected"],
        p_value=row["p_value"],
        threshold=row["threshold"],
        window_start=row["window_start"],
        window_end=row["window_end"],
        detected_at=now,
    )


async def record(uow: UnitOfWork, findings: Sequence[Finding]) -> list[SpikeDetected]:
    """Raise or raise further the alerts these findings call for, publishing `SpikeDetected`
    for each new alert and each upgrade to a higher level; returns what was published."""
    session = uow.session
    now = uow.clock.now()
    published = []
    states: dict[str, Any] = {}
    if findings:
        states = await _states(session, findings[0].program_id, (f.county for f in findings))
    for finding in findings:
        old = await _existing(session, finding)
        values: dict[str, Any] = {
            "level": finding.level,
            "observed": finding.observed,
            "expected": finding.expected,
            "p_value": finding.p_value,
            "threshold": finding.threshold,
            "window_end": finding.window_end,
            "updated_at": now,
        }
        if old is None:
            row = {
                "alert_id": uuid.uuid4(),
                "program_id": finding.program_id,
                "county": finding.county,
                "state": states.get(finding.county),
                "detector": finding.detector,
                "status": "open",
                "window_start": finding.window_start,
                "detected_at": now,
                **values,
            }
            await session.execute(ALERT.insert().values(row))
        else:
            upgrade = _RANK[finding.level] > _RANK[old.level]
            grew = (
                finding.observed > old.observed
                or finding.window_end > old.window_end
                or finding.window_start < old.window_start  # an earlier overdose, late
            )
            if not upgrade and not grew:
                continue
            if not upgrade:  # never lowered: a larger count at the level it has
                values["level"] = old.level
                if finding.level != old.level:
                    values.update(expected=old.expected, p_value=old.p_value)
            values["window_start"] = min(old.window_start, finding.window_start)
            values["window_end"] = max(old.window_end, finding.window_end)
            values["observed"] = max(old.observed, finding.observed)
            await session.execute(
                ALERT.update().where(ALERT.c.alert_id == old.alert_id).values(values)
            )
            if not upgrade:
                continue
            row = {**dict(old._mapping), **values}
        event = _event(row, states.get(finding.county), now)
        uow.publish(event, subject=finding.program_id)
        published.append(event)
    return published


async def detect_program(
    uow: UnitOfWork, rules: ProgramRules, counties: Sequence[str] | None = None
) -> list[SpikeDetected]:
    """Run the program's detectors now (on all its counties, or these) and keep what they
    find; the caller commits."""
    findings = await findings_for(uow.session, rules, uow.clock.now(), counties)
    return await record(uow, findings)


# -- reading and deciding --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertView:
    """An alert as the API and the dashboard show it. The note is the lead's, opened for
    leads and admins only (None for others, and where there is none)."""

    alert_id: uuid.UUID
    county: str
    state: str | None
    detector: str
    level: str
    status: AlertStatus
    window_start: datetime
    window_end: datetime
    observed: float
    expected: float | None
    p_value: float | None
    threshold: int | None
    detected_at: datetime
    updated_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    note: str | None


async def list_alerts(
    session: AsyncSession,
    program_id: str,
    *,
    status: AlertStatus | None = None,
    since: datetime | None = None,
    alert_id: uuid.UUID | None = None,
    limit: int = 200,
    sealer: Sealer | None = None,
) -> list[AlertView]:
    """The program's alerts, newest first: all, or those of one status, detected since a
    moment, or the one of that id. With a `sealer`, the leads' notes are opened."""
    query = (
        sa.select(ALERT, ALERT_DECISION)
        .outerjoin(ALERT_DECISION, ALERT_DECISION.c.alert_id == ALERT.c.alert_id)
        .where(ALERT.c.program_id == program_id)
        .order_by(ALERT.c.detected_at.desc(), ALERT.c.county)
        .limit(limit)
    )
    if status is not None:
        query = query.where(ALERT.c.status == status)
    if since is not None:
        query = query.where(ALERT.c.detected_at >= since)
    if alert_id is not None:
        query = query.where(ALERT.c.alert_id == alert_id)
    out = []
    for row in await session.execute(query):
        note = None
        if sealer is not None and row.note_sealed is not None:
            note = sealer.open(row.note_sealed, context=NOTE_CONTEXT)
        out.append(
            AlertView(
                alert_id=row.alert_id,
                county=row.county,
                state=row.state,
                detector=row.detector,
                level=row.level,
                status=row.status,
                window_start=row.window_start,
                window_end=row.window_end,
                observed=row.observed,
                expected=row.expected,
                p_value=row.p_value,
                threshold=row.threshold,
                detected_at=row.detected_at,
                updated_at=row.updated_at,
                decided_at=row.decided_at,
                decided_by=row.decided_by,
                note=note,
            )
        )
    return out


async def decide(
    session: AsyncSession,
    program_id: str,
    alert_id: uuid.UUID,
    *,
    decision: Decision,
    by: str,
    at: datetime,
    note: str | None,
    sealer: Sealer,
) -> None:
    """A lead acknowledges an open alert (the team is on it) or dismisses it (not a real
    spike), with an optional note, stored sealed; the caller commits. Raises AlertNotFound,
    AlertDecided."""
    found = (
        await session.execute(
            sa.select(ALERT.c.status).where(
                ALERT.c.alert_id == alert_id, ALERT.c.program_id == program_id
            )
        )
    ).scalar_one_or_none()
    if found is None:
        raise AlertNotFound("There is no such alert in your program.")
    changed = await session.execute(
        ALERT.update()
        .where(ALERT.c.alert_id == alert_id, ALERT.c.status == "open")
        .values(status=decision, updated_at=at)
    )
    if found != "open" or getattr(changed, "rowcount", 1) != 1:
        raise AlertDecided(f"The alert was {found} already.")
    await session.execute(
        ALERT_DECISION.insert().values(
            alert_id=alert_id,
            decision=decision,
            decided_by=by[:128],
            decided_at=at,
            note_sealed=None if note is None else sealer.seal(note, context=NOTE_CONTEXT),
        )
    )

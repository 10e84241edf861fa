"""Feed health: each partner's usual message rate by hour of the week, learned from what
reporting already reads (its reports and its rejected messages), and the alerts a feed
raises when it goes quiet far longer than that rate allows, or when its rejects rise.

* **Usual rate.** Messages per hour for each of the 168 hours of the week, on the program's
  clock, over the last `history_days` (28) or the partner's whole history if shorter, up to
  its last message (the quiet spell being judged does not lower its own bar). A
  partner seen for less than a week is still `learning` and raises nothing.
* **Silent.** Quiet for `silent_min_hours` (2 h) at least, and for a spell in which its usual
  rate promised `silent_expected` (7) messages or more: with Poisson arrivals, silence by
  chance is then rarer than e^-7, under 1 in 1,000. So a feed that is busy at 10 on a
  Tuesday is called silent after 2 or 3 quiet hours, one that sends a few messages a night
  only after many hours, and a feed that never sends on Sundays is not called silent then.
* **Rejects rising.** In the last `reject_window_hours` (1 h), at least `reject_min` (5)
  messages rejected, and so many that its usual share rejected (with one rejected and one
  accepted message added, so a partner never rejected before is not certain never to be)
  makes that many rejects rarer than 1 in 1,000 (binomial upper tail).

`feed_health` answers the state of each feed (for `GET /v1/feeds` and the dashboard);
`check_feeds` also keeps the program's feed alerts, publishing `FeedSilenceDetected`,
`FeedRejectSpikeDetected` and `FeedRecovered`. The clock is the caller's `now`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from scipy.stats import binom
from sqlalchemy.ext.asyncio import AsyncSession

from services.reporting.models import FEED_ALERT, PARTNER, REJECTED, REPORT
from services.reporting.programs import ProgramRules
from shared.events import FeedRecovered, FeedRejectSpikeDetected, FeedSilenceDetected
from shared.settings import Settings
from shared.uow import UnitOfWork

__all__ = [
    "FeedHealth",
    "FeedRules",
    "FeedState",
    "UsualRate",
    "check_feeds",
    "expected_between",
    "feed_health",
    "rejects_rising",
]

FeedState = Literal["ok", "silent", "rejects_rising", "learning"]
HOURS_OF_WEEK = 168
RARE = 1e-3
"""How unlikely by chance a reject count must be to raise an alert."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedRules:
    silent_min_hours: float = 2.0
    silent_expected: float = 7.0
    history_days: int = 28
    reject_window_hours: float = 1.0
    reject_min: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedRules:
        return cls(
            silent_min_hours=settings.reporting_feed_silent_min_hours,
            silent_expected=settings.reporting_feed_silent_expected,
            history_days=settings.reporting_feed_history_days,
            reject_window_hours=settings.reporting_feed_reject_window_hours,
            reject_min=settings.reporting_feed_reject_min,
        )


def _hour_of_week(at: datetime, rules: ProgramRules) -> int:
    local = at.astimezone(rules.zone)
    return local.weekday() * 24 + local.hour


@dataclass(frozen=True, slots=True)
class UsualRate:
    """Messages per hour, for each hour of the week (Monday 00:00 first), local time."""

    per_hour: tuple[float, ...]

    @classmethod
    def learn(
        cls, times: Sequence[datetime], start: datetime, end: datetime, rules: ProgramRules
    ) -> UsualRate:
        """From the message times in [start, end): each hour of the week's count over the
        number of times that hour of the week occurred in the span."""
        counts = [0] * HOURS_OF_WEEK
        for at in times:
            if start <= at < end:
                counts[_hour_of_week(at, rules)] += 1
        seen = [0.0] * HOURS_OF_WEEK
        cursor = start
        while cursor < end:
            step = min(end, cursor.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))
            seen[_hour_of_week(cursor, rules)] += (step - cursor).total_seconds() / 3600
            cursor = step
        return cls(tuple(c / s if s else 0.0 for c, s in zip(counts, seen, strict=True)))

    def at(self, when: datetime, rules: ProgramRules) -> float:
        return self.per_hour[_hour_of_week(when, rules)]


def expected_between(rate: UsualRate, start: datetime, end: datetime, rules: ProgramRules) -> float:
    """How many messages the usual rate promises in [start, end) (at most two weeks read:
    past that, any feed with a rate is long overdue)."""
    total = 0.0
    cursor = start
    stop = min(end, start + timedelta(days=14))
    while cursor < stop:
        step = min(stop, cursor.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))
        total += rate.at(cursor, rules) * (step - cursor).total_seconds() / 3600
        cursor = step
    return total


def rejects_rising(
    rejected: int, messages: int, usual_rejected: int, usual_messages: int, rules: FeedRules
) -> tuple[bool, float]:
    """Whether `rejected` of `messages` is far beyond the usual share; and that share."""
    share = (usual_rejected + 1) / (usual_messages + 2)
    if rejected < rules.reject_min or messages == 0:
        return False, share
    tail = float(binom.sf(rejected - 1, messages, share))
    return tail < RARE, share


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedHealth:
    """One partner's feed, as `GET /v1/feeds` and the dashboard show it."""

    source_org: str
    source_kind: str
    state: FeedState
    since: datetime | None
    """When the current alert was raised (silent, rejects_rising); None otherwise."""
    first_message_at: datetime
    last_message_at: datetime
    last_report_at: datetime | None
    last_rejected_at: datetime | None
    usual_per_hour: float
    """The usual messages per hour at this hour of the week."""
    quiet_hours: float
    expected_since_last: float
    """Messages the usual rate promised since the last one."""
    recent_messages: int
    recent_rejected: int
    usual_reject_share: float


async def _times(
    session: AsyncSession, table: sa.Table, orgs: Sequence[str], since: datetime, program: str
) -> dict[str, list[datetime]]:
    query = sa.select(table.c.source_org, table.c.received_at).where(
        table.c.source_org.in_(orgs), table.c.received_at >= since
    )
    if table is REPORT:
        query = query.where(REPORT.c.program_id == program)
    out: dict[str, list[datetime]] = defaultdict(list)
    for org, at in await session.execute(query):
        if at is not None:
            out[org].append(at)
    return out


async def _open_alerts(session: AsyncSession, program_id: str) -> dict[tuple[str, str], Any]:
    rows = await session.execute(
        sa.select(FEED_ALERT).where(
            FEED_ALERT.c.program_id == program_id, FEED_ALERT.c.cleared_at.is_(None)
        )
    )
    return {(r.source_org, r.kind): r for r in rows}


async def feed_health(
    session: AsyncSession, rules: ProgramRules, feeds: FeedRules, now: datetime
) -> list[FeedHealth]:
    """Each of the program's partners' feed, by partner: its usual rate, how long it has been
    quiet, its recent rejects, and its state. Partners only ever seen in rejected messages
    name no program and are not listed."""
    partners = list(
        await session.execute(
            sa.select(PARTNER)
            .where(PARTNER.c.program_id == rules.program_id)
            .order_by(PARTNER.c.source_org)
        )
    )
    if not partners:
        return []
    orgs = [p.source_org for p in partners]
    history_start = now - timedelta(days=feeds.history_days)
    reports = await _times(session, REPORT, orgs, history_start, rules.program_id)
    rejects = await _times(session, REJECTED, orgs, history_start, rules.program_id)
    alerts = await _open_alerts(session, rules.program_id)
    window_start = now - timedelta(hours=feeds.reject_window_hours)
    out = []
    for partner in partners:
        org = partner.source_org
        times = reports.get(org, []) + rejects.get(org, [])
        start = max(history_start, partner.first_message_at)
        last = min(partner.last_message_at, now)
        # learned up to the last message: the quiet spell being judged is not its own norm
        rate = UsualRate.learn(times, start, last, rules)
        expected = expected_between(rate, last, now, rules)
        quiet = max(0.0, (now - last).total_seconds() / 3600)
        recent_rejected = sum(1 for t in rejects.get(org, []) if t >= window_start)
        recent = recent_rejected + sum(1 for t in reports.get(org, []) if t >= window_start)
        usual_rejected = len(rejects.get(org, [])) - recent_rejected
        usual_messages = len(times) - recent
        rising, share = rejects_rising(
            recent_rejected, recent, usual_rejected, usual_messages, feeds
        )
        learning = now - partner.first_message_at < timedelta(days=7)
        silent = quiet >= feeds.silent_min_hours and expected >= feeds.silent_expected
        state: FeedState = "ok"
        since = None
        if learning:
            state = "learning"
        elif silent:
            state = "silent"
            since = getattr(alerts.get((org, "silent")), "raised_at", None)
        elif rising:
            state = "rejects_rising"
            since = getattr(alerts.get((org, "rejects_rising")), "raised_at", None)
        out.append(
            FeedHealth(
                source_org=org,
                source_kind=partner.source_kind,
                state=state,
                since=since,
                first_message_at=partner.first_message_at,
                last_message_at=partner.last_message_at,
                last_report_at=partner.last_report_at,
                last_rejected_at=partner.last_rejected_at,
                usual_per_hour=round(rate.at(now, rules), 4),
                quiet_hours=round(quiet, 4),
                expected_since_last=round(expected, 4),
                recent_messages=recent,
                recent_rejected=recent_rejected,
                usual_reject_share=round(share, 6),
            )
        )
    return out


async def check_feeds(uow: UnitOfWork, rules: ProgramRules, feeds: FeedRules) -> list[FeedHealth]:
    """Raise and clear the program's feed alerts from the feeds' health now, publishing
    FeedSilenceDetected, FeedRejectSpikeDetected and FeedRecovered; the caller commits.
    Returns the health it judged by."""
    session = uow.session
    now = uow.clock.now()
    health = await feed_health(session, rules, feeds, now)
    alerts = await _open_alerts(session, rules.program_id)
    for feed in health:
        wanted = {feed.state} & {"silent", "rejects_rising"}  # a learning feed clears
        common = {
            "program_id": rules.program_id,
            "source_org": feed.source_org,
            "source_kind": feed.source_kind,
        }
        for kind in ("silent", "rejects_rising"):
            open_alert = alerts.get((feed.source_org, kind))
            if kind in wanted and open_alert is None:
                alert_id = uuid.uuid4()
                await session.execute(
                    FEED_ALERT.insert().values(
                        alert_id=alert_id,
                        program_id=rules.program_id,
                        source_org=feed.source_org,
                        kind=kind,
                        raised_at=now,
                        cleared_at=None,
                    )
                )
                event: FeedSilenceDetected | FeedRejectSpikeDetected
                if kind == "silent":
                    event = FeedSilenceDetected(
                        alert_id=alert_id,
                        **common,
                        last_message_at=feed.last_message_at,
                        quiet_hours=feed.quiet_hours,
                        expected_messages=feed.expected_since_last,
                        raised_at=now,
                    )
                else:
                    event = FeedRejectSpikeDetected(
                        alert_id=alert_id,
                        **common,
                        rejected=feed.recent_rejected,
                        messages=feed.recent_messages,
                        usual_share=min(1.0, feed.usual_reject_share),
                        window_hours=feeds.reject_window_hours,
                        raised_at=now,
                    )
                uow.publish(event, subject=rules.program_id)
            elif kind not in wanted and open_alert is not None:
                await session.execute(
                    FEED_ALERT.update()
                    .where(FEED_ALERT.c.alert_id == open_alert.alert_id)
                    .values(cleared_at=now)
                )
                uow.publish(
                    FeedRecovered(
                        alert_id=open_alert.alert_id,
                        **common,
                        kind=kind,
                        raised_at=open_alert.raised_at,
                        cleared_at=now,
                    ),
                    subject=rules.program_id,
                )
    return [_with_since(feed, alerts, now) for feed in health]


def _with_since(feed: FeedHealth, alerts: dict[tuple[str, str], Any], now: datetime) -> FeedHealth:
    if feed.state not in ("silent", "rejects_rising") or feed.since is not None:
        return feed
    found = alerts.get((feed.source_org, feed.state))
    since = found.raised_at if found is not None else now
    return FeedHealth(**{**_fields(feed), "since": since})


def _fields(feed: FeedHealth) -> dict[str, Any]:
    return {name: getattr(feed, name) for name in FeedHealth.__dataclass_fields__}

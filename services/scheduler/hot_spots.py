"""Spike alerts that become work: reporting's ``SpikeDetected`` opens a hot-spot task for the
program and county, and a lead's conclusion (outreach's ``HotSpotConcluded``) closes it.

A hot-spot task names no person and belongs to no case: the team goes where the spike is
(naloxone and test strips, warnings to people who use drugs, checks on recent contacts in
that county). The decisions (ADR 0025):

- the policy's ``[hot_spot]`` section says which levels open a task and its time box
  (``policy.hot_spot_due``);
- at most one task is open per program and county (a unique index holds it however many
  replicas run): a later alert while it is open is attached to it and extends its due time,
  never shortens it; the same alert published again (a warning upgraded to an alert) is
  attached once;
- an alert read after its own time box has passed (a first start reading the topic from its
  start, a long outage) opens nothing: the consumer starts at the earliest alert, so that no
  alert published while it was joining is lost, and stale ones are skipped here;
- a lead's dismissal of an alert stays in reporting (it is not published): the task stays
  open until a lead concludes it, with nothing distributed if the spike was not real.

Each handler runs in the inbox's unit of work: the task row and its ``HotSpotTaskScheduled``
commit together, exactly once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from services.scheduler.models import HOT_SPOT_TASK
from services.scheduler.policy import Policy, hot_spot_due
from shared.envelope import Envelope
from shared.events import HotSpotConcluded, HotSpotTaskScheduled, SpikeDetected
from shared.ids import new_uuid
from shared.uow import UnitOfWork

__all__ = ["HotSpotChange", "HotSpots", "plan_hot_spot"]


@dataclass(frozen=True, slots=True)
class HotSpotChange:
    """What an alert does to the county's open hot-spot task: open one, attach to it, or
    nothing (`None` from :func:`plan_hot_spot`)."""

    kind: str  # "open" | "attach"
    alert_ids: tuple[uuid.UUID, ...]
    due_at: datetime


def plan_hot_spot(
    policy: Policy,
    alert: SpikeDetected,
    *,
    open_alert_ids: tuple[uuid.UUID, ...] | None,
    open_due_at: datetime | None,
    now: datetime,
) -> HotSpotChange | None:
    """The pure decision: `open_alert_ids` and `open_due_at` describe the county's open task,
    or are None when there is none. An alert whose own time box has passed by `now` (read
    late: a first start, a long outage) opens nothing: the spike is over."""
    if not policy.hot_spot.opens_for(alert.level):
        return None
    if hot_spot_due(policy, detected_at=alert.detected_at) <= now:
        return None
    if open_alert_ids is None:
        due = hot_spot_due(policy, detected_at=alert.detected_at)
        return HotSpotChange("open", (alert.alert_id,), due)
    if alert.alert_id in open_alert_ids:
        return None  # published again (an upgrade): attached already
    due = hot_spot_due(policy, detected_at=alert.detected_at, current_due=open_due_at)
    return HotSpotChange("attach", (*open_alert_ids, alert.alert_id), due)


class HotSpots:
    """The scheduler's handlers for the alerts topic and for a concluded hot spot."""

    def __init__(
        self, policies: Callable[[str], Policy], new_id: Callable[[], uuid.UUID] = new_uuid
    ) -> None:
        self._policies = policies
        self._new_id = new_id

    async def on_alert(self, uow: UnitOfWork, envelope: Envelope) -> None:
        """A spike alert: open or extend the county's hot-spot task. Feed alerts are not work
        for the team in a county, and are skipped."""
        event = envelope.event()
        if isinstance(event, SpikeDetected):
            await self.apply(uow, event)

    async def apply(self, uow: UnitOfWork, alert: SpikeDetected) -> None:
        s = uow.session
        policy = self._policies(alert.program_id)
        row = (
            await s.execute(
                sa.select(HOT_SPOT_TASK).where(
                    HOT_SPOT_TASK.c.program_id == alert.program_id,
                    HOT_SPOT_TASK.c.county == alert.county,
                    HOT_SPOT_TASK.c.status == "open",
                )
            )
        ).first()
        current = row._mapping if row is not None else None
        change = plan_hot_spot(
            policy,
            alert,
            open_alert_ids=_alert_ids(current) if current is not None else None,
            open_due_at=current["due_at"] if current is not None else None,
            now=uow.clock.now(),
        )
        if change is None:
            return
        latest: dict[str, Any] = {
            "alert_ids": json.dumps([str(a) for a in change.alert_ids]),
            "detector": alert.detector,
            "level": alert.level,
            "observed": alert.observed,
            "expected": alert.expected,
            "window_start": alert.window_start,
            "window_end": alert.window_end,
            "due_at": change.due_at,
            "state": alert.state,
        }
        if current is None:
            values = {
                "id": self._new_id(),
                "program_id": alert.program_id,
                "county": alert.county,
                "status": "open",
                "priority": policy.priorities.max,
                "policy_version": policy.version,
                "opened_at": uow.clock.now(),
                "closed_at": None,
                **latest,
            }
            await s.execute(HOT_SPOT_TASK.insert().values(**values))
        else:
            if latest["state"] is None:
                latest["state"] = current["state"]
            await s.execute(
                HOT_SPOT_TASK.update().where(HOT_SPOT_TASK.c.id == current["id"]).values(**latest)
            )
            values = {**dict(current), **latest}
        uow.publish(
            HotSpotTaskScheduled(
                task_id=values["id"],
                program_id=values["program_id"],
                county=values["county"],
                state=values["state"],
                alert_ids=list(change.alert_ids),
                detector=alert.detector,
                level=alert.level,
                observed=alert.observed,
                expected=alert.expected,
                window_start=alert.window_start,
                window_end=alert.window_end,
                priority=values["priority"],
                opened_at=values["opened_at"],
                due_at=change.due_at,
                policy_version=values["policy_version"],
            ),
            subject=str(values["id"]),
        )

    async def concluded(self, uow: UnitOfWork, event: HotSpotConcluded) -> None:
        """A lead concluded the task: the county's next alert opens a new one."""
        await uow.session.execute(
            HOT_SPOT_TASK.update()
            .where(HOT_SPOT_TASK.c.id == event.task_id, HOT_SPOT_TASK.c.status == "open")
            .values(status="concluded", closed_at=event.concluded_at)
        )


def _alert_ids(row: Any) -> tuple[uuid.UUID, ...]:
    return tuple(uuid.UUID(a) for a in json.loads(row["alert_ids"]))

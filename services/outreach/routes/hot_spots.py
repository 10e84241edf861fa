"""Hot-spot tasks: where a county's overdoses spiked; read by the team, concluded by a lead."""

from __future__ import annotations

import uuid

from services.outreach.deps import LEADS, WORKERS, CurrentAccess, Operations, Uow
from services.outreach.schemas import HotSpotConclusionBody, HotSpotView
from services.outreach.service import hot_spots

__all__ = ["api"]

api = Operations("/v1", "outreach")


@api.get("/hot-spots/{hot_spot_id}", WORKERS, "work a hot-spot task", 404)
async def get_hot_spot(hot_spot_id: uuid.UUID, access: CurrentAccess, uow: Uow) -> HotSpotView:
    """One hot-spot task (kind `hot_spot`)

    Outreach where a county's overdoses spiked: the county, the alerts behind it (detector,
    window, observed and expected counts) and its time box. It names no person. The open
    ones are also in the queue (GET /v1/tasks, `hot_spots`).
    """
    return await hot_spots.read(uow=uow, access=access, task_id=hot_spot_id)


@api.post("/hot-spots/{hot_spot_id}/conclude", LEADS, "conclude a hot-spot task", 404, 409)
async def conclude_hot_spot(
    hot_spot_id: uuid.UUID, body: HotSpotConclusionBody, access: CurrentAccess, uow: Uow
) -> HotSpotView:
    """Conclude a hot-spot task with what the team distributed (team leads)

    Records the naloxone kits and fentanyl test strips handed out, the people warned and the
    recent contacts checked (whole numbers from 0; 0 when the spike turned out not to be
    real), and an optional note, stored sealed. Publishes `HotSpotConcluded`: the kits and
    strips count in reporting's services metrics. 409 `hot_spot_concluded` when it was
    concluded already; the county's next alert opens a new task.
    """
    return await hot_spots.conclude(uow=uow, access=access, task_id=hot_spot_id, body=body)

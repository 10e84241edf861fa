"""The queue, claims and handovers, attempts, and the queue's notices."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import Response

from services.outreach.access import tagged
from services.outreach.deps import (
    LEADS,
    WORKERS,
    CurrentAccess,
    CurrentTask,
    Edit,
    Operations,
    Uow,
)
from services.outreach.schemas import (
    AssignBody,
    AttemptBody,
    AttemptView,
    QueueFilter,
    QueuePage,
    TaskView,
)
from services.outreach.service import tasks

__all__ = ["api"]

api = Operations("/v1", "outreach")


@api.get("/tasks", WORKERS, "work the queue")
async def list_tasks(query: QueueFilter, access: CurrentAccess, uow: Uow) -> QueuePage:
    """The queue: my program's tasks, soonest due and most urgent first

    Open tasks by default, sorted by due_at, then priority (highest first). Each carries what
    a peer needs to act: the person's name, phone, address and language, the overdose's time
    and place, prior attempts and notes, and nothing more. `report_id` finds the tasks of one
    report (the id intake answered). Reading the queue is audited per case shown.
    """
    return await tasks.list_queue(uow=uow, access=access, query=query)


@api.post("/notices/{notice_id}/dismiss", WORKERS, "read a notice", 404, no_content=True)
async def dismiss_notice(notice_id: uuid.UUID, access: CurrentAccess, uow: Uow) -> Response:
    """Dismiss one of your queue's notices"""
    await tasks.dismiss_notice(uow=uow, access=access, notice_id=notice_id)
    return Response(status_code=204)


@api.get("/tasks/{task_id}", WORKERS, "work a task", 404)
async def get_task(
    task: CurrentTask, access: CurrentAccess, uow: Uow, response: Response
) -> TaskView:
    """One task, with its ETag"""
    return tagged(response, await tasks.read_task(uow=uow, access=access, task=task))


@api.post("/tasks/{task_id}/claim", WORKERS, "claim a task", 404, 409, 412, 428)
async def claim_task(task: CurrentTask, access: CurrentAccess, uow: Uow, edit: Edit) -> TaskView:
    """Take an unassigned task (send If-Match)"""
    me = access.actor
    return edit.tag(
        await tasks.assign(
            uow=uow, access=access, task=task, assignee=me, claim=True, if_match=edit.if_match
        )
    )


def _passing_on(name: str, doc: str) -> Callable[..., Awaitable[TaskView]]:
    """A lead's assignment and a peer's handover: one flow, two doors (their roles differ)."""

    async def pass_on(
        body: AssignBody, task: CurrentTask, access: CurrentAccess, uow: Uow, edit: Edit
    ) -> TaskView:
        to, condition = body.assignee_id, edit.if_match
        return edit.tag(
            await tasks.assign(
                uow=uow, access=access, task=task, assignee=to, claim=False, if_match=condition
            )
        )

    pass_on.__name__ = pass_on.__qualname__ = name
    pass_on.__doc__ = doc
    return pass_on


_PASSING_ON_ERRORS = (404, 409, 412, 422, 428)
api.post("/tasks/{task_id}/assign", LEADS, "assign a task", *_PASSING_ON_ERRORS)(
    _passing_on("assign_task", "Assign a task to a team member (team leads; send If-Match)")
)
api.post("/tasks/{task_id}/handover", WORKERS, "hand over a task", *_PASSING_ON_ERRORS)(
    _passing_on(
        "hand_over_task",
        """Hand your task over to another team member (send If-Match)

        The task's assignee hands it over; a team lead may hand over any task.""",
    )
)


@api.post("/tasks/{task_id}/attempts", WORKERS, "log an attempt", 404, 409, created=True)
async def log_attempt(
    body: AttemptBody, task: CurrentTask, access: CurrentAccess, uow: Uow
) -> AttemptView:
    """Log an outreach attempt

    A failed attempt (no answer, left message, wrong number, not found) counts towards the
    escalation ladder (after the policy's number of failed remote attempts an in-person visit
    is scheduled); 'reached' completes the task and plans follow-ups; 'declined' ends outreach
    for this case; 'unsafe' is recorded and does not count (a lead decides what next). Peers
    log on unassigned tasks and their own; leads on any. occurred_at is not before the
    overdose, nor in the future.
    """
    return await tasks.log_attempt(uow=uow, access=access, task=task, body=body)

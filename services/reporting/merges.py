"""People a lead merged (`PersonsMerged`): counted once, as the person who stays.

Reporting keeps who was merged into whom (`rpt_person_merge`, opaque ids only) and gives every
episode the person it counts as now: the end of the chain of merges (A into B, then B into C:
A's and B's episodes are C's). Person-level figures (people reached, repeat overdoses, ...)
count by that person, so the two count once; cases stay cases.

Order does not matter: a merge moves the episodes already here, and an episode that arrives
after its person was merged (a redelivery, another partition, a rebuild) is written with the
person it counts as. Applying a merge again changes nothing. A person is merged away once (the
scheduler deletes them); should two merges of one person ever arrive, the first applied wins.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.reporting.facts import FactBatch
from services.reporting.models import CASE, EPISODE, PERSON_MERGE
from services.reporting.store import among, insert_new, rows_of

__all__ = ["apply_merges", "final_person"]

Merges = dict[uuid.UUID, uuid.UUID]
"""A merged person's id, and the person they were merged into."""


def final_person(merges: Merges, person_id: uuid.UUID) -> uuid.UUID:
    """The person `person_id` counts as: the end of their chain of merges."""
    seen = {person_id}
    while (into := merges.get(person_id)) is not None and into not in seen:
        seen.add(into)
        person_id = into
    return person_id


async def _known_merges(
    session: AsyncSession, people: set[uuid.UUID], new: dict[uuid.UUID, Any]
) -> Merges:
    """The merges along the chains of these people: stored ones, then the batch's new ones."""
    merges: Merges = {}
    asked: set[uuid.UUID] = set()
    frontier = set(people)
    while frontier:
        asked |= frontier
        for row in await rows_of(
            session, PERSON_MERGE, "merged_person_id", sorted(frontier, key=str)
        ):
            merges[row.merged_person_id] = row.person_id
        for person_id in frontier:
            if person_id not in merges and person_id in new:
                merges[person_id] = new[person_id]["person_id"]
        frontier = {merges[p] for p in frontier if p in merges} - asked
    return merges


async def apply_merges(session: AsyncSession, batch: FactBatch) -> None:
    """Before the batch's facts are written: its episodes and cases get the person they count
    as, its merges are stored, and the episodes already here of each person merged away
    move to the person who stays; `batch.people` then names the people to derive again."""
    rows = batch.rows
    merge_rows = rows.pop(PERSON_MERGE, [])
    new = {r["merged_person_id"]: r for r in reversed(merge_rows)}  # the first wins
    named = [r for table in (EPISODE, CASE) for r in rows.get(table, []) if r["person_id"]]
    people = {r["person_id"] for r in named} | set(new) | batch.people
    if not people:
        return
    merges = await _known_merges(session, people, new)
    if not merges:
        return
    for row in named:
        row["person_id"] = final_person(merges, row["person_id"])
    batch.people = {final_person(merges, p) for p in batch.people}
    if not new:
        return
    await insert_new(session, PERSON_MERGE, list(new.values()))
    moved: defaultdict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for merged_id in new:
        if merges.get(merged_id) == new[merged_id]["person_id"]:  # not an earlier merge's
            moved[final_person(merges, merged_id)].append(merged_id)
    for person_id, merged_ids in moved.items():
        for table in (EPISODE, CASE):
            await session.execute(
                table.update()
                .where(among(session, table.c.person_id, merged_ids))
                .values(person_id=person_id)
            )
        batch.people.add(person_id)

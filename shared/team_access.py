"""Deactivated team members: refused by every service that takes team tokens, at once.

A token stays valid until it expires, so deactivation cannot wait for that. Outreach owns the
team roster. Deactivating a member there commits, with the change, a `TeamMemberDeactivated`
event on port.outreach.team.v1 (compacted, keyed by program and member); reactivating one
commits `TeamMemberReactivated`. Then:

- **outreach** reads the roster itself: the process that made the change applies it before
  it answers, and every other process rereads the roster's inactive members every
  `team_access_refresh_seconds`;
- **every other service that takes team tokens** (the scheduler, reporting) applies the
  events to a `team_access` table of its own schema (an inbox consumer, one unit of work per
  batch, from the topic's beginning), and each of its processes rereads that table as often.

Each process checks every request against the set it last read, in memory. Until it has read
the set once, it refuses team requests (503 `team_access_unavailable`): it fails closed. If a
later reread fails (the database is down), it keeps the set it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel

from shared.db import UTCDateTime
from shared.envelope import Envelope
from shared.events.team import TeamMemberDeactivated, TeamMemberReactivated
from shared.uow import UnitOfWork

__all__ = [
    "TEAM_ACCESS",
    "DeactivatedMembers",
    "TeamAccess",
    "apply_team_event",
    "deactivated_in_table",
]

log = logging.getLogger(__name__)

DeactivatedMembers = Callable[[AsyncSession], Awaitable[set[tuple[str, str]]]]
"""Reads the (program, member) pairs deactivated now, from a service's own database."""


class TeamAccessRow(SQLModel, table=True):
    """A member's latest state as outreach published it (a copy in each consuming service)."""

    __tablename__ = "team_access"

    program_id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    member_id: str = Field(sa_column=sa.Column(sa.String(128), primary_key=True))
    active: bool = Field(sa_column=sa.Column(sa.Boolean(), nullable=False))
    changed_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


TEAM_ACCESS: sa.Table = TeamAccessRow.__table__  # type: ignore[attr-defined]

_ACTIVE_AFTER: dict[type, bool] = {TeamMemberDeactivated: False, TeamMemberReactivated: True}


async def apply_team_event(uow: UnitOfWork, envelope: Envelope) -> None:
    """Record a member's new state (consumer of port.outreach.team.v1)."""
    event = envelope.event()
    active = _ACTIVE_AFTER.get(type(event))
    if active is None:
        return
    assert isinstance(event, TeamMemberDeactivated | TeamMemberReactivated)
    mine = (
        TEAM_ACCESS.c.program_id == event.program_id,
        TEAM_ACCESS.c.member_id == event.member_id,
    )
    session = uow.session
    held = (await session.execute(sa.select(TEAM_ACCESS.c.changed_at).where(*mine))).scalar()
    if held is None:
        await session.execute(
            TEAM_ACCESS.insert().values(
                program_id=event.program_id,
                member_id=event.member_id,
                active=active,
                changed_at=event.occurred_at,
            )
        )
    elif held <= event.occurred_at:  # never let an older state overwrite a newer one
        await session.execute(
            TEAM_ACCESS.update().where(*mine).values(active=active, changed_at=event.occurred_at)
        )
    await uow.commit()


async def deactivated_in_table(session: AsyncSession) -> set[tuple[str, str]]:
    """The deactivated members recorded in this service's `team_access` table."""
    rows = await session.execute(
        sa.select(TEAM_ACCESS.c.program_id, TEAM_ACCESS.c.member_id).where(
            TEAM_ACCESS.c.active.is_(False)
        )
    )
    return {(program, member) for program, member in rows}


class TeamAccess:
    """The deactivated members, as this process last read them."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        read: DeactivatedMembers = deactivated_in_table,
        *,
        refresh_seconds: float = 1.0,
    ) -> None:
        self._sessions = sessions
        self._read = read
        self._refresh_seconds = refresh_seconds
        self._deactivated: frozenset[tuple[str, str]] | None = None
        self._problem: str | None = "not read yet"
        self._changes = 0
        self._local: list[tuple[int, tuple[str, str], bool]] = []

    @property
    def loaded(self) -> bool:
        return self._deactivated is not None

    def deactivated(self, program: str, subject: str) -> bool:
        return self._deactivated is not None and (program, subject) in self._deactivated

    def apply(self, program: str, member: str, *, active: bool) -> None:
        """A change this process just committed: in force here before the next reread."""
        self._changes += 1
        self._local.append((self._changes, (program, member), active))
        if self._deactivated is not None:  # before the first read, the read will include it
            self._set(self._deactivated, [((program, member), active)])

    def _set(
        self, base: frozenset[tuple[str, str]], changes: list[tuple[tuple[str, str], bool]]
    ) -> None:
        members = set(base)
        for key, active in changes:
            if active:
                members.discard(key)
            else:
                members.add(key)
        self._deactivated = frozenset(members)

    async def refresh(self) -> None:
        """Reread the deactivated members; raises (keeping the old set) when that fails."""
        started = self._changes
        async with self._sessions() as session:
            found = await self._read(session)
        # A change applied while this read was in flight may not be in what it read.
        later = [(key, active) for n, key, active in self._local if n > started]
        self._local = [entry for entry in self._local if entry[0] > started]
        self._set(frozenset(found), later)
        self._problem = None

    async def run(self, stop: asyncio.Event) -> None:
        """Reread every `refresh_seconds` until stopped."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:
                problem = type(exc).__name__
                if problem != self._problem:  # once per outage, not once a second
                    log.warning(
                        "cannot read the deactivated team members; keeping the last set read",
                        extra={"error": problem},
                    )
                self._problem = problem
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._refresh_seconds)

    async def readiness(self) -> str:
        if self._problem is None:
            return "ok"
        return f"unavailable: {self._problem}"

"""What happened after each overdose, derived from a case's facts: pure functions.

The outcome of an episode (first attempt, reached, engaged, services, referrals, ...) is a
function of the set of facts of its case, never of the order they arrived in: a case's
outcomes are derived again, whole, whenever one of its facts changes. So an attempt that
arrives before its task (they travel on different topics) is counted once the task is known,
and a redelivered event changes nothing.

Which episode a piece of work counts under:

- work on a task counts under the task's episode;
- work without a task (a contact when the person called in, services, referrals, declines,
  do-not-contact, conclusion) counts under the case's latest overdose at or before it (or the
  case's first, if it came before any).

Repeat overdoses are a person's, across cases: `next_overdose_hours` gives, for each of a
person's overdoses, the hours until their next one.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "ENGAGED_CONCLUSIONS",
    "NOT_REACHING_TASKS",
    "CaseFacts",
    "EpisodeOutcome",
    "next_overdose_hours",
    "summarize_case",
]

NOT_REACHING_TASKS = frozenset({"follow_up", "family_support"})
"""Task kinds whose attempts are not attempts to reach the person after their overdose: a
follow-up comes after contact was made, family support is for the family."""

ENGAGED_CONCLUSIONS = frozenset({"engaged", "in_treatment"})
"""Reasons to conclude outreach that say the person engaged."""

HARM_REDUCTION_KITS = "naloxone_kit"
TEST_STRIPS = "fentanyl_test_strips"


@dataclass
class CaseFacts:
    """Everything reporting knows of one case, as rows (mappings) from its fact tables."""

    episodes: list[Any] = field(default_factory=list)
    tasks: list[Any] = field(default_factory=list)
    attempts: list[Any] = field(default_factory=list)
    contacts: list[Any] = field(default_factory=list)
    visits: list[Any] = field(default_factory=list)
    services: list[Any] = field(default_factory=list)
    referrals: list[Any] = field(default_factory=list)
    referral_statuses: list[Any] = field(default_factory=list)
    decisions: list[Any] = field(default_factory=list)
    deaths: list[Any] = field(default_factory=list)


@dataclass
class EpisodeOutcome:
    fatal: bool = False
    remote_task: bool = False
    outreach_task: bool = False
    first_attempt_at: datetime | None = None
    first_attempt_hours: float | None = None
    reached_at: datetime | None = None
    engaged: bool = False
    declined_outreach: bool = False
    do_not_contact: bool = False
    visits_completed: int = 0
    naloxone_kits: int = 0
    test_strips: int = 0
    # not columns: what makes an episode engaged
    helped: bool = False

    def columns(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        values.pop("helped")
        return values


def _earliest(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None:
        return current
    return candidate if current is None or candidate < current else current


class _Attribution:
    """Which of a case's episodes a piece of work counts under."""

    def __init__(self, episodes: Sequence[Any], tasks: Sequence[Any]) -> None:
        ordered = sorted(episodes, key=lambda e: (e.incident_at, str(e.episode_id)))
        self._ids: list[uuid.UUID] = [e.episode_id for e in ordered]
        self._times = [e.incident_at for e in ordered]
        known = set(self._ids)
        self.task_kind = {t.task_id: t.kind for t in tasks}
        self._task_episode: dict[uuid.UUID, uuid.UUID] = {
            t.task_id: t.episode_id
            for t in tasks
            if t.episode_id is not None and t.episode_id in known
        }

    def __bool__(self) -> bool:
        return bool(self._ids)

    def at(self, when: datetime) -> uuid.UUID:
        index = bisect.bisect_right(self._times, when) - 1
        return self._ids[max(index, 0)]

    def of(self, task_id: uuid.UUID | None, when: datetime) -> uuid.UUID:
        if task_id is not None and task_id in self._task_episode:
            return self._task_episode[task_id]
        return self.at(when)


def summarize_case(
    facts: CaseFacts,
) -> tuple[dict[uuid.UUID, EpisodeOutcome], dict[uuid.UUID, tuple[uuid.UUID | None, bool]]]:
    """Each episode's outcome, and each referral's episode and whether care started."""
    outcomes = {e.episode_id: EpisodeOutcome(fatal=bool(e.fatal_reported)) for e in facts.episodes}
    windows = {e.episode_id: e.windows_from or e.incident_at for e in facts.episodes}
    place = _Attribution(facts.episodes, facts.tasks)
    care = {s.referral_id for s in facts.referral_statuses if s.status == "care_started"}
    if not place:
        return outcomes, {r.referral_id: (None, r.referral_id in care) for r in facts.referrals}

    for death in facts.deaths:
        if death.episode_id in outcomes:
            outcomes[death.episode_id].fatal = True
    for task in facts.tasks:
        if task.episode_id in outcomes:
            outcome = outcomes[task.episode_id]
            outcome.remote_task |= task.kind == "remote_contact"
            outcome.outreach_task |= task.kind in ("remote_contact", "in_person_visit")

    def touched(episode_id: uuid.UUID, at: datetime, *, reached: bool) -> None:
        outcome = outcomes[episode_id]
        outcome.first_attempt_at = _earliest(outcome.first_attempt_at, at)
        if reached:
            outcome.reached_at = _earliest(outcome.reached_at, at)

    for attempt in facts.attempts:
        if place.task_kind.get(attempt.task_id) in NOT_REACHING_TASKS:
            continue
        episode_id = place.of(attempt.task_id, attempt.occurred_at)
        touched(episode_id, attempt.occurred_at, reached=attempt.outcome == "reached")
        if attempt.outcome == "declined":
            outcomes[episode_id].declined_outreach = True
    for contact in facts.contacts:
        if place.task_kind.get(contact.task_id) == "family_support":
            continue
        touched(place.of(contact.task_id, contact.occurred_at), contact.occurred_at, reached=True)
    for visit in facts.visits:
        if visit.completed_at is None:
            continue
        episode_id = place.of(visit.task_id, visit.completed_at)
        outcomes[episode_id].visits_completed += 1
        touched(episode_id, visit.completed_at, reached=bool(visit.reached))
    for service in facts.services:
        outcome = outcomes[place.at(service.occurred_at)]
        outcome.helped = True
        if service.kind == HARM_REDUCTION_KITS:
            outcome.naloxone_kits += service.count
        elif service.kind == TEST_STRIPS:
            outcome.test_strips += service.count
    referrals: dict[uuid.UUID, tuple[uuid.UUID | None, bool]] = {}
    for referral in facts.referrals:
        episode_id = place.at(referral.made_at)
        outcomes[episode_id].helped = True
        referrals[referral.referral_id] = (episode_id, referral.referral_id in care)
    for decision in facts.decisions:
        outcome = outcomes[place.at(decision.occurred_at)]
        if decision.decision == "declined":
            outcome.declined_outreach = True
        elif decision.decision == "do_not_contact":
            outcome.do_not_contact = True
        elif decision.decision == "concluded" and decision.reason in ENGAGED_CONCLUSIONS:
            outcome.helped = True

    for episode_id, outcome in outcomes.items():
        if outcome.first_attempt_at is not None:
            hours = (outcome.first_attempt_at - windows[episode_id]).total_seconds() / 3600
            outcome.first_attempt_hours = round(max(hours, 0.0), 4)
        outcome.engaged = outcome.reached_at is not None and outcome.helped
    return outcomes, referrals


def next_overdose_hours(episodes: Iterable[Any]) -> dict[uuid.UUID, float | None]:
    """For each of one or more people's overdoses, the hours until that person's next one
    (None if there is none yet). Referrals that were not about an overdose do not count."""
    by_person: dict[Any, list[Any]] = {}
    for episode in episodes:
        if episode.overdose and episode.person_id is not None:
            by_person.setdefault(episode.person_id, []).append(episode)
    gaps: dict[uuid.UUID, float | None] = {}
    for items in by_person.values():
        items.sort(key=lambda e: (e.incident_at, str(e.episode_id)))
        for current, following in zip(items, [*items[1:], None], strict=True):
            gaps[current.episode_id] = (
                None
                if following is None
                else round((following.incident_at - current.incident_at).total_seconds() / 3600, 4)
            )
    return gaps

"""The scheduler's linking, in memory, over a synthetic population: what each report became.

The simulation does what ``services/scheduler/handlers.py`` and ``batch.py`` do, without a
database: each report, in the order it arrives, is blinded with the real indexer (intake's blind
keys and the scheduler's derived keys), finds its candidates the way the batch does (anyone
holding one of its lookup keys, or with an episode of another report kind within the event
window), and is decided by the real :func:`services.scheduler.linking.link` under the program's
thresholds. A lead then decides every possible match by the truth (confirm merges, split keeps
apart), as a program whose leads keep up with their queue would.

Arrival: an ED's ADT arrives within minutes of the visit; an ePCR hours after the run (0.5 to
8 hours, the end of the call or the shift), so the ED visit is often known first.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.scheduler.batch import EVENT_WINDOW, blind_pairs
from services.scheduler.linking import (
    EpisodeRef,
    LinkDecision,
    PersonCandidate,
    ReportIdentity,
    Thresholds,
    episode_for,
    link,
)
from services.scheduler.matching import Explanation, blocking, explain
from shared.identity import Identity, Protector
from shared.sealing import BlindIndexer, Keyring, Sealer
from tests.linking.population import Population, Report

__all__ = ["Outcome", "Simulation", "simulate"]

INDEXER = BlindIndexer(b"e" * 32)
PROTECTOR = Protector(Sealer(Keyring({"e": b"s" * 32}, "e")), INDEXER)


@dataclass
class _Person:
    id: uuid.UUID
    identity: Report
    keys: set[tuple[str, str]] = field(default_factory=set)
    episodes: list[EpisodeRef] = field(default_factory=list)
    members: set[int] = field(default_factory=set)
    """True person ids of the reports linked to this person."""
    overdoses: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Outcome:
    """What one report became, against the truth."""

    report: Report
    pair: str
    """``same_overdose`` (the same person's other report of this overdose came first),
    ``repeat`` (the person is known from earlier overdoses only) or ``first``."""
    decision: str
    """``linked``, ``review``, ``flag`` or ``new``."""
    correct_person: bool
    """The person's own record was linked, or among the possible matches."""
    wrong_links: int
    wrong_reviews: int
    wrong_flags: int
    weight: float | None
    """The weight of the true person's record, where it was a candidate."""
    truth: Explanation | None = None
    """For a report missed (a new person although the person was known): why the person's own
    record, where it was a candidate, weighed too little."""
    near: tuple[tuple[float, bool], ...] = ()
    """With ``trace``: every candidate's weight where the two look like one overdose, and
    whether it is the same person."""
    wrong_unnamed_flags: int = 0
    """Of ``wrong_flags``, those flagged only by the unnamed-transport rule (an EMS run that
    transported the person and named no hospital, and an ED visit within 3 hours after it)."""


@dataclass
class Simulation:
    outcomes: list[Outcome]
    reviews: int
    flags: int
    linked: list[Mapping[str, str]] = field(default_factory=list)
    """The levels of every pair held for one person: automatic links and possible matches the
    lead confirmed (what ``portline linking estimate`` reads for m)."""
    splits: int = 0


def _identity(report: Report) -> ReportIdentity:
    identity = Identity(
        family=report.family,
        given=report.given,
        middle=report.middle,
        dob=report.dob,
        sex=report.sex,
        phones=report.phones,
    )
    blind = PROTECTOR.blind_keys(identity, facility=None)
    return ReportIdentity(
        family=report.family,
        given=report.given,
        middle=report.middle,
        dob=report.dob,
        sex=report.sex,
        postal_code=report.zip,
        phones=report.phones,
        blind=blind,
        derived_keys=tuple(blocking.stored_keys(INDEXER, family=report.family, given=report.given)),
        source_kind=report.kind,
        incident_at=report.at,
        county=report.county,
        hospital=report.hospital,
        transported=report.transported,
    )


def _candidate(person: _Person) -> PersonCandidate:
    r = person.identity
    return PersonCandidate.holding(
        person.id,
        person.keys,
        episodes=person.episodes,
        family=r.family,
        given=r.given,
        middle=r.middle,
        dob=r.dob,
        sex=r.sex,
        postal_code=r.zip,
        phones=r.phones,
    )


def arrival(population: Population, seed: int) -> list[tuple[datetime, Report]]:
    rng = random.Random(seed)
    arrived = []
    for r in population.reports:
        delay = timedelta(minutes=rng.uniform(0, 10) if r.kind == "ed" else rng.uniform(30, 480))
        arrived.append((r.at + delay, r))
    arrived.sort(key=lambda item: (item[0], item[1].id))
    return arrived


def simulate(
    population: Population, thresholds: Thresholds | None = None, *, trace: bool = False
) -> Simulation:
    limits = thresholds or Thresholds()
    people: dict[uuid.UUID, _Person] = {}
    by_key: dict[tuple[str, str], set[uuid.UUID]] = defaultdict(set)
    seen_overdose: dict[tuple[int, int], set[str]] = defaultdict(set)
    known: Counter[int] = Counter()
    recent: list[tuple[datetime, uuid.UUID]] = []
    outcomes: list[Outcome] = []
    linked: list[Mapping[str, str]] = []
    splits = 0
    reviews = flags = 0
    ids = (uuid.UUID(int=i) for i in range(1, 10**9))

    def attach(person: _Person, report: Report, identity: ReportIdentity) -> None:
        for pair in (*blind_pairs(identity.blind), *identity.derived_keys):
            person.keys.add(pair)
            by_key[pair].add(person.id)
        person.identity = report
        person.members.add(report.person)
        person.overdoses.add(report.overdose)
        same = episode_for(report.at, report.kind, person.episodes)
        if same is not None:
            merged = EpisodeRef(
                episode_id=same.episode_id,
                incident_at=same.incident_at,
                sources=same.sources | {report.kind},
                county=same.county,
                hospital=same.hospital or report.hospital,
                transported=same.transported or report.transported,
            )
            person.episodes[person.episodes.index(same)] = merged
        else:
            person.episodes.append(
                EpisodeRef(
                    episode_id=uuid.uuid4(),
                    incident_at=report.at,
                    sources=frozenset({report.kind}),
                    county=report.county,
                    hospital=report.hospital,
                    transported=report.transported,
                )
            )
            recent.append((report.at, person.id))

    for _arrived, report in arrival(population, population.config.seed):
        identity = _identity(report)
        lookup = set(blind_pairs(identity.blind)) | set(
            blocking.lookup_keys(INDEXER, family=report.family, given=report.given, dob=report.dob)
        )
        found: set[uuid.UUID] = set()
        for pair in lookup:
            found |= by_key.get(pair, set())
        for at, pid in recent:
            if abs(at - report.at) <= EVENT_WINDOW:
                person = people[pid]
                if any(
                    report.kind not in e.sources and abs(e.incident_at - report.at) <= EVENT_WINDOW
                    for e in person.episodes
                ):
                    found.add(pid)
        candidates = [_candidate(people[pid]) for pid in sorted(found)]
        decision = link(identity, candidates, limits)

        pair = "first"
        if report.person in known:
            pair = "repeat"
            if seen_overdose[(report.person, report.overdose)] - {report.kind}:
                pair = "same_overdose"
        truth_weight = None
        own = [c for c in decision_candidates(decision) if report.person in people[c[0]].members]
        wrong_links = wrong_reviews = wrong_flags = wrong_unnamed = 0
        correct = False
        if decision.kind == "exact" and decision.person_id is not None:
            target = people[decision.person_id]
            correct = report.person in target.members
            wrong_links = 0 if correct else 1
            truth_weight = decision.explanation.weight if decision.explanation else None
            if correct and decision.explanation is not None:
                linked.append({e.comparison: e.level for e in decision.explanation.evidence})
            attach(target, report, identity)
            verdict = "linked"
        else:
            verdict = "new"
            if decision.possible:
                verdict = "flag" if decision.possible[0].level == "flag" else "review"
                reviews += sum(1 for p in decision.possible if p.level == "review")
                flags += sum(1 for p in decision.possible if p.level == "flag")
                for p in decision.possible:
                    if report.person in people[p.person_id].members:
                        linked.append({e.comparison: e.level for e in p.explanation.evidence})
                        continue
                    splits += 1
                    if p.level == "flag":
                        wrong_flags += 1
                        wrong_unnamed += _only_unnamed(p.explanation, limits)
                    else:
                        wrong_reviews += 1
            if own:
                correct = True
                truth_weight = own[0][1]
                attach(people[own[0][0]], report, identity)  # the lead confirms: one person
            else:
                person = _Person(next(ids), report)
                people[person.id] = person
                attach(person, report, identity)
        near: list[tuple[float, bool]] = []
        truth: Explanation | None = None
        if truth_weight is None or trace:
            mine = identity.profile()
            for c in candidates:
                same_person = report.person in people[c.person_id].members
                explanation = explain(mine, c.profile())
                if same_person and truth_weight is None:
                    truth_weight, truth = explanation.weight, explanation
                if trace and explanation.same_overdose:
                    near.append((explanation.weight, same_person))
        outcomes.append(
            Outcome(
                report,
                pair,
                verdict,
                correct,
                wrong_links,
                wrong_reviews,
                wrong_flags,
                truth_weight,
                truth,
                tuple(near),
                wrong_unnamed,
            )
        )
        known[report.person] += 1
        seen_overdose[(report.person, report.overdose)].add(report.kind)
        recent[:] = [(at, pid) for at, pid in recent if report.at - at <= EVENT_WINDOW * 3]
    return Simulation(outcomes, reviews, flags, linked, splits)


def _only_unnamed(explanation: Explanation, limits: Thresholds) -> bool:
    """Flagged by the unnamed-transport rule alone: no other flag rule would have."""
    other = explanation.transported or (
        explanation.same_overdose and explanation.weight >= limits.flag
    )
    return explanation.unnamed_transport is not None and not other


def decision_candidates(decision: LinkDecision) -> list[tuple[uuid.UUID, float]]:
    return [(p.person_id, p.weight) for p in decision.possible]

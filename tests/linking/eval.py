"""`make eval-linking`: how the scheduler's linking does on a synthetic program's year.

    python -m tests.linking.eval [--people 3000] [--seed 18] [--estimate] [--missed] [--decisions]

Generates the population (tests/linking/population.py), runs the scheduler's linking over its
reports in arrival order (tests/linking/simulate.py) and prints, for same-person pairs, how many
were linked automatically, sent to review, flagged or missed, and for different-person pairs how
many were wrongly linked, sent to review or flagged. Same-person pairs are counted per report:
``same overdose`` when the same person's report of the same overdose from the other source
came first (the EMS run and the ED visit), ``repeat`` when the person is known only from an
earlier overdose.

Targets (issue 18), checked on the same-overdose EMS+ED pairs: precision at least 0.999 (no
wrong link), at least 90 % linked automatically, at most 10 % sent to review, none missed
silently (not one). An EMS run that names its destination and an ED visit there are flagged
whatever the names, and so are a run that transported the person without naming where and an
ED visit within 3 hours after it (docs/linking.md). The report names what the missed pairs'
errors were, if any. Exit status 0 when the targets are met, 1 when not.

``--missed`` prints every same-overdose pair missed silently: the report's errors and, where the
person's own record was a candidate, each comparison's level and the weight.

``--decisions`` runs ``portline linking estimate``'s estimator as a program would: m from the
pairs held for one person (automatic links and the possible matches the simulated lead
confirmed), u from random pairs of two people, and prints its table.

``--estimate`` also prints the m and u probabilities the population gives for every level
(m from pairs of one person's reports, u from random pairs of two people's), beside the pinned
ones in services/scheduler/matching/weights.py.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from services.scheduler.matching import LEVELS, explain
from services.scheduler.matching.estimate import estimate as estimate_pairs
from services.scheduler.matching.estimate import render as render_estimates
from services.scheduler.matching.weights import MISSING
from tests.linking.population import Config, Population, generate
from tests.linking.simulate import Simulation, _identity, simulate

__all__ = [
    "Summary",
    "decisions",
    "estimate",
    "main",
    "missed",
    "random_pairs",
    "summarize",
]


@dataclass(frozen=True)
class Summary:
    same_overdose: Counter[str]
    repeat: Counter[str]
    auto_links: int
    wrong_links: int
    wrong_reviews: int
    wrong_flags: int
    wrong_unnamed_flags: int
    """Of ``wrong_flags``, those the unnamed-transport rule alone flagged."""
    reviews: int
    flags: int
    reports: int
    missed_errors: Counter[str]
    reviewed_errors: Counter[str]

    @property
    def precision(self) -> float:
        return (self.auto_links - self.wrong_links) / self.auto_links if self.auto_links else 1.0

    def share(self, decision: str) -> float:
        total = sum(self.same_overdose.values())
        return self.same_overdose[decision] / total if total else 0.0

    def problems(self) -> list[str]:
        found = []
        if self.precision < 0.999:
            found.append(f"precision {self.precision:.4f} < 0.999")
        if self.share("linked") < 0.90:
            found.append(f"same-overdose pairs linked {self.share('linked'):.1%} < 90 %")
        if self.share("review") > 0.10:
            found.append(f"same-overdose pairs sent to review {self.share('review'):.1%} > 10 %")
        if self.same_overdose["new"]:
            found.append(f"same-overdose pairs missed silently: {self.same_overdose['new']}, not 0")
        return found


def summarize(simulation: Simulation) -> Summary:
    same: Counter[str] = Counter()
    repeat: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    reviewed: Counter[str] = Counter()
    auto = wrong = 0
    for o in simulation.outcomes:
        if o.decision == "linked":
            auto += 1
        wrong += o.wrong_links
        if o.pair == "first":
            continue
        decision = o.decision if o.correct_person else "new"
        if o.decision == "linked" and not o.correct_person:
            decision = "new"
        (same if o.pair == "same_overdose" else repeat)[decision] += 1
        if o.pair == "same_overdose" and decision != "linked":
            for error in o.report.errors or ("none",):
                (missed if decision == "new" else reviewed)[error] += 1
    return Summary(
        same_overdose=same,
        repeat=repeat,
        auto_links=auto,
        wrong_links=wrong,
        wrong_reviews=sum(o.wrong_reviews for o in simulation.outcomes),
        wrong_flags=sum(o.wrong_flags for o in simulation.outcomes),
        wrong_unnamed_flags=sum(o.wrong_unnamed_flags for o in simulation.outcomes),
        reviews=simulation.reviews,
        flags=simulation.flags,
        reports=len(simulation.outcomes),
        missed_errors=missed,
        reviewed_errors=reviewed,
    )


def _row(name: str, counts: Counter[str]) -> str:
    total = sum(counts.values()) or 1
    cells = "  ".join(
        f"{d} {counts[d]:>5} ({counts[d] / total:6.1%})"
        for d in ("linked", "review", "flag", "new")
    )
    return f"  {name:<26} {sum(counts.values()):>5}   {cells}"


def report(summary: Summary, population: Population, seconds: float) -> str:
    c = population.config
    lines = [
        f"linking evaluation: seed {c.seed}, {len(population.people)} people, "
        f"{len(population.overdoses)} overdoses, {summary.reports} reports, {seconds:.1f} s",
        "",
        "same-person pairs                  n   (new = missed silently)",
        _row("same overdose (EMS+ED)", summary.same_overdose),
        _row("repeat overdose", summary.repeat),
        "",
        "different-person pairs",
        f"  wrongly linked               {summary.wrong_links:>5}",
        f"  sent to review               {summary.wrong_reviews:>5}",
        f"  flagged                      {summary.wrong_flags:>5}   "
        f"({summary.wrong_unnamed_flags} by a run that transported and named no hospital alone; "
        f"{summary.wrong_flags - summary.wrong_unnamed_flags} without that rule)",
        "",
        f"automatic links {summary.auto_links}, precision {summary.precision:.4f}; "
        f"review items {summary.reviews}, flags {summary.flags} "
        f"({summary.reviews / max(1, len(population.overdoses)) * 1000:.0f} reviews "
        "per 1,000 overdoses)",
    ]
    if summary.reviewed_errors:
        lines.append(
            "same-overdose pairs sent to review or flagged, by error: "
            + ", ".join(f"{k} {v}" for k, v in summary.reviewed_errors.most_common())
        )
    if summary.missed_errors:
        lines.append(
            "same-overdose pairs missed, by error: "
            + ", ".join(f"{k} {v}" for k, v in summary.missed_errors.most_common())
        )
    problems = summary.problems()
    lines += ["", "targets met" if not problems else "TARGETS MISSED: " + "; ".join(problems)]
    return "\n".join(lines)


def missed(simulation: Simulation) -> str:
    """Every same-overdose pair missed silently, with its errors and evidence (module docs)."""
    lines = []
    for o in simulation.outcomes:
        if o.pair != "same_overdose" or (o.decision != "new" and o.correct_person):
            continue
        errors = ", ".join(o.report.errors) or "no error"
        if o.truth is None:
            lines.append(f"  {o.report.kind} report {o.report.id} ({errors}): not a candidate")
            continue
        levels = ", ".join(f"{e.comparison} {e.level} {e.weight:+.2f}" for e in o.truth.evidence)
        lines.append(
            f"  {o.report.kind} report {o.report.id} ({errors}): weight {o.truth.weight:+.2f}: "
            f"{levels}"
        )
    return "\n".join(["same-overdose pairs missed silently:", *lines] if lines else [])


def random_pairs(population: Population, pairs: int) -> list[dict[str, str]]:
    """The levels of random pairs of two people's reports (seeded)."""
    rng = random.Random(population.config.seed)
    profiles = {r.id: _identity(r).profile() for r in population.reports}
    found: list[dict[str, str]] = []
    while len(found) < pairs:
        a, b = rng.choice(population.reports), rng.choice(population.reports)
        if a.person != b.person:
            evidence = explain(profiles[a.id], profiles[b.id]).evidence
            found.append({e.comparison: e.level for e in evidence})
    return found


def decisions(population: Population, simulation: Simulation, pairs: int = 20_000) -> str:
    """``portline linking estimate`` on the simulated program (module docs)."""
    found = estimate_pairs(
        simulation.linked,
        random_pairs(population, pairs),
        sources={
            "linked as one person": len(simulation.linked),
            "splits (not used)": simulation.splits,
        },
    )
    return render_estimates(found)


def estimate(population: Population, pairs: int = 200_000) -> str:
    """m and u per level from the population, beside the pinned values (module docs)."""
    rng = random.Random(population.config.seed)
    profiles = {r.id: _identity(r).profile() for r in population.reports}
    by_person: dict[int, list[int]] = defaultdict(list)
    for r in population.reports:
        by_person[r.person].append(r.id)
    matched: Counter[tuple[str, str]] = Counter()
    n_match = 0
    for ids in by_person.values():
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                for e in explain(profiles[a], profiles[b]).evidence:
                    matched[(e.comparison, e.level)] += 1
                n_match += 1
    unmatched: Counter[tuple[str, str]] = Counter()
    reports = population.reports
    n_random = 0
    while n_random < pairs:
        a, b = rng.choice(reports), rng.choice(reports)
        if a.person == b.person:
            continue
        for e in explain(profiles[a.id], profiles[b.id]).evidence:
            unmatched[(e.comparison, e.level)] += 1
        n_random += 1
    lines = [
        f"m from {n_match} same-person pairs, u from {n_random} random pairs "
        "(among pairs where the comparison has a value)",
        f"  {'comparison':<12} {'level':<28} {'m pinned':>9} {'m here':>9} "
        f"{'u pinned':>10} {'u here':>10}",
    ]
    for comparison, levels in LEVELS.items():
        m_known = sum(v for (c, lv), v in matched.items() if c == comparison and lv != MISSING)
        u_known = sum(v for (c, lv), v in unmatched.items() if c == comparison and lv != MISSING)
        for name, level in levels.items():
            if name == MISSING:
                continue
            m_here = matched[(comparison, name)] / m_known if m_known else 0.0
            u_here = unmatched[(comparison, name)] / u_known if u_known else 0.0
            lines.append(
                f"  {comparison:<12} {name:<28} {level.m:>9.4f} {m_here:>9.4f} "
                f"{level.u:>10.6f} {u_here:>10.6f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=Config.people)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--estimate", action="store_true")
    parser.add_argument("--missed", action="store_true")
    parser.add_argument("--decisions", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    population = generate(Config(seed=args.seed, people=args.people))
    simulation = simulate(population)
    summary = summarize(simulation)
    print(report(summary, population, time.perf_counter() - started))
    if args.missed and (text := missed(simulation)):
        print()
        print(text)
    if args.decisions:
        print()
        print(decisions(population, simulation))
    if args.estimate:
        print()
        print(estimate(population))
    return 1 if summary.problems() else 0


if __name__ == "__main__":
    sys.exit(main())

"""The linking evaluation (`make eval-linking`, tests/linking/) on a small population: the
issue 18 targets hold, and the evaluation is deterministic."""

from __future__ import annotations

from tests.linking.eval import summarize
from tests.linking.population import Config, generate
from tests.linking.simulate import simulate


def test_a_small_population_meets_the_targets() -> None:
    population = generate(Config(seed=18, people=500))
    summary = summarize(simulate(population))
    same = sum(summary.same_overdose.values())
    assert same > 300  # enough EMS+ED pairs for the shares to mean something
    assert summary.problems() == []
    assert summary.wrong_links == 0
    assert summary.share("linked") >= 0.90
    assert summary.share("review") <= 0.10


def test_the_population_and_its_outcome_are_the_same_for_one_seed() -> None:
    one = generate(Config(seed=7, people=120))
    two = generate(Config(seed=7, people=120))
    assert one.reports == two.reports
    assert summarize(simulate(one)) == summarize(simulate(two))

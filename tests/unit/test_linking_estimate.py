"""Re-estimating the match weights from kept decisions (matching/estimate.py, the
``portline linking estimate`` command, and a policy that takes the snippet it writes)."""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from random import Random

import pytest

from services.scheduler.linking import link
from services.scheduler.matching import DEFAULT_MODEL, WeightModel, explain
from services.scheduler.matching.estimate import (
    ESTIMATED,
    Decision,
    TooFewDecisions,
    decision_of,
    estimate,
    policy_snippet,
    render,
)
from services.scheduler.matching.weights import LEVELS, MISSING
from services.scheduler.models import POSSIBLE_MATCH
from services.scheduler.policy import LinkingRules, Policy
from shared.cli import main
from shared.db import create_engine
from shared.migrations import upgrade
from shared.settings import get_settings
from tests.unit.test_scheduler_linking import DOB, PHONE, RUN, VISIT, person, report

TRUE_M: dict[str, dict[str, float]] = {
    "family_name": {"exact": 0.7, "part": 0.05, "typo": 0.15, "phonetic": 0.04, "different": 0.06},
    "sex": {"same": 0.9, "different": 0.1},
    "zip": {"same": 0.6, "different": 0.4},
}
TRUE_U: dict[str, dict[str, float]] = {
    "family_name": {"exact": 0.2, "part": 0.05, "typo": 0.1, "phonetic": 0.05, "different": 0.6},
    "sex": {"same": 0.5, "different": 0.5},
    "zip": {"same": 0.1, "different": 0.9},
}


def _draw(rng: Random, shares: Mapping[str, float]) -> str:
    names = list(shares)
    return rng.choices(names, weights=[shares[n] for n in names])[0]


def synthetic(n: int, seed: int = 7) -> list[Decision]:
    """n confirmed and n split decisions whose levels follow TRUE_M and TRUE_U; a tenth of the
    pairs miss each comparison, as real pairs do."""
    rng = Random(seed)
    decisions = []
    for confirmed, truth in ((True, TRUE_M), (False, TRUE_U)):
        for _ in range(n):
            levels = {
                c: MISSING if rng.random() < 0.1 else _draw(rng, shares)
                for c, shares in truth.items()
            }
            decisions.append(Decision(confirmed=confirmed, levels=levels))
    return decisions


def test_the_estimates_recover_the_m_and_u_the_decisions_were_drawn_with() -> None:
    found = estimate(synthetic(4000))
    assert (found.confirmed, found.split) == (4000, 4000)
    by_level = {(e.pinned.comparison, e.pinned.name): e for e in found.rows}
    for comparison in TRUE_M:
        for name, m in TRUE_M[comparison].items():
            got = by_level[(comparison, name)]
            assert got.m == pytest.approx(m, abs=0.02), (comparison, name)
            assert got.u == pytest.approx(TRUE_U[comparison][name], abs=0.02), (comparison, name)
            assert got.confirmed + got.split > 0


def test_each_comparisons_estimates_share_out_to_one_and_unseen_levels_stay_above_zero() -> None:
    found = estimate(synthetic(200))
    for comparison in ESTIMATED:
        rows = [e for e in found.rows if e.pinned.comparison == comparison]
        assert {e.pinned.name for e in rows} == set(LEVELS[comparison]) - {MISSING}
        assert sum(e.m for e in rows) == pytest.approx(1.0)
        assert sum(e.u for e in rows) == pytest.approx(1.0)
        assert all(e.m > 0 and e.u > 0 for e in rows)
    dob = [e for e in found.rows if e.pinned.comparison == "dob"]
    assert all((e.confirmed, e.split) == (0, 0) for e in dob)  # no decision had a DOB level


@pytest.mark.parametrize(("confirmed", "split"), [(49, 500), (500, 49), (0, 0)])
def test_too_few_decisions_of_either_kind_are_refused(confirmed: int, split: int) -> None:
    decisions = [Decision(True, {"sex": "same"})] * confirmed + [
        Decision(False, {"sex": "same"})
    ] * split
    with pytest.raises(TooFewDecisions, match=rf"{confirmed} confirmed and {split} split"):
        estimate(decisions, min_decisions=50)


def test_a_decision_is_read_from_a_kept_possible_match_row() -> None:
    explanation = json.dumps(
        {"model": "fs-2026.2", "evidence": [{"comparison": "sex", "level": "same"}]}
    )
    assert decision_of("confirmed", explanation) == Decision(True, {"sex": "same"})
    assert decision_of("split", explanation) == Decision(False, {"sex": "same"})
    assert decision_of("open", explanation) is None
    assert decision_of("confirmed", None) is None  # kept before match weights
    assert decision_of("confirmed", "{not json") is None


def test_the_snippet_loads_as_the_programs_weights_and_changes_how_it_links() -> None:
    found = estimate(synthetic(1000))
    snippet = policy_snippet(found)
    rules = LinkingRules.model_validate(tomllib.loads(snippet)["linking"])
    model = rules.model
    assert model.version.startswith(DEFAULT_MODEL.version + "+")
    for e in found.rows:
        level = model.levels[e.pinned.comparison][e.pinned.name]
        assert (level.m, level.u) == pytest.approx((e.m, e.u), rel=1e-5)
    # Re-estimated weights weigh the same pair differently, and the explanation says by what.
    ed = person("Doyle", "Jane", DOB, PHONE, sex="F", kind="ed", at=VISIT)
    ems = report("Doyel", "Jane", DOB, sex="F", kind="ems", at=RUN)
    pinned = explain(ems.profile(), ed.profile())
    again = explain(ems.profile(), ed.profile(), model)
    assert pinned.model == DEFAULT_MODEL.version
    assert again.model == model.version
    assert again.weight != pinned.weight
    decided = link(ems, [ed], model=model)
    (kept,) = (decided.explanation,) if decided.explanation else (decided.possible[0].explanation,)
    assert kept.weight == again.weight
    assert kept.as_dict()["model"] == model.version
    assert "sex" in render(found)


def test_a_policy_naming_an_unknown_comparison_or_level_fails_to_load() -> None:
    with pytest.raises(ValueError, match="no comparison 'shoe_size'"):
        LinkingRules.model_validate({"weights": {"shoe_size": {"same": {"m": 0.5, "u": 0.5}}}})
    with pytest.raises(ValueError, match="no level 'twin'"):
        LinkingRules.model_validate({"weights": {"dob": {"twin": {"m": 0.5, "u": 0.5}}}})
    with pytest.raises(ValueError, match="greater than 0"):
        LinkingRules.model_validate({"weights": {"dob": {"exact": {"m": 0, "u": 0.5}}}})
    with pytest.raises(ValueError, match="m and u must be in"):
        WeightModel.overriding({"dob": {"exact": (1.5, 0.5)}})
    assert Policy(program_id="p", timezone="UTC").linking.model is DEFAULT_MODEL


# --------------------------------------------------------------------------- the command


@pytest.fixture
def var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("DATABASE_URL", "DATABASE_OWNER_URL", "PORTLINE_DB_SCHEMA_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORTLINE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PORTLINE_ENV", "development")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


async def _keep(var_dir: Path, decisions: list[Decision], program: str = "demo") -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{var_dir}/scheduler.db", service="scheduler")
    await upgrade(engine, service="scheduler")
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "program_id": program,
            "report_id": uuid.uuid4(),
            "person_id": uuid.uuid4(),
            "candidate_id": uuid.uuid4(),
            "reasons": "[]",
            "status": "confirmed" if d.confirmed else "split",
            "level": "review",
            "weight": 20.0,
            "explanation": json.dumps(
                {
                    "model": "fs-2026.2",
                    "evidence": [{"comparison": c, "level": lv} for c, lv in d.levels.items()],
                }
            ),
            "created_at": now,
            "resolved_at": now,
        }
        for d in decisions
    ]
    async with engine.begin() as connection:
        await connection.execute(POSSIBLE_MATCH.insert(), rows)
    await engine.dispose()


async def test_the_command_prints_the_estimates_and_writes_the_snippet(
    var_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    await _keep(var_dir, synthetic(60))
    await _keep(var_dir, synthetic(60, seed=8), program="another")
    out = var_dir / "weights.toml"
    code = await asyncio.to_thread(
        main, ["linking", "estimate", "--program", "demo", "--write", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "re-estimated from 60 confirmed and 60 split decisions" in printed
    assert "fs-2026.2" in printed
    rules = LinkingRules.model_validate(tomllib.loads(out.read_text())["linking"])
    assert set(rules.weights) == set(ESTIMATED)


async def test_the_command_refuses_with_too_few_decisions(
    var_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    await _keep(var_dir, synthetic(10))
    code = await asyncio.to_thread(main, ["linking", "estimate", "--program", "demo"])
    assert code == 2
    err = capsys.readouterr().err
    assert "10 confirmed and 10 split decisions kept" in err
    assert "at least 50 of each" in err

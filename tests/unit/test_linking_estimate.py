"""Re-estimating the match weights from kept decisions (matching/estimate.py, the
``portline linking estimate`` command, and a policy that takes the snippet it writes)."""

from __future__ import annotations

import asyncio
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
    Levels,
    TooFewPairs,
    estimate,
    levels_of,
    policy_snippet,
    render,
)
from services.scheduler.matching.weights import LEVELS, MISSING
from services.scheduler.models import EPISODE, PERSON, POSSIBLE_MATCH, REPORT_LINK
from services.scheduler.policy import LinkingRules, Policy
from shared.cli import main
from shared.db import create_engine
from shared.migrations import upgrade
from shared.sealing import load_keys
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


def pairs_drawn(truth: Mapping[str, Mapping[str, float]], n: int, seed: int) -> list[Levels]:
    """n pairs whose levels follow ``truth``; a tenth of the pairs miss each comparison, as
    real pairs do."""
    rng = Random(seed)
    return [
        {c: MISSING if rng.random() < 0.1 else _draw(rng, shares) for c, shares in truth.items()}
        for _ in range(n)
    ]


def test_the_estimates_recover_the_m_and_u_the_pairs_were_drawn_with() -> None:
    found = estimate(pairs_drawn(TRUE_M, 4000, 7), pairs_drawn(TRUE_U, 4000, 8))
    assert (found.matches, found.non_matches) == (4000, 4000)
    by_level = {(e.pinned.comparison, e.pinned.name): e for e in found.rows}
    for comparison in TRUE_M:
        for name, m in TRUE_M[comparison].items():
            got = by_level[(comparison, name)]
            assert got.m == pytest.approx(m, abs=0.02), (comparison, name)
            assert got.u == pytest.approx(TRUE_U[comparison][name], abs=0.02), (comparison, name)
            assert not got.m_pinned
            assert not got.u_pinned


def test_each_comparisons_estimates_share_out_to_one_and_unseen_ones_stay_pinned() -> None:
    found = estimate(pairs_drawn(TRUE_M, 200, 1), pairs_drawn(TRUE_U, 1000, 2))
    for comparison in ESTIMATED:
        rows = [e for e in found.rows if e.pinned.comparison == comparison]
        assert {e.pinned.name for e in rows} == set(LEVELS[comparison]) - {MISSING}
        assert all(e.m > 0 and e.u > 0 for e in rows)
        if comparison in TRUE_M:
            assert sum(e.m for e in rows) == pytest.approx(1.0)
            assert sum(e.u for e in rows) == pytest.approx(1.0)
    dob = [e for e in found.rows if e.pinned.comparison == "dob"]  # no pair had a DOB level
    assert all(e.m_pinned and e.u_pinned and (e.m, e.u) == (e.pinned.m, e.pinned.u) for e in dob)
    assert "[linking.weights.dob]" not in policy_snippet(found)


def test_unknown_levels_and_missing_values_are_not_counted() -> None:
    same = [{"sex": "same"}, {"sex": "missing"}, {"sex": "sideways"}] * 20
    found = estimate(same, pairs_drawn(TRUE_U, 1000, 3), min_matches=10)
    sex = {e.pinned.name: e for e in found.rows if e.pinned.comparison == "sex"}
    assert (sex["same"].matches, sex["different"].matches) == (20, 0)
    assert sex["same"].m == pytest.approx(20.5 / 21)  # half a pair of smoothing each


@pytest.mark.parametrize(
    ("same", "other", "message"),
    [
        (49, 5000, "49 pairs of one person kept"),
        (500, 999, "999 random pairs of two people"),
        (0, 0, "0 pairs of one person kept"),
    ],
)
def test_too_few_pairs_are_refused(same: int, other: int, message: str) -> None:
    with pytest.raises(TooFewPairs, match=f"^{message}.*the weights stay as they are$"):
        estimate(
            [{"sex": "same"}] * same,
            [{"sex": "different"}] * other,
            min_matches=50,
            min_non_matches=1000,
        )


def test_a_pairs_levels_are_read_from_a_stored_explanation() -> None:
    explanation = json.dumps(
        {"model": "fs-2026.2", "evidence": [{"comparison": "sex", "level": "same"}]}
    )
    assert levels_of(explanation) == {"sex": "same"}
    assert levels_of(None) is None  # kept before match weights
    assert levels_of("{not json") is None
    assert levels_of('{"evidence": 3}') is None


def test_the_snippet_loads_as_the_programs_weights_and_changes_how_it_links() -> None:
    found = estimate(pairs_drawn(TRUE_M, 1000, 4), pairs_drawn(TRUE_U, 1000, 5))
    snippet = policy_snippet(found)
    rules = LinkingRules.model_validate(tomllib.loads(snippet)["linking"])
    model = rules.model
    assert set(rules.weights) == set(TRUE_M)
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
    assert "family_name" in render(found)


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

FAMILIES = ("Doyle", "Garcia", "Nguyen", "Smith", "Okafor", "Kowalski", "Haddad", "Lindqvist")
GIVENS = ("Jane", "Robert", "Maria", "Kevin", "Aisha", "Tomas", "Lena", "Omar", "Grace")


@pytest.fixture
def var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("DATABASE_URL", "DATABASE_OWNER_URL", "PORTLINE_DB_SCHEMA_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    for name in ("PORTLINE_SEAL_KEYS", "PORTLINE_BLIND_INDEX_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORTLINE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PORTLINE_ENV", "development")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


async def _program(var_dir: Path, *, people: int, linked: int, seed: int = 11) -> None:
    """A program's scheduler database: people with sealed identities, reports linked
    automatically with their explanations, and possible matches a lead decided."""
    engine = create_engine(f"sqlite+aiosqlite:///{var_dir}/scheduler.db", service="scheduler")
    await upgrade(engine, service="scheduler")
    sealer, _ = load_keys(get_settings())
    rng = Random(seed)
    now = datetime.now(UTC)
    persons, episodes, links, matches = [], [], [], []
    for _ in range(people):
        identity = {
            "family": rng.choice(FAMILIES),
            "given": rng.choice(GIVENS),
            "dob": (DOB.replace(year=rng.randrange(1960, 2000))).isoformat(),
            "sex": rng.choice("FM"),
        }
        persons.append(
            {
                "id": uuid.uuid4(),
                "program_id": "demo",
                "identity_sealed": sealer.seal_json(identity, context="identity"),
                "do_not_contact": False,
                "created_at": now,
            }
        )
    for levels in pairs_drawn(TRUE_M, linked, seed):
        episode = {
            "id": uuid.uuid4(),
            "program_id": "demo",
            "person_id": persons[0]["id"],
            "incident_at": now,
            "sources": "ed",
            "consent": "unknown",
            "deidentified": False,
            "repeat": False,
            "plan_reasons": "[]",
            "created_at": now,
        }
        episodes.append(episode)
        evidence = [{"comparison": c, "level": lv} for c, lv in levels.items()]
        links.append(
            {
                "report_id": uuid.uuid4(),
                "episode_id": episode["id"],
                "source_kind": "ed",
                "revision": 1,
                "match": "exact",
                "explanation": json.dumps({"model": "fs-2026.2", "evidence": evidence}),
                "linked_at": now,
            }
        )
    for status in ("confirmed", "split", "open"):
        matches.append(
            {
                "id": uuid.uuid4(),
                "program_id": "demo",
                "report_id": uuid.uuid4(),
                "person_id": persons[1]["id"],
                "candidate_id": persons[2]["id"],
                "reasons": "[]",
                "status": status,
                "explanation": json.dumps(
                    {"evidence": [{"comparison": "sex", "level": "different"}]}
                ),
                "created_at": now,
            }
        )
    async with engine.begin() as connection:
        await connection.execute(PERSON.insert(), persons)
        if episodes:
            await connection.execute(EPISODE.insert(), episodes)
            await connection.execute(REPORT_LINK.insert(), links)
        await connection.execute(POSSIBLE_MATCH.insert(), matches)
    await engine.dispose()


async def test_the_command_prints_the_estimates_and_writes_the_snippet(
    var_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _program(var_dir, people=80, linked=120)
    out = var_dir / "weights.toml"
    argv = ["linking", "estimate", "--program", "demo", "--pairs", "3000", "--write", str(out)]
    code = await asyncio.to_thread(main, argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "m from 121 pairs of one person, u from 3000 random pairs" in printed
    assert "automatic links 120, confirmed by a lead 1, split by a lead (not used) 1" in printed
    for name in (*FAMILIES, *GIVENS):
        assert name not in printed  # levels and counts only
    rules = LinkingRules.model_validate(tomllib.loads(out.read_text())["linking"])
    # family names and sexes were compared in the random pairs; the dates of birth too
    assert {"family_name", "given_name", "dob", "sex"} <= set(rules.weights)
    by_level = {(c, n): w for c, levels in rules.weights.items() for n, w in levels.items()}
    # eight family names drawn at random: about one pair in eight shares one
    assert by_level[("family_name", "exact")].u == pytest.approx(1 / 8, abs=0.03)
    assert by_level[("sex", "same")].u == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    ("people", "linked", "message"),
    [
        (80, 10, "11 pairs of one person kept"),
        (20, 120, "0 random pairs of two people"),
    ],
)
async def test_the_command_refuses_with_too_few_pairs(
    var_dir: Path, capsys: pytest.CaptureFixture[str], people: int, linked: int, message: str
) -> None:
    await _program(var_dir, people=people, linked=linked)
    code = await asyncio.to_thread(main, ["linking", "estimate", "--program", "demo"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"program demo: {message}" in err
    assert "the weights stay as they are" in err

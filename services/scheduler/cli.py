"""The scheduler's commands under ``portline``: ``portline linking estimate``.

``estimate`` re-estimates the match weights' m and u for one program (matching/estimate.py,
docs/linking.md): m from the pairs it holds for one person (reports linked automatically and
possible matches a lead confirmed, by the levels their explanations kept), u from random pairs
of two of its people, compared in memory as linking compares them. It prints them next to the
pinned ones with their counts, and can write the ``[linking.weights]`` tables for the program's
policy file. Identities are opened in memory only, as linking opens them; nothing but levels
and counts is printed or written.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["register"]

_MIN_PEOPLE = 50
"""Fewer people than this give too few distinct random pairs to estimate u from."""


@dataclass
class _Pairs:
    linked: list[Mapping[str, str]] = field(default_factory=list)
    splits: int = 0
    links: int = 0
    confirmed: int = 0
    random: list[Mapping[str, str]] = field(default_factory=list)


async def _pairs(program: str, pairs: int, seed: int) -> _Pairs:
    import sqlalchemy as sa

    from services.scheduler.matching.estimate import levels_of
    from services.scheduler.models import EPISODE, POSSIBLE_MATCH, REPORT_LINK
    from shared.db import create_engine
    from shared.settings import get_settings

    settings = get_settings()
    engine = create_engine(
        settings.db_url, service="scheduler", schema=settings.schema_for("scheduler")
    )
    found = _Pairs()
    try:
        async with engine.connect() as connection:
            links = await connection.execute(
                sa.select(REPORT_LINK.c.explanation)
                .join(EPISODE, EPISODE.c.id == REPORT_LINK.c.episode_id)
                .where(
                    EPISODE.c.program_id == program,
                    REPORT_LINK.c.match == "exact",
                    REPORT_LINK.c.explanation.is_not(None),
                )
            )
            for (explanation,) in links:
                if (levels := levels_of(explanation)) is not None:
                    found.linked.append(levels)
                    found.links += 1
            decided = await connection.execute(
                sa.select(POSSIBLE_MATCH.c.status, POSSIBLE_MATCH.c.explanation).where(
                    POSSIBLE_MATCH.c.program_id == program,
                    POSSIBLE_MATCH.c.status.in_(("confirmed", "split")),
                )
            )
            for status, explanation in decided:
                if status == "split":
                    found.splits += 1
                elif (levels := levels_of(explanation)) is not None:
                    found.linked.append(levels)
                    found.confirmed += 1
            found.random = await _random_pairs(connection, settings, program, pairs, seed)
    finally:
        await engine.dispose()
    return found


async def _random_pairs(
    connection: Any, settings: Any, program: str, pairs: int, seed: int
) -> list[Mapping[str, str]]:
    """The levels of random pairs of two of the program's people, opened in memory."""
    import sqlalchemy as sa

    from services.scheduler.batch import linking_fields
    from services.scheduler.linking import EpisodeRef, PersonCandidate
    from services.scheduler.matching import explain
    from services.scheduler.models import EPISODE, PERSON, PERSON_KEY
    from shared.sealing import load_keys

    ids = [
        pid
        for (pid,) in await connection.execute(
            sa.select(PERSON.c.id).where(PERSON.c.program_id == program).order_by(PERSON.c.id)
        )
    ]
    if len(ids) < _MIN_PEOPLE:
        return []
    rng = random.Random(seed)  # noqa: S311  # a sample to estimate from, not a secret
    drawn: list[tuple[uuid.UUID, uuid.UUID]] = []
    while len(drawn) < pairs:
        a, b = rng.sample(ids, 2)
        drawn.append((a, b))
    wanted = sorted({pid for pair in drawn for pid in pair})
    sealer, _ = load_keys(settings)
    people: dict[uuid.UUID, Any] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        sealed = dict(
            (await connection.execute(
                sa.select(PERSON.c.id, PERSON.c.identity_sealed).where(PERSON.c.id.in_(chunk))
            )).all()
        )  # fmt: skip
        keys: dict[uuid.UUID, list[tuple[str, str]]] = {pid: [] for pid in chunk}
        for pid, kind, value in await connection.execute(
            sa.select(PERSON_KEY.c.person_id, PERSON_KEY.c.kind, PERSON_KEY.c.value).where(
                PERSON_KEY.c.person_id.in_(chunk)
            )
        ):
            keys[pid].append((kind, value))
        episodes: dict[uuid.UUID, list[EpisodeRef]] = {pid: [] for pid in chunk}
        for row in await connection.execute(
            sa.select(
                EPISODE.c.person_id,
                EPISODE.c.id,
                EPISODE.c.incident_at,
                EPISODE.c.sources,
                EPISODE.c.county,
                EPISODE.c.hospital,
            ).where(EPISODE.c.person_id.in_(chunk))
        ):
            episodes[row.person_id].append(
                EpisodeRef(
                    episode_id=row.id,
                    incident_at=row.incident_at,
                    sources=frozenset(row.sources.split(",")),
                    county=row.county,
                    hospital=row.hospital,
                )
            )
        for pid in chunk:
            token = sealed.get(pid)
            opened = sealer.open_json(token, context="identity") if token else {}
            people[pid] = PersonCandidate.holding(
                pid, keys[pid], episodes=episodes[pid], **linking_fields(opened)
            ).profile()
    return [
        {e.comparison: e.level for e in explain(people[a], people[b]).evidence} for a, b in drawn
    ]


def _cmd_estimate(args: argparse.Namespace) -> int:
    from services.scheduler.matching.estimate import (
        TooFewPairs,
        estimate,
        policy_snippet,
        render,
    )

    for name in ("min_decisions", "pairs"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            print(f"portline linking estimate: {flag} must be at least 1", file=sys.stderr)
            return 2
    found = asyncio.run(_pairs(args.program, args.pairs, args.seed))
    try:
        estimates = estimate(
            found.linked,
            found.random,
            min_matches=args.min_decisions,
            min_non_matches=min(args.pairs, 1000),
            sources={
                "automatic links": found.links,
                "confirmed by a lead": found.confirmed,
                "split by a lead (not used)": found.splits,
            },
        )
    except TooFewPairs as exc:
        print(f"portline linking estimate: program {args.program}: {exc}", file=sys.stderr)
        return 2
    print(render(estimates))
    if args.write is not None:
        Path(args.write).write_text(policy_snippet(estimates), encoding="utf-8")
        print(f"\nwrote the [linking.weights] tables to {args.write}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    linking = sub.add_parser("linking", help="linking tools: re-estimate the match weights")
    linking_sub = linking.add_subparsers(dest="linking_command", required=True)
    est = linking_sub.add_parser(
        "estimate",
        help="re-estimate m and u per level from the program's links, its leads' decisions "
        "and random pairs of its people",
    )
    est.add_argument("--program", required=True, help="the program whose pairs to use")
    est.add_argument(
        "--min-decisions",
        type=int,
        default=50,
        help="refuse with fewer pairs held for one person than this (default 50)",
    )
    est.add_argument(
        "--pairs", type=int, default=20_000, help="random pairs of two people (default 20000)"
    )
    est.add_argument("--seed", type=int, default=0, help="seed for drawing the random pairs")
    est.add_argument(
        "--write", metavar="FILE", help="write the [linking.weights] tables for the policy file"
    )
    est.set_defaults(func=_cmd_estimate)

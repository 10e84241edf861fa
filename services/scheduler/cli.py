"""The scheduler's commands under ``portline``: ``portline linking estimate``.

``estimate`` re-estimates the match weights' m and u from the confirm and split decisions a
program's leads kept (``possible_match``), prints them next to the pinned ones with their
counts, and can write the ``[linking.weights]`` tables for the program's policy file
(matching/estimate.py, docs/linking.md). It reads levels only: no identity is opened.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

__all__ = ["register"]


async def _decisions(program: str) -> tuple[list[object], list[str]]:
    import sqlalchemy as sa

    from services.scheduler.matching.estimate import decision_of
    from services.scheduler.models import POSSIBLE_MATCH as table
    from shared.db import create_engine
    from shared.settings import get_settings

    settings = get_settings()
    engine = create_engine(
        settings.db_url, service="scheduler", schema=settings.schema_for("scheduler")
    )
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                sa.select(table.c.status, table.c.explanation).where(
                    table.c.program_id == program,
                    table.c.status.in_(("confirmed", "split")),
                    table.c.explanation.is_not(None),
                )
            )
            found = rows.all()
    finally:
        await engine.dispose()
    decisions: list[object] = []
    models: list[str] = []
    for status, explanation in found:
        decision = decision_of(status, explanation)
        if decision is not None:
            decisions.append(decision)
            models.append(_model_of(explanation))
    return decisions, models


def _model_of(explanation: str) -> str:
    import json

    try:
        return str(json.loads(explanation).get("model") or "unknown")
    except ValueError:
        return "unknown"


def _cmd_estimate(args: argparse.Namespace) -> int:
    from services.scheduler.matching.estimate import (
        Decision,
        TooFewDecisions,
        estimate,
        policy_snippet,
        render,
    )

    if args.min_decisions < 1:
        print("portline linking estimate: --min-decisions must be at least 1", file=sys.stderr)
        return 2
    decisions, models = asyncio.run(_decisions(args.program))
    try:
        found = estimate(
            [d for d in decisions if isinstance(d, Decision)],
            min_decisions=args.min_decisions,
            models=models,
        )
    except TooFewDecisions as exc:
        print(f"portline linking estimate: program {args.program}: {exc}", file=sys.stderr)
        return 2
    print(render(found))
    if args.write is not None:
        Path(args.write).write_text(policy_snippet(found), encoding="utf-8")
        print(f"\nwrote the [linking.weights] tables to {args.write}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    linking = sub.add_parser("linking", help="linking tools: re-estimate the match weights")
    linking_sub = linking.add_subparsers(dest="linking_command", required=True)
    est = linking_sub.add_parser(
        "estimate",
        help="re-estimate m and u per level from the leads' kept confirm and split decisions",
    )
    est.add_argument("--program", required=True, help="the program whose decisions to use")
    est.add_argument(
        "--min-decisions",
        type=int,
        default=50,
        help="refuse with fewer confirmed or split decisions than this (default 50)",
    )
    est.add_argument(
        "--write", metavar="FILE", help="write the [linking.weights] tables for the policy file"
    )
    est.set_defaults(func=_cmd_estimate)

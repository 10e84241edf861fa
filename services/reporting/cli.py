"""`portline reporting ...`: the reporting commands of the CLI."""

from __future__ import annotations

import argparse
import sys

from shared.settings import get_settings

__all__ = ["register"]


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from services.reporting.rebuild import run_rebuild

    result = run_rebuild(get_settings(), resume=args.resume, batch_size=args.batch)
    counts = ", ".join(f"{n:,} {outcome}" for outcome, n in sorted(result.outcomes.items()))
    rate = result.events / result.seconds if result.seconds else 0.0
    print(
        f"replayed {result.events:,} events ({counts or 'none'}) in {result.seconds:,.1f} s, "
        f"{rate:,.0f} events/s"
    )
    if result.oldest is not None:
        print(
            f"the topics hold events from {result.oldest.isoformat(timespec='seconds')} on; "
            "anything older than their retention is not in the read models"
        )
    if not result.finished:
        print(
            "stopped before the end: the read models are incomplete until a rebuild finishes "
            "(`portline reporting rebuild --resume` carries on)",
            file=sys.stderr,
        )
        return 1
    print("the read models are rebuilt")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reporting = sub.add_parser("reporting", help="reporting tools: rebuild the read models")
    reporting_sub = reporting.add_subparsers(dest="reporting_command", required=True)
    rebuild = reporting_sub.add_parser(
        "rebuild",
        help="replay every topic from its start into fresh read models (safe to stop)",
    )
    rebuild.add_argument(
        "--resume",
        action="store_true",
        help="carry on a rebuild that was stopped, instead of starting over",
    )
    rebuild.add_argument(
        "--batch", type=int, default=1000, help="events applied per transaction (default 1000)"
    )
    rebuild.set_defaults(func=_cmd_rebuild)

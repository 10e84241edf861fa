"""`portline reporting ...`: the reporting commands of the CLI."""

from __future__ import annotations

import argparse
import sys
from datetime import date

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


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _cmd_backtest(args: argparse.Namespace) -> int:
    from services.reporting.backtest import run_backtest
    from services.reporting.programs import DETECTORS

    if args.end < args.start:
        print("--to is before --from", file=sys.stderr)
        return 2
    detectors = (args.detector,) if args.detector else DETECTORS
    return run_backtest(
        get_settings(),
        args.start,
        args.end,
        program=args.program,
        detectors=detectors,
        out=sys.stdout,
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reporting = sub.add_parser(
        "reporting", help="reporting tools: rebuild the read models, backtest the spike detectors"
    )
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
    backtest = reporting_sub.add_parser(
        "backtest",
        help="run the spike detectors over history: how often each county would have alerted",
    )
    backtest.add_argument(
        "--from", dest="start", type=_date, required=True, help="first day (YYYY-MM-DD)"
    )
    backtest.add_argument("--to", dest="end", type=_date, required=True, help="last day")
    backtest.add_argument("--program", help="one program (default: every program)")
    backtest.add_argument(
        "--detector", choices=["ewma", "odmap"], help="one detector (default: both)"
    )
    backtest.set_defaults(func=_cmd_backtest)

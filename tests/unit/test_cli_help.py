"""Every `portline` subcommand, at every level, says in one line what it does."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from shared.cli import build_parser


def _subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str | None]]:
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            yield (*path, name), helps.get(name)
            yield from _subcommands(sub, (*path, name))


def test_every_subcommand_has_a_one_line_help() -> None:
    found = dict(_subcommands(build_parser()))
    missing = sorted(" ".join(p) for p, h in found.items() if not h or "\n" in h)
    assert missing == []


def test_the_partner_edge_commands_are_all_there() -> None:
    found = {" ".join(p) for p, _ in _subcommands(build_parser())}
    for verb in (
        "add-network",
        "remove-network",
        "add-certificate",
        "remove-certificate",
        "set-mllp-auth",
        "list",
    ):
        assert f"partners {verb}" in found
    assert {"outbox parked", "outbox retry"} <= found

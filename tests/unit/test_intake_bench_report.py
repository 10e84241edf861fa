"""The intake benchmark's own arithmetic: pauses of every connection, and the feed's share."""

from __future__ import annotations

import pytest

from tests.bench.intake_bench import STALL_GAP, parse_args, stalls


def test_slow_messages_sent_close_together_are_one_pause_that_knows_its_overdose() -> None:
    t = 100.0
    slow = [
        # one pause: 8 messages within the gap of each other, one of them an overdose
        *[(t + i * STALL_GAP / 4, i == 3) for i in range(8)],
        # a lone slow message much later
        (t + 1.0, False),
        # another pause without an overdose, given out of order
        *[(t + 2.0 + i * STALL_GAP / 4, False) for i in reversed(range(5))],
    ]
    assert stalls(slow) == [(8, True), (1, False), (5, False)]


def test_messages_further_apart_than_the_gap_are_separate_pauses() -> None:
    assert stalls([(0.0, False), (STALL_GAP * 1.5, True)]) == [(1, False), (1, True)]
    assert stalls([]) == []


def test_the_overdose_share_is_a_number_from_0_to_1() -> None:
    assert parse_args([]).overdose_share == 0.005
    assert parse_args(["--overdose-share", "0"]).overdose_share == 0.0
    for bad in ("-0.1", "1.5", "many"):
        with pytest.raises(SystemExit):
            parse_args(["--overdose-share", bad])

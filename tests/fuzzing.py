"""Shared settings and bounds for the parser fuzz tests (tests/unit/test_fuzz_*.py).

Two hypothesis profiles, chosen by ``PORTLINE_FUZZ_SCALE``:

* ``fuzz`` (unset, or 1): what ``make test`` and ``make unit`` run. Each test draws the few
  dozen examples its decorator names, derandomized, so that CI draws the same inputs on
  every run and a failure reproduces from the test name alone.
* ``fuzz-long`` (``make fuzz``, scale 50 by default): each test draws ``scale`` times as many
  examples, randomly, and keeps failing examples in ``.hypothesis/`` so the next run replays
  them first.

Time is measured per call here, so the profiles set ``deadline=None``: hypothesis' own
deadline would also count the strategy's drawing and the first call's imports.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis.control import currently_in_test_context

__all__ = ["MIB", "SCALE", "Outcome", "at_limit", "fuzz", "note", "run_bounded"]

MIB = 1024 * 1024

SCALE = max(1, int(os.environ.get("PORTLINE_FUZZ_SCALE", "1") or "1"))

_QUIET_HEALTH_CHECKS = (
    # Structured inputs are large by design (a whole message, up to the size limits).
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
)

settings.register_profile(
    "fuzz",
    derandomize=True,
    deadline=None,
    print_blob=False,
    suppress_health_check=_QUIET_HEALTH_CHECKS,
)
settings.register_profile(
    "fuzz-long",
    derandomize=False,
    deadline=None,
    print_blob=True,
    suppress_health_check=_QUIET_HEALTH_CHECKS,
)
_PROFILE = settings.get_profile("fuzz-long" if SCALE > 1 else "fuzz")


def at_limit(limit: int) -> int:
    """The input size for the tests of shapes that grow with the input: the size limit in
    make fuzz, a quarter of it in make test. At a quarter, each super-linear shape found so
    far still takes 5-100 times its time bound, at a sixteenth of the cost in make test."""
    return limit if SCALE > 1 else limit // 4


def fuzz(examples: int) -> settings:
    """The settings for one fuzz test: ``examples`` in ``make test``, times the scale in
    ``make fuzz``."""
    return settings(_PROFILE, max_examples=examples * SCALE)


def note(outcome: str) -> None:
    """Count how far an input got, for ``pytest --hypothesis-show-statistics``."""
    if currently_in_test_context():
        event(outcome)


# ---------------------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------------------

# Time: 1 s per call, plus 4 s per MiB of input, of this process's CPU time (not the wall
# clock, which a machine busy elsewhere stretches without the code being at fault), measured
# without tracemalloc (which makes hl7apy four times slower). On this project's slow 2-core
# machine the worst linear shapes measured 0.25-0.9 s per MiB unloaded (classifying a 1 MiB
# chief complaint, 5 MiB of NEMSIS elements), so the bound leaves at least 4x. What it
# exists to catch is super-linear: the quadratic shapes and the hl7apy object trees this
# fuzzing found took 10 s to minutes at the size limits.
SECONDS_PER_CALL = 1.0
SECONDS_PER_MIB = 4.0

# Memory: the peak of new allocations during one call, at most 64 bytes per input byte
# plus 16 MiB. Splitting text into many small strings (one per HL7 segment, field or
# repetition; one Element per XML tag) costs 20-40 bytes of objects per input byte, and
# hl7apy's fixed costs are a few MiB; an allocation that grows with the input faster than
# that (an object tree per element, a copy per repetition) breaks the bound at the limits.
BYTES_PER_INPUT_BYTE = 64
BYTES_PER_CALL = 16 * MIB

# tracemalloc makes a call 4-12 times slower. Below this size no parser here comes near
# the memory bound (hl7apy's 5 KB per delimiter is the most per input byte, and it is
# given at most HL7APY_MAX_DELIMITERS), so make test traces only larger inputs; make
# fuzz traces every call.
TRACE_FROM_BYTES = 0 if SCALE > 1 else 64 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one bounded call returned or raised, and what it cost."""

    value: Any
    error: Exception | None
    seconds: float
    peak_bytes: int | None
    """None when the call was not traced (see TRACE_FROM_BYTES)."""


def _call(call: Callable[[], Any]) -> tuple[Any, Exception | None, float]:
    start = time.process_time()
    try:
        value = call()
    except Exception as exc:
        return None, exc, time.process_time() - start
    return value, None, time.process_time() - start


def run_bounded(
    call: Callable[[], Any], *, input_bytes: int, extra_seconds: float = 0.0
) -> Outcome:
    """Call ``call`` and assert the bounds for an input of ``input_bytes``: once timed and,
    from TRACE_FROM_BYTES, once more with tracemalloc for the peak allocation. ``call`` must
    not depend on state that the first call changes; both calls must end the same way.

    The exception is returned, not raised, so that the test states which ones are declared.
    ``extra_seconds`` widens the time bound for a cost the test names (hl7apy's per message).
    """
    value, error, seconds = _call(call)
    time_limit = SECONDS_PER_CALL + SECONDS_PER_MIB * input_bytes / MIB + extra_seconds
    if seconds > time_limit:
        # Timed once more, and the faster counts: a one-off stall (a lazy import inside
        # hl7apy, the machine busy elsewhere) does not repeat; a cost of the input does.
        seconds = min(seconds, _call(call)[2])
    assert seconds <= time_limit, (
        f"{seconds:.2f} s for {input_bytes} input bytes (bound {time_limit:.2f} s)"
    )
    if input_bytes < TRACE_FROM_BYTES:
        return Outcome(value=value, error=error, seconds=seconds, peak_bytes=None)
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        _, traced_error, _ = _call(call)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        if started_tracing:
            tracemalloc.stop()
    assert type(traced_error) is type(error), f"{error!r}, then {traced_error!r}"
    memory_limit = BYTES_PER_CALL + BYTES_PER_INPUT_BYTE * input_bytes
    assert peak <= memory_limit, (
        f"peak {peak / MIB:.1f} MiB for {input_bytes} input bytes "
        f"(bound {memory_limit / MIB:.1f} MiB)"
    )
    return Outcome(value=value, error=error, seconds=seconds, peak_bytes=peak)

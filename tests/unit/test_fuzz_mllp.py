"""Fuzzing the MLLP decoder: any byte stream, cut into any chunks.

The decoder only ever returns payloads and FramingError values (it never raises), its buffer
never exceeds max_message_bytes, the chunking never changes what it finds, and frames mixed
with junk, truncated frames and oversized frames are all recovered, in order. Every call is
held to the time and memory bounds of tests/fuzzing.py.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from services.intake.mllp import CR, FS, VT, FramingError, MllpDecoder, frame
from tests.fuzzing import MIB, fuzz, run_bounded

_WHITESPACE = b" \t\r\n\x00\x0c"


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _decode(
    data: bytes, cuts: list[int], max_message_bytes: int
) -> tuple[list[bytes | FramingError], FramingError | None]:
    """Feed ``data`` in the chunks ``cuts`` gives, checking every result and the buffer."""

    def feed_all() -> tuple[list[bytes | FramingError], FramingError | None]:
        decoder = MllpDecoder(max_message_bytes)
        out: list[bytes | FramingError] = []
        for chunk in _chunks(data, cuts):
            found = decoder.feed(chunk)
            assert isinstance(found, list)
            out.extend(found)
            assert 0 <= decoder.pending() <= max_message_bytes
        eof = decoder.at_eof()
        assert decoder.pending() == 0
        return out, eof

    outcome = run_bounded(feed_all, input_bytes=len(data))
    if outcome.error is not None:
        raise outcome.error
    out, eof = outcome.value
    for item in out:
        assert isinstance(item, bytes | FramingError), type(item)
        if isinstance(item, bytes):
            assert len(item) <= max_message_bytes
            assert VT not in item
            assert FS not in item
    return out, eof


# Streams biased towards the bytes the decoder acts on.
_framing_bytes = st.binary(max_size=64) | st.sampled_from([VT, FS, CR, VT + FS, FS + CR])
_streams = st.lists(_framing_bytes, max_size=40).map(b"".join)
_cuts = st.lists(st.integers(min_value=0), max_size=40)
_limits = st.integers(min_value=1, max_value=128)


@fuzz(examples=150)
@given(data=st.binary(max_size=2048) | _streams, cuts=_cuts, limit=_limits)
def test_any_stream_gives_only_payloads_and_framing_errors(
    data: bytes, cuts: list[int], limit: int
) -> None:
    _decode(data, cuts, limit)


@fuzz(examples=150)
@given(data=_streams, cuts=_cuts, other_cuts=_cuts, limit=_limits)
def test_the_chunking_never_changes_the_results(
    data: bytes, cuts: list[int], other_cuts: list[int], limit: int
) -> None:
    whole = _decode(data, [], limit)
    assert _decode(data, cuts, limit) == whole
    assert _decode(data, other_cuts, limit) == whole
    assert _decode(data, list(range(len(data))), limit) == whole  # byte by byte


# ---------------------------------------------------------------------------------------
# A model of a stream: frames, junk, truncated frames and oversized frames
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    kind: str  # "frame", "junk", "truncated" (a frame cut off by the next VT)
    data: bytes


def _clean(data: bytes) -> bytes:
    return data.replace(VT, b"v").replace(FS, b"f")


_payload = st.binary(max_size=96).map(_clean)
_parts = st.one_of(
    st.builds(Part, st.just("frame"), _payload),
    st.builds(
        Part,
        st.just("junk"),
        st.binary(min_size=1, max_size=32).map(lambda b: b.replace(VT, b"v"))
        | st.sampled_from([b"\r", b"\n", b"\r\n", b" \x00", b"\x0c\t"]),
    ),
    st.builds(Part, st.just("truncated"), _payload),
)


def _stream_and_expectation(
    parts: list[Part], limit: int
) -> tuple[bytes, list[bytes | FramingError], FramingError | None]:
    """The bytes of ``parts`` and what the decoder must find in them.

    A truncated part is written as VT and its payload without FS, so the next VT ends it; a
    junk run is reported once if anything in it is not whitespace; a frame longer than the
    limit is reported as message_too_large.
    """
    stream = bytearray()
    expected: list[bytes | FramingError] = []
    junk_run = bytearray()

    def end_junk_run() -> None:
        if junk_run.strip(_WHITESPACE):
            expected.append(FramingError.of("junk_outside_frame"))
        junk_run.clear()

    open_truncated = False
    for part in parts:
        if part.kind == "junk":
            if open_truncated:
                # Junk after a cut-off frame would be read as the rest of that frame.
                continue
            junk_run += part.data
            stream += part.data
            continue
        end_junk_run()
        if open_truncated:
            expected.append(FramingError.of("truncated_frame"))
            open_truncated = False
        if part.kind == "frame":
            stream += frame(part.data)
            too_large = len(part.data) > limit
            expected.append(FramingError.of("message_too_large") if too_large else part.data)
        else:
            stream += VT + part.data
            if len(part.data) > limit:
                expected.append(FramingError.of("message_too_large"))
            open_truncated = True
    end_junk_run()
    eof = FramingError.of("truncated_frame") if open_truncated else None
    return bytes(stream), expected, eof


@fuzz(examples=200)
@given(parts=st.lists(_parts, max_size=16), cuts=_cuts, limit=st.integers(1, 128))
def test_frames_among_junk_truncations_and_oversized_frames_are_all_recovered(
    parts: list[Part], cuts: list[int], limit: int
) -> None:
    stream, expected, expected_eof = _stream_and_expectation(parts, limit)
    assert _decode(stream, cuts, limit) == (expected, expected_eof)


# ---------------------------------------------------------------------------------------
# At the real size limit
# ---------------------------------------------------------------------------------------


@fuzz(examples=4)
@given(
    fill=st.binary(min_size=1, max_size=16).map(_clean),
    chunk=st.sampled_from([4096, 65536, 1 << 20]),
    over=st.integers(min_value=1, max_value=2 * MIB),
)
def test_an_oversized_frame_at_the_limit_is_never_buffered(
    fill: bytes, chunk: int, over: int
) -> None:
    """A frame past 1 MiB (the default limit), read as a socket would deliver it: the
    buffer stays under the limit and the frame after it still arrives."""
    limit = MIB
    body = (fill * ((limit + over) // len(fill) + 1))[: limit + over]
    stream = frame(body) + frame(b"MSH|^~\\&|after")
    cuts = list(range(chunk, len(stream), chunk))
    assert _decode(stream, cuts, limit) == (
        [FramingError.of("message_too_large"), b"MSH|^~\\&|after"],
        None,
    )

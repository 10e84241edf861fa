"""MLLP framing: frame() and the incremental MllpDecoder."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.mllp import CR, FS, VT, FramingError, MllpDecoder, frame

MSG1 = b"MSH|^~\\&|A|B|||2024||ADT^A04|1|P|2.5.1\rPID|1||123^^^^MR||DOE^JANE"
MSG2 = b"MSH|^~\\&|A|B|||2024||ADT^A08|2|P|2.5.1\rPID|1"


def _codes(items: list[bytes | FramingError]) -> list[str]:
    return [item.code if isinstance(item, FramingError) else "payload" for item in items]


def _feed_all(decoder: MllpDecoder, chunks: list[bytes]) -> list[bytes | FramingError]:
    out: list[bytes | FramingError] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def test_constants_and_frame() -> None:
    assert (VT, FS, CR) == (b"\x0b", b"\x1c", b"\r")
    assert frame(MSG1) == b"\x0b" + MSG1 + b"\x1c\r"


@pytest.mark.parametrize("payload", [b"a\x0bb", b"a\x1cb"])
def test_frame_refuses_framing_bytes(payload: bytes) -> None:
    with pytest.raises(ValueError, match="cannot contain"):
        frame(payload)


def test_one_frame() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(frame(MSG1)) == [MSG1]
    assert decoder.pending() == 0
    assert decoder.at_eof() is None


def test_many_frames_in_one_chunk() -> None:
    payloads = [MSG1, MSG2, b"", MSG1 * 3]
    decoder = MllpDecoder()
    assert decoder.feed(b"".join(frame(p) for p in payloads)) == payloads


def test_frame_split_byte_by_byte() -> None:
    decoder = MllpDecoder()
    data = frame(MSG1) + frame(MSG2)
    out = _feed_all(decoder, [data[i : i + 1] for i in range(len(data))])
    assert out == [MSG1, MSG2]


def test_pending_counts_incomplete_frame() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(VT + b"MSH|12345") == []
    assert decoder.pending() == 9
    assert decoder.feed(b"678" + FS) == [b"MSH|12345678"]
    assert decoder.pending() == 0
    assert decoder.feed(CR) == []


@pytest.mark.parametrize(
    "separator",
    [b"", b"\r", b"\n", b"\r\n", b" \t\x00"],
    ids=["none", "cr", "lf", "crlf", "blank-nul"],
)
def test_whitespace_between_frames_is_not_junk(separator: bytes) -> None:
    decoder = MllpDecoder()
    assert decoder.feed(frame(MSG1) + separator + frame(MSG2) + separator) == [MSG1, MSG2]


def test_fs_without_cr_ends_the_frame() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(VT + MSG1 + FS + VT + MSG2 + FS) == [MSG1, MSG2]


def test_junk_before_frame_is_reported_once_per_run() -> None:
    decoder = MllpDecoder()
    out = decoder.feed(b"GET / HTTP/1.1\r\n")
    out += decoder.feed(b"Host: example\r\n\r\n")
    out += decoder.feed(frame(MSG1))
    out += decoder.feed(b"more junk" + frame(MSG2))
    assert _codes(out) == ["junk_outside_frame", "payload", "junk_outside_frame", "payload"]
    assert [item for item in out if isinstance(item, bytes)] == [MSG1, MSG2]
    junk = out[0]
    assert isinstance(junk, FramingError)
    assert junk.message
    assert "GET" not in junk.message


def test_junk_only() -> None:
    decoder = MllpDecoder()
    assert _codes(decoder.feed(b"MSH|no framing at all\r")) == ["junk_outside_frame"]
    assert decoder.feed(b"still no framing") == []
    assert decoder.pending() == 0
    assert decoder.at_eof() is None


def test_oversized_frame_is_discarded_and_reported_once() -> None:
    decoder = MllpDecoder(max_message_bytes=10)
    out = decoder.feed(VT + b"0123456789")
    assert out == []
    assert decoder.pending() == 10
    out = decoder.feed(b"A")
    assert _codes(out) == ["message_too_large"]
    assert decoder.pending() == 0
    assert decoder.feed(b"B" * 1000) == []
    assert decoder.pending() == 0
    assert decoder.feed(b"C" + FS + CR + frame(b"ok")) == [b"ok"]


def test_oversized_frame_in_one_chunk() -> None:
    decoder = MllpDecoder(max_message_bytes=10)
    out = decoder.feed(frame(b"x" * 11) + frame(b"y" * 10))
    assert _codes(out) == ["message_too_large", "payload"]
    assert out[1] == b"y" * 10


def test_buffer_stays_bounded() -> None:
    limit = 1000
    decoder = MllpDecoder(max_message_bytes=limit)
    decoder.feed(VT)
    for _ in range(100):
        decoder.feed(b"z" * 333)
        assert decoder.pending() <= limit


def test_truncated_frame_at_eof() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(frame(MSG1) + VT + b"MSH|partial") == [MSG1]
    error = decoder.at_eof()
    assert error is not None
    assert error.code == "truncated_frame"
    assert "partial" not in error.message
    assert decoder.pending() == 0
    assert decoder.at_eof() is None  # reported once; the decoder is reset


def test_vt_alone_at_eof_is_truncated() -> None:
    decoder = MllpDecoder()
    decoder.feed(VT)
    error = decoder.at_eof()
    assert error is not None
    assert error.code == "truncated_frame"


def test_oversized_frame_open_at_eof_is_truncated() -> None:
    decoder = MllpDecoder(max_message_bytes=4)
    assert _codes(decoder.feed(VT + b"123456")) == ["message_too_large"]
    error = decoder.at_eof()
    assert error is not None
    assert error.code == "truncated_frame"


def test_restarted_frame_reports_truncation_and_keeps_new_frame() -> None:
    decoder = MllpDecoder()
    out = decoder.feed(VT + b"MSH|half" + frame(MSG1))
    assert _codes(out) == ["truncated_frame", "payload"]
    assert out[1] == MSG1


@pytest.mark.parametrize("cut", [0, 3, 7, 12])
def test_oversized_restarted_frame_reports_both_whatever_the_chunking(cut: int) -> None:
    """Found by fuzzing: in one chunk the restart was reported alone, while a chunk
    boundary inside the oversized part reported message_too_large first."""
    data = VT + b"0123456789AB" + frame(b"ok")
    decoder = MllpDecoder(max_message_bytes=10)
    out = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
    assert _codes(out) == ["message_too_large", "truncated_frame", "payload"]
    assert out[2] == b"ok"


def test_framing_error_is_a_frozen_value() -> None:
    error = FramingError.of("message_too_large")
    assert error == FramingError("message_too_large", error.message)
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.code = "truncated_frame"  # type: ignore[misc]
    assert not isinstance(error, BaseException)


def test_max_message_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MllpDecoder(max_message_bytes=0)


def test_accepts_bytearray_and_memoryview() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(bytearray(VT + b"ab")) == []
    assert decoder.feed(memoryview(b"cd" + FS + CR)) == [b"abcd"]


_payloads = st.lists(
    st.binary(max_size=200).map(lambda b: b.replace(VT, b"v").replace(FS, b"f")),
    max_size=8,
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(payloads=_payloads, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_chunking_yields_the_same_payloads(payloads: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frame(p) for p in payloads)
    decoder = MllpDecoder()
    assert _feed_all(decoder, _chunks(data, cuts)) == payloads
    assert decoder.pending() == 0
    assert decoder.at_eof() is None


@given(
    items=st.lists(
        st.one_of(
            st.tuples(st.just("frame"), st.binary(max_size=40)),
            st.tuples(st.just("junk"), st.binary(min_size=1, max_size=20)),
        ),
        max_size=10,
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    limit=st.integers(min_value=1, max_value=50),
)
def test_any_chunking_yields_the_same_results_with_errors(
    items: list[tuple[str, bytes]], cuts: list[int], limit: int
) -> None:
    parts: list[bytes] = []
    for kind, data in items:
        clean = data.replace(VT, b"v").replace(FS, b"f")
        parts.append(frame(clean) if kind == "frame" else clean)
    data = b"".join(parts)
    whole = MllpDecoder(max_message_bytes=limit)
    expected = whole.feed(data)
    expected_eof = whole.at_eof()
    chunked = MllpDecoder(max_message_bytes=limit)
    assert _feed_all(chunked, _chunks(data, cuts)) == expected
    assert chunked.at_eof() == expected_eof
    assert all(len(item) <= limit for item in expected if isinstance(item, bytes))

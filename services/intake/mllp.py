"""MLLP framing (HL7 v2 over TCP): ``<VT> payload <FS><CR>``. Framing only, no I/O.

:class:`MllpDecoder` turns a byte stream into payloads. Problems that deserve an AR
without closing the connection come back as :class:`FramingError` values in the same
list, in stream order:

* ``junk_outside_frame``: bytes that are neither whitespace nor NUL between frames. The
  decoder skips to the next VT and reports once per junk run (however many chunks it
  spans). Whitespace between frames (a stray CR or LF after FS) is ignored.
* ``message_too_large``: a frame longer than ``max_message_bytes``. The rest of the frame
  is discarded as it arrives (never buffered) and it is reported once.
* ``truncated_frame``: a VT inside a frame (the sender started over: the partial frame is
  dropped and the new one read), or, from :meth:`MllpDecoder.at_eof`, a frame still open
  when the connection closed.

FS alone ends a frame; the CR after it is optional (a missing CR is tolerated, an extra
one is inter-frame whitespace). The buffer never holds more than ``max_message_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CR",
    "FS",
    "VT",
    "FramingError",
    "FramingErrorCode",
    "MllpDecoder",
    "frame",
]

VT = b"\x0b"
FS = b"\x1c"
CR = b"\x0d"

_INTERFRAME_WHITESPACE = b" \t\r\n\x00\x0c"

FramingErrorCode = Literal["junk_outside_frame", "message_too_large", "truncated_frame"]

_MESSAGES: dict[str, str] = {
    "junk_outside_frame": "Bytes outside an MLLP frame were skipped.",
    "message_too_large": "The MLLP frame exceeds the maximum message size and was discarded.",
    "truncated_frame": "An MLLP frame ended before its end-of-block character.",
}


@dataclass(frozen=True, slots=True)
class FramingError:
    """A framing problem, returned (not raised) by the decoder."""

    code: FramingErrorCode
    message: str

    @classmethod
    def of(cls, code: FramingErrorCode) -> FramingError:
        return cls(code, _MESSAGES[code])


def frame(payload: bytes) -> bytes:
    """Wrap one payload in an MLLP frame. The payload must not contain VT or FS."""
    if VT in payload or FS in payload:
        raise ValueError("an MLLP payload cannot contain VT (0x0b) or FS (0x1c)")
    return VT + payload + FS + CR


class MllpDecoder:
    """Incremental MLLP decoder; feed it whatever the socket returns."""

    __slots__ = (
        "_buffer",
        "_discarding",
        "_in_frame",
        "_in_junk",
        "frames_started",
        "max_message_bytes",
    )

    def __init__(self, max_message_bytes: int = 1_048_576) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._discarding = False
        self._in_junk = False
        self.frames_started = 0
        """Frames begun so far (each VT that opens one, a restart included)."""

    def pending(self) -> int:
        """Bytes buffered of an incomplete frame."""
        return len(self._buffer)

    @property
    def in_frame(self) -> bool:
        """Whether a frame has started and not ended (the listener's frame deadline runs)."""
        return self._in_frame

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | FramingError]:
        """Complete payloads and framing errors found so far, in stream order."""
        out: list[bytes | FramingError] = []
        view = bytes(data)
        pos = 0
        end = len(view)
        while pos < end:
            if self._in_frame:
                pos = self._read_frame(view, pos, out)
            else:
                pos = self._skip_outside(view, pos, out)
        return out

    def at_eof(self) -> FramingError | None:
        """Call when the connection closes: a frame still open is ``truncated_frame``."""
        open_frame = self._in_frame
        self._reset_frame()
        self._in_junk = False
        return FramingError.of("truncated_frame") if open_frame else None

    # -- internals ---------------------------------------------------------------------

    def _reset_frame(self) -> None:
        self._buffer = bytearray()
        self._in_frame = False
        self._discarding = False

    def _skip_outside(self, data: bytes, pos: int, out: list[bytes | FramingError]) -> int:
        start = data.find(VT, pos)
        stop = len(data) if start == -1 else start
        if not self._in_junk and stop > pos and data[pos:stop].strip(_INTERFRAME_WHITESPACE):
            out.append(FramingError.of("junk_outside_frame"))
            self._in_junk = True
        if start == -1:
            return len(data)
        self._in_junk = False
        self._in_frame = True
        self.frames_started += 1
        return start + 1

    def _read_frame(self, data: bytes, pos: int, out: list[bytes | FramingError]) -> int:
        fs = data.find(FS, pos)
        vt = data.find(VT, pos, len(data) if fs == -1 else fs)
        if vt != -1:
            # A new frame starts before this one ended: the sender gave up on it. If it had
            # already grown past the limit, say so first, as a chunked read would have.
            if not self._discarding and len(self._buffer) + (vt - pos) > self.max_message_bytes:
                out.append(FramingError.of("message_too_large"))
            out.append(FramingError.of("truncated_frame"))
            self._reset_frame()
            self._in_frame = True
            self.frames_started += 1
            return vt + 1
        stop = len(data) if fs == -1 else fs
        if not self._discarding:
            if len(self._buffer) + (stop - pos) > self.max_message_bytes:
                out.append(FramingError.of("message_too_large"))
                self._buffer = bytearray()
                self._discarding = True
            elif fs != -1:
                if self._buffer:
                    self._buffer += data[pos:stop]
                    out.append(bytes(self._buffer))
                else:
                    out.append(data[pos:stop])
            else:
                self._buffer += data[pos:stop]
        if fs == -1:
            return len(data)
        self._reset_frame()
        return fs + 1

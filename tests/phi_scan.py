"""Planted identifiers and a scanner that looks for them in plaintext.

A PHI scan test makes up a person whose identifiers cannot occur by chance, sends them through
the system, and then searches dumps, broker segments and logs for them and their obvious
variants (any letter case; a date of birth as ``YYYY-MM-DD``, ``YYYYMMDD`` or ``MM/DD/YYYY``; a
phone number as digits or formatted). A hit is reported with where it was found and a short
context in which every planted identifier is masked, so a failing test never prints PHI, not
even made-up PHI, and never a whole line.
"""

from __future__ import annotations

import gzip
import random
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

__all__ = ["Hit", "Needle", "Planted", "scan_bytes", "scan_files", "segment_batches"]

# Letters only, and none of a-f: a planted word can never turn up inside hex (hashes, UUIDs).
_LETTERS = "ghjkmnpqrstvwxz"
_CONTEXT = 24


def _word(rng: random.Random, length: int = 10) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(length)).capitalize()


@dataclass(frozen=True)
class Needle:
    """One identifier, or one spelling of it, as a pattern over bytes."""

    label: str
    pattern: re.Pattern[bytes]
    probes: tuple[bytes, ...]
    """Lower-case literals, one of which every match contains: data holding none of them is
    not searched with the (slower) pattern."""


@dataclass(frozen=True)
class Hit:
    label: str
    where: str
    context: str

    def __str__(self) -> str:
        return f"{self.label} in {self.where}: …{self.context}…"


@dataclass(frozen=True)
class Planted:
    """A made-up person and a free-text note, random per run."""

    family: str
    given: str
    dob: date
    phone: str
    """Ten digits: area code, exchange, number."""
    street: str
    city: str
    mrn: str
    note: str

    @classmethod
    def random(cls, seed: int | None = None) -> Planted:
        rng = random.Random(seed)
        street_word, note_word = _word(rng), _word(rng)
        phone = (
            f"{rng.randint(2, 9)}{rng.randint(0, 99):02d}"
            f"{rng.randint(2, 9)}{rng.randint(0, 99):02d}{rng.randint(0, 9999):04d}"
        )
        return cls(
            family=_word(rng),
            given=_word(rng, 8),
            dob=date(1950, 1, 1) + timedelta(days=rng.randint(0, 365 * 50)),
            phone=phone,
            street=f"{rng.randint(100, 9899)} {street_word} Rd",
            city=_word(rng, 9),
            mrn=f"{_word(rng, 2).upper()}{rng.randint(10**7, 10**8 - 1)}",
            note=f"Meets at the {note_word} laundromat after lunch; prefers texts",
        )

    @property
    def phone_dashed(self) -> str:
        return f"{self.phone[:3]}-{self.phone[3:6]}-{self.phone[6:]}"

    @property
    def phone_parens(self) -> str:
        return f"({self.phone[:3]}) {self.phone[3:6]}-{self.phone[6:]}"

    @property
    def dob_hl7(self) -> str:
        return self.dob.strftime("%Y%m%d")

    @property
    def street_word(self) -> str:
        return self.street.split()[1]

    @property
    def note_word(self) -> str:
        return self.note.split()[3]

    def needles(self) -> list[Needle]:
        def words(label: str, value: str) -> Needle:
            probe = value.lower().encode()
            return Needle(label, re.compile(re.escape(value.encode()), re.IGNORECASE), (probe,))

        def digits(label: str, pattern: str, *probes: str) -> Needle:
            # Not glued to other digits or letters: a longer number or code that happens to
            # contain the digits is not the identifier.
            regex = re.compile(rf"(?<![0-9A-Za-z]){pattern}(?![0-9A-Za-z])".encode())
            return Needle(label, regex, tuple(probe.encode() for probe in probes))

        area, exchange, line = self.phone[:3], self.phone[3:6], self.phone[6:]
        local = [f"{exchange}{sep}{line}" for sep in ("", " ", ".", "-")]
        number, _, suffix = self.street.split()
        y, m, d = self.dob.strftime("%Y"), self.dob.strftime("%m"), self.dob.strftime("%d")
        return [
            words("family name", self.family),
            words("given name", self.given),
            Needle(
                "street address",
                re.compile(
                    rf"(?:{number}\s+)?{re.escape(self.street_word)}(?:\s+{suffix})?".encode(),
                    re.IGNORECASE,
                ),
                (self.street_word.lower().encode(),),
            ),
            words("city", self.city),
            words("MRN", self.mrn),
            words("free-text note", self.note_word),
            words("date of birth (YYYY-MM-DD)", self.dob.isoformat()),
            digits("date of birth (YYYYMMDD)", f"{y}{m}{d}", f"{y}{m}{d}"),
            digits("date of birth (MM/DD/YYYY)", f"{m}/{d}/{y}", f"{m}/{d}/{y}"),
            digits(
                "phone number",
                rf"(?:\+?1[ .-]?)?\(?{area}\)?[ .-]{{0,2}}{exchange}[ .-]?{line}",
                *local,
            ),
            digits("phone number (local part)", rf"{exchange}[ .-]?{line}", *local),
        ]


def _printable(data: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data)


def _masked(data: bytes, lo: int, hi: int, spans: Sequence[tuple[int, int, str]]) -> str:
    """data[lo:hi] with every planted identifier that touches it replaced by its label."""
    out: list[str] = []
    pos = lo
    for start, end, label in spans:
        if end <= pos or start >= hi:
            continue
        if start > pos:
            out.append(_printable(data[pos:start]))
        out.append(f"<{label}>")
        pos = max(pos, end)
    if pos < hi:
        out.append(_printable(data[pos:hi]))
    return "".join(out)


def scan_bytes(data: bytes, where: str, needles: Iterable[Needle]) -> list[Hit]:
    """Every occurrence of a needle in ``data``; ``where`` names the data in the report."""
    lowered = data.lower()
    spans = sorted(
        (m.start(), m.end(), needle.label)
        for needle in needles
        if any(probe in lowered for probe in needle.probes)
        for m in needle.pattern.finditer(data)
    )
    hits: list[Hit] = []
    for start, end, label in spans:
        line = data.count(b"\n", 0, start) + 1
        context = _masked(data, max(0, start - _CONTEXT), end + _CONTEXT, spans)
        hits.append(Hit(label, f"{where} (line {line}, byte {start})", context))
    return hits


def scan_files(paths: Iterable[Path], needles: Sequence[Needle]) -> list[Hit]:
    return [hit for path in paths for hit in scan_bytes(path.read_bytes(), str(path), needles)]


# A Kafka record batch (message format v2) on disk: baseOffset int64, batchLength int32, then
# partitionLeaderEpoch int32, magic int8, crc uint32, attributes int16, lastOffsetDelta int32,
# baseTimestamp and maxTimestamp int64, producerId int64, producerEpoch int16, baseSequence
# int32, recordsCount int32, and the records (compressed as a whole when attributes say so).
_BATCH_HEADER = 61
_ATTRIBUTES_AT = 21
_MAGIC_AT = 16
_CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def segment_batches(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(base offset, records as stored, decompressed) of every whole batch in a Kafka log
    segment file. A batch cut off at the end (the active segment being written) is left out.
    Raises ValueError for a batch this reader cannot decode (a length too short for its
    header, an older message format, a codec other than gzip), so a scan never passes by
    skipping data it could not read."""
    pos = 0
    while pos + _BATCH_HEADER <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, pos)
        if length < _BATCH_HEADER - 12:
            raise ValueError(f"batch at offset {base_offset}: a length of {length} bytes")
        end = pos + 12 + length
        if end > len(data):
            return  # cut off: the active segment's last batch, being written
        if data[pos + _MAGIC_AT] != 2:
            raise ValueError(f"batch at offset {base_offset}: message format {data[pos + 16]}")
        (attributes,) = struct.unpack_from(">h", data, pos + _ATTRIBUTES_AT)
        codec = attributes & 0x7
        records = data[pos + _BATCH_HEADER : end]
        if codec == 1:
            records = gzip.decompress(records)
        elif codec != 0:
            raise ValueError(f"batch at offset {base_offset}: {_CODECS.get(codec, codec)} records")
        yield base_offset, records
        pos = end

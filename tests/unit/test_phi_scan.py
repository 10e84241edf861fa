"""The PHI scan's own scanner finds planted identifiers in every spelling the e2e scan relies
on, says where, and never echoes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.phi_scan import Planted, scan_bytes, scan_files, segment_batches

PERSON = Planted.random(seed=7)


def _labels(data: bytes) -> set[str]:
    return {hit.label for hit in scan_bytes(data, "sample", PERSON.needles())}


def test_a_file_holding_an_identifier_is_reported_with_its_place_and_masked_context(
    tmp_path: Path,
) -> None:
    log = tmp_path / "service.log"
    log.write_text(
        '{"level":"INFO","msg":"started"}\n'
        f'{{"level":"INFO","msg":"attempt logged for {PERSON.family.upper()}, the rest of a '
        'long line that must never be printed in full"}\n'
    )
    (hit,) = scan_files([log], PERSON.needles())
    assert hit.label == "family name"
    assert hit.where.startswith(f"{log} (line 2, byte ")
    assert "<family name>" in hit.context
    assert PERSON.family.lower() not in str(hit).lower()
    assert "printed in full" not in str(hit)


def test_every_spelling_is_found() -> None:
    p = PERSON
    y, m, d = p.dob.strftime("%Y %m %d").split()
    samples = {
        "family name": [p.family, p.family.lower(), p.family.upper()],
        "given name": [p.given.lower()],
        "street address": [p.street, p.street.upper()],
        "city": [p.city.lower()],
        "MRN": [p.mrn.lower()],
        "free-text note": [p.note],
        "date of birth (YYYY-MM-DD)": [f'"dob": "{p.dob.isoformat()}"'],
        "date of birth (YYYYMMDD)": [f"|{p.dob_hl7}|F|"],
        "date of birth (MM/DD/YYYY)": [f"born {m}/{d}/{y}."],
        "phone number": [
            p.phone,
            f"+1{p.phone}",
            p.phone_dashed,
            p.phone_parens,
            f"({p.phone[:3]}){p.phone[3:6]}-{p.phone[6:]}",
            f"{p.phone[:3]}.{p.phone[3:6]}.{p.phone[6:]}",
        ],
        "phone number (local part)": [f"^^^{p.phone[:3]}^{p.phone[3:]}"],
    }
    for label, spellings in samples.items():
        for spelling in spellings:
            assert label in _labels(f"x {spelling} y".encode()), (label, spelling)


def test_longer_numbers_and_other_people_are_not_hits() -> None:
    p = PERSON
    other = Planted.random(seed=8)
    assert not _labels(f"9{p.phone}7 {p.dob_hl7}0 x{p.dob_hl7}".encode())
    assert not _labels(f"{other.family} {other.street} {other.mrn} {other.note}".encode())


def test_a_hit_masks_every_identifier_near_it() -> None:
    data = f"...name {PERSON.given} {PERSON.family} phone {PERSON.phone_dashed}...".encode()
    hits = scan_bytes(data, "sample", PERSON.needles())
    assert {h.label for h in hits} >= {"given name", "family name", "phone number"}
    for hit in hits:
        text = str(hit)
        assert PERSON.given not in text
        assert PERSON.family not in text
        assert PERSON.phone[6:] not in text


def _batch(value: bytes, *, gzip_it: bool, offset: int = 0) -> bytes:
    """One record batch as the broker stores it (aiokafka builds the same bytes it sends)."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=1 if gzip_it else 0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    builder.append(0, timestamp=None, key=b"subject", value=value, headers=[])
    data = bytearray(builder.build())
    data[:8] = offset.to_bytes(8, "big")
    return bytes(data)


def test_log_segments_are_read_batch_by_batch_and_decompressed() -> None:
    """Compressed batches hide plaintext from a byte search: the segment reader opens them,
    so a scan of the segment files finds what a search of the raw bytes cannot."""
    person = Planted.random()
    value = f'{{"note": "call {person.phone_dashed} about {person.given}"}}'.encode() * 4
    segment = (
        _batch(b"nothing here", gzip_it=False, offset=0)
        + _batch(value, gzip_it=True, offset=1)
        + _batch(value, gzip_it=True, offset=2)[:40]  # the active segment, cut mid-batch
    )
    assert not scan_bytes(segment, "raw", person.needles())  # compressed: nothing to see
    batches = list(segment_batches(segment))
    assert [offset for offset, _ in batches] == [0, 1]
    assert b"nothing here" in batches[0][1]
    found = scan_bytes(batches[1][1], "batch 1", person.needles())
    assert {h.label for h in found} >= {"phone number", "given name"}


def test_a_batch_the_reader_cannot_open_is_an_error_not_a_silent_pass() -> None:
    snappy = bytearray(_batch(b"x", gzip_it=False))
    snappy[22] |= 2  # attributes (int16 at byte 21): codec 2, snappy
    with pytest.raises(ValueError, match="snappy"):
        list(segment_batches(bytes(snappy)))


def test_a_batch_cut_after_its_header_ends_the_segment_and_a_corrupt_one_is_an_error() -> None:
    whole = _batch(b"first", gzip_it=True)
    cut = _batch(b"second " * 50, gzip_it=True, offset=1)
    assert [o for o, _ in segment_batches(whole + cut[:70])] == [0]  # header read, body cut
    old_format = bytearray(whole)
    old_format[16] = 1  # magic: message format v1
    with pytest.raises(ValueError, match="message format 1"):
        list(segment_batches(bytes(old_format)))
    corrupt = bytearray(whole)
    corrupt[8:12] = (0).to_bytes(4, "big")  # batchLength 0
    with pytest.raises(ValueError, match="length of 0"):
        list(segment_batches(bytes(corrupt) + cut))

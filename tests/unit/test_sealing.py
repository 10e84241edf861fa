"""Tests for PHI sealing, blind indexes and key loading."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import stat
from datetime import date, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from shared.sealing import (
    BlindIndexer,
    KeyConfigError,
    Keyring,
    SealBrokenError,
    Sealer,
    SealingError,
    UnknownKeyError,
    generate_key_setting,
    load_keys,
    normalize_dob,
    normalize_mrn,
    normalize_name,
    normalize_phone,
)
from shared.settings import Settings

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
KEY_C = bytes(range(64, 96))
SEALER = Sealer(Keyring({"k1": KEY_A}, active="k1"))
INDEXER = BlindIndexer(KEY_C)
TOKEN_RE = re.compile(r"^v1\.k1\.[A-Za-z0-9_-]+$")


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PORTLINE_ENV",
        "PORTLINE_SEAL_KEYS",
        "PORTLINE_BLIND_INDEX_KEY",
        "PORTLINE_VAR_DIR",
    ):
        monkeypatch.delenv(name, raising=False)


# --- Sealing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", ["Jane Doe", "", "José Muñoz-Ødegård 山田 🙂", "a" * 10_000])
def test_seal_round_trip(plaintext: str) -> None:
    token = SEALER.seal(plaintext, context="name")
    assert TOKEN_RE.match(token)
    assert plaintext not in token or plaintext == ""
    assert SEALER.open(token, context="name") == plaintext


def test_token_is_json_and_column_safe() -> None:
    token = SEALER.seal('quote " backslash \\ newline \n')
    assert token.isascii()
    assert json.dumps(token) == f'"{token}"'


def test_same_plaintext_seals_differently_each_time() -> None:
    assert SEALER.seal("Jane Doe") != SEALER.seal("Jane Doe")


def test_json_round_trip() -> None:
    identity = {"family": "Doe", "given": "Jane", "dob": "1980-01-02", "phones": ["336-555-0123"]}
    token = SEALER.seal_json(identity, context="identity")
    assert TOKEN_RE.match(token)
    assert "Doe" not in token
    assert SEALER.open_json(token, context="identity") == identity


def test_open_json_rejects_non_object() -> None:
    with pytest.raises(SealingError, match="not a JSON object"):
        SEALER.open_json(SEALER.seal("[1, 2]"))
    with pytest.raises(SealingError, match="not JSON"):
        SEALER.open_json(SEALER.seal("Jane Doe"))


def test_wrong_key_fails_loudly() -> None:
    token = SEALER.seal("Jane Doe")
    other = Sealer(Keyring({"k1": KEY_B}, active="k1"))
    with pytest.raises(SealBrokenError) as info:
        other.open(token)
    assert "Jane" not in str(info.value)
    assert b64(KEY_B) not in str(info.value)


def _flip(token: str, index: int) -> str:
    chars = list(token)
    chars[index] = "A" if chars[index] != "A" else "B"
    return "".join(chars)


@pytest.mark.parametrize("index", [10, 20, -20, -5])
def test_tampered_token_fails(index: int) -> None:
    token = SEALER.seal("Jane Doe", context="name")
    with pytest.raises(SealBrokenError):
        SEALER.open(_flip(token, index), context="name")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "Jane Doe",
        "v1.k1",
        "v2.k1.AAAA",
        "v1.k1.AAAA.extra",
        "v1.k1.AAAA",  # too short to hold nonce and tag
        "v1.k1.not base64!",
        "v1.bad kid.AAAA",
    ],
)
def test_malformed_token_fails(token: str) -> None:
    with pytest.raises(SealBrokenError):
        SEALER.open(token)


def test_non_canonical_base64_is_rejected() -> None:
    token = SEALER.seal("x")
    body = token.rsplit(".", 1)[1]
    # The last base64url character of an unpadded body carries unused low bits; setting one
    # keeps the decoded bytes but changes the spelling, which must not be accepted.
    unused_bits = {2: 0b1111, 3: 0b11}[len(body) % 4]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(body[-1])
    assert last & unused_bits == 0
    forged = token[:-1] + alphabet[last | 1]
    with pytest.raises(SealBrokenError):
        SEALER.open(forged)


def test_truncated_token_fails() -> None:
    token = SEALER.seal("Jane Doe")
    with pytest.raises(SealBrokenError):
        SEALER.open(token[:-4])


def test_unknown_kid() -> None:
    token = SEALER.seal("Jane Doe")
    other = Sealer(Keyring({"k2": KEY_A}, active="k2"))
    with pytest.raises(UnknownKeyError, match="k1"):
        other.open(token)


def test_swapping_kid_between_known_keys_fails() -> None:
    both = Sealer(Keyring({"k1": KEY_A, "k2": KEY_A}, active="k1"))
    token = both.seal("Jane Doe")
    with pytest.raises(SealBrokenError):
        both.open(token.replace("v1.k1.", "v1.k2.", 1))


def test_context_mismatch_fails() -> None:
    token = SEALER.seal("Jane Doe", context="name")
    with pytest.raises(SealBrokenError):
        SEALER.open(token, context="phone")
    with pytest.raises(SealBrokenError):
        SEALER.open(token)


def test_key_rotation() -> None:
    old = Sealer(Keyring.from_setting(f"k1:{b64(KEY_A)}"))
    token = old.seal("Jane Doe", context="name")
    rotated = Sealer(Keyring.from_setting(f"k2:{b64(KEY_B)}, k1:{b64(KEY_A)}"))
    assert rotated.keyring.active_kid == "k2"
    assert rotated.keyring.kids == ("k2", "k1")
    assert rotated.open(token, context="name") == "Jane Doe"
    fresh = rotated.seal("Jane Doe", context="name")
    assert fresh.startswith("v1.k2.")
    with pytest.raises(UnknownKeyError):
        old.open(fresh, context="name")


def test_keyring_is_immutable_and_hides_keys() -> None:
    keyring = Keyring({"k1": KEY_A, "k2": KEY_B}, active="k2")
    assert keyring.kids == ("k2", "k1")
    assert "k1" in keyring
    assert keyring.key("k1") == KEY_A
    with pytest.raises(AttributeError):
        keyring._active = "k1"
    with pytest.raises(UnknownKeyError):
        keyring.key("k3")
    assert b64(KEY_A) not in repr(keyring)
    assert str(KEY_A) not in repr(keyring)
    assert "hidden" in repr(INDEXER)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "malformed"),
        ("k1", "malformed"),
        ("k1:", "malformed"),
        (":" + b64(KEY_A), "malformed"),
        (f"k1:{b64(KEY_A)},", "malformed"),
        ("k1:" + b64(KEY_A[:16]), "32 bytes"),
        ("k1:" + b64(KEY_A + b"x"), "32 bytes"),
        ("k1:!!not*base64!!", "base64"),
        (f"k1:{b64(KEY_A)},k1:{b64(KEY_B)}", "duplicate"),
        (f"bad.kid:{b64(KEY_A)}", "key id"),
    ],
)
def test_bad_key_config(setting: str, message: str) -> None:
    with pytest.raises(KeyConfigError, match=message) as info:
        Keyring.from_setting(setting)
    assert b64(KEY_A) not in str(info.value)
    assert b64(KEY_B) not in str(info.value)


def test_key_setting_accepts_urlsafe_and_unpadded_base64() -> None:
    key = bytes([0xFB, 0xFF] * 16)
    urlsafe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert Keyring.from_setting(f" k1:{urlsafe} ").key("k1") == key


def test_bad_keyring_construction() -> None:
    with pytest.raises(KeyConfigError, match="32 bytes"):
        Keyring({"k1": KEY_A[:16]}, active="k1")
    with pytest.raises(KeyConfigError, match="not in the keyring"):
        Keyring({"k1": KEY_A}, active="k2")
    with pytest.raises(KeyConfigError, match="32 bytes"):
        BlindIndexer(b"short")
    with pytest.raises(KeyConfigError, match="32 bytes"):
        BlindIndexer.from_setting(b64(b"short"))


def test_generate_key_setting() -> None:
    setting = generate_key_setting("k9")
    keyring = Keyring.from_setting(setting)
    assert keyring.active_kid == "k9"
    assert len(keyring.key("k9")) == 32
    assert generate_key_setting("k9") != setting
    with pytest.raises(KeyConfigError):
        generate_key_setting("no:colons")


# --- Blind indexes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "given_name"),
    [
        ("O'Brien-Smith", "Mary"),
        ("obrien smith", "MARY"),
        ("O\u2019Brien Smith", "mary"),
        ("  O.BRIEN-SMITH, ", "Mary."),
        ("O\u0301'Brien-Smith", "Máry"),  # combining and precomposed accents
    ],
)
def test_name_dob_index_ignores_formatting(family: str, given_name: str) -> None:
    expected = INDEXER.name_dob("O'Brien-Smith", "Mary", date(1980, 1, 2))
    assert expected is not None
    assert INDEXER.name_dob(family, given_name, "1980-01-02") == expected


def test_name_accents_and_special_letters() -> None:
    assert normalize_name("José Muñoz") == "josemunoz"
    assert normalize_name("Łódź Søren Straße") == "lodzsorenstrasse"
    assert normalize_name("O'Brien-Smith, Mary") == "obriensmithmary"
    assert normalize_name(" - ., ") == ""


@pytest.mark.parametrize(
    "dob",
    [date(1980, 1, 2), datetime(1980, 1, 2, 13, 30), "1980-01-02", "19800102", "198001021330"],
)
def test_dob_formats_match(dob: date | str) -> None:
    assert normalize_dob(dob) == "1980-01-02"
    assert INDEXER.name_dob("Doe", "Jane", dob) == INDEXER.name_dob("Doe", "Jane", "1980-01-02")


@pytest.mark.parametrize("dob", ["", "1980", "198001", "1980-02-30", "02/01/1980", "19801302"])
def test_incomplete_or_invalid_dob_gives_no_index(dob: str) -> None:
    assert normalize_dob(dob) == ""
    assert INDEXER.name_dob("Doe", "Jane", dob) is None


def test_name_dob_needs_both_names() -> None:
    assert INDEXER.name_dob("", "Jane", "1980-01-02") is None
    assert INDEXER.name_dob("Doe", " - ", "1980-01-02") is None


def test_name_dob_differs_for_different_people() -> None:
    base = INDEXER.name_dob("Doe", "Jane", "1980-01-02")
    others = {
        INDEXER.name_dob("Doe", "Janet", "1980-01-02"),
        INDEXER.name_dob("Roe", "Jane", "1980-01-02"),
        INDEXER.name_dob("Doe", "Jane", "1980-01-03"),
        INDEXER.name_dob("Jane", "Doe", "1980-01-02"),  # family and given swapped
    }
    assert base not in others
    assert len(others) == 4
    # The separator keeps the family/given boundary.
    assert INDEXER.name_dob("ab", "c", "1980-01-02") != INDEXER.name_dob("a", "bc", "1980-01-02")


@pytest.mark.parametrize(
    "phone",
    [
        "3365550123",
        "+1 (336) 555-0123",
        "336.555.0123",
        "1-336-555-0123",
        "(336) 555-0123 x123",
        "336-555-0123 ext. 123",
        "336 555 0123 Extension 9",
        "+1 336 555 0123 #45",
        "".join(chr(0xFF10 + int(d)) for d in "13365550123"),  # full-width digits
    ],
)
def test_phone_formats_match(phone: str) -> None:
    assert normalize_phone(phone) == "3365550123"
    assert INDEXER.phone(phone) == INDEXER.phone("3365550123")


def test_phone_edge_cases() -> None:
    assert normalize_phone("555-0123") == "5550123"
    assert normalize_phone("+44 20 7946 0958") == "442079460958"
    assert normalize_phone("12345") == ""
    assert normalize_phone("") == ""
    assert INDEXER.phone("call me") is None
    assert INDEXER.phone("336-555-0123") != INDEXER.phone("336-555-0124")


def test_mrn_index() -> None:
    assert normalize_mrn(" General Hospital ", " 00 123 ") == "general hospital\x1f00123"
    expected = INDEXER.mrn("General Hospital", "00123A")
    assert expected is not None
    assert INDEXER.mrn("  GENERAL   hospital", "00123a ") == expected
    # Leading zeros are significant, and an MRN is scoped to its facility.
    assert INDEXER.mrn("General Hospital", "123A") != expected
    assert INDEXER.mrn("Other Hospital", "00123A") != expected
    assert INDEXER.mrn("", "00123A") is None
    assert INDEXER.mrn("General Hospital", "  ") is None


def test_index_construction_is_pinned() -> None:
    # Stored indexes depend on this exact construction; changing it orphans every index.
    expected = hmac.new(
        KEY_C, b"portline-blind-index-v1\x00phone\x003365550123", hashlib.sha256
    ).hexdigest()
    assert INDEXER.phone("336-555-0123") == expected


def test_kinds_are_domain_separated() -> None:
    value = "3365550123"
    digests = {INDEXER._digest(kind, value) for kind in ("name_dob", "phone", "mrn")}
    assert len(digests) == 3
    assert INDEXER.phone(value) != hmac.new(KEY_C, value.encode(), hashlib.sha256).hexdigest()


def test_different_key_gives_different_indexes() -> None:
    other = BlindIndexer(KEY_A)
    assert other.phone("3365550123") != INDEXER.phone("3365550123")
    assert other.name_dob("Doe", "Jane", "19800102") != INDEXER.name_dob("Doe", "Jane", "19800102")
    assert other.mrn("H", "1") != INDEXER.mrn("H", "1")


# --- Properties ----------------------------------------------------------------------------------


@given(plaintext=st.text(), context=st.text(max_size=20))
def test_seal_open_round_trip_property(plaintext: str, context: str) -> None:
    assert SEALER.open(SEALER.seal(plaintext, context=context), context=context) == plaintext


@given(st.text() | st.text(alphabet="0123456789 +-().#xXet", max_size=30))
def test_normalize_phone_is_idempotent(phone: str) -> None:
    once = normalize_phone(phone)
    assert normalize_phone(once) == once
    assert once == "" or (once.isdigit() and once.isascii() and len(once) >= 7)


_NAME_LETTERS = "abcdefghijklmnopqrstuvwxyzéèêëáàâäíìóöôúüñçøåß"
_NAME_JUNK = " -'.,\u2019\t"


@st.composite
def _name_and_variant(draw: st.DrawFn) -> tuple[str, str]:
    parts = draw(
        st.lists(
            st.tuples(
                st.sampled_from(_NAME_LETTERS),
                st.booleans(),
                st.text(alphabet=_NAME_JUNK, max_size=2),
            ),
            min_size=1,
            max_size=20,
        )
    )
    name = "".join(letter for letter, _, _ in parts)
    variant = "".join((c.upper() if up else c) + junk for c, up, junk in parts)
    return name, variant


@given(family=_name_and_variant(), given_name=_name_and_variant())
def test_name_index_invariant_under_formatting(
    family: tuple[str, str], given_name: tuple[str, str]
) -> None:
    dob = date(1990, 6, 15)
    assert INDEXER.name_dob(family[0], given_name[0], dob) == INDEXER.name_dob(
        family[1], given_name[1], "19900615"
    )


@given(st.text())
def test_normalize_name_is_idempotent_letters_only(name: str) -> None:
    once = normalize_name(name)
    assert normalize_name(once) == once
    assert all(ch.isalpha() for ch in once)


# --- Loading keys --------------------------------------------------------------------------------


def test_load_keys_generates_development_keys_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    var_dir = tmp_path / "var"
    settings = Settings(env="development", var_dir=var_dir)
    caplog.set_level(logging.INFO, logger="shared.sealing")

    sealer, indexer = load_keys(settings)

    keys_file = var_dir / "keys.json"
    assert keys_file.is_file()
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    stored = json.loads(keys_file.read_text())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "development" in warnings[0].getMessage()
    seal_key_b64 = stored["seal_keys"].split(":", 1)[1]
    for record in caplog.records:
        assert seal_key_b64 not in record.getMessage()
        assert stored["blind_index_key"] not in record.getMessage()
    assert seal_key_b64 not in caplog.text
    assert list(var_dir.iterdir()) == [keys_file]  # no temp files left behind

    caplog.clear()
    sealer2, indexer2 = load_keys(settings)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sealer2.open(sealer.seal("Jane Doe", context="name"), context="name") == "Jane Doe"
    assert indexer2.phone("3365550123") == indexer.phone("3365550123")
    assert json.loads(keys_file.read_text()) == stored


def test_load_keys_uses_given_logger(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.sealing.keys")
    caplog.set_level(logging.WARNING, logger="test.sealing.keys")
    load_keys(Settings(env="development", var_dir=tmp_path), logger=logger)
    assert [r.name for r in caplog.records] == ["test.sealing.keys"]


def test_load_keys_prefers_configured_keys(tmp_path: Path) -> None:
    settings = Settings(
        env="development",
        var_dir=tmp_path,
        seal_keys=SecretStr(f"k2:{b64(KEY_B)},k1:{b64(KEY_A)}"),
        blind_index_key=SecretStr(b64(KEY_C)),
    )
    sealer, indexer = load_keys(settings)
    assert sealer.keyring.kids == ("k2", "k1")
    assert sealer.open(SEALER.seal("Jane Doe")) == "Jane Doe"
    assert indexer.phone("3365550123") == INDEXER.phone("3365550123")
    assert not (tmp_path / "keys.json").exists()


def test_load_keys_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTLINE_SEAL_KEYS", f"k1:{b64(KEY_A)}")
    monkeypatch.setenv("PORTLINE_BLIND_INDEX_KEY", b64(KEY_C))
    sealer, _ = load_keys(Settings(env="test", var_dir=tmp_path))
    assert sealer.open(SEALER.seal("x")) == "x"


@pytest.mark.parametrize(
    ("seal_keys", "missing"),
    [
        (None, "PORTLINE_SEAL_KEYS and PORTLINE_BLIND_INDEX_KEY"),
        (f"k1:{b64(KEY_A)}", "PORTLINE_BLIND_INDEX_KEY not set"),
    ],
)
def test_load_keys_outside_development_requires_keys(
    tmp_path: Path, seal_keys: str | None, missing: str
) -> None:
    settings = Settings(
        env="test",
        var_dir=tmp_path,
        seal_keys=SecretStr(seal_keys) if seal_keys else None,
    )
    with pytest.raises(KeyConfigError, match=missing) as info:
        load_keys(settings)
    assert "PORTLINE_SEAL_KEYS" in str(info.value)
    assert "PORTLINE_BLIND_INDEX_KEY" in str(info.value)
    assert b64(KEY_A) not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_load_keys_rejects_corrupt_development_key_file(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text("{not json")
    with pytest.raises(KeyConfigError, match="delete it"):
        load_keys(Settings(env="development", var_dir=tmp_path))

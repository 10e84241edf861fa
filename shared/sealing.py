"""PHI sealing (AES-256-GCM tokens with key rotation) and keyed blind indexes for matching.

Exceptions:

    SealingError            base class; never carries plaintext or key material
    ├── KeyConfigError      bad key configuration: malformed, not 32 bytes, duplicate kid, missing
    ├── UnknownKeyError     a sealed value names a key id that is not in the keyring
    └── SealBrokenError     authentication failed: wrong key, wrong context, tampered or malformed
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from shared.settings import Settings

__all__ = [
    "KEY_BYTES",
    "LEGACY_BLIND_VERSION",
    "BlindIndexer",
    "KeyConfigError",
    "Keyring",
    "SealBrokenError",
    "Sealer",
    "SealingError",
    "UnknownKeyError",
    "generate_key_setting",
    "load_keys",
    "normalize_dob",
    "normalize_mrn",
    "normalize_name",
    "normalize_phone",
    "rotate_development_keys",
    "rotated_setting",
]

KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_VERSION = "v1"
_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_DEV_KID = "dev1"
_KEYS_FILE = "keys.json"
_ENV_VARS = "PORTLINE_SEAL_KEYS / PORTLINE_BLIND_INDEX_KEYS (or PORTLINE_BLIND_INDEX_KEY)"
LEGACY_BLIND_VERSION = "b1"
"""The version of the blind indexes computed with ``PORTLINE_BLIND_INDEX_KEY``, the one key there
was before blind-index keys had versions (and of every index stored before then)."""


class SealingError(Exception):
    """Base class for sealing and key errors. Messages never include plaintext or keys."""


class KeyConfigError(SealingError):
    """The key configuration is missing, malformed, has a duplicate kid or a key of wrong size."""


class UnknownKeyError(SealingError):
    """A sealed value names a key id that the keyring does not hold."""


class SealBrokenError(SealingError):
    """A sealed value failed authentication (wrong key or context, tampered or malformed)."""


def _check_kid(kid: str) -> str:
    if not _KID.match(kid):
        raise KeyConfigError(
            "key id must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-' "
            f"(got {len(kid)} characters)"
        )
    return kid


def _decode_key(value: str, *, what: str) -> bytes:
    """Decode standard or URL-safe base64 (padding optional) into exactly 32 bytes."""
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"{what} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyConfigError(f"{what} must be {KEY_BYTES} bytes after base64, got {len(raw)}")
    return raw


class Keyring:
    """An immutable set of 32-byte AES keys by key id; the active kid is the one that seals."""

    __slots__ = ("_active", "_keys")
    _active: str
    _keys: Mapping[str, bytes]

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        checked: dict[str, bytes] = {}
        for kid, key in keys.items():
            _check_kid(kid)
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise KeyConfigError(f"key {kid!r} must be exactly {KEY_BYTES} bytes")
            checked[kid] = key
        if active not in checked:
            raise KeyConfigError(f"active key id {active!r} is not in the keyring")
        # Active key first, so `kids` reads in the same order as the setting.
        ordered = {active: checked.pop(active), **checked}
        object.__setattr__(self, "_keys", MappingProxyType(ordered))
        object.__setattr__(self, "_active", active)

    @classmethod
    def from_setting(cls, value: str) -> Keyring:
        """Parse ``"kid:base64key[,kid:base64key...]"``; the first key is the active one."""
        keys: dict[str, bytes] = {}
        for position, entry in enumerate(value.strip().split(","), start=1):
            kid, sep, encoded = entry.strip().partition(":")
            kid = kid.strip()
            if not sep or not kid or not encoded.strip():
                raise KeyConfigError(
                    f"seal key entry {position} is malformed; expected 'kid:base64key'"
                )
            _check_kid(kid)
            if kid in keys:
                raise KeyConfigError(f"duplicate key id {kid!r} in seal keys")
            keys[kid] = _decode_key(encoded, what=f"seal key {kid!r}")
        return cls(keys, active=next(iter(keys)))

    @property
    def active_kid(self) -> str:
        """The key id used for sealing."""
        return self._active

    @property
    def kids(self) -> tuple[str, ...]:
        """All key ids, active first."""
        return tuple(self._keys)

    def key(self, kid: str) -> bytes:
        """The key for ``kid``; raises `UnknownKeyError` if the keyring does not hold it."""
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKeyError(f"no key with id {kid!r} in the keyring") from None

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Keyring is immutable")

    def __repr__(self) -> str:
        return f"Keyring(active={self._active!r}, kids={self.kids!r})"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not _B64URL.match(text):
        raise SealBrokenError("sealed value is malformed")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SealBrokenError("sealed value is malformed") from None
    # Only the canonical encoding is accepted, so a token has exactly one spelling.
    if _b64url(raw) != text:
        raise SealBrokenError("sealed value is malformed")
    return raw


def _aad(kid: str, context: str) -> bytes:
    # The kid charset excludes NUL, so the split between kid and context is unambiguous.
    return f"portline-seal-{_VERSION}\x00{kid}\x00{context}".encode()


class Sealer:
    """Seals strings into ``v1.<kid>.<base64url(nonce||ciphertext)>`` tokens and opens them.

    Pass the same ``context`` (e.g. the field name) to `seal` and `open`: a token sealed for one
    context does not open under another, so sealed values cannot be swapped between fields.
    """

    __slots__ = ("_aead", "_keyring")

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._aead = {kid: AESGCM(keyring.key(kid)) for kid in keyring.kids}

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def seal(self, plaintext: str, *, context: str = "") -> str:
        """Encrypt ``plaintext`` with the active key under a fresh random 96-bit nonce."""
        kid = self._keyring.active_kid
        nonce = secrets.token_bytes(_NONCE_BYTES)
        ciphertext = self._aead[kid].encrypt(nonce, plaintext.encode(), _aad(kid, context))
        return f"{_VERSION}.{kid}.{_b64url(nonce + ciphertext)}"

    def open(self, token: str, *, context: str = "") -> str:
        """Decrypt a token from `seal`; raises `SealBrokenError` or `UnknownKeyError`."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            raise SealBrokenError(f"sealed value is not a {_VERSION} token")
        _, kid, body = parts
        if not _KID.match(kid):
            raise SealBrokenError("sealed value has a malformed key id")
        if kid not in self._aead:
            raise UnknownKeyError(f"sealed value uses key id {kid!r}, which is not configured")
        raw = _unb64url(body)
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise SealBrokenError("sealed value is truncated")
        try:
            plain = self._aead[kid].decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(kid, context)
            )
        except InvalidTag:
            raise SealBrokenError(
                f"sealed value failed authentication with key {kid!r} "
                "(wrong key or context, or tampered data)"
            ) from None
        try:
            return plain.decode()
        except UnicodeDecodeError:  # pragma: no cover - only reachable with a forged valid tag
            raise SealBrokenError("sealed value is not UTF-8 text") from None

    def seal_json(self, value: Mapping[str, Any], *, context: str = "") -> str:
        """Seal a JSON object (e.g. a whole identity block) as one token."""
        text = json.dumps(dict(value), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return self.seal(text, context=context)

    def open_json(self, token: str, *, context: str = "") -> dict[str, Any]:
        """Open a token from `seal_json`."""
        try:
            value = json.loads(self.open(token, context=context))
        except json.JSONDecodeError:
            raise SealingError("sealed value is not JSON") from None
        if not isinstance(value, dict):
            raise SealingError("sealed value is not a JSON object")
        return value


# --- Blind indexes -------------------------------------------------------------------------------

# Letters NFKD does not decompose, so "Łódź" and "Lodz" (or "Søren"/"Soren") normalize alike.
_LETTER_FOLDS = str.maketrans(
    {
        "ø": "o",
        "ł": "l",
        "đ": "d",
        "ħ": "h",
        "\u0131": "i",
        "æ": "ae",
        "œ": "oe",
        "þ": "th",
        "ð": "d",
    }
)
_EXTENSION = re.compile(r"(?:ext(?:ension)?\.?|x|#)\s*\d*\s*$", re.IGNORECASE)
_NON_DIGIT = re.compile(r"[^0-9]")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
# HL7 TS: YYYYMMDD, optionally followed by a time, fraction and UTC offset.
_HL7_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})(?:\d{2,6}(?:\.\d{1,4})?)?(?:[+-]\d{4})?$")
_WHITESPACE = re.compile(r"\s+")
_UNIT_SEP = "\x1f"
_STANDARD_KINDS = frozenset({"name_dob", "name", "dob", "phone", "mrn"})


def normalize_name(s: str) -> str:
    """Fold a name to lowercase letters only: accents stripped, spaces and punctuation removed.

    ``"O'Brien-Smith"`` → ``"obriensmith"``, ``"José"`` → ``"jose"``.
    """
    text = unicodedata.normalize("NFKD", s).casefold().translate(_LETTER_FOLDS)
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if ch.isalpha())


def normalize_phone(s: str) -> str:
    """Digits only, extension dropped, a leading US country code 1 removed; "" if < 7 digits."""
    text = _EXTENSION.sub("", unicodedata.normalize("NFKC", s))
    digits = _NON_DIGIT.sub("", text)
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    return digits if len(digits) >= 7 else ""


def normalize_dob(dob: date | str) -> str:
    """A date, ``"YYYY-MM-DD"`` or HL7 ``"YYYYMMDD[hhmm...]"`` as ``"YYYY-MM-DD"``.

    Returns "" for anything that is not a full valid calendar date (HL7 allows year-only or
    year-month precision; those give no name+DOB index rather than a guessed day).
    """
    if isinstance(dob, datetime):
        return dob.date().isoformat()
    if isinstance(dob, date):
        return dob.isoformat()
    text = dob.strip()
    match = _ISO_DATE.match(text) or _HL7_DATE.match(text)
    if match is None:
        return ""
    try:
        return date(int(match[1]), int(match[2]), int(match[3])).isoformat()
    except ValueError:
        return ""


def normalize_mrn(facility: str, mrn: str) -> str:
    """``facility`` and ``mrn`` casefolded, whitespace removed, joined; "" if either is empty.

    An MRN only identifies a patient within its assigning facility, so both are required.
    """
    # Leading zeros are kept: MRNs are opaque identifiers, and some EHRs treat "00123" and
    # "123" as different patients. Stripping them would risk merging two people's records,
    # which is worse than missing a match.
    fac = _WHITESPACE.sub(" ", _strip_controls(facility)).strip().casefold()
    number = _WHITESPACE.sub("", _strip_controls(mrn)).casefold()
    if not fac or not number:
        return ""
    return f"{fac}{_UNIT_SEP}{number}"


def _strip_controls(s: str) -> str:
    text = unicodedata.normalize("NFKC", s)
    return "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) != "Cc")


class BlindIndexer:
    """Keyed HMAC-SHA256 blind indexes (hex) over normalized identifiers.

    Equal people give equal indexes across formatting differences; each kind of index is
    domain-separated, so equal normalized strings of different kinds never collide. The
    methods return None when there is nothing to index after normalization.

    Blind-index keys have versions (``b1``, ``b2``, ...) so that they can rotate: an indexer
    computes under its own (the active) version and holds the other versions configured beside
    it (``others``), so a service can compute a value under every version during a rotation
    (``held``). Indexes under different keys never collide, so they can be stored side by side.
    """

    __slots__ = ("_key", "_others", "_version")
    _key: bytes
    _others: tuple[BlindIndexer, ...]
    _version: str

    def __init__(
        self,
        key: bytes,
        *,
        version: str = LEGACY_BLIND_VERSION,
        others: Sequence[BlindIndexer] = (),
    ) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise KeyConfigError(f"blind index key must be exactly {KEY_BYTES} bytes")
        _check_kid(version)
        seen = {version}
        for other in others:
            if other._others:
                raise KeyConfigError("a blind indexer held beside another holds no others itself")
            if other.version in seen:
                raise KeyConfigError(f"duplicate blind index version {other.version!r}")
            seen.add(other.version)
        self._key = key
        self._version = version
        self._others = tuple(others)

    @classmethod
    def from_setting(cls, value: str) -> BlindIndexer:
        """Build from the base64 ``PORTLINE_BLIND_INDEX_KEY`` value (version ``b1``)."""
        return cls(_decode_key(value, what="blind index key"))

    @classmethod
    def from_versions(cls, value: str | None, *, legacy: str | None = None) -> BlindIndexer:
        """Build from ``PORTLINE_BLIND_INDEX_KEYS`` (``"b2:base64key,b1:base64key"``: the first
        version is the active one, all are held) and ``PORTLINE_BLIND_INDEX_KEY`` (``legacy``:
        version ``b1``, held last unless the versions list ``b1`` themselves)."""
        keys: dict[str, bytes] = {}
        entries = value.strip().split(",") if value and value.strip() else []
        for position, entry in enumerate(entries, start=1):
            version, sep, encoded = entry.strip().partition(":")
            version = version.strip()
            if not sep or not version or not encoded.strip():
                raise KeyConfigError(
                    f"blind index key entry {position} is malformed; expected 'version:base64key'"
                )
            _check_kid(version)
            if version in keys:
                raise KeyConfigError(f"duplicate version {version!r} in blind index keys")
            keys[version] = _decode_key(encoded, what=f"blind index key {version!r}")
        if legacy is not None:
            key = _decode_key(legacy, what="blind index key")
            held = keys.setdefault(LEGACY_BLIND_VERSION, key)
            if not hmac.compare_digest(held, key):
                raise KeyConfigError(
                    f"PORTLINE_BLIND_INDEX_KEY and version {LEGACY_BLIND_VERSION!r} of "
                    "PORTLINE_BLIND_INDEX_KEYS differ; set one of them"
                )
        if not keys:
            raise KeyConfigError("no blind index key given")
        (active, key), *rest = keys.items()
        return cls(key, version=active, others=[cls(k, version=v) for v, k in rest])

    @property
    def version(self) -> str:
        """The version this indexer computes under (the active one)."""
        return self._version

    @property
    def held(self) -> tuple[BlindIndexer, ...]:
        """This indexer and the other versions held beside it, active first."""
        return (self, *self._others)

    @property
    def versions(self) -> tuple[str, ...]:
        """Every version held, active first."""
        return tuple(i.version for i in self.held)

    def at(self, version: str) -> BlindIndexer:
        """The indexer of a version held; `UnknownKeyError` if it is not."""
        for indexer in self.held:
            if indexer.version == version:
                return indexer
        raise UnknownKeyError(f"no blind index key of version {version!r} is configured")

    def __repr__(self) -> str:
        return f"BlindIndexer(versions={self.versions!r}, keys=<hidden>)"

    def _digest(self, kind: str, normalized: str) -> str | None:
        if not normalized:
            return None
        message = f"portline-blind-index-v1\x00{kind}\x00{normalized}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def name_dob(self, family: str, given: str, dob: date | str) -> str | None:
        """Index of family name + given name + date of birth; None unless all three are present.

        Both names are required: a matching key built on a partial name merges people too easily.
        """
        fam, giv, day = normalize_name(family), normalize_name(given), normalize_dob(dob)
        if not (fam and giv and day):
            return None
        # "|" cannot survive normalize_name, so the parts cannot run into each other.
        return self._digest("name_dob", f"{fam}|{giv}|{day}")

    def name(self, family: str, given: str) -> str | None:
        """Index of a full name alone, the same with family and given swapped: for blocking
        (finding candidates to compare under the seal), never for a match on its own."""
        parts = sorted((normalize_name(family), normalize_name(given)))
        if not all(parts):
            return None
        return self._digest("name", "|".join(parts))

    def derived(self, kind: str, value: str) -> str | None:
        """Index of a value a service derived and normalized itself (a phonetic code of a
        name, say), under a kind of its own: for blocking only. None if the value is empty."""
        if kind in _STANDARD_KINDS:
            raise ValueError(f"{kind!r} is a standard blind index kind; use its own method")
        return self._digest(kind, value)

    def dob(self, dob: date | str) -> str | None:
        """Index of a date of birth alone: for blocking (finding candidates to compare under
        the seal), never for a match on its own."""
        return self._digest("dob", normalize_dob(dob) if dob else "")

    def phone(self, phone: str) -> str | None:
        """Index of a phone number; None if it has fewer than 7 digits."""
        return self._digest("phone", normalize_phone(phone))

    def mrn(self, facility: str, mrn: str) -> str | None:
        """Index of a facility-scoped medical record number; None if either part is empty."""
        return self._digest("mrn", normalize_mrn(facility, mrn))


# --- Loading keys --------------------------------------------------------------------------------


def generate_key_setting(kid: str) -> str:
    """A fresh ``"kid:base64key"`` entry for ``PORTLINE_SEAL_KEYS`` (prepend it to rotate)."""
    _check_kid(kid)
    return f"{kid}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode('ascii')}"


_NUMBERED_KID = re.compile(r"^k(\d{1,9})$")


def rotated_setting(current: str, kid: str | None = None) -> tuple[str, str]:
    """``(kid, setting)``: a fresh key put first in a ``PORTLINE_SEAL_KEYS`` value, the old
    keys kept after it so that what they sealed still opens. Without ``kid``, the next of
    k1, k2, ... that the keyring does not hold."""
    keyring = Keyring.from_setting(current)
    if kid is None:
        numbers = [int(m[1]) for k in keyring.kids if (m := _NUMBERED_KID.match(k))]
        n = max(numbers, default=0) + 1
        while f"k{n}" in keyring:
            n += 1
        kid = f"k{n}"
    if kid in keyring:
        raise KeyConfigError(f"key id {kid!r} is already in the keyring")
    return kid, f"{generate_key_setting(kid)},{current.strip()}"


def rotate_development_keys(var_dir: Path, kid: str | None = None) -> str:
    """Put a fresh sealing key first in the development key file; the new key id."""
    path = Path(var_dir) / _KEYS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        current = str(data["seal_keys"])
    except (OSError, ValueError, KeyError, TypeError):
        raise KeyConfigError(
            f"development key file {path} is unreadable or malformed; delete it to regenerate"
        ) from None
    new_kid, data["seal_keys"] = rotated_setting(current, kid)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return new_kid


def _secret(value: SecretStr | None) -> str | None:
    if value is None:
        return None
    text = value.get_secret_value().strip()
    return text or None


def load_keys(
    settings: Settings, *, logger: logging.Logger | None = None
) -> tuple[Sealer, BlindIndexer]:
    """The sealer and blind indexer for ``settings``.

    Configured keys are always used. Missing keys are generated once into
    ``var_dir/keys.json`` (mode 0600) in development only; anywhere else they are an error.
    """
    log = logger or logging.getLogger(__name__)
    seal_setting = _secret(settings.seal_keys)
    versions_setting = _secret(settings.blind_index_keys)
    index_setting = _secret(settings.blind_index_key)
    if seal_setting is None or (index_setting is None and versions_setting is None):
        if not settings.is_development:
            missing = [
                name
                for name, value in (
                    ("PORTLINE_SEAL_KEYS", seal_setting),
                    ("PORTLINE_BLIND_INDEX_KEY", versions_setting or index_setting),
                )
                if value is None
            ]
            raise KeyConfigError(
                f"{' and '.join(missing)} not set (PORTLINE_ENV={settings.env}); "
                f"set {_ENV_VARS} (generate values with generate_key_setting); "
                "keys are generated automatically only in development"
            )
        dev = _development_keys(Path(settings.var_dir) / _KEYS_FILE, log)
        seal_setting = seal_setting or dev["seal_keys"]
        if versions_setting is None:
            index_setting = index_setting or dev["blind_index_key"]
    return (
        Sealer(Keyring.from_setting(seal_setting)),
        BlindIndexer.from_versions(versions_setting, legacy=index_setting),
    )


def _development_keys(path: Path, log: logging.Logger) -> dict[str, str]:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        content = json.dumps(
            {
                "seal_keys": generate_key_setting(_DEV_KID),
                "blind_index_key": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode(),
            },
            indent=2,
        )
        # Write a private temp file, then hard-link it into place: the link fails if another
        # service got there first, so concurrently starting services all end up on one key set.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(content + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass
        else:
            log.warning(
                "generated development PHI keys in %s; they are for development only "
                "and must never be used with real patient data",
                path,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = {name: str(data[name]) for name in ("seal_keys", "blind_index_key")}
    except (OSError, ValueError, KeyError, TypeError):
        raise KeyConfigError(
            f"development key file {path} is unreadable or malformed; delete it to regenerate"
        ) from None
    log.info("using development PHI keys from %s", path)
    return keys

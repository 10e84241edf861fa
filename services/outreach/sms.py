"""Text messages to the people a peer reaches out to: sending, templates, replies, webhooks.

Everything here is pure except `TwilioStyleProvider.send`, which makes one HTTP call with the
client it is given. Configuration is passed in; nothing reads settings.

Phone numbers and message bodies are PHI, so no error message here contains them, nor the
provider's auth token. Provider error texts are never copied either: they often quote the number.

Exceptions:

    SmsError                    base class; never carries a phone number, a body or a secret
    ├── SmsNotConfiguredError   the provider configuration is missing or unusable
    ├── SmsUnavailableError     transient: unreachable, timed out, HTTP 429 or 5xx, or an
    │                           unreadable success response; answer 503, a retry may succeed
    ├── SmsRejectedError        the provider refused the message for good (any other 4xx)
    └── TemplateError           a template is invalid, or cannot be rendered with the variables
        └── UnknownTemplateError    no template has that name

`TwilioStyleProvider.send` raises `ValueError` (not an `SmsError`) for a ``to`` number that is
not a phone number or an empty or over-long body: that is a caller's bug, not a provider problem.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import string
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

import httpx

__all__ = [
    "MAX_BODY_CHARS",
    "TEMPLATE_VARIABLES",
    "InboundKind",
    "SentMessage",
    "SmsConfig",
    "SmsError",
    "SmsNotConfiguredError",
    "SmsProvider",
    "SmsRejectedError",
    "SmsUnavailableError",
    "TemplateBook",
    "TemplateError",
    "TwilioStyleProvider",
    "UnknownTemplateError",
    "classify_inbound",
    "request_signature",
    "to_e164",
    "verify_signature",
]

MAX_BODY_CHARS = 1600
"""The longest body the provider accepts (it is split into segments on the way)."""

TEMPLATE_VARIABLES = frozenset({"first_name", "peer_name", "peer_phone", "program_name"})
"""The only placeholders a template may use."""


class SmsError(Exception):
    """Base class for SMS errors. Messages never include a phone number, a body or a secret."""


class SmsNotConfiguredError(SmsError):
    """The SMS provider configuration is missing or unusable."""


class SmsUnavailableError(SmsError):
    """The provider could not take the message now; the same request may succeed later."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        """The provider's ``Retry-After`` in seconds, when it sent one."""


class SmsRejectedError(SmsError):
    """The provider refused the message; sending it again will not help."""

    def __init__(self, message: str, *, status: int, provider_code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.provider_code = provider_code
        """The provider's own error code (Twilio's ``code``, e.g. ``"21610"``), if it sent one."""


class TemplateError(SmsError):
    """A template is invalid, or the variables given cannot render it."""


class UnknownTemplateError(TemplateError):
    """No template has the name asked for."""


# --- Phone numbers -------------------------------------------------------------------------------

# Separators people type inside a number: spaces, dashes (incl. Unicode ones), dots, brackets.
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015.()/]")
_DIGITS = re.compile(r"^[0-9]+$")
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
_COUNTRY_CODE = re.compile(r"^[1-9][0-9]{0,2}$")


def to_e164(phone: str, *, default_country_code: str = "1") -> str | None:
    """``phone`` as an E.164 number (``+`` and 8-15 digits), or None if it is not one.

    Spaces and punctuation are dropped. Ten digits get ``default_country_code``; the country
    code followed by ten digits gets a ``+``; a number written with ``+`` is kept as it is.
    Anything else (letters, extensions, too few or too many digits) gives None.
    """
    if not _COUNTRY_CODE.match(default_country_code):
        raise ValueError("default_country_code must be 1-3 digits, not starting with 0")
    text = _SEPARATORS.sub("", unicodedata.normalize("NFKC", phone))
    if text.startswith("+"):
        candidate = text
    elif not _DIGITS.match(text):
        return None
    elif len(text) == 10:
        candidate = f"+{default_country_code}{text}"
    elif len(text) == len(default_country_code) + 10 and text.startswith(default_country_code):
        candidate = f"+{text}"
    else:
        return None
    return candidate if _E164.match(candidate) else None


# --- Sending -------------------------------------------------------------------------------------

_ACCOUNT_SID = re.compile(r"^[A-Za-z0-9]+$")


@dataclass(frozen=True, slots=True)
class SmsConfig:
    """How to reach a Twilio-style provider; the auth token stays out of the repr."""

    base_url: str
    account_sid: str
    auth_token: str = field(repr=False)
    from_number: str
    timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class SentMessage:
    """The provider's id for an accepted message and its status at that moment."""

    provider_id: str
    status: str


class SmsProvider(Protocol):
    async def send(self, *, to: str, body: str) -> SentMessage:
        """Hand one text to the provider; raises `SmsUnavailableError` or `SmsRejectedError`."""
        ...


class TwilioStyleProvider:
    """Sends texts through Twilio's Messages API, or any provider that speaks it."""

    __slots__ = ("_auth", "_client", "_from", "_timeout", "_url")

    def __init__(self, config: SmsConfig, client: httpx.AsyncClient) -> None:
        missing = [
            name
            for name in ("base_url", "account_sid", "auth_token", "from_number")
            if not getattr(config, name).strip()
        ]
        if missing:
            raise SmsNotConfiguredError(f"SMS provider setting(s) missing: {', '.join(missing)}")
        base_url = config.base_url.strip().rstrip("/")
        if not base_url.startswith(("https://", "http://")):
            raise SmsNotConfiguredError(
                "SMS provider base_url must start with https:// (or http:// for a local fake)"
            )
        if not _ACCOUNT_SID.match(config.account_sid):
            raise SmsNotConfiguredError("SMS provider account_sid must be letters and digits")
        if not config.timeout_seconds > 0:
            raise SmsNotConfiguredError("SMS provider timeout_seconds must be positive")
        self._url = f"{base_url}/2010-04-01/Accounts/{config.account_sid}/Messages.json"
        self._auth = (config.account_sid, config.auth_token)
        self._from = config.from_number.strip()
        self._timeout = config.timeout_seconds
        self._client = client

    def __repr__(self) -> str:
        return f"TwilioStyleProvider(url={self._url!r})"

    async def send(self, *, to: str, body: str) -> SentMessage:
        """Send ``body`` to ``to`` (normalized to E.164 first)."""
        number = to_e164(to)
        if number is None:
            raise ValueError("the recipient's phone number cannot be written in E.164 form")
        if not body.strip():
            raise ValueError("the message body is empty")
        if len(body) > MAX_BODY_CHARS:
            raise ValueError(
                f"the message body is {len(body)} characters; the limit is {MAX_BODY_CHARS}"
            )
        try:
            response = await self._client.post(
                self._url,
                data={"To": number, "From": self._from, "Body": body},
                auth=self._auth,
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            # `from None`: httpx errors hold the request, and the request holds the number.
            raise SmsUnavailableError(f"SMS provider timed out ({type(exc).__name__})") from None
        except httpx.RequestError as exc:
            raise SmsUnavailableError(
                f"SMS provider could not be reached ({type(exc).__name__})"
            ) from None
        return _sent_message(response)


def _sent_message(response: httpx.Response) -> SentMessage:
    status = response.status_code
    if status == 429 or status >= 500:
        raise SmsUnavailableError(
            f"SMS provider is unavailable (HTTP {status})",
            retry_after_seconds=_retry_after(response),
        )
    if 400 <= status < 500:
        code = _json_object(response).get("code")
        provider_code = str(code) if isinstance(code, str | int) and code != "" else None
        raise SmsRejectedError(
            f"SMS provider rejected the message (HTTP {status}, code {provider_code or 'none'})",
            status=status,
            provider_code=provider_code,
        )
    if not 200 <= status < 300:
        raise SmsUnavailableError(f"SMS provider gave an unexpected response (HTTP {status})")
    data = _json_object(response)
    sid = data.get("sid")
    message_status = data.get("status", "queued")
    if not (isinstance(sid, str) and sid and isinstance(message_status, str)):
        # The message was probably accepted; a retry may send it twice. The caller decides.
        raise SmsUnavailableError(
            f"SMS provider accepted the request (HTTP {status}) but its response is unreadable"
        )
    return SentMessage(provider_id=sid, status=message_status)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


# --- Templates -----------------------------------------------------------------------------------

_TEMPLATE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Worst-case length of one filled placeholder when a template's rendered length is checked.
_PLACEHOLDER_ALLOWANCE = 64
# A text can be read by whoever holds the phone, so nothing may say what the program is about.
_INDISCREET = re.compile(
    r"\b(overdos\w*|drug\w*|naloxone|narcan|opioids?|opiates?|fentanyl|heroin|hospital\w*"
    r"|police|sheriffs?|deput(?:y|ies)|ambulance|paramedics?|ems|rehab|addiction|od'?d|ods|od)\b",
    re.IGNORECASE,
)
# Variables whose values are checked like template text (people's names are not).
_CHECKED_VARIABLES = ("program_name",)

_DEFAULT_TEMPLATES: Mapping[str, str] = MappingProxyType(
    {
        "first_contact": (
            "Hi ${first_name}, this is ${peer_name} with ${program_name}. I'd like to check in "
            "with you. You can reply or call me at ${peer_phone}. Reply STOP to opt out."
        ),
        "follow_up": (
            "Hi ${first_name}, it's ${peer_name} from ${program_name} again. Just checking in to "
            "see how you're doing. Text or call me at ${peer_phone} any time. "
            "Reply STOP to opt out."
        ),
        "missed_you": (
            "Hi ${first_name}, this is ${peer_name} with ${program_name}. Sorry I missed you. "
            "I'm here when you want to talk: ${peer_phone}. Reply STOP to opt out."
        ),
    }
)


def _indiscreet_word(text: str) -> str | None:
    match = _INDISCREET.search(text)
    return match.group(0) if match else None


def _compile(name: object, text: object) -> string.Template:
    if not isinstance(name, str) or not _TEMPLATE_NAME.match(name):
        raise TemplateError(
            f"template name {name!r} must be 1-64 characters of a-z, 0-9 and '_', "
            "starting with a letter"
        )
    if not isinstance(text, str):
        raise TemplateError(f"template {name!r} must be a string, not {type(text).__name__}")
    if not text.strip():
        raise TemplateError(f"template {name!r} is empty")
    template = string.Template(text)
    if not template.is_valid():
        raise TemplateError(
            f"template {name!r} has a malformed placeholder; write $name or ${{name}}, "
            "and $$ for a literal $"
        )
    unknown = sorted(set(template.get_identifiers()) - TEMPLATE_VARIABLES)
    if unknown:
        raise TemplateError(
            f"template {name!r} uses unknown placeholder(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(TEMPLATE_VARIABLES))}"
        )
    word = _indiscreet_word(template.safe_substitute(dict.fromkeys(TEMPLATE_VARIABLES, "")))
    if word is not None:
        raise TemplateError(
            f"template {name!r} says {word!r}; texts must not say what the program is about, "
            "because others may read the phone"
        )
    longest = len(
        template.substitute(dict.fromkeys(TEMPLATE_VARIABLES, "x" * _PLACEHOLDER_ALLOWANCE))
    )
    if longest > MAX_BODY_CHARS:
        raise TemplateError(
            f"template {name!r} can render to {longest} characters (each placeholder counted "
            f"as {_PLACEHOLDER_ALLOWANCE}); the limit is {MAX_BODY_CHARS}"
        )
    return template


class TemplateBook:
    """Named message templates with ``$name``/``${name}`` placeholders, validated when built.

    A template may use only `TEMPLATE_VARIABLES`, must not be empty, must fit in
    `MAX_BODY_CHARS` with every placeholder filled by 64 characters, and must not mention
    overdose, drugs, naloxone, hospitals or police: a shared phone may be read by others.
    """

    __slots__ = ("_templates",)

    def __init__(self, templates: Mapping[str, str]) -> None:
        compiled = {name: _compile(name, text) for name, text in templates.items()}
        self._templates: Mapping[str, string.Template] = MappingProxyType(
            dict(sorted(compiled.items()))
        )

    @classmethod
    def default(cls) -> TemplateBook:
        """The built-in, discreet templates: ``first_contact``, ``follow_up``, ``missed_you``."""
        return cls(_DEFAULT_TEMPLATES)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> TemplateBook:
        """The defaults, with the ``[templates]`` table of the TOML file at ``path`` on top.

        A template in the file replaces the default of the same name; new names are added.
        """
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except OSError as exc:
            raise TemplateError(
                f"cannot read template file {os.fspath(path)}: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise TemplateError(
                f"template file {os.fspath(path)} is not valid TOML: {exc}"
            ) from None
        table = document.get("templates")
        if not isinstance(table, dict):
            raise TemplateError(f"template file {os.fspath(path)} has no [templates] table")
        return cls({**_DEFAULT_TEMPLATES, **table})

    def names(self) -> list[str]:
        """The template names, sorted."""
        return list(self._templates)

    def describe(self) -> dict[str, str]:
        """Each template's text by name, sorted by name."""
        return {name: template.template for name, template in self._templates.items()}

    def render(self, name: str, variables: Mapping[str, str]) -> str:
        """The text of template ``name`` filled with ``variables`` (extra variables are ignored)."""
        template = self._templates.get(name)
        if template is None:
            raise UnknownTemplateError(f"no template named {name!r}")
        needed = set(template.get_identifiers())
        missing = sorted(needed - variables.keys())
        if missing:
            raise TemplateError(f"template {name!r} needs variable(s) {', '.join(missing)}")
        for variable in _CHECKED_VARIABLES:
            word = _indiscreet_word(variables[variable]) if variable in needed else None
            if word is not None:
                raise TemplateError(
                    f"variable {variable} for template {name!r} says {word!r}; texts must not "
                    "say what the program is about, because others may read the phone"
                )
        text = template.substitute({key: variables[key] for key in needed})
        if len(text) > MAX_BODY_CHARS:
            raise TemplateError(
                f"template {name!r} rendered to {len(text)} characters; "
                f"the limit is {MAX_BODY_CHARS}"
            )
        return text

    def __repr__(self) -> str:
        return f"TemplateBook(names={self.names()!r})"


# --- Replies -------------------------------------------------------------------------------------

InboundKind = Literal["opt_out", "opt_in", "help", "message"]

_KEYWORDS: Mapping[str, InboundKind] = MappingProxyType(
    {
        **dict.fromkeys(
            ("stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout"),
            "opt_out",
        ),
        **dict.fromkeys(("start", "unstop", "yes"), "opt_in"),
        **dict.fromkeys(("help", "info"), "help"),
    }
)
_TRAILING_PUNCTUATION = ".!?,;:"


def classify_inbound(body: str) -> InboundKind:
    """What a reply asks for: a keyword only counts when it is the whole message.

    ``"Stop."`` opts out; ``"stop by tomorrow"`` is a message for the peer to read.
    """
    text = unicodedata.normalize("NFKC", body).strip().rstrip(_TRAILING_PUNCTUATION).strip()
    return _KEYWORDS.get(text.casefold(), "message")


# --- Webhook signatures --------------------------------------------------------------------------


def request_signature(url: str, params: Mapping[str, str], auth_token: str) -> str:
    """Twilio's ``X-Twilio-Signature`` for a POST to ``url`` with form ``params``.

    Base64 of HMAC-SHA1, keyed with the auth token, over the URL followed by each parameter's
    name and value in name order. ``url`` is the full public URL the provider called, query
    string included.
    """
    payload = url + "".join(key + params[key] for key in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_signature(
    url: str, params: Mapping[str, str], auth_token: str, signature: str | None
) -> bool:
    """Whether ``signature`` is the provider's signature of this request; False when absent."""
    if not signature or not auth_token:
        return False
    expected = request_signature(url, params, auth_token)
    return hmac.compare_digest(expected.encode(), signature.encode())

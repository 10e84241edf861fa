"""Outreach texts: the provider call, phone numbers, templates, replies and webhook signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.outreach.sms import (
    MAX_BODY_CHARS,
    SentMessage,
    SmsConfig,
    SmsError,
    SmsNotConfiguredError,
    SmsProvider,
    SmsRejectedError,
    SmsUnavailableError,
    TemplateBook,
    TemplateError,
    TwilioStyleProvider,
    UnknownTemplateError,
    classify_inbound,
    request_signature,
    to_e164,
    verify_signature,
)

TOKEN = "tok-3f9a2c71d0e84b5f"
SID = "AC0123456789abcdef0123456789abcdef"
CONFIG = SmsConfig(
    base_url="https://sms.example.test/",
    account_sid=SID,
    auth_token=TOKEN,
    from_number="+15005550006",
    timeout_seconds=4.5,
)
PHONE = "(312) 555-0147"
PHONE_E164 = "+13125550147"
BODY = "Hi Dana, this is Sam with Bridges. Reply STOP to opt out."
MESSAGES_URL = f"https://sms.example.test/2010-04-01/Accounts/{SID}/Messages.json"
VARIABLES = {
    "first_name": "Dana",
    "peer_name": "Sam",
    "peer_phone": "(312) 555-0100",
    "program_name": "Bridges",
}
# Words a text must never contain: the phone may be shared.
FORBIDDEN = re.compile(
    r"overdose|drug|naloxone|narcan|opioid|fentanyl|hospital|police|sheriff|deputy|\bOD\b",
    re.IGNORECASE,
)

Handler = Callable[[httpx.Request], httpx.Response]


async def send(handler: Handler, *, to: str = PHONE, body: str = BODY) -> SentMessage:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider: SmsProvider = TwilioStyleProvider(CONFIG, client)
        return await provider.send(to=to, body=body)


def reply(status: int, json: object = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=json, headers=headers)

    return handler


def assert_no_secrets(error: BaseException) -> None:
    for text in (str(error), repr(error)):
        for secret in (PHONE, PHONE_E164, "5550147", BODY, "Dana", TOKEN):
            assert secret not in text
    # A chained httpx error would carry the request, and with it the number and the body.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


# --- Sending ---------------------------------------------------------------------------------


async def test_send_posts_the_form_with_basic_auth_and_the_configured_timeout() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"sid": "SM123", "status": "queued"})

    await send(handler)

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == MESSAGES_URL
    credentials = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {credentials}"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = parse_qs(request.content.decode(), strict_parsing=True)
    assert form == {"To": [PHONE_E164], "From": ["+15005550006"], "Body": [BODY]}
    assert request.extensions["timeout"] == dict.fromkeys(("connect", "read", "write", "pool"), 4.5)


async def test_success_returns_the_provider_id_and_status() -> None:
    sent = await send(reply(201, {"sid": "SM123", "status": "accepted", "to": PHONE_E164}))
    assert sent == SentMessage(provider_id="SM123", status="accepted")


async def test_success_without_a_status_is_queued() -> None:
    assert await send(reply(200, {"sid": "SM9"})) == SentMessage(provider_id="SM9", status="queued")


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_throttling_and_server_errors_are_transient(status: int) -> None:
    with pytest.raises(SmsUnavailableError) as caught:
        await send(reply(status, {"code": 20429, "message": f"To {PHONE_E164}: try later"}))
    assert f"HTTP {status}" in str(caught.value)
    assert_no_secrets(caught.value)


async def test_retry_after_is_passed_on() -> None:
    with pytest.raises(SmsUnavailableError) as caught:
        await send(reply(429, headers={"Retry-After": "30"}))
    assert caught.value.retry_after_seconds == 30.0


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.RemoteProtocolError],
)
async def test_transport_failures_are_transient(error: type[httpx.TransportError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error(f"failed sending {request.content!r}", request=request)

    with pytest.raises(SmsUnavailableError) as caught:
        await send(handler)
    assert caught.value.retry_after_seconds is None
    assert_no_secrets(caught.value)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(201, text="<html>ok</html>"),
        httpx.Response(201, json=["SM1"]),
        httpx.Response(201, json={"status": "queued"}),
        httpx.Response(201, json={"sid": "", "status": "queued"}),
        httpx.Response(201, json={"sid": 12, "status": "queued"}),
        httpx.Response(201, json={"sid": "SM1", "status": None}),
    ],
)
async def test_a_success_with_an_unreadable_body_is_transient(response: httpx.Response) -> None:
    with pytest.raises(SmsUnavailableError, match="unreadable"):
        await send(lambda request: response)


async def test_a_redirect_is_not_followed_and_is_transient() -> None:
    with pytest.raises(SmsUnavailableError, match="HTTP 302"):
        await send(reply(302, headers={"Location": "https://elsewhere.test/"}))


async def test_a_refusal_carries_the_status_and_provider_code_but_not_its_text() -> None:
    body = {"code": 21211, "message": f"The 'To' number {PHONE_E164} is not valid.", "status": 400}
    with pytest.raises(SmsRejectedError) as caught:
        await send(reply(400, body))
    assert caught.value.status == 400
    assert caught.value.provider_code == "21211"
    assert "21211" in str(caught.value)
    assert "not valid" not in str(caught.value)
    assert_no_secrets(caught.value)


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (httpx.Response(401, json={"code": "20003"}), 401),
        (httpx.Response(403, text="Forbidden"), 403),
        (httpx.Response(404, json={"message": "not found"}), 404),
        (httpx.Response(400, json={"code": None}), 400),
    ],
)
async def test_other_client_errors_are_refusals(response: httpx.Response, status: int) -> None:
    with pytest.raises(SmsRejectedError) as caught:
        await send(lambda request: response)
    assert caught.value.status == status
    assert caught.value.provider_code == ("20003" if status == 401 else None)


def test_errors_share_one_base_class() -> None:
    for error in (SmsNotConfiguredError, SmsUnavailableError, SmsRejectedError, TemplateError):
        assert issubclass(error, SmsError)
    assert issubclass(UnknownTemplateError, TemplateError)


@pytest.mark.parametrize("to", ["", "911", "call me", "+1 312 555 0147 ext 9", "555-0147"])
async def test_a_recipient_that_is_not_a_phone_number_is_a_value_error(to: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    with pytest.raises(ValueError, match="E\\.164") as caught:
        await send(handler, to=to)
    assert not isinstance(caught.value, SmsError)
    if to:
        assert to not in str(caught.value)


@pytest.mark.parametrize("body", ["", "   ", "x" * (MAX_BODY_CHARS + 1)])
async def test_an_empty_or_over_long_body_is_a_value_error(body: str) -> None:
    with pytest.raises(ValueError, match="body"):
        await send(reply(201, {"sid": "SM1"}), body=body)


def test_the_config_repr_hides_the_auth_token() -> None:
    assert TOKEN not in repr(CONFIG)
    assert SID in repr(CONFIG)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"base_url": ""}, "base_url"),
        ({"auth_token": "  "}, "auth_token"),
        ({"account_sid": "", "from_number": ""}, "account_sid, from_number"),
        ({"base_url": "sms.example.test"}, "https://"),
        ({"account_sid": "AC1/../x"}, "account_sid"),
        ({"timeout_seconds": 0.0}, "timeout_seconds"),
    ],
)
async def test_an_unusable_config_is_not_configured(
    changes: dict[str, object], message: str
) -> None:
    fields = {
        "base_url": CONFIG.base_url,
        "account_sid": CONFIG.account_sid,
        "auth_token": CONFIG.auth_token,
        "from_number": CONFIG.from_number,
        "timeout_seconds": CONFIG.timeout_seconds,
        **changes,
    }
    async with httpx.AsyncClient(transport=httpx.MockTransport(reply(201))) as client:
        with pytest.raises(SmsNotConfiguredError, match=re.escape(message)) as caught:
            TwilioStyleProvider(SmsConfig(**fields), client)  # type: ignore[arg-type]
    assert TOKEN not in str(caught.value)


# --- Phone numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "expected"),
    [
        ("3125550147", "+13125550147"),
        ("(312) 555-0147", "+13125550147"),
        ("312.555.0147", "+13125550147"),
        (" 312 555 0147 ", "+13125550147"),
        ("13125550147", "+13125550147"),
        ("1-312-555-0147", "+13125550147"),
        ("+1 (312) 555-0147", "+13125550147"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+4930123456", "+4930123456"),
        ("+12345678", "+12345678"),
        ("+123456789012345", "+123456789012345"),
        ("\uff13\uff11\uff12\uff15\uff15\uff15\uff10\uff11\uff14\uff17", "+13125550147"),
        ("", None),
        ("5550147", None),
        ("23125550147", None),
        ("113125550147", None),
        ("+1234567", None),
        ("+1234567890123456", None),
        ("+0441234567890", None),
        ("++13125550147", None),
        ("1+3125550147", None),
        ("312-555-0147 x12", None),
        ("312-555-CALL", None),
        ("tel:+13125550147", None),
    ],
)
def test_to_e164(phone: str, expected: str | None) -> None:
    assert to_e164(phone) == expected


def test_to_e164_with_another_default_country_code() -> None:
    assert to_e164("2079460958", default_country_code="44") == "+442079460958"
    assert to_e164("442079460958", default_country_code="44") == "+442079460958"
    assert to_e164("13125550147", default_country_code="44") is None
    with pytest.raises(ValueError, match="default_country_code"):
        to_e164("3125550147", default_country_code="+1")


@given(st.text(alphabet="0123456789+-(). x", max_size=20))
def test_to_e164_gives_e164_or_none_and_is_idempotent(phone: str) -> None:
    result = to_e164(phone)
    if result is not None:
        assert re.fullmatch(r"\+\d{8,15}", result)
        assert to_e164(result) == result


# --- Templates -------------------------------------------------------------------------------


def test_the_default_templates_are_discreet() -> None:
    book = TemplateBook.default()
    assert {"first_contact", "follow_up", "missed_you"} <= set(book.names())
    for name, text in book.describe().items():
        assert not FORBIDDEN.search(text), name
        assert not FORBIDDEN.search(book.render(name, VARIABLES)), name
        assert "STOP" in text


def test_first_contact_renders() -> None:
    assert TemplateBook.default().render("first_contact", VARIABLES) == (
        "Hi Dana, this is Sam with Bridges. I'd like to check in with you. "
        "You can reply or call me at (312) 555-0100. Reply STOP to opt out."
    )


def test_render_ignores_extra_variables_and_needs_every_placeholder() -> None:
    book = TemplateBook({"short": "Hi $first_name, it's ${peer_name}. $$5 off"})
    assert book.render("short", {**VARIABLES, "unused": "x"}) == "Hi Dana, it's Sam. $5 off"
    with pytest.raises(
        TemplateError, match=re.escape("'short' needs variable(s) first_name, peer_name")
    ):
        book.render("short", {"program_name": "Bridges"})


def test_rendering_an_unknown_template_is_an_unknown_template_error() -> None:
    with pytest.raises(UnknownTemplateError, match="'nope'"):
        TemplateBook.default().render("nope", VARIABLES)


def test_an_indiscreet_program_name_is_refused_when_rendering() -> None:
    variables = {**VARIABLES, "program_name": "Post-Overdose Response Team"}
    with pytest.raises(TemplateError, match=r"program_name.*'Overdose'") as caught:
        TemplateBook.default().render("first_contact", variables)
    assert "Dana" not in str(caught.value)


def test_a_rendered_text_over_the_limit_is_refused() -> None:
    book = TemplateBook({"long": "x" * 1000 + " $first_name"})
    with pytest.raises(TemplateError, match="'long' rendered to 1601 characters"):
        book.render("long", {"first_name": "y" * 600})


def test_toml_overrides_and_adds_to_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "templates.toml"
    path.write_text(
        '[templates]\nfollow_up = "Hey ${first_name}, ${peer_name} here."\n'
        'check_in = "Thinking of you. ${peer_phone}"\n',
        encoding="utf-8",
    )
    book = TemplateBook.from_toml(path)
    assert book.names() == ["check_in", "first_contact", "follow_up", "missed_you"]
    assert book.describe()["follow_up"] == "Hey ${first_name}, ${peer_name} here."
    assert book.render("follow_up", VARIABLES) == "Hey Dana, Sam here."
    assert book.describe()["first_contact"] == TemplateBook.default().describe()["first_contact"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[templates]\nfollow_up = "Hi ${last_name}"', r"'follow_up' uses unknown .*last_name"),
        ('[templates]\nfollow_up = "   "', "'follow_up' is empty"),
        ('[templates]\nfollow_up = "Costs $5"', "'follow_up' has a malformed placeholder"),
        ('[templates]\nfollow_up = "Hi ${first_name"', "'follow_up' has a malformed placeholder"),
        ("[templates]\nfollow_up = 3", "'follow_up' must be a string"),
        ('[templates]\nfollow_up = "Got narcan?"', "'follow_up' says 'narcan'"),
        ('[templates]\nnote = "Call the Hospital"', "'note' says 'Hospital'"),
        ('[templates]\nnote = "Were you OD\'d?"', "'note' says \"OD'd\""),
        ('[templates]\nCheck-In = "Hi"', "template name 'Check-In'"),
        (f'[templates]\nlong = "{"x" * 1500} $first_name $peer_name"', "'long' can render to 1630"),
        ('[template]\nfollow_up = "Hi"', "no \\[templates\\] table"),
        ("templates = 3", "no \\[templates\\] table"),
        ("[templates\n", "is not valid TOML"),
    ],
)
def test_invalid_toml_templates_are_refused_by_name(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = tmp_path / "templates.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(TemplateError, match=message):
        TemplateBook.from_toml(path)


def test_a_missing_template_file_is_a_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="cannot read template file"):
        TemplateBook.from_toml(tmp_path / "absent.toml")


# --- Replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("STOP", "opt_out"),
        ("stop", "opt_out"),
        ("  Stop.  ", "opt_out"),
        ("STOP!!", "opt_out"),
        ("StopAll", "opt_out"),
        ("unsubscribe", "opt_out"),
        ("Cancel", "opt_out"),
        ("END", "opt_out"),
        ("quit", "opt_out"),
        ("revoke", "opt_out"),
        ("OPTOUT", "opt_out"),
        ("\uff33\uff34\uff2f\uff30", "opt_out"),
        ("START", "opt_in"),
        ("unstop", "opt_in"),
        ("Yes!", "opt_in"),
        ("HELP", "help"),
        ("info?", "help"),
        ("stop by tomorrow", "message"),
        ("please stop calling my mom", "message"),
        ("stop it", "message"),
        ("opt out", "message"),
        ("yes please call me", "message"),
        ("I need help", "message"),
        ("", "message"),
        ("...", "message"),
        ("stopp", "message"),
    ],
)
def test_classify_inbound(body: str, kind: str) -> None:
    assert classify_inbound(body) == kind


@given(st.sampled_from(["stop", "STOP", "start", "help"]), st.text(min_size=1).filter(str.strip))
def test_a_keyword_with_more_words_is_a_message(keyword: str, rest: str) -> None:
    assert classify_inbound(f"{keyword} {rest.strip()}x") == "message"


# --- Webhook signatures ----------------------------------------------------------------------

WEBHOOK_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
WEBHOOK_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}


def test_request_signature_known_answer() -> None:
    payload = (
        "https://mycompany.com/myapp.php?foo=1&bar=2"
        "CallSidCA1234567890ABCDECaller+14158675309Digits1234From+14158675309To+18005551212"
    )
    expected = base64.b64encode(hmac.new(b"12345", payload.encode(), hashlib.sha1).digest())
    signature = request_signature(WEBHOOK_URL, WEBHOOK_PARAMS, "12345")
    assert signature == expected.decode()
    assert signature == "RSOYDt4T1cUTdK1PDd93/VVr8B8="  # Twilio's own published example
    assert verify_signature(WEBHOOK_URL, WEBHOOK_PARAMS, "12345", signature)


@pytest.mark.parametrize(
    ("url", "params", "token", "signature"),
    [
        (
            WEBHOOK_URL,
            {**WEBHOOK_PARAMS, "Digits": "1235"},
            "12345",
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
        ),
        (WEBHOOK_URL, {**WEBHOOK_PARAMS, "Body": "STOP"}, "12345", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (WEBHOOK_URL + "&x=1", WEBHOOK_PARAMS, "12345", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (WEBHOOK_URL, WEBHOOK_PARAMS, "54321", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (WEBHOOK_URL, WEBHOOK_PARAMS, "12345", "RSOYDt4T1cUTdK1PDd93/VVr8B8"),
        (WEBHOOK_URL, WEBHOOK_PARAMS, "12345", "rsoydt4t1cutdk1pdd93/vvr8b8="),
        (WEBHOOK_URL, WEBHOOK_PARAMS, "12345", "RSOYDt4T1cUTdK1PDd93/VVr8B8=é"),
        (WEBHOOK_URL, WEBHOOK_PARAMS, "12345", ""),
        (WEBHOOK_URL, WEBHOOK_PARAMS, "12345", None),
        (WEBHOOK_URL, WEBHOOK_PARAMS, "", request_signature(WEBHOOK_URL, WEBHOOK_PARAMS, "")),
    ],
)
def test_verify_signature_refuses_tampering(
    url: str, params: dict[str, str], token: str, signature: str | None
) -> None:
    assert not verify_signature(url, params, token, signature)


@given(
    st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=20), max_size=6),
    st.text(min_size=1, max_size=30),
)
def test_a_signature_verifies_and_only_for_its_own_params(
    params: dict[str, str], token: str
) -> None:
    signature = request_signature(WEBHOOK_URL, params, token)
    assert verify_signature(WEBHOOK_URL, params, token, signature)
    # Longer than any generated key, so it is always an added parameter.
    tampered = {**params, "AddedParameter": ""}
    assert not verify_signature(WEBHOOK_URL, tampered, token, signature)

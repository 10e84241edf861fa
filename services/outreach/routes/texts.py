"""Text messages (service.texts), and the SMS provider's webhook for STOP and START."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response

from services.outreach.deps import WORKERS, CurrentAccess, CurrentTask, Operations, Uow
from services.outreach.schemas import TextBody, TextView
from services.outreach.service import texts
from services.outreach.sms import classify_inbound, verify_signature
from services.outreach.views import SMS_PHONE
from shared.http import ApiError, ErrorResponse
from shared.runtime import Runtime
from shared.sealing import Sealer

__all__ = ["api", "webhook"]

api = Operations("/v1", "texts")
webhook = APIRouter(prefix="/v1/sms", tags=["texts"])
"""The SMS provider's, not a team member's: it is authenticated by its signature."""

_MAX_WEBHOOK_BYTES = 64 * 1024
_TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _texting(request: Request) -> texts.Texting:
    texting: texts.Texting = request.app.state.texting
    return texting


@api.get("/texts/templates", WORKERS, None)
async def list_templates(request: Request) -> dict[str, str]:
    """The message templates texts can use

    Templates never mention overdoses, drugs or services: a phone may be read by others.
    """
    return _texting(request).templates.describe()


@api.post("/tasks/{task_id}/texts", WORKERS, "text the person", 404, 409, 422, created=True)
async def send_text(
    body: TextBody, task: CurrentTask, access: CurrentAccess, uow: Uow, request: Request
) -> TextView:
    """Text the person from a template (an outreach attempt on the task)

    In the program's quiet hours (its policy, as the task was planned) a text is refused with
    409 `quiet_hours` and when they end, unless `override_quiet_hours` says the person asked
    to hear now.
    """
    texting = _texting(request)
    return await texts.send_text(uow=uow, access=access, texting=texting, task=task, body=body)


@webhook.post(
    "/inbound",
    summary="Inbound texts from the SMS provider (STOP / START), signed by the provider",
    description="Form-encoded like Twilio's webhook (From, Body), with X-Twilio-Signature "
    "over this URL and the form. STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE and "
    "OPTOUT opt the number out of texts; START, UNSTOP and YES opt it back in. Answers TwiML.",
    response_class=Response,
    responses={
        200: {
            "content": {"application/xml": {"schema": {"type": "string"}}},
            "description": "TwiML",
        },
        **{status: {"model": ErrorResponse} for status in (400, 403, 404, 413, 503)},
    },
)
async def inbound(request: Request) -> Response:
    texting = _texting(request)
    if texting.auth_token is None:
        raise ApiError(404, "sms_not_configured", "Texting is not set up here.")
    raw = await request.body()
    if len(raw) > _MAX_WEBHOOK_BYTES:
        raise ApiError(413, "body_too_large", "The webhook body is too large.")
    try:
        params = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "The webhook body is not UTF-8 form data.") from None
    url = texting.public_url.rstrip("/") + request.url.path
    if not verify_signature(
        url, params, texting.auth_token, request.headers.get("x-twilio-signature")
    ):
        raise ApiError(403, "invalid_signature", "The webhook signature does not match.")
    kind = classify_inbound(params.get("Body", ""))
    sender = params.get("From", "")
    phone_keys = {i.version: k for i in texting.indexer.held if (k := i.phone(sender))}
    if phone_keys and kind in ("opt_out", "opt_in"):
        runtime: Runtime = request.app.state.runtime
        sealer: Sealer = request.app.state.sealer
        sealed = sealer.seal(sender, context=SMS_PHONE) if kind == "opt_out" else None
        async with runtime.uow() as uow:
            await texts.record_keyword(
                uow=uow,
                kind=kind,
                phone_keys=phone_keys,
                phone_sealed=sealed,
                at=runtime.clock.now(),
            )
    return Response(_TWIML_EMPTY, media_type="application/xml")

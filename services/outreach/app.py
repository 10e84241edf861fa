"""The outreach service: the team's REST API, fed by the scheduler's cases and intake's
reports, publishing the team's activity for the scheduler and reporting."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from services.outreach.projection import on_case_event, on_overdose
from services.outreach.roster import deactivated_members
from services.outreach.routes import (
    audit,
    cases,
    community,
    hot_spots,
    tasks,
    team,
    texts,
    visits,
)
from services.outreach.service.texts import Texting
from services.outreach.sms import SmsConfig, TemplateBook, TwilioStyleProvider
from shared.identity import Protector
from shared.runtime import ConsumerSpec, Runtime, create_service_app
from shared.sealing import load_keys
from shared.settings import Settings
from shared.topics import INTAKE_OVERDOSES, SCHEDULER_CASES

__all__ = ["create_app"]

DESCRIPTION = (
    "The team's REST API: the task queue, attempts, contacts, in-person visits (with a "
    "restricted deputy view), services, referrals, case conclusion and the audit log.\n\n"
    "* **Auth**: bearer JWTs from the program's OpenID Connect provider (audience "
    "`portline-outreach` by default), with a role (`peer`, `team_lead`, `deputy`, `analyst`, "
    "`admin`) and a program; every operation lists its roles (`x-roles`). Another program's "
    "records are 404. A deactivated team member is refused (403 `member_deactivated`).\n"
    '* **Errors**: `{"error": {"code", "message", "details"}}` with stable codes.\n'
    "* **Concurrency**: records two people may edit carry a `version` and an `ETag`; edits "
    "need `If-Match` (428 `precondition_required` without, 412 `version_mismatch` when stale).\n"
    "* **Pagination**: every list returns `{items, next_cursor}`; pass `?cursor=` (a cursor "
    "this API did not give out is 400 `invalid_cursor`).\n"
    "* **Times**: ISO 8601 text with an offset, never a number; work is not dated before its "
    "overdose or in the future.\n"
    "* **Audit**: every read or write of a person's record is logged with who, role, what, "
    "when and why (send `X-Purpose` to say why; a default per operation applies).\n"
    "* **Deputies** see only a visit's time window, meeting place and the peer's contact."
)


def create_app(
    settings: Settings,
    *,
    sms_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """`sms_transport` replaces the network for the SMS provider (tests use MockTransport)."""
    templates = (
        TemplateBook.from_toml(settings.outreach_sms_templates)
        if settings.outreach_sms_templates
        else TemplateBook.default()
    )

    def consumers(_runtime: Runtime) -> Sequence[ConsumerSpec]:
        return [
            ConsumerSpec("cases", [SCHEDULER_CASES.name], on_case_event),
            ConsumerSpec("overdoses", [INTAKE_OVERDOSES.name], on_overdose),
        ]

    @asynccontextmanager
    async def extension(app: FastAPI, runtime: Runtime) -> AsyncIterator[None]:
        sealer, indexer = load_keys(settings)
        app.state.sealer = sealer
        app.state.protector = Protector(sealer, indexer)
        token = settings.outreach_sms_auth_token
        async with httpx.AsyncClient(transport=sms_transport) as client:
            provider = None
            if settings.outreach_sms_url and token is not None:
                provider = TwilioStyleProvider(
                    SmsConfig(
                        base_url=settings.outreach_sms_url,
                        account_sid=settings.outreach_sms_account_sid or "",
                        auth_token=token.get_secret_value(),
                        from_number=settings.outreach_sms_from or "",
                    ),
                    client,
                )
            app.state.texting = Texting(
                templates=templates,
                program_name=settings.outreach_program_name,
                indexer=indexer,
                provider=provider,
                auth_token=token.get_secret_value() if token else None,
                public_url=settings.outreach_public_url,
            )
            yield

    return create_service_app(
        "outreach",
        settings,
        title="PORTline outreach",
        description=DESCRIPTION,
        routers=[
            tasks.api.router,
            hot_spots.api.router,
            cases.api.router,
            visits.api.router,
            visits.deputy_api.router,
            texts.api.router,
            texts.webhook,
            team.api.router,
            audit.api.router,
            community.api.router,
        ],
        consumers=consumers,
        extension=extension,
        team_roster=deactivated_members,  # outreach owns the roster: it reads it directly
    )

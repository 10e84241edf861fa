"""The outreach service's HTTP application."""

from __future__ import annotations

from fastapi import FastAPI

from shared.runtime import create_service_app
from shared.settings import Settings

__all__ = ["create_app"]

DESCRIPTION = (
    "The team's REST API: the task queue, attempts, contacts, in-person visits (with a "
    "restricted deputy view), services, referrals, case conclusion and the audit log."
)


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(
        "outreach", settings, title="PORTline outreach", description=DESCRIPTION
    )

"""The intake service's HTTP application."""

from __future__ import annotations

from fastapi import FastAPI

from shared.runtime import create_service_app
from shared.settings import Settings

__all__ = ["create_app"]

DESCRIPTION = (
    "The partner-facing edge: EMS run reports (NEMSIS v3.5 XML or JSON) and hospital ED "
    "notifications (HL7 v2 ADT over MLLP and HTTPS) are authenticated, screened, classified "
    "against the program's overdose definition, and normalized into `OverdoseReported` "
    "events. Nothing is acknowledged before it is durably stored."
)


def create_app(settings: Settings) -> FastAPI:
    return create_service_app("intake", settings, title="PORTline intake", description=DESCRIPTION)

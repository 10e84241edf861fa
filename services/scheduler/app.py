"""The scheduler service's HTTP application."""

from __future__ import annotations

from fastapi import FastAPI

from shared.runtime import create_service_app
from shared.settings import Settings

__all__ = ["create_app"]

DESCRIPTION = (
    "The program's clock and policy: links reports to people and episodes, opens cases, and "
    "turns episodes into time-boxed outreach tasks with durable timers and an escalation "
    "ladder."
)


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(
        "scheduler", settings, title="PORTline scheduler", description=DESCRIPTION
    )

"""The reporting service's HTTP application."""

from __future__ import annotations

from fastapi import FastAPI

from shared.runtime import create_service_app
from shared.settings import Settings

__all__ = ["create_app"]

DESCRIPTION = (
    "The program's read models: versioned metrics, funder exports with small-cell "
    "suppression, a dashboard and spike alerts."
)


def create_app(settings: Settings) -> FastAPI:
    return create_service_app(
        "reporting", settings, title="PORTline reporting", description=DESCRIPTION
    )

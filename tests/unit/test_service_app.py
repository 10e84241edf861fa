"""Every service's HTTP edge: liveness, readiness, metrics, docs and the error shape."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.intake.app import create_app as intake_app
from services.outreach.app import create_app as outreach_app
from services.reporting.app import create_app as reporting_app
from services.scheduler.app import create_app as scheduler_app
from shared.settings import Settings

FACTORIES = [intake_app, scheduler_app, outreach_app, reporting_app]


@pytest.mark.parametrize("factory", FACTORIES)
async def test_service_serves_operations_endpoints_and_reports_kafka_not_ready(
    factory: object, tmp_path: Path
) -> None:
    settings = Settings(
        env="development",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/{{service}}.db",
        kafka_bootstrap_servers="127.0.0.1:9",  # nothing listens: readiness must say so
        var_dir=tmp_path,
    )
    app = factory(settings)  # type: ignore[operator]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            health = await client.get("/healthz")
            assert health.status_code == 200
            assert health.json()["status"] == "ok"

            ready = await client.get("/readyz")
            assert ready.status_code == 503
            checks = ready.json()["checks"]
            assert checks["database"] == "ok"
            assert checks["kafka"].startswith("unavailable")

            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert "portline_http_requests_total" in metrics.text
            # The outbox's alerting series exist from the start, before anything was parked.
            service = app.state.runtime.service
            assert f'portline_outbox_parked_total{{service="{service}"}}' in metrics.text
            assert f'portline_outbox_parked_rows{{service="{service}"}} 0.0' in metrics.text
            assert (
                f'portline_outbox_oldest_unpublished_seconds{{service="{service}"}} 0.0'
                in metrics.text
            )
            # Readiness as alerts read it: each check's state, the one /readyz just answered.
            assert f'portline_ready{{check="kafka",service="{service}"}} 0.0' in metrics.text
            assert f'portline_ready{{check="database",service="{service}"}} 1.0' in metrics.text

            assert (await client.get("/docs")).status_code == 200
            spec = (await client.get("/openapi.json")).json()
            assert spec["info"]["title"].startswith("PORTline")

            missing = await client.get("/no/such/route")
            assert missing.status_code == 404
            assert missing.json() == {
                "error": {"code": "not_found", "message": "Not Found", "details": []}
            }


@pytest.mark.parametrize("factory", FACTORIES)
async def test_service_starts_while_postgres_is_down_and_reports_not_ready(
    factory: object, tmp_path: Path
) -> None:
    settings = Settings(
        env="development",
        database_url="postgresql+asyncpg://portline:x@127.0.0.1:9/portline",  # nothing there
        kafka_bootstrap_servers="127.0.0.1:9",
        var_dir=tmp_path,
        mllp_port=0,
    )
    app = factory(settings)  # type: ignore[operator]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"].startswith("unavailable")


def test_serving_freezes_start_up_objects_and_collects_the_young_generation_less_often() -> None:
    import gc

    from shared.serve import GC_GEN0_THRESHOLD, _tune_gc

    threshold = gc.get_threshold()
    try:
        _tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, threshold[1], threshold[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)

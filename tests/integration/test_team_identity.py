"""Team tokens against a provider served over real HTTP on 127.0.0.1 (discovery and JWKS),
checked by the scheduler and outreach running on PostgreSQL and Kafka outside development:
an audience per service, rotation, and every forgery refused."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.intake.app import create_app as intake_app
from services.outreach.app import create_app as outreach_app
from services.scheduler.app import create_app as scheduler_app
from shared.db import create_engine
from shared.devtokens import DevelopmentKey
from shared.migrations import upgrade
from shared.settings import ConfigurationError, Settings
from tests.oidc_provider import Provider

pytestmark = pytest.mark.integration

KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def provider() -> Iterator[Provider]:
    idp = Provider()
    with idp.serving():
        yield idp


def _settings(
    provider: Provider, postgres_url: str, kafka: str, prefix: str, var: Path
) -> Settings:
    return Settings(
        env="test",
        database_url=postgres_url,
        db_schema_prefix=prefix,
        kafka_bootstrap_servers=kafka,
        kafka_consumer_start="latest",  # a long-lived broker's old events are not this test's
        var_dir=var,
        seal_keys=f"k1:{KEY}",
        blind_index_key=KEY,
        oidc_issuer=provider.issuer,
        oidc_jwks_refetch_seconds=1,
    )


@asynccontextmanager
async def _service(factory: Any, service: str, settings: Settings) -> AsyncIterator[Any]:
    engine = create_engine(settings.db_url, service=service, schema=settings.schema_for(service))
    await upgrade(engine, service=service, schema=settings.schema_for(service))
    await engine.dispose()
    app = factory(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_tokens_from_the_provider_over_http(
    provider: Provider,
    postgres_url: str,
    kafka_bootstrap: str,
    pg_schema: str,
    tmp_path: Path,
) -> None:
    settings = _settings(provider, postgres_url, kafka_bootstrap, pg_schema, tmp_path)
    first = provider.add_key("RS256")
    async with (
        _service(scheduler_app, "scheduler", settings) as scheduler,
        _service(outreach_app, "outreach", settings) as outreach,
    ):
        # An audience per service: each accepts its own and refuses the other's.
        for_scheduler = _bearer(provider.token(first, aud="portline-scheduler"))
        for_outreach = _bearer(provider.token(first, aud="portline-outreach", role="team_lead"))
        assert (await scheduler.get("/v1/policy", headers=for_scheduler)).status_code == 200
        assert (await outreach.get("/v1/tasks", headers=for_outreach)).status_code == 200
        wrong = await scheduler.get("/v1/policy", headers=for_outreach)
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_token"
        assert "audience" in wrong.json()["error"]["message"]
        assert (await outreach.get("/v1/tasks", headers=for_scheduler)).status_code == 401
        assert provider.discovery_fetches == 2  # one per service, then cached
        fetched = provider.jwks_fetches

        # Forgeries and stale tokens are refused, without a fetch each.
        now = int(datetime.now(UTC).timestamp())
        development = DevelopmentKey.load(tmp_path)
        refused = {
            "alg none": provider.unsigned(first),
            "HS256 with the public key": provider.hs256_with_public_key(first),
            "expired": provider.token(first, exp=now - 3600, iat=now - 7200),
            "not yet valid": provider.token(first, nbf=now + 3600),
            "another issuer": provider.token(first, iss="https://evil.test"),
            "the development key": development.mint(
                role="admin",
                program="demo",
                subject="dev",
                audience=["portline-scheduler"],
                now=datetime.now(UTC),
            ),
        }
        for what, token in refused.items():
            r = await scheduler.get("/v1/policy", headers=_bearer(token))
            assert r.status_code == 401, what
            assert r.json()["error"]["code"] == "invalid_token", what
        assert provider.jwks_fetches == fetched

        # Rotation: the next key is fetched on first sight (once the last fetch is more than
        # PORTLINE_OIDC_JWKS_REFETCH_SECONDS ago); the old one works while it is published.
        second = provider.add_key("EdDSA")
        await asyncio.sleep(1.1)
        assert (
            await scheduler.get("/v1/policy", headers=_bearer(provider.token(second)))
        ).status_code == 200
        assert provider.jwks_fetches == fetched + 1
        assert (
            await scheduler.get("/v1/policy", headers=_bearer(provider.token(first)))
        ).status_code == 200
        # Withdrawn, the old key stops working once the keys are fetched again.
        provider.published.remove(first)
        third = provider.add_key("ES256")
        await asyncio.sleep(1.1)  # PORTLINE_OIDC_JWKS_REFETCH_SECONDS=1
        assert (
            await scheduler.get("/v1/policy", headers=_bearer(provider.token(third)))
        ).status_code == 200
        old = await scheduler.get("/v1/policy", headers=_bearer(provider.token(first)))
        assert old.status_code == 401
        assert "key id" in old.json()["error"]["message"]


async def test_a_provider_that_cannot_be_reached_is_a_503_never_an_accept(
    provider: Provider,
    postgres_url: str,
    kafka_bootstrap: str,
    pg_schema: str,
    tmp_path: Path,
) -> None:
    settings = _settings(provider, postgres_url, kafka_bootstrap, pg_schema, tmp_path)
    kid = provider.add_key("ES256")
    provider.down = True
    async with _service(scheduler_app, "scheduler", settings) as scheduler:
        r = await scheduler.get("/v1/policy", headers=_bearer(provider.token(kid)))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "identity_provider_unavailable"
        assert r.headers["Retry-After"]
        provider.down = False
        await asyncio.sleep(2.1)  # a failed fetch is retried after two seconds
        r = await scheduler.get("/v1/policy", headers=_bearer(provider.token(kid)))
        assert r.status_code == 200, r.text


def test_outside_development_a_team_service_does_not_start_without_a_provider(
    tmp_path: Path,
) -> None:
    bare = Settings(env="production", seal_keys=f"k1:{KEY}", blind_index_key=KEY, var_dir=tmp_path)
    for factory in (scheduler_app, outreach_app):
        with pytest.raises(ConfigurationError, match="PORTLINE_OIDC_ISSUER is required"):
            factory(bare)
    intake_app(bare)  # intake takes partners' keys, not team tokens: it needs no provider
    assert not (tmp_path / "dev-token-key.pem").exists()

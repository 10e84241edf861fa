from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings

REAL = "k1:" + "A" * 43 + "="


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "PORTLINE_ENV",
        "PORTLINE_SEAL_KEYS",
        "PORTLINE_BLIND_INDEX_KEY",
        "PORTLINE_OIDC_ISSUER",
        "PORTLINE_OIDC_JWKS_URL",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    "placeholder", ["changeme", "CHANGE_ME", "", "secret", "<your key>", "${KEY}", "xxxx"]
)
@pytest.mark.parametrize("env", ["production", "test"])
def test_placeholder_secret_is_refused_outside_development(placeholder: str, env: str) -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(env=env, seal_keys=REAL, blind_index_key=placeholder)


def test_production_requires_every_secret() -> None:
    with pytest.raises(ValidationError, match="PORTLINE_BLIND_INDEX_KEY is required"):
        Settings(env="production", seal_keys=REAL)


def test_development_accepts_missing_and_placeholder_secrets() -> None:
    settings = Settings(env="development", seal_keys="changeme")
    assert settings.is_development


def test_production_with_real_secrets_starts() -> None:
    settings = Settings(env="production", seal_keys=REAL, blind_index_key="b" * 44)
    assert settings.seal_keys is not None
    assert "AAAA" not in repr(settings)  # secrets never print


@pytest.mark.parametrize("env", ["production", "test"])
def test_team_services_need_the_programs_provider_outside_development(env: str) -> None:
    bare = Settings(env=env, seal_keys=REAL, blind_index_key="b" * 44)
    for service in ("scheduler", "outreach", "reporting"):
        problem = bare.team_identity_problem(service)
        assert problem is not None
        assert "PORTLINE_OIDC_ISSUER is required" in problem
    provider = Settings(
        env=env, seal_keys=REAL, blind_index_key="b" * 44, oidc_issuer="https://idp.example"
    )
    assert provider.team_identity_problem("scheduler") is None
    assert Settings(env="development").team_identity_problem("outreach") is None


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://idp.example/realms/port", True),
        ("http://127.0.0.1:8080/realms/port", True),
        ("http://localhost:8080", True),
        ("http://idp.example/realms/port", False),
        ("ftp://idp.example", False),
        ("idp.example", False),
    ],
)
def test_keys_are_fetched_over_https_except_on_loopback(url: str, accepted: bool) -> None:
    settings = Settings(env="development", oidc_issuer=url, oidc_jwks_url=url)
    assert (settings.team_identity_problem("scheduler") is None) is accepted


@pytest.mark.parametrize("algorithms", ["HS256", "RS256,none", "", "RS256,HS512"])
def test_only_asymmetric_token_algorithms_can_be_configured(algorithms: str) -> None:
    with pytest.raises(ValidationError, match="PORTLINE_OIDC_ALGORITHMS"):
        Settings(env="development", oidc_algorithms=algorithms)
    assert Settings(env="development", oidc_algorithms="ES256, EdDSA").token_algorithms == (
        "ES256",
        "EdDSA",
    )


def test_an_empty_provider_setting_is_unset() -> None:
    settings = Settings(env="development", oidc_issuer="", oidc_jwks_url=" ")
    assert settings.oidc_issuer is None
    assert settings.oidc_jwks_url is None


def test_environment_is_read_once_with_unprefixed_infrastructure_urls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/portline")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("PORTLINE_OUTREACH_PORT", "9003")
    monkeypatch.setenv("PORTLINE_ENV", "development")
    settings = Settings()
    assert settings.database_url == "postgresql://u:p@db:5432/portline"
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.port_for("outreach") == 9003


def test_mllp_runs_in_a_single_process_or_the_first_worker_only() -> None:
    assert Settings(env="development", worker="").runs_mllp
    assert Settings(env="development", worker="intake-0").runs_mllp
    assert not Settings(env="development", worker="intake-1").runs_mllp


def test_without_a_setting_it_is_production_which_refuses_to_start_without_keys() -> None:
    with pytest.raises(ValidationError, match="PORTLINE_SEAL_KEYS is required"):
        Settings()
    key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    ready = Settings(seal_keys=f"k1:{key}", blind_index_key=key)
    assert ready.env == "production"
    assert not ready.is_development


def test_a_bare_portline_run_refuses_to_start_without_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from shared.cli import main
    from shared.settings import get_settings

    get_settings.cache_clear()
    try:
        assert main(["run", "intake"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "PORTLINE_SEAL_KEYS is required when PORTLINE_ENV=production" in err

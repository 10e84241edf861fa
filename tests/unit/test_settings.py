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
        "PORTLINE_JWT_SECRET",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    "placeholder", ["changeme", "CHANGE_ME", "", "secret", "<your key>", "${KEY}", "xxxx"]
)
@pytest.mark.parametrize("env", ["production", "test"])
def test_placeholder_secret_is_refused_outside_development(placeholder: str, env: str) -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(env=env, seal_keys=REAL, blind_index_key=placeholder, jwt_secret="s" * 40)


def test_production_requires_every_secret() -> None:
    with pytest.raises(ValidationError, match="PORTLINE_JWT_SECRET is required"):
        Settings(env="production", seal_keys=REAL, blind_index_key="b" * 44)


def test_development_accepts_missing_and_placeholder_secrets() -> None:
    settings = Settings(env="development", jwt_secret="changeme")
    assert settings.is_development


def test_production_with_real_secrets_starts() -> None:
    settings = Settings(
        env="production", seal_keys=REAL, blind_index_key="b" * 44, jwt_secret="j" * 40
    )
    assert settings.seal_keys is not None
    assert "AAAA" not in repr(settings)  # secrets never print


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
    ready = Settings(seal_keys=f"k1:{key}", blind_index_key=key, jwt_secret="q7Jd0sXw3Lr9Vt2N")
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

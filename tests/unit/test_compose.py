"""The deployment files agree with the CLI contract and with shared.settings.

No Docker engine is needed: docker-compose.yml is read with yaml.safe_load (which resolves
the anchors and `<<:` merge keys the file uses), deploy/Dockerfile and .dockerignore as text.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import SERVICES, TEAM_TOKEN_SERVICES, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"

HTTP_PORTS = {"intake": 8001, "scheduler": 8002, "outreach": 8003, "reporting": 8004}
MLLP_PORT = 2575
PUBLISHED_PORTS = {
    "intake": {HTTP_PORTS["intake"], MLLP_PORT},
    "scheduler": {HTTP_PORTS["scheduler"]},
    "outreach": {HTTP_PORTS["outreach"]},
    "reporting": {HTTP_PORTS["reporting"]},
}
ONE_SHOT_COMMANDS = {"topics": ["topics", "create"], "migrate": ["migrate"]}
HEALTHY_DEPENDENCIES = {"kafka", "postgres"}
COMPLETED_DEPENDENCIES = set(ONE_SHOT_COMMANDS)
REQUIRED_SECRETS = (
    "PORTLINE_SEAL_KEYS",
    "PORTLINE_BLIND_INDEX_KEY",
    "POSTGRES_PASSWORD",
    "POSTGRES_APP_PASSWORD",
)
REQUIRED_SETTINGS = ("PORTLINE_OIDC_ISSUER",)
HEALTHCHECK_KEYS = ("test", "interval", "timeout", "retries")

# `${NAME}`, `${NAME:-default}`, `${NAME:?message}` and the other Compose forms.
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<modifier>[^}]*)\}")


# --- helpers ---------------------------------------------------------------------------------


@functools.cache
def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of Compose's two forms it uses."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.split("=", 1) for item in environment)
        return {pair[0]: pair[1] if len(pair) == 2 else "" for pair in pairs}
    return {key: _env_value(value) for key, value in environment.items()}


def _env_value(value: object) -> str:
    """A YAML scalar as the string the container sees (Compose writes booleans in lower case)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _portline_image() -> str:
    image: str = _services()["intake"]["image"]
    return image


def _portline_services() -> dict[str, dict[str, Any]]:
    """Every service that runs the PORTline image: the four services and the one-shot jobs."""
    image = _portline_image()
    return {name: svc for name, svc in _services().items() if svc.get("image") == image}


def _long_running_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _services().items() if name not in ONE_SHOT_COMMANDS}


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):  # the short form has no conditions
        return {name: {} for name in depends_on}
    result: dict[str, dict[str, Any]] = depends_on
    return result


def _published_container_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _strings(node: Any) -> list[str]:
    """Every string value in a parsed YAML node: what Compose interpolates (comments are not)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [text for value in node.values() for text in _strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in _strings(value)]
    return []


def _interpolations() -> list[re.Match[str]]:
    """Every `${...}` reference Compose resolves in docker-compose.yml."""
    return [match for text in _strings(_compose()) for match in INTERPOLATION.finditer(text)]


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """Resolve Compose `${...}` references the way Compose would, from `variables`."""

    def resolve(match: re.Match[str]) -> str:
        name, modifier = match["name"], match["modifier"]
        current = variables.get(name, "")
        if modifier.startswith(":-"):
            return current or modifier[2:]
        if modifier.startswith(":?") and not current:
            raise LookupError(f"{name} is required: {modifier[2:]}")
        return current

    return INTERPOLATION.sub(resolve, value)


def _settings_env_names() -> set[str]:
    """The environment variable names shared.settings.Settings reads."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias.upper() if isinstance(alias, str) else f"{prefix}{field_name}".upper())
    return names


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw_line in DOCKERFILE.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):  # also allowed inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (the last match wins)."""
    rules = []
    for raw_line in DOCKERIGNORE.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rules.append((pattern, negated))
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern, negated in rules:
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            ignored = not negated
    return ignored


# --- the four services -----------------------------------------------------------------------


def test_settings_ports_match_the_cli_contract() -> None:
    defaults = {name: Settings.model_fields[f"{name}_port"].default for name in SERVICES}
    assert defaults == HTTP_PORTS
    assert Settings.model_fields["mllp_port"].default == MLLP_PORT


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_runs_its_own_portline_command(name: str) -> None:
    assert _services()[name]["command"] == ["run", name]


@pytest.mark.parametrize(("name", "command"), ONE_SHOT_COMMANDS.items())
def test_one_shot_jobs_run_their_cli_command(name: str, command: list[str]) -> None:
    assert _services()[name]["command"] == command


def test_all_portline_containers_share_one_image() -> None:
    images = {_services()[name].get("image") for name in (*SERVICES, *ONE_SHOT_COMMANDS)}
    assert images == {"portline:local"}


def test_the_image_has_one_build_definition() -> None:
    builds = [svc["build"] for svc in _services().values() if "build" in svc]
    assert builds
    assert all(build == builds[0] for build in builds)


def test_the_build_uses_the_repository_root_and_deploy_dockerfile() -> None:
    build_config = next(svc["build"] for svc in _services().values() if "build" in svc)
    assert build_config["context"] == "."
    assert build_config["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / build_config["context"] / build_config["dockerfile"]).is_file()


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_publishes_exactly_its_ports(name: str) -> None:
    assert _published_container_ports(_services()[name]) == PUBLISHED_PORTS[name]


@pytest.mark.parametrize("name", SERVICES)
def test_published_ports_keep_the_same_number_on_the_host(name: str) -> None:
    for entry in _services()[name]["ports"]:
        host, container = str(entry).rsplit(":", 1)
        assert host.rsplit(":", 1)[-1] == container


def test_infrastructure_and_jobs_publish_no_ports() -> None:
    unpublished = set(_services()) - set(SERVICES)
    assert {name for name in unpublished if _services()[name].get("ports")} == set()


# --- health checks and start-up order --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(SERVICES) | HEALTHY_DEPENDENCIES))
def test_long_running_service_has_a_complete_healthcheck(name: str) -> None:
    healthcheck = _services()[name].get("healthcheck") or {}
    assert not healthcheck.get("disable", False)
    assert [key for key in HEALTHCHECK_KEYS if key not in healthcheck] == []


def test_every_long_running_service_is_checked() -> None:
    assert set(_long_running_services()) == set(SERVICES) | HEALTHY_DEPENDENCIES


@pytest.mark.parametrize("name", SERVICES)
def test_service_healthcheck_probes_readyz_on_its_own_port(name: str) -> None:
    test = _services()[name]["healthcheck"]["test"]
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert f"http://127.0.0.1:{HTTP_PORTS[name]}/readyz" in " ".join(test[1:])


@pytest.mark.parametrize("name", SERVICES)
def test_service_healthcheck_uses_python_not_curl(name: str) -> None:
    command = " ".join(_services()[name]["healthcheck"]["test"][1:])
    assert command.startswith("python ")
    assert "curl" not in command


def test_kafka_healthcheck_asks_the_broker_for_api_versions() -> None:
    command = " ".join(_services()["kafka"]["healthcheck"]["test"])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in command
    assert "--bootstrap-server localhost:9092" in command


def test_postgres_healthcheck_uses_pg_isready() -> None:
    command = " ".join(_services()["postgres"]["healthcheck"]["test"])
    assert "pg_isready -U portline -d portline" in command


def test_every_depends_on_target_exists() -> None:
    services = _services()
    missing = {
        (name, target)
        for name, svc in services.items()
        for target in _depends_on(svc)
        if target not in services
    }
    assert missing == set()


def test_dependencies_on_kafka_and_postgres_wait_until_healthy() -> None:
    conditions = {
        (name, target): spec.get("condition")
        for name, svc in _services().items()
        for target, spec in _depends_on(svc).items()
        if target in HEALTHY_DEPENDENCIES
    }
    assert conditions
    assert set(conditions.values()) == {"service_healthy"}


def test_dependencies_on_jobs_wait_until_they_completed_successfully() -> None:
    conditions = {
        (name, target): spec.get("condition")
        for name, svc in _services().items()
        for target, spec in _depends_on(svc).items()
        if target in COMPLETED_DEPENDENCIES
    }
    assert conditions
    assert set(conditions.values()) == {"service_completed_successfully"}


@pytest.mark.parametrize("name", SERVICES)
def test_service_starts_after_infrastructure_topics_and_migrations(name: str) -> None:
    expected = HEALTHY_DEPENDENCIES | COMPLETED_DEPENDENCIES
    assert set(_depends_on(_services()[name])) == expected


def test_topics_job_waits_for_kafka_and_migrate_job_for_postgres() -> None:
    assert set(_depends_on(_services()["topics"])) == {"kafka"}
    assert set(_depends_on(_services()["migrate"])) == {"postgres"}


@pytest.mark.parametrize("name", ONE_SHOT_COMMANDS)
def test_one_shot_jobs_are_never_restarted(name: str) -> None:
    # Quoted in the YAML: a bare `no` would load as the boolean false.
    assert _services()[name]["restart"] == "no"


@pytest.mark.parametrize("name", sorted(set(SERVICES) | HEALTHY_DEPENDENCIES))
def test_long_running_services_restart_unless_stopped(name: str) -> None:
    assert _services()[name]["restart"] == "unless-stopped"


# --- infrastructure --------------------------------------------------------------------------


def test_kafka_is_apache_kafka_4() -> None:
    repository, _, tag = _services()["kafka"]["image"].partition(":")
    assert repository == "apache/kafka"
    assert tag.split(".")[0] == "4"


def test_postgres_is_postgres_15() -> None:
    repository, _, tag = _services()["postgres"]["image"].partition(":")
    assert repository == "postgres"
    assert tag.split(".")[0] == "15"


def test_kafka_runs_kraft_as_a_single_broker_and_controller() -> None:
    environment = _environment(_services()["kafka"])
    node_id = environment["KAFKA_NODE_ID"]
    assert set(environment["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert environment["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:9093"
    assert environment["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert "CONTROLLER://:9093" in environment["KAFKA_LISTENERS"].split(",")


def test_kafka_internal_topics_have_one_replica() -> None:
    environment = _environment(_services()["kafka"])
    factors = {key: value for key, value in environment.items() if "REPLICATION_FACTOR" in key}
    assert "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR" in factors
    assert set(factors.values()) == {"1"}


def test_kafka_creates_no_topics_on_its_own() -> None:
    environment = _environment(_services()["kafka"])
    assert environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_keeps_its_log_dirs_on_a_volume() -> None:
    kafka = _services()["kafka"]
    log_dirs = _environment(kafka)["KAFKA_LOG_DIRS"]
    assert any(str(volume).endswith(f":{log_dirs}") for volume in kafka["volumes"])


def test_postgres_keeps_its_data_on_a_volume() -> None:
    volumes = _services()["postgres"]["volumes"]
    assert any(str(volume).endswith(":/var/lib/postgresql/data") for volume in volumes)


def test_every_named_volume_is_declared() -> None:
    declared = set(_compose().get("volumes") or {})
    used = {
        str(volume).split(":", 1)[0]
        for svc in _services().values()
        for volume in svc.get("volumes") or []
        if not str(volume).startswith((".", "/", "~"))
    }
    assert used <= declared


# --- environment and secrets -----------------------------------------------------------------


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
def test_required_secret_is_always_interpolated_in_the_required_form(secret: str) -> None:
    references = [match["modifier"] for match in _interpolations() if match["name"] == secret]
    assert references, f"{secret} is never passed to a container"
    assert all(modifier.startswith(":?") and modifier[2:].strip() for modifier in references)


@pytest.mark.parametrize("secret", [s for s in REQUIRED_SECRETS if s.startswith("PORTLINE_")])
def test_every_portline_container_gets_each_portline_secret(secret: str) -> None:
    missing = [
        name for name, svc in _portline_services().items() if secret not in _environment(svc)
    ]
    assert missing == []


def test_postgres_password_is_required_by_the_database_itself() -> None:
    password = _environment(_services()["postgres"])["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?")


def test_every_portline_container_runs_in_production() -> None:
    environments = {
        name: _environment(svc).get("PORTLINE_ENV") for name, svc in _portline_services().items()
    }
    assert set(environments) >= set(SERVICES) | set(ONE_SHOT_COMMANDS)
    assert set(environments.values()) == {"production"}


def test_no_service_sets_another_portline_env() -> None:
    values = {
        _environment(svc)["PORTLINE_ENV"]
        for svc in _services().values()
        if "PORTLINE_ENV" in _environment(svc)
    }
    assert values == {"production"}


def test_portline_containers_bind_all_interfaces() -> None:
    hosts = {_environment(svc).get("PORTLINE_HOST") for svc in _portline_services().values()}
    assert hosts == {"0.0.0.0"}


def test_kafka_bootstrap_servers_name_the_kafka_service_listener() -> None:
    advertised = _environment(_services()["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    advertised_addresses = {listener.split("://", 1)[1] for listener in advertised.split(",")}
    for svc in _portline_services().values():
        servers = _environment(svc)["KAFKA_BOOTSTRAP_SERVERS"].split(",")
        assert {server.rsplit(":", 1)[0] for server in servers} == {"kafka"}
        assert set(servers) <= advertised_addresses


def test_database_url_points_at_the_postgres_service_with_asyncpg_as_the_runtime_role() -> None:
    variables = {"POSTGRES_PASSWORD": "owner-pw", "POSTGRES_APP_PASSWORD": "app-pw"}
    for svc in _portline_services().values():
        url = _interpolate(_environment(svc)["DATABASE_URL"], variables)
        assert url == "postgresql+asyncpg://portline_app:app-pw@postgres:5432/portline"


def test_only_the_migration_job_connects_as_the_owner() -> None:
    owners = {
        name: _interpolate(_environment(svc)["DATABASE_OWNER_URL"], {"POSTGRES_PASSWORD": "pw"})
        for name, svc in _portline_services().items()
        if "DATABASE_OWNER_URL" in _environment(svc)
    }
    assert owners == {"migrate": "postgresql+asyncpg://portline:pw@postgres:5432/portline"}


def test_postgres_creates_the_runtime_role_on_first_start() -> None:
    postgres = _services()["postgres"]
    assert _environment(postgres)["POSTGRES_APP_PASSWORD"].startswith("${POSTGRES_APP_PASSWORD:?")
    mounts = [str(volume) for volume in postgres["volumes"]]
    assert "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in mounts
    script = (ROOT / "deploy" / "postgres-init" / "10-runtime-role.sh").read_text()
    assert "CREATE ROLE portline_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE" in script


@pytest.mark.parametrize("name", TEAM_TOKEN_SERVICES)
def test_services_that_take_team_tokens_require_the_programs_provider(name: str) -> None:
    environment = _environment(_services()[name])
    assert environment["PORTLINE_OIDC_ISSUER"].startswith("${PORTLINE_OIDC_ISSUER:?")
    assert environment[f"PORTLINE_{name.upper()}_TOKEN_AUDIENCE"]


def test_intake_holds_no_team_token_setting_at_all() -> None:
    for name in ("intake", "topics", "migrate"):
        team = {
            key
            for key in _environment(_services()[name])
            if "OIDC" in key or "TOKEN_AUDIENCE" in key or "JWT" in key
        }
        assert team == set(), name


def test_portline_environment_names_are_settings_fields() -> None:
    known = _settings_env_names()
    unknown = {
        (name, key)
        for name, svc in _portline_services().items()
        for key in _environment(svc)
        if key.upper() not in known
    }
    assert unknown == set()


def test_portline_environment_with_real_secrets_is_valid_production_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # base64 of 32 bytes
    variables = {
        "POSTGRES_PASSWORD": "Zk3v9Qm2Rt8xWp4L",
        "POSTGRES_APP_PASSWORD": "Hs8v2Lm4Qr7xWk3P",
        "PORTLINE_SEAL_KEYS": f"k1:{key}",
        "PORTLINE_BLIND_INDEX_KEY": key,
        "PORTLINE_OIDC_ISSUER": "https://login.example.org/realms/port",
    }
    for service in SERVICES:
        for name in _settings_env_names():
            monkeypatch.delenv(name, raising=False)
        for name, value in _environment(_services()[service]).items():
            monkeypatch.setenv(name, _interpolate(value, variables))

        settings = Settings()

        assert settings.env == "production"
        assert settings.kafka_bootstrap_servers == "kafka:9092"
        assert settings.host == "0.0.0.0"
        assert settings.team_identity_problem(service) is None or service == "intake"
        if service in TEAM_TOKEN_SERVICES:
            assert settings.oidc_issuer == variables["PORTLINE_OIDC_ISSUER"]
            assert settings.oidc_jwks_url is None  # empty: discovery


def test_every_interpolated_variable_is_documented_in_env_example() -> None:
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    interpolated = {match["name"] for match in _interpolations()}
    assert interpolated - documented == set()


@pytest.mark.parametrize("secret", REQUIRED_SECRETS + REQUIRED_SETTINGS)
def test_env_example_leaves_each_secret_empty(secret: str) -> None:
    assert re.search(rf"^{secret}=$", ENV_EXAMPLE.read_text(), re.MULTILINE)


# --- deploy/Dockerfile -----------------------------------------------------------------------


def test_dockerfile_is_multi_stage() -> None:
    stages = [args for keyword, args in _dockerfile_instructions() if keyword == "FROM"]
    assert len(stages) >= 2
    assert all(stage.startswith("python:3.11-slim") for stage in stages)


def test_final_stage_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_final_stage_creates_the_portline_user_with_uid_10001() -> None:
    runs = " ".join(args for keyword, args in _final_stage() if keyword == "RUN")
    assert re.search(r"useradd\b.*--uid 10001\b.*\bportline\b", runs)


def test_entrypoint_is_portline_running_all_services_by_default() -> None:
    final = dict(_final_stage())
    assert json.loads(final["ENTRYPOINT"]) == ["portline"]
    assert json.loads(final["CMD"]) == ["run", "all"]


def test_final_stage_exposes_every_service_port() -> None:
    exposed = {
        int(port.split("/")[0])
        for keyword, args in _final_stage()
        if keyword == "EXPOSE"
        for port in args.split()
    }
    assert exposed == {*HTTP_PORTS.values(), MLLP_PORT}


def test_final_stage_binds_all_interfaces_and_uses_the_venv() -> None:
    environment = " ".join(args for keyword, args in _final_stage() if keyword == "ENV")
    assert "PORTLINE_HOST=0.0.0.0" in environment
    assert "PYTHONUNBUFFERED=1" in environment
    assert re.search(r'PATH="?/opt/venv/bin:', environment)


def test_dockerfile_environment_names_are_settings_fields() -> None:
    environment = " ".join(args for keyword, args in _dockerfile_instructions() if keyword == "ENV")
    names = set(re.findall(r"\b(PORTLINE_[A-Z0-9_]+)=", environment))
    assert names
    assert names <= _settings_env_names()


def test_dockerfile_does_not_install_dev_extras() -> None:
    runs = " ".join(args for keyword, args in _dockerfile_instructions() if keyword == "RUN")
    assert not re.search(r"\[[^\]]*\bdev\b[^\]]*\]", runs)
    assert not re.search(r"\b(pytest|ruff|mypy|hypothesis)\b", runs)


def test_builder_copies_only_the_distribution_sources() -> None:
    sources = {
        source.rstrip("/")
        for keyword, args in _dockerfile_instructions()
        if keyword == "COPY" and "--from=" not in args
        for source in args.split()[:-1]
    }
    assert sources == {"pyproject.toml", "shared", "services"}


# --- .dockerignore ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [".venv", "var", ".git", ".env", "var/intake.db", ".git/HEAD"])
def test_dockerignore_excludes_local_state(path: str) -> None:
    assert _dockerignored(path)


@pytest.mark.parametrize("path", ["pyproject.toml", "shared/settings.py", "services/__init__.py"])
def test_dockerignore_keeps_what_the_build_copies(path: str) -> None:
    assert not _dockerignored(path)

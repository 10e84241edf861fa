"""The Kubernetes manifests (deploy/k8s): every overlay renders with kustomize, every object is
valid against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail), and
the properties operators rely on hold in every overlay.

kustomize is built once from the Go module proxy into var/tools (deploy/k8s/kustomize.sh); the
schemas ship inside the kubernetes-validate package. Nothing else is fetched.
"""

from __future__ import annotations

import copy
import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.cli import build_parser
from shared.settings import SERVICES, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSIONS = ("1.29", "1.37")
"""The oldest Kubernetes these manifests support, and the newest the schemas know."""
PORTS = {"intake": 8001, "scheduler": 8002, "outreach": 8003, "reporting": 8004}
WRITABLE = {"/app/var", "/tmp"}
TEST_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24",)]
"""The base's placeholder, which allows nobody: an overlay must replace it."""

Doc = dict[str, Any]


@pytest.fixture(scope="session")
def kustomize() -> str:
    done = subprocess.run(
        [str(K8S / "kustomize.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="session")
def rendered(kustomize: str) -> dict[str, list[Doc]]:
    out: dict[str, list[Doc]] = {}
    for overlay in OVERLAYS:
        done = subprocess.run(
            [kustomize, "build", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{overlay}: {done.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return out


def _of(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _named(docs: list[Doc], kind: str, name: str) -> Doc:
    (found,) = [d for d in _of(docs, kind) if d["metadata"]["name"] == name]
    return found


def _component(doc: Doc) -> str:
    labels: dict[str, str] = doc["spec"]["template"]["metadata"]["labels"]
    return labels["app.kubernetes.io/component"]


# --- the checks: each returns what is wrong, so a test can also show that it catches things ---


def pod_problems(name: str, pod: Doc) -> list[str]:
    """A pod spec that runs as non-root on a read-only root filesystem, with limits."""
    problems: list[str] = []
    security = pod.get("securityContext", {})
    if security.get("runAsNonRoot") is not True or not security.get("runAsUser"):
        problems.append(f"{name}: pod must run as a non-root user (runAsNonRoot, runAsUser)")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: no service account token should be mounted")
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        where = f"{name}/{container['name']}"
        sc = container.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem must be read-only")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: privilege escalation must be off")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: must drop all capabilities")
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(part, {})):
                problems.append(f"{where}: needs cpu and memory {part}")
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        for path in sorted(WRITABLE):
            if mounts.get(path) not in empty_dirs:
                problems.append(f"{where}: {path} must be an emptyDir (the app writes there)")
        for env in container.get("env", []):
            if "value" in env and env["name"] in SECRET_SETTINGS:
                problems.append(f"{where}: {env['name']} must come from a Secret")
    return problems


SECRET_SETTINGS = {
    "DATABASE_URL",
    "DATABASE_OWNER_URL",
    "PORTLINE_SEAL_KEYS",
    "PORTLINE_BLIND_INDEX_KEY",
    "PORTLINE_BLIND_INDEX_KEYS",
    "PORTLINE_JWT_SECRET",
    "PORTLINE_OUTREACH_SMS_AUTH_TOKEN",
}


def deployment_problems(deployment: Doc) -> list[str]:
    name = deployment["metadata"]["name"]
    service = _component(deployment)
    pod = deployment["spec"]["template"]["spec"]
    problems = pod_problems(name, pod)
    (main,) = [c for c in pod["containers"] if c["name"] == service]
    if main.get("args") != ["run", service]:
        problems.append(f"{name}: must run `portline run {service}`")
    ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
    if ports.get("http") != PORTS[service]:
        problems.append(f"{name}: http must be port {PORTS[service]}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = main.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "http":
            problems.append(f"{name}: {probe} must GET {path} on the http port")
    checks = [
        c for c in pod.get("initContainers", []) if c.get("args", [])[:2] == ["migrate", "--check"]
    ]
    if not checks or checks[0]["args"][2:] != [service]:
        problems.append(f"{name}: must wait for its schema (`portline migrate --check {service}`)")
    return problems


def mllp_problems(docs: list[Doc]) -> list[str]:
    """MLLP reaches intake only from listed partner networks, on its own Service."""
    problems: list[str] = []
    policies = _of(docs, "NetworkPolicy")
    if not any(
        p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "portline"
        and "Ingress" in p["spec"].get("policyTypes", [])
        and not p["spec"].get("ingress")
        for p in policies
    ):
        problems.append("no default-deny ingress policy for PORTline's pods")
    allowed: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {str(p.get("port")) for p in rule.get("ports", [])}
            opens_mllp = not rule.get("ports") or ports & {"mllp", "2575"}
            if not opens_mllp:
                continue
            name = policy["metadata"]["name"]
            if not rule.get("from"):
                problems.append(f"{name}: MLLP open to every source")
            for peer in rule.get("from", []):
                if set(peer) != {"ipBlock"}:
                    problems.append(f"{name}: MLLP allowed from something other than a network")
                    continue
                network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                if network.prefixlen == 0:
                    problems.append(f"{name}: MLLP open to the whole internet ({network})")
                if any(network.subnet_of(t) for t in TEST_NETS if t.version == network.version):
                    problems.append(f"{name}: {network} is the base's placeholder")
                if peer["ipBlock"].get("except"):
                    problems.append(f"{name}: give the partners' networks, not exceptions")
                allowed.add(str(network))
    if not allowed:
        problems.append("no network may reach MLLP")
    mllp_services = [
        s for s in _of(docs, "Service") if any(p["port"] == 2575 for p in s["spec"]["ports"])
    ]
    if len(mllp_services) != 1:
        problems.append("MLLP needs exactly one Service of its own")
    for service in mllp_services:
        if any(p["port"] != 2575 for p in service["spec"]["ports"]):
            problems.append("the MLLP Service must carry MLLP only, apart from HTTP")
        if service["spec"].get("type") == "LoadBalancer":
            listed = service["spec"].get("loadBalancerSourceRanges", [])
            ranges = {str(ipaddress.ip_network(r)) for r in listed}
            if ranges != allowed:
                problems.append(
                    f"loadBalancerSourceRanges {sorted(ranges)} differ from the "
                    f"NetworkPolicy's {sorted(allowed)}"
                )
            if service["spec"].get("externalTrafficPolicy") != "Local":
                problems.append("the MLLP load balancer must keep the client's address (Local)")
    return problems


# --- the tests ----------------------------------------------------------------------------------


def test_there_are_overlays() -> None:
    assert {"production", "staging"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(
    rendered: dict[str, list[Doc]], overlay: str, version: str
) -> None:
    problems = []
    for doc in rendered[overlay]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_is_deployed_safely(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    deployments = _of(docs, "Deployment")
    assert sorted(_component(d) for d in deployments) == sorted(SERVICES)
    problems = [p for d in deployments for p in deployment_problems(d)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_budget_an_autoscaler_and_a_service(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    for deployment in _of(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        pdbs = [
            p
            for p in _of(docs, "PodDisruptionBudget")
            if p["spec"]["selector"]["matchLabels"] == selector
        ]
        assert len(pdbs) == 1, f"{name}: needs one PodDisruptionBudget"
        assert pdbs[0]["spec"].get("maxUnavailable") == 1, f"{name}: drain one pod at a time"
        hpas = [
            h
            for h in _of(docs, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == name
        ]
        assert len(hpas) == 1, f"{name}: needs one HorizontalPodAutoscaler"
        assert 1 <= hpas[0]["spec"]["minReplicas"] <= hpas[0]["spec"]["maxReplicas"]
        http = _named(docs, "Service", name)
        assert http["spec"]["selector"] == selector
        assert [p["port"] for p in http["spec"]["ports"]] == [PORTS[_component(deployment)]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mllp_comes_only_from_the_partners_networks(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    problems = mllp_problems(rendered[overlay])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_held(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    assert not _of(docs, "Secret"), "the manifests must not carry Secrets"
    config = _named(docs, "ConfigMap", "portline-config")["data"]
    assert not set(config) & SECRET_SETTINGS
    settings_env = {
        (f.validation_alias if isinstance(f.validation_alias, str) else f"PORTLINE_{n}").upper()
        for n, f in Settings.model_fields.items()
    }
    assert set(config) <= settings_env, f"not settings: {sorted(set(config) - settings_env)}"
    assert config["PORTLINE_VAR_DIR"] == "/app/var"
    assert config["PORTLINE_ENV"] == "production"
    for doc in [*_of(docs, "Deployment"), *_of(docs, "Job")]:
        pod = doc["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            refs = [
                e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e
            ]
            assert "portline-secrets" in refs, f"{doc['metadata']['name']}/{container['name']}"
            if doc["kind"] == "Deployment":
                # The schemas' owner is for the migration job only.
                assert "portline-migrate-secrets" not in refs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_migration_job_comes_before_the_services(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    job = _named(rendered[overlay], "Job", "portline-migrate")
    pod = job["spec"]["template"]["spec"]
    assert not pod_problems("portline-migrate", pod)
    assert [c["args"] for c in pod.get("initContainers", [])] == [["topics", "create"]]
    assert [c["args"] for c in pod["containers"]] == [["migrate"]]
    assert pod["restartPolicy"] == "OnFailure"
    # What the init containers of the services run exists, with these arguments.
    args = build_parser().parse_args(["migrate", "--check", "intake"])
    assert args.check
    assert args.services == ["intake"]


def test_the_checks_catch_what_they_look_for(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy(rendered["production"])
    deployment = _named(docs, "Deployment", "portline-intake")
    pod = deployment["spec"]["template"]["spec"]
    (main,) = [c for c in pod["containers"] if c["name"] == "intake"]
    del main["readinessProbe"]
    main["securityContext"]["readOnlyRootFilesystem"] = False
    del main["resources"]["limits"]
    pod["securityContext"]["runAsNonRoot"] = False
    main["env"].append({"name": "PORTLINE_SEAL_KEYS", "value": "k1:..."})
    found = "\n".join(deployment_problems(deployment))
    for expected in ("readinessProbe", "read-only", "limits", "non-root", "PORTLINE_SEAL_KEYS"):
        assert expected in found
    policy = _named(docs, "NetworkPolicy", "portline-intake-mllp")
    policy["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})
    assert any("whole internet" in p for p in mllp_problems(docs))
    policy["spec"]["ingress"][0].pop("from")
    assert any("every source" in p for p in mllp_problems(docs))

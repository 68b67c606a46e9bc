"""deploy/, checked offline: the Kubernetes manifests against Kubernetes' own schemas (kubernetes-validate), and
compose and the manifests against each other, the shutdown contract (API.md §2), deploy/nginx.conf, the
Dockerfile and the gateway's settings. No cluster and no container engine: the processes they start are tested
elsewhere (tests/test_dockerfile.py, tests/test_shutdown.py, tests/test_playground_browser.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import yaml

from llm_gateway.config import Settings, from_env
from llm_gateway.sse import KEEPALIVE_SECONDS
from tests.processes import free_port
from tests.test_dockerfile import ROOT, stages

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33.0"  # the Kubernetes release whose schemas the manifests must meet
EXIT_MARGIN = 2.0  # a replica exits within SHUTDOWN_GRACE_SECONDS plus this (API.md §2)
KINDS = {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "Ingress"}
# Read by uvicorn itself, not a setting of ours.
UVICORN_ENV = {"FORWARDED_ALLOW_IPS"}
IMAGE = stages((ROOT / "Dockerfile").read_text())[-1]


def manifests() -> dict[str, dict[str, Any]]:
    """deploy/k8s/*.yaml by kind, one object per file."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        (document,) = yaml.safe_load_all(path.read_text())
        found[document["kind"]] = document
    return found


def compose(*names: str) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for name in names:
        for service, fields in yaml.safe_load((DEPLOY / name).read_text())["services"].items():
            services.setdefault(service, {}).update(fields)  # deep enough for what these tests read
    return services


def seconds(duration: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)s", duration)
    assert found is not None, f"{duration!r}: write compose durations in seconds"
    return float(found[1])


def settings_names() -> set[str]:
    return {name.upper() for name in Settings.__struct_fields__}


def test_the_manifests_are_valid_kubernetes_objects() -> None:
    found = manifests()
    assert set(found) == KINDS
    for document in found.values():
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_a_pod_s_termination_fits_the_shutdown_contract() -> None:
    found = manifests()
    pod = found["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    grace = float(found["ConfigMap"]["data"]["SHUTDOWN_GRACE_SECONDS"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + grace + EXIT_MARGIN
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "httpGet" not in container["livenessProbe"], "/health is 503 while Redis is away: no restart mends that"


def test_the_deployment_runs_the_image_as_the_dockerfile_builds_it() -> None:
    found = manifests()
    pod = found["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": int(IMAGE.env["API_PORT"])}
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert pod["securityContext"]["runAsUser"] == 10001 and "USER 10001" in (ROOT / "Dockerfile").read_text()
    sources = [source.get("configMapRef", source.get("secretRef")) for source in container["envFrom"]]
    assert [source["name"] for source in sources] == [found["ConfigMap"]["metadata"]["name"]] * 2
    assert found["Secret"]["metadata"]["name"] == found["ConfigMap"]["metadata"]["name"]


def test_the_service_budget_and_ingress_reach_the_deployment_s_pods() -> None:
    found = manifests()
    deployment, service, ingress = found["Deployment"], found["Service"], found["Ingress"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert found["PodDisruptionBudget"]["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": service_port["name"]}}
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[f"{prefix}proxy-buffering"] == "off"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[prefix + timeout]) > KEEPALIVE_SECONDS, "longer than the silence between keep-alives"


def test_the_config_map_and_secret_hold_valid_settings_and_no_real_key() -> None:
    found = manifests()
    secret = found["Secret"]
    env = {**found["ConfigMap"]["data"], **secret["stringData"]}
    assert set(env) - settings_names() - UVICORN_ENV == set(), "a name the gateway would ignore"
    from_env(env, env_file=None)  # raises ConfigError naming every bad value
    assert "data" not in secret and set(secret["stringData"].values()) == {"replace-me"}


def test_compose_runs_nginx_conf_in_front_of_two_replicas_on_one_redis() -> None:
    services = compose("compose.yaml")
    gateways = {name: service for name, service in services.items() if "build" in service}
    port = IMAGE.env["API_PORT"]
    upstreams = re.findall(r"^\s*server (\S+) ", (DEPLOY / "nginx.conf").read_text(), re.MULTILINE)
    assert upstreams == [f"{name}:{port}" for name in gateways]
    for service in gateways.values():
        assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
        env = {str(key): str(value) for key, value in service["environment"].items()}
        assert set(env) - settings_names() - UVICORN_ENV == set()
        settings = from_env(env, env_file=None)
        assert settings.redis_url is not None and re.match(r"redis://redis:", settings.redis_url)
        assert seconds(service["stop_grace_period"]) > settings.shutdown_grace_seconds + EXIT_MARGIN
        assert f"127.0.0.1:{port}/health" in " ".join(service["healthcheck"]["test"])
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}
    nginx = services["nginx"]
    source, target, _ = nginx["volumes"][0].split(":")
    assert (DEPLOY / source).resolve() == DEPLOY / "nginx.conf" and target == "/etc/nginx/nginx.conf"
    listen = re.search(r"listen (\d+);", (DEPLOY / "nginx.conf").read_text())
    assert listen is not None and nginx["ports"] == [f"{listen[1]}:{listen[1]}"]
    assert nginx["depends_on"] == {name: {"condition": "service_healthy"} for name in gateways}
    assert all("healthcheck" in service for service in services.values())


def test_the_compose_demo_points_every_replica_at_the_emulator_it_runs() -> None:
    base, services = compose("compose.yaml"), compose("compose.yaml", "compose.demo.yaml")
    command = services["emulator"]["command"]
    assert command[:2] == ["llm-gateway", "emulator"]
    emulator = f"http://emulator:{command[command.index('--port') + 1]}"
    for name in (name for name, service in base.items() if "build" in service):
        env = services[name]["environment"]
        assert env["ANTHROPIC_BASE_URL"] == env["TRELLIS_BASE_URL"] == emulator
        assert services[name]["depends_on"] == {"emulator": {"condition": "service_healthy"}}


def test_the_compose_demo_s_emulator_command_serves_its_healthcheck(tmp_path: Path) -> None:
    command = compose("compose.yaml", "compose.demo.yaml")["emulator"]["command"]
    port = free_port()
    arguments = [str(port) if arg == command[command.index("--port") + 1] else arg for arg in command[1:]]
    arguments[arguments.index("--host") + 1] = "127.0.0.1"
    process = subprocess.Popen([sys.executable, "-m", "llm_gateway", *arguments], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "the emulator exited"
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the emulator did not answer in 20 s"
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert answer.status_code == 200

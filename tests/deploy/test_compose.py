"""The two Compose stacks, read without a Docker engine: every command is a real CLI
command, every THROTTLLEM_ variable a setting, every URL, healthcheck and Prometheus
target a port some service listens on and a path it serves."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    DEMO_COMPOSE,
    GPU_COMPOSE,
    ROOT,
    builds_throttllem,
    compose_file,
    dockerfile_instructions,
    env_of,
    gateway_routes,
    healthcheck_url,
    host_port_path,
    load_yaml,
    service_environment,
    settings_environment,
    settings_variables,
    throttllem_variables,
    twin_control_routes,
)
from throttllem.cli import build_parser

COMPOSE_FILES = [DEMO_COMPOSE, GPU_COMPOSE]
IMAGE_ENV = env_of(dockerfile_instructions(ROOT / "Dockerfile"))
TRITON_PATHS = {"/metrics", "/v2/health/ready", "/v2/health/live"}  # Triton's own endpoints
# Ports the third-party images listen on by default.
IMAGE_PORTS = {"redis": {6379}, "prom/prometheus": {9090}, "grafana/grafana": {3000}}


def services(path: Path) -> dict[str, dict[str, Any]]:
    return compose_file(path)["services"]


def throttllem_services(path: Path) -> dict[str, dict[str, Any]]:
    """Services that run the `throttllem` command from this repository's image."""
    return {
        name: s
        for name, s in services(path).items()
        if builds_throttllem(s) and "entrypoint" not in s
    }


def cli_args(service: dict[str, Any]) -> Any:
    return build_parser().parse_args(service["command"])


def settings_env(path: Path, service: dict[str, Any]) -> dict[str, str]:
    """The THROTTLLEM_ variables the service's process sees: the image's, then Compose's."""
    env = {name: value for name, value in IMAGE_ENV.items() if name.startswith("THROTTLLEM_")}
    env.update(service_environment(path, service))
    return env


def flag_value(command: list[str], flag: str) -> str | None:
    for i, word in enumerate(command):
        if word == flag:
            return command[i + 1]
        if word.startswith(f"{flag}="):
            return word.split("=", 1)[1]
    return None


def listen_ports(path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> dict[int, str]:
    """Port -> what answers there, for every port the service's process listens on."""
    service = services(path)[name]
    if name in throttllem_services(path):
        args = cli_args(service)
        with settings_environment(monkeypatch, settings_env(path, service)) as settings:
            if args.command == "serve":
                return {args.port or settings.port: "gateway"}
            if args.command == "twin":
                return {
                    args.twin_http_port: "triton",
                    args.twin_grpc_port: "triton-grpc",
                    args.twin_metrics_port: "triton",
                    args.twin_control_port: "twin-control",
                }
            if args.command == "govern":
                assert settings.governor_metrics_port is not None
                return {settings.governor_metrics_port: "governor"}
        raise AssertionError(f"{name}: no ports known for `{args.command}`")
    if service.get("image", "").startswith("nvcr.io/nvidia/tritonserver"):
        command = service["command"]
        return {
            int(flag_value(command, "--http-port") or 8000): "triton",
            int(flag_value(command, "--grpc-port") or 8001): "triton-grpc",
            int(flag_value(command, "--metrics-port") or 8002): "triton",
        }
    image = service["image"].split(":")[0]
    return {port: image for port in IMAGE_PORTS.get(image, set())}


def serves(kind: str, path: str) -> bool:
    if kind == "gateway":
        return path in gateway_routes()
    if kind == "twin-control":
        return path in twin_control_routes()
    if kind == "triton":
        return path in TRITON_PATHS or re.fullmatch(r"/v2/models/[\w-]+/ready", path) is not None
    if kind == "governor":
        return path == "/metrics"  # prometheus_client's server
    if kind == "prom/prometheus":
        return path in {"/-/ready", "/-/healthy"}
    return False


def url_target(path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(what answers at the URL's port, its path); the host must be a service."""
    host, port, url_path = host_port_path(url)
    assert host in services(path), f"{url}: no service {host!r} in {path.name}"
    ports = listen_ports(path, host, monkeypatch)
    assert port in ports, f"{url}: {host} listens on {sorted(ports)}"
    return ports[port], url_path


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_every_throttllem_service_runs_a_real_command_of_the_cli(path):
    commands = {name: cli_args(s).command for name, s in throttllem_services(path).items()}
    assert commands == {"gateway": "serve", "governor": "govern"} | (
        {"twin": "twin"} if path == DEMO_COMPOSE else {}
    )


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_every_throttllem_variable_is_a_setting_and_every_value_parses(path, monkeypatch):
    checked = 0
    for name, service in services(path).items():
        env = service_environment(path, service)
        unknown = throttllem_variables(env) - settings_variables()
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"
        if throttllem_variables(env):
            with settings_environment(monkeypatch, settings_env(path, service)):
                checked += 1  # Settings() raised nothing
    assert checked >= 2


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_the_gateway_runs_several_workers_on_the_stacks_redis(path, monkeypatch):
    gateway = services(path)["gateway"]
    assert cli_args(gateway).workers >= 2
    with settings_environment(monkeypatch, settings_env(path, gateway)) as settings:
        assert settings.redis_url is not None
        kind, _ = url_target(path, settings.redis_url.replace("redis://", "http://"), monkeypatch)
    assert kind == "redis"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_the_gateway_and_the_governor_share_one_scoreboard_and_engine(path, monkeypatch):
    shared = [
        "redis_url",
        "instance",
        "performance_model_path",
        "engine_max_batch",
        "engine_kv_capacity_blocks",
        "engine_tokens_per_block",
        "prefill_us_per_token",
        "prefill_ns_per_square_token",
        "engine_scheduler_policy",
    ]
    seen = []
    for name in ("gateway", "governor"):
        service = services(path)[name]
        with settings_environment(monkeypatch, settings_env(path, service)) as settings:
            seen.append({field: getattr(settings, field) for field in shared})
    assert seen[0] == seen[1]
    assert seen[0]["instance"] != "default"  # named, so several stacks can share a Redis


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_the_gateway_calls_the_engines_triton_http_port(path, monkeypatch):
    gateway = services(path)["gateway"]
    with settings_environment(monkeypatch, settings_env(path, gateway)) as settings:
        kind, _ = url_target(path, settings.backend_url, monkeypatch)
        assert settings.backend_kind.value == "triton"
    assert kind == "triton"


def test_the_demo_governor_drives_the_twins_gpu_control_api(monkeypatch):
    governor = services(DEMO_COMPOSE)["governor"]
    with settings_environment(monkeypatch, settings_env(DEMO_COMPOSE, governor)) as settings:
        assert settings.gpu_backend.value == "simulated"
        kind, _ = url_target(DEMO_COMPOSE, settings.gpu_control_url, monkeypatch)
    assert kind == "twin-control"


def test_the_demo_gateway_and_governor_describe_the_engine_the_twin_simulates(monkeypatch):
    from predictor.shipped import length_model_path, performance_model_path
    from simulator.capacity import prefill_cost
    from simulator.profile import load_profile

    twin = cli_args(services(DEMO_COMPOSE)["twin"])
    profile = load_profile(twin.twin_profile)
    gateway = services(DEMO_COMPOSE)["gateway"]
    with settings_environment(monkeypatch, settings_env(DEMO_COMPOSE, gateway)) as settings:
        assert settings.served_model_name == twin.twin_profile.split("/")[1]
        assert settings.triton_model == "ensemble"
        assert settings.engine_max_batch == profile.max_batch_size
        assert settings.engine_kv_capacity_blocks == profile.kv_capacity_blocks
        assert settings.engine_tokens_per_block == profile.tokens_per_block
        assert settings.context_window_tokens == profile.model.context_window_tokens
        prefill = prefill_cost(profile)
        assert math.isclose(settings.prefill_us_per_token, prefill.s_per_token * 1e6, abs_tol=1.0)
        assert math.isclose(
            settings.prefill_ns_per_square_token, prefill.s_per_square_token * 1e9, abs_tol=0.1
        )
        assert settings.engine_scheduler_policy == profile.scheduler_policy
        shipped_length = length_model_path(profile.model.recorded_responses)
        shipped_performance = performance_model_path(twin.twin_profile)
        assert settings.length_model_path is not None
        assert settings.performance_model_path is not None
        assert settings.length_model_path.name == shipped_length.name
        assert settings.performance_model_path.name == shipped_performance.name
    assert shipped_length.is_file() and shipped_performance.is_file()


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_the_predictors_named_are_the_ones_the_image_ships(path, monkeypatch):
    for name in ("gateway", "governor"):
        service = services(path)[name]
        with settings_environment(monkeypatch, settings_env(path, service)) as settings:
            for model in (settings.length_model_path, settings.performance_model_path):
                if model is not None:
                    assert model.parts[0] == "onnx_models"  # the image's ./onnx_models link
                    assert (ROOT / model).is_file(), model


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_every_healthcheck_asks_a_port_the_service_listens_on_for_a_path_it_serves(
    path, monkeypatch
):
    checked = []
    for name, service in services(path).items():
        test = service.get("healthcheck", {}).get("test")
        if test is None or test[0] == "NONE" or "redis-cli" in test:
            continue
        _, port, url_path = host_port_path(healthcheck_url(test))
        ports = listen_ports(path, name, monkeypatch)
        assert port in ports, f"{name}: healthcheck on {port}, listens on {sorted(ports)}"
        assert serves(ports[port], url_path), f"{name}: {ports[port]} does not serve {url_path}"
        checked.append(name)
    assert {"gateway", "governor", "prometheus"} <= set(checked)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_published_ports_are_ports_the_services_listen_on(path, monkeypatch):
    published = 0
    for name, service in services(path).items():
        for mapping in service.get("ports", []):
            container_port = int(str(mapping).split(":")[-1])
            assert container_port in listen_ports(path, name, monkeypatch), f"{name}: {mapping}"
            published += 1
    assert published >= 3
    assert "8000:8000" in services(path)["gateway"]["ports"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_prometheus_scrapes_every_metrics_port_of_the_stack_at_a_path_it_serves(path, monkeypatch):
    prometheus = services(path)["prometheus"]
    mount = next(
        v for v in prometheus["volumes"] if v.split(":")[1] == "/etc/prometheus/prometheus.yml"
    )
    config = load_yaml((path.parent / mount.split(":")[0]).resolve())
    scraped = set()
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                url = f"http://{target}{job.get('metrics_path', '/metrics')}"
                kind, url_path = url_target(path, url, monkeypatch)
                assert serves(kind, url_path), f"{job['job_name']}: {kind} has no {url_path}"
                scraped.add(target)
    expected = {"gateway:8000", "governor:9400"} | (
        {"twin:8002", "twin:8003"} if path == DEMO_COMPOSE else {"triton:8002"}
    )
    assert scraped == expected


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_grafana_mounts_the_provisioning_and_dashboards_the_provider_reads(path):
    grafana = services(path)["grafana"]
    mounts = {
        target: (path.parent / source).resolve()
        for source, target, *_ in (v.split(":") for v in grafana["volumes"])
    }
    provisioning = mounts["/etc/grafana/provisioning"]
    provider = load_yaml(provisioning / "dashboards" / "throttllem.yml")["providers"][0]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / "throttllem.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (dashboards / Path(home).name).is_file()
    datasource = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"][0]
    host, port, _ = host_port_path(datasource["url"])
    assert host == "prometheus" and port in IMAGE_PORTS["prom/prometheus"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_every_image_is_pinned_and_dependencies_are_services(path):
    for name, service in services(path).items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
        assert set(service.get("depends_on", [])) <= set(services(path)), name


def test_the_demo_load_sends_its_requests_to_the_gateway(monkeypatch):
    load = services(DEMO_COMPOSE)["load"]
    source, target = load["volumes"][0].split(":")[:2]
    assert (DEMO_COMPOSE.parent / source).is_file()
    assert load["entrypoint"][-1] == target
    kind, _ = url_target(DEMO_COMPOSE, load["environment"]["LOAD_TARGET"], monkeypatch)
    assert kind == "gateway"


def test_the_gpu_stack_serves_nvidias_trtllm_triton_and_governs_through_nvml(monkeypatch):
    stack = services(GPU_COMPOSE)
    assert re.fullmatch(
        r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-trtllm-python-py3", stack["triton"]["image"]
    )
    governor = stack["governor"]
    with settings_environment(monkeypatch, settings_env(GPU_COMPOSE, governor)) as settings:
        assert settings.gpu_backend.value == "nvml"
    assert governor["cap_add"] == ["SYS_ADMIN"]
    assert governor["user"].split(":")[0] == "0"  # NVML clock locking needs root
    for name in ("triton", "governor"):
        devices = stack[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # Nothing else runs privileged.
    for name, service in stack.items():
        if name != "governor":
            assert "cap_add" not in service and "user" not in service, name
            assert not service.get("privileged", False), name

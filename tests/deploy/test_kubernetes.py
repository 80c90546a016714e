"""The Kubernetes manifests: valid against the API's schemas (kubernetes-validate ships
them, so this runs offline), and wired to each other and to the code: commands, probes,
THROTTLLEM_ variables, the instance's name, Prometheus' scrape jobs and the HPA."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from tests.deploy.manifests import (
    KUBERNETES,
    gateway_routes,
    load_yaml_documents,
    settings_environment,
    settings_variables,
    throttllem_variables,
)
from throttllem.cli import build_parser

KUBERNETES_VERSION = "1.30"  # the oldest release the manifests are held to
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
DOCUMENTS = [(path.name, doc) for path in MANIFESTS for doc in load_yaml_documents(path)]
THROTTLLEM_IMAGE = re.compile(r"(^|/)throttllem:[\w.-]+$")


def resources(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in resources(kind) if doc["metadata"]["name"] == name]
    return found


def workloads() -> list[dict[str, Any]]:
    return resources("Deployment") + resources("StatefulSet")


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def throttllem_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (w, c) for w in workloads() for c in containers(w) if THROTTLLEM_IMAGE.search(c["image"])
    ]


def container_env(container: dict[str, Any], namespace: str) -> dict[str, str | None]:
    """The container's variables: its ConfigMaps' (envFrom), then its own (None where the
    value comes from the pod, e.g. a fieldRef)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        config_map = named("ConfigMap", source["configMapRef"]["name"])
        assert config_map["metadata"]["namespace"] == namespace
        env.update(config_map["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def by_name(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers(workload) if c["name"] == name]
    return found


GATEWAY = named("Deployment", "gateway-triton-0")
ENGINE = named("StatefulSet", "triton")


def test_there_are_manifests_for_every_part():
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert {
        "Namespace",
        "Deployment",
        "StatefulSet",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
    } <= kinds
    assert named("Deployment", "redis") and named("Service", "redis")


@pytest.mark.parametrize(
    ("name", "document"),
    [
        pytest.param(name, doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")
        for name, doc in DOCUMENTS
    ],
)
def test_every_manifest_is_valid_for_the_kubernetes_api(name, document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest():
    broken = {**GATEWAY, "spec": {**GATEWAY["spec"], "replica": 2}}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_everything_lives_in_the_namespace_the_manifests_create():
    (namespace,) = [doc["metadata"]["name"] for doc in resources("Namespace")]
    for _, doc in DOCUMENTS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def test_every_throttllem_container_runs_a_real_command_with_real_settings(monkeypatch):
    commands = []
    for workload, container in throttllem_containers():
        args = build_parser().parse_args(container["args"])
        commands.append(args.command)
        env = container_env(container, workload["metadata"]["namespace"])
        assert throttllem_variables(env) <= settings_variables(), container["name"]
        values = {k: v if v is not None else "from-the-pod" for k, v in env.items()}
        with settings_environment(monkeypatch, values):
            pass  # Settings() raised nothing: every value parses
    assert sorted(commands) == ["govern", "serve"]


def test_the_gateway_listens_on_its_container_port_and_probes_real_endpoints(monkeypatch):
    container = by_name(GATEWAY, "gateway")
    args = build_parser().parse_args(container["args"])
    assert args.workers == 1  # each worker scraped and scaled on its own
    assert args.host == "0.0.0.0"
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
        check = container[probe]["httpGet"]
        assert check["path"] == path and path in gateway_routes()
        assert port_number(container, check["port"]) == args.port


def test_the_gateway_feeds_one_engine_pod_and_names_its_instance(monkeypatch):
    env = container_env(by_name(GATEWAY, "gateway"), "throttllem")
    instance, backend = env["THROTTLLEM_INSTANCE"], urlsplit(str(env["THROTTLLEM_BACKEND_URL"]))
    pods = [f"{ENGINE['metadata']['name']}-{i}" for i in range(ENGINE["spec"]["replicas"])]
    assert instance in pods
    service = named("Service", ENGINE["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"  # per-pod DNS names
    assert (
        backend.hostname == f"{instance}.{service['metadata']['name']}.throttllem.svc.cluster.local"
    )
    triton = by_name(ENGINE, "triton")
    assert backend.port == port_number(triton, "http")
    assert f"--http-port={backend.port}" in triton["args"]
    labels = GATEWAY["spec"]["template"]["metadata"]["labels"]
    assert labels["throttllem.io/instance"] == instance


def test_the_governor_is_a_sidecar_of_each_triton_pod_on_its_gpus():
    governor, triton = by_name(ENGINE, "governor"), by_name(ENGINE, "triton")
    assert build_parser().parse_args(governor["args"]).command == "govern"
    env = {item["name"]: item for item in governor["env"]}
    # The instance is the pod's name: the name the gateway gives it.
    assert env["THROTTLLEM_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["THROTTLLEM_GPU_BACKEND"]["value"] == "nvml"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert "SYS_ADMIN" in governor["securityContext"]["capabilities"]["add"]
    assert governor["securityContext"]["runAsUser"] == 0
    assert int(env["THROTTLLEM_GOVERNOR_METRICS_PORT"]["value"]) == port_number(
        governor, "gov-metrics"
    )
    assert governor["readinessProbe"]["httpGet"]["path"] == "/metrics"
    assert "nvidia.com/gpu" in triton["resources"]["limits"]
    gpus = int(triton["resources"]["limits"]["nvidia.com/gpu"])
    node_gpus = ENGINE["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.count"]
    assert int(node_gpus) == gpus  # the pod takes its node's GPUs: NVML's indices agree


def test_only_the_governor_runs_as_root_or_adds_a_capability():
    for workload in workloads():
        pod_context = workload["spec"]["template"]["spec"].get("securityContext", {})
        for container in containers(workload):
            context = container.get("securityContext", {})
            if container["name"] == "governor":
                continue
            assert not context.get("capabilities", {}).get("add"), container["name"]
            assert not context.get("privileged", False), container["name"]
            if THROTTLLEM_IMAGE.search(container["image"]):
                assert pod_context.get("runAsNonRoot") is True


def test_every_service_selects_pods_and_targets_ports_they_have():
    for service in resources("Service"):
        selector = service["spec"]["selector"]
        matching = [
            w
            for w in workloads()
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matching, service["metadata"]["name"]
        names = {p.get("name") for w in matching for c in containers(w) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (service["metadata"]["name"], port)


def test_the_redis_url_is_the_redis_service():
    url = urlsplit(named("ConfigMap", "throttllem-engine")["data"]["THROTTLLEM_REDIS_URL"])
    service = named("Service", "redis")
    assert url.hostname == f"redis.{service['metadata']['namespace']}.svc.cluster.local"
    assert url.port in [p["port"] for p in service["spec"]["ports"]]


def test_prometheus_scrapes_the_gateways_and_each_engine_pods_triton_and_governor():
    import yaml

    config = yaml.safe_load(named("ConfigMap", "prometheus-config")["data"]["prometheus.yml"])
    scraped = set()
    for job in config["scrape_configs"]:
        keep = {
            rule["source_labels"][0]: rule["regex"]
            for rule in job["relabel_configs"]
            if rule.get("action") == "keep"
        }
        component = keep["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
        port_names = re.compile(keep["__meta_kubernetes_pod_container_port_name"])
        targets = {
            w["metadata"]["name"]: w
            for w in workloads()
            if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
            == component
        }
        assert targets, job["job_name"]
        for workload in targets.values():
            for container in containers(workload):
                for port in container.get("ports", []):
                    if port_names.fullmatch(port["name"]):
                        scraped.add((container["name"], port["containerPort"]))
        relabelled = {rule.get("target_label") for rule in job["relabel_configs"]}
        assert {"namespace", "pod"} <= relabelled  # what prometheus-adapter maps to pods
    assert scraped == {("gateway", 8000), ("triton", 8002), ("governor", 9400)}


def test_the_hpa_scales_the_gateway_deployment():
    (hpa,) = resources("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", GATEWAY["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_every_image_is_pinned():
    for workload in workloads():
        for container in containers(workload):
            image = container["image"]
            assert ":" in image.split("/")[-1] and not image.endswith(":latest"), image

"""Reading the deployment files the way Docker, Compose, Prometheus and Kubernetes would,
and what the code really serves, so the tests can hold one against the other."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from throttllem.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEMO_COMPOSE = ROOT / "docker-compose.yml"
GPU_COMPOSE = DEPLOY / "gpu" / "docker-compose.yml"
KUBERNETES = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "throttllem.json"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"

ENV_PREFIX = str(Settings.model_config.get("env_prefix", ""))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- settings ------------------------------------------------------------------------


def settings_variables() -> set[str]:
    """Every environment variable `Settings` reads: the prefix plus the field's name, or
    the field's alias where it has one."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        names.add(str(alias).upper() if isinstance(alias, str) else f"{ENV_PREFIX}{name}".upper())
    return names


def throttllem_variables(env: Mapping[str, object]) -> set[str]:
    return {name for name in env if name.upper().startswith(ENV_PREFIX.upper())}


@contextmanager
def settings_environment(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]
) -> Iterator[Settings]:
    """The settings a process with exactly these THROTTLLEM_* variables would read."""
    with monkeypatch.context() as patch:
        for name in settings_variables():
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        yield Settings()


# --- Dockerfile ----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    text: str  # the rest of the instruction, continuation lines joined


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions in order; heredoc bodies belong to their RUN."""
    instructions: list[Instruction] = []
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text = line
        while text.endswith("\\"):
            text = text[:-1] + " " + next(lines).strip()
        heredoc = re.search(r"<<-?'?(\w+)'?", text)
        if heredoc:
            body = []
            for body_line in lines:
                if body_line.strip() == heredoc.group(1):
                    break
                body.append(body_line)
            text += "\n" + "\n".join(body)
        keyword, _, rest = text.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), rest.strip()))
    return instructions


def exec_form(text: str) -> list[str]:
    """A JSON exec-form array, or a shell form split as the shell would."""
    text = text.strip()
    return json.loads(text) if text.startswith("[") else shlex.split(text)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.text):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


# --- Compose -------------------------------------------------------------------------


def compose_file(path: Path) -> dict[str, Any]:
    return load_yaml(path)


def service_environment(path: Path, service: dict[str, Any]) -> dict[str, str]:
    """env_file entries, then `environment` over them, as Compose merges them."""
    env: dict[str, str] = {}
    env_files = service.get("env_file", [])
    for env_file in [env_files] if isinstance(env_files, str) else env_files:
        for line in (path.parent / env_file).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                name, _, value = line.partition("=")
                env[name.strip()] = value.strip()
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({name: str(value) for name, value in environment.items()})
    return env


def builds_throttllem(service: dict[str, Any]) -> bool:
    return "build" in service


def healthcheck_url(test: list[str]) -> str:
    """The URL a `python -c "...urlopen('URL')..."` (or wget/curl) healthcheck asks."""
    match = re.search(r"https?://[^'\"\s)]+", " ".join(test))
    assert match, f"no URL in healthcheck {test}"
    return match.group(0)


def host_port_path(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, f"{url} names no host and port"
    return parts.hostname, parts.port, parts.path or "/"


# --- what the code serves ------------------------------------------------------------


def route_paths(app: Any) -> set[str]:
    """The paths a FastAPI app serves, as its OpenAPI schema lists them."""
    return set(app.openapi()["paths"])


@cache
def gateway_routes() -> frozenset[str]:
    from throttllem.wiring import create_gateway_app

    return frozenset(route_paths(create_gateway_app(Settings())))


def twin_engine() -> Any:
    from simulator.engine import Engine
    from simulator.profile import DEFAULT_PROFILE, load_profile
    from simulator.realtime import RealtimeEngine

    return RealtimeEngine(Engine(load_profile(DEFAULT_PROFILE)))


@cache
def twin_control_routes() -> frozenset[str]:
    from simulator.control_api import create_control_app

    return frozenset(route_paths(create_control_app(twin_engine())))


def series_names(exposition: str) -> set[str]:
    """Names a Prometheus text page defines series for, with the suffixes each metric type
    gives its series (a labelled counter with no child yet still counts)."""
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_count", "_sum", "_created"],
        "summary": ["_count", "_sum", "_created", ""],
    }
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


@cache
def gateway_series() -> frozenset[str]:
    """Read from a live gateway's /metrics, in-process."""
    from fastapi.testclient import TestClient

    from throttllem.wiring import create_gateway_app

    with TestClient(create_gateway_app(Settings())) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    return frozenset(series_names(response.text))


@cache
def governor_series() -> frozenset[str]:
    """What `throttllem govern` serves on its metrics port, every value known."""
    from governor.loop import GovernorStatus
    from governor.metrics import governor_registry
    from slo_planner.clock_steps import ClockCounts

    steps = ClockCounts(target_clock_mhz=1410, applied_clock_mhz=1410, decisions=1, clock_changes=1)
    status = GovernorStatus(
        steps, current_clock_mhz=1410, power_w=250.0, energy_mj=1000.0, last_decision_ms=0.1
    )
    return frozenset(series_names(generate_latest(governor_registry(status)).decode()))


@cache
def twin_series() -> frozenset[str]:
    """What the twin's control API serves at /metrics (Triton's names)."""
    from simulator.metrics import twin_registry

    return frozenset(series_names(generate_latest(twin_registry(twin_engine())).decode()))


def exported_series() -> set[str]:
    return set(gateway_series() | governor_series() | twin_series())


# --- PromQL --------------------------------------------------------------------------

_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions,
    aggregations, keywords, label names or Grafana variables."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery windows
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or name.lower() in _PROMQL_WORDS:
            continue
        if match.start() > 0 and (
            text[match.start() - 1].isdigit() or text[match.start() - 1] == "."
        ):
            continue  # an exponent or a unit inside a number
        names.add(name)
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel, rows included."""
    queries = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                queries.append((inner.get("title", ""), target["expr"]))
    return queries

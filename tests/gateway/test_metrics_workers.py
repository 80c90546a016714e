"""`/metrics` of a gateway with several uvicorn workers: every scrape reads all of them.

The real test starts `throttllem serve --workers 2` in front of the instant upstream, on
the real Redis. The unit tests play several workers in this process, each writing under
a process identifier of its own, as prometheus_client's own tests do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import MULTIPROC_DIR_VARIABLE, GatewayMetrics
from governor.loop import GovernorStatus
from governor.metrics import GovernorCollector
from predictor.loading import Predictions
from tests.conftest import REDIS_URL
from tests.servers import free_ports, server_process
from throttllem import stack
from throttllem.bench.gateway import MODEL, TRITON_MODEL, gateway_command, upstream_command

SCRAPES = 8
FEWEST_REQUESTS = 12  # then more, one connection each, until both workers counted some
MOST_REQUESTS = 64


def samples(text: str, name: str) -> list[float]:
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def labelled(text: str, name: str) -> dict[str, float]:
    """One sample per value of the metric's only label."""
    return {
        next(iter(sample.labels.values())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def requests_total(text: str) -> float:
    return sum(samples(text, "throttllem_requests_total"))


def in_flight(text: str) -> list[float]:
    return samples(text, "throttllem_requests_in_flight")


# -- the real gateway, two workers -------------------------------------------------------


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[str]:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    with server_process(upstream_command(port), tmp_path / "upstream.log",
                        f"{url}/v2/health/ready", 30):  # fmt: skip
        yield url


def gateway_env(upstream_url: str, instance: str, temp_dir: Path) -> dict[str, str]:
    """Only this test's THROTTLLEM_* settings; TMPDIR so that the test finds the metrics
    directory the gateway makes there."""
    inherited = {key: value for key, value in os.environ.items()
                 if not key.startswith("THROTTLLEM_") and key != MULTIPROC_DIR_VARIABLE}  # fmt: skip
    return inherited | {
        "THROTTLLEM_BACKEND_KIND": "triton",
        "THROTTLLEM_BACKEND_URL": upstream_url,
        "THROTTLLEM_TRITON_MODEL": TRITON_MODEL,
        "THROTTLLEM_SERVED_MODEL_NAME": MODEL,
        "THROTTLLEM_GPU_BACKEND": "none",
        "THROTTLLEM_REDIS_URL": REDIS_URL,
        "THROTTLLEM_INSTANCE": instance,
        "TMPDIR": str(temp_dir),
    }


def requests_by_worker(shared: Path) -> dict[int, float]:
    """Each worker's own count, read from its counter file."""
    counts = {}
    for path in shared.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        families = MultiProcessCollector.merge([str(path)])
        counts[pid] = sum(sample.value for family in families for sample in family.samples
                          if sample.name == "throttllem_requests_total")  # fmt: skip
    return counts


def complete(base_url: str) -> None:
    """One completion on a connection of its own, so that any worker may take it."""
    body = {"model": MODEL, "prompt": "Say hello.", "max_tokens": 4}
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text


def complete_until_both_workers_count(base_url: str, shared: Path) -> int:
    sent = 0
    while sent < MOST_REQUESTS:
        complete(base_url)
        sent += 1
        counts = requests_by_worker(shared).values()
        if sent >= FEWEST_REQUESTS and sum(count > 0 for count in counts) >= 2:
            return sent
    raise AssertionError(f"{MOST_REQUESTS} connections, all taken by one worker")


def test_every_scrape_of_two_workers_reads_both(upstream: str, tmp_path: Path, instance: str):
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    (port,) = free_ports(1)
    base_url = f"http://127.0.0.1:{port}"
    env = gateway_env(upstream, instance, temp_dir)
    with server_process(gateway_command(port, workers=2), tmp_path / "serve.log",
                        f"{base_url}/health/ready", 60, env=env):  # fmt: skip
        (shared,) = temp_dir.glob("throttllem-metrics-*")
        sent = complete_until_both_workers_count(base_url, shared)
        scrapes = [httpx.get(f"{base_url}/metrics", timeout=10).text for _ in range(SCRAPES)]
        by_worker = requests_by_worker(shared)
    print(f"sent {sent}; by worker {sorted(by_worker.values())}; "
          f"scrapes {[requests_total(text) for text in scrapes]}")  # fmt: skip

    assert len(by_worker) == 2  # the two workers wrote there; the parent did not
    assert min(by_worker.values()) > 0 and sum(by_worker.values()) == sent
    assert [requests_total(text) for text in scrapes] == [sent] * SCRAPES
    assert [in_flight(text) for text in scrapes] == [[0.0]] * SCRAPES
    assert all("pid=" not in text for text in scrapes)  # every gauge says how it combines
    assert not shared.exists()
    assert list(temp_dir.iterdir()) == []


# -- several workers played in this process -----------------------------------------------


def a_dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def predictions(*loaded: str) -> Predictions:
    ready = Predictions()
    for name in loaded:
        setattr(ready, name, object())  # only its presence is read
    return ready


def play_worker(
    monkeypatch: pytest.MonkeyPatch,
    pid: int,
    requests: int,
    in_flight: int,
    loaded: tuple[str, ...],
    degraded: bool,
) -> GatewayMetrics:
    """A worker's metrics, written under `pid` as a worker of that pid would."""
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid))
    metrics = GatewayMetrics()
    metrics.watch_predictions(predictions(*loaded))
    metrics.watch_state_store()(degraded)
    for _ in range(requests):
        metrics.requests.labels("completions", "200").inc()
    metrics.in_flight.inc(in_flight)
    return metrics


def test_workers_values_combine_and_a_gone_workers_gauges_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(MULTIPROC_DIR_VARIABLE, str(tmp_path))
    gone = a_dead_pid()
    play_worker(monkeypatch, os.getppid(), 2, 2, ("performance",), False)
    play_worker(monkeypatch, gone, 4, 5, (), True)  # killed with 5 in flight
    # last: a worker starting under this process's pid drops live gauges left under it
    answering = play_worker(monkeypatch, os.getpid(), 3, 1, ("length", "performance"), True)
    assert len(list(tmp_path.glob(f"gauge_live*_{gone}.db"))) == 3

    text = generate_latest(answering.registry).decode()

    assert requests_total(text) == 9  # the gone worker's answers still count
    assert in_flight(text) == [3.0]  # its 5 in flight do not
    ready = labelled(text, "throttllem_predictor_ready")
    assert ready == {"length": 0.0, "performance": 1.0, "power": 0.0}
    assert samples(text, "throttllem_state_store_degraded") == [1.0]  # any live worker's
    assert "pid=" not in text
    assert list(tmp_path.glob(f"gauge_live*_{gone}.db")) == []
    assert list(tmp_path.glob(f"counter_{gone}.db")) != []


def test_the_answering_workers_governor_is_added_to_the_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(MULTIPROC_DIR_VARIABLE, str(tmp_path))
    metrics = play_worker(monkeypatch, os.getpid(), 1, 0, (), False)
    metrics.watch(GovernorCollector(GovernorStatus(current_clock_mhz=1410)))
    text = generate_latest(metrics.registry).decode()
    assert samples(text, "throttllem_gpu_clock_mhz") == [1410.0]
    assert requests_total(text) == 1


# -- one worker: as before ----------------------------------------------------------------


def test_one_process_keeps_one_registry_of_its_own(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(MULTIPROC_DIR_VARIABLE, raising=False)
    first, second = GatewayMetrics(), GatewayMetrics()
    first.requests.labels("completions", "200").inc()
    first.in_flight.inc()
    set_degraded = first.watch_state_store()
    set_degraded(True)
    text = generate_latest(first.registry).decode()
    assert requests_total(text) == 1
    assert in_flight(text) == [1.0]
    assert samples(text, "throttllem_state_store_degraded") == [1.0]
    assert samples(text, "throttllem_requests_created")  # in-process metrics only
    assert requests_total(generate_latest(second.registry).decode()) == 0
    set_degraded(False)
    assert samples(generate_latest(first.registry).decode(), "throttllem_state_store_degraded") == [
        0.0
    ]


def test_one_worker_serves_with_no_metrics_directory(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(MULTIPROC_DIR_VARIABLE, raising=False)
    seen: list[str | None] = []
    monkeypatch.setattr(stack, "_serve", lambda settings: seen.append(
        os.environ.get(MULTIPROC_DIR_VARIABLE)))  # fmt: skip
    assert stack.serve_gateway(host=None, port=None, workers=1) == 0
    assert seen == [None]


# -- the directory the parent gives its workers -------------------------------------------


def test_a_private_directory_is_made_for_the_workers_and_removed_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(MULTIPROC_DIR_VARIABLE, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    with stack.shared_metrics_directory() as shared:
        assert os.environ[MULTIPROC_DIR_VARIABLE] == str(shared)
        assert shared.parent == tmp_path and list(shared.iterdir()) == []
        (shared / "counter_1.db").write_bytes(b"")
    assert not shared.exists()
    assert MULTIPROC_DIR_VARIABLE not in os.environ


def test_the_users_directory_is_used_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    theirs = tmp_path / "theirs" / "metrics"
    monkeypatch.setenv(MULTIPROC_DIR_VARIABLE, str(theirs))
    with stack.shared_metrics_directory() as shared:
        assert shared == theirs and shared.is_dir()
        (shared / "counter_1.db").write_bytes(b"")
    assert (theirs / "counter_1.db").exists()
    assert os.environ[MULTIPROC_DIR_VARIABLE] == str(theirs)


def test_several_workers_need_redis_before_any_directory_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("THROTTLLEM_REDIS_URL", raising=False)
    monkeypatch.delenv(MULTIPROC_DIR_VARIABLE, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert stack.serve_gateway(host=None, port=None, workers=2) == 2
    assert list(tmp_path.iterdir()) == []
    assert MULTIPROC_DIR_VARIABLE not in os.environ

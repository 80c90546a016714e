"""Instance scaling against a real Triton: the twin hosting TP1 and TP2 as loadable models."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from governor.scaler import InstanceScaler
from governor.triton_repository import RepositoryError, TritonRepository
from slo_planner.scaling import EngineSize, ScalingPolicy
from slo_scoreboard.scaling_channel import MemoryScalingChannel
from tests.integration.stack import TwinServer as Twin
from tests.integration.stack import running_twin
from tests.servers import free_ports, server_process

TOKEN = "scaling-test-token"
TP1 = EngineSize("tp1", "ensemble-tp1", capacity_rps=2.0)
TP2 = EngineSize("tp2", "ensemble-tp2", capacity_rps=6.0)
SIZES_JSON = (
    '[{"label": "tp1", "triton_model": "ensemble-tp1", "capacity_rps": 1.0},'
    ' {"label": "tp2", "triton_model": "ensemble-tp2", "capacity_rps": 100.0}]'
)


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    with running_twin(tmp_path_factory.mktemp("twin"), "--profile", "a100-40gb/llama-2-13b/tp1",
                      "--scale-profiles", "a100-40gb/llama-2-13b/tp2", "--repository-token", TOKEN,
                      ready_model="ensemble-tp1") as server:  # fmt: skip
        yield server


def repository(twin: Twin) -> TritonRepository:
    return TritonRepository(twin.triton_url, access_header=("triton-access-token", TOKEN))


def generates(twin: Twin, model: str) -> bool:
    body = {"text_input": "hello", "max_tokens": 2, "stream": True}
    response = httpx.post(
        f"{twin.triton_url}/v2/models/{model}/generate_stream", json=body, timeout=30
    )
    return response.status_code == 200 and "text_output" in response.text


def served_requests(twin: Twin, model: str) -> int:
    """Triton's count of successful requests to `model`."""
    for line in httpx.get(twin.metrics_url, timeout=10).text.splitlines():
        if line.startswith("nv_inference_request_success") and f'model="{model}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def test_the_scaler_grows_in_the_shadow_and_shrinks_after_the_grace_period(twin: Twin):
    now_s = [0.0]
    channel = MemoryScalingChannel()
    repo = repository(twin)
    policy = ScalingPolicy([TP1, TP2], headroom=1.0, grace_s=5.0)
    scaler = InstanceScaler(policy, channel, repo, drain_s=0.3, clock=lambda: now_s[0])
    try:
        await scaler.start(default_model="ensemble-tp1")
        assert await channel.route() == "ensemble-tp1"
        assert not await repo.ready("ensemble-tp2")  # not loaded until needed
        await scaler.step()  # the first count

        await channel.add_arrivals(40)
        now_s[0] = 10.0  # 4 req/s: past TP1's 2
        assert await scaler.step() == TP2
        assert await repo.ready("ensemble-tp2")  # loaded before traffic moved
        assert await channel.route() == "ensemble-tp2"
        assert await asyncio.to_thread(generates, twin, "ensemble-tp2")
        await scaler.drained()
        assert not await repo.ready("ensemble-tp1")  # unloaded once drained

        await channel.add_arrivals(5)
        now_s[0] = 20.0  # 0.5 req/s: TP1 would do, but the grace period runs
        assert await scaler.step() == TP2
        now_s[0] = 26.0
        assert await scaler.step() == TP1  # loaded again, in the shadow
        assert await channel.route() == "ensemble-tp1"
        assert await asyncio.to_thread(generates, twin, "ensemble-tp1")
        await scaler.drained()
        assert not await repo.ready("ensemble-tp2")
    finally:
        await repo.aclose()


async def test_a_size_that_cannot_load_leaves_traffic_where_it_was(twin: Twin):
    missing = EngineSize("tp8", "ensemble-tp8", capacity_rps=50.0)
    channel = MemoryScalingChannel()
    repo = repository(twin)
    scaler = InstanceScaler(ScalingPolicy([TP1, missing], headroom=1.0), channel, repo)
    try:
        await scaler.start(default_model="ensemble-tp1")
        await repo.load("ensemble-tp1")
        assert not await scaler.move_to(missing)
        assert scaler.current == TP1
        assert await channel.route() == "ensemble-tp1"
    finally:
        await repo.aclose()


async def test_the_repository_api_without_the_token_is_refused_with_a_hint(twin: Twin):
    repo = TritonRepository(twin.triton_url)
    try:
        with pytest.raises(RepositoryError, match="THROTTLLEM_TRITON_REPOSITORY_TOKEN"):
            await repo.load("ensemble-tp2")
    finally:
        await repo.aclose()


def test_a_gateway_with_autoscale_moves_its_traffic_to_the_bigger_engine(
    twin: Twin, tmp_path: Path
):
    """The whole loop through `throttllem serve`: the gateway counts arrivals, its scaler
    loads TP2 when the rate passes TP1's capacity, and requests go to TP2."""
    httpx.post(f"{twin.triton_url}/v2/repository/models/ensemble-tp1/load",
               headers={"triton-access-token": TOKEN}, timeout=60)  # fmt: skip
    (port,) = free_ports(1)
    env = {key: value for key, value in os.environ.items() if not key.startswith("THROTTLLEM_")}
    env |= {
        "THROTTLLEM_BACKEND_URL": twin.triton_url,
        "THROTTLLEM_TRITON_MODEL": "ensemble-tp1",
        "THROTTLLEM_AUTOSCALE": "1",
        "THROTTLLEM_ENGINE_SIZES": SIZES_JSON,
        "THROTTLLEM_SCALE_INTERVAL_S": "1",
        "THROTTLLEM_SCALE_HEADROOM": "1",
        "THROTTLLEM_SCALE_GRACE_S": "60",
        "THROTTLLEM_TRITON_REPOSITORY_TOKEN": TOKEN,
        "THROTTLLEM_LENGTH_MODEL_PATH": "none",
        "THROTTLLEM_PERFORMANCE_MODEL_PATH": "none",
    }
    command = [sys.executable, "-m", "throttllem", "serve", "--port", str(port)]
    log_path = tmp_path / "gateway.log"
    base_url = f"http://127.0.0.1:{port}"
    with server_process(command, log_path, f"{base_url}/health/ready", 60, env=env):
        before = served_requests(twin, "ensemble-tp2")
        body = {"model": "llama-2-13b", "prompt": "hello", "max_tokens": 2}
        with httpx.Client(base_url=base_url, timeout=30) as client:
            deadline_s = time.monotonic() + 20
            while time.monotonic() < deadline_s and served_requests(twin, "ensemble-tp2") == before:
                assert client.post("/v1/completions", json=body).status_code == 200
                time.sleep(0.1)  # about 8 req/s, past TP1's 1
        assert served_requests(twin, "ensemble-tp2") > before, log_path.read_text()
        assert "traffic moved from tp1 to tp2" in log_path.read_text()


async def test_a_scaler_that_is_no_longer_leader_moves_nothing(twin: Twin):
    channel = MemoryScalingChannel()
    repo = repository(twin)

    async def newer_leader_exists() -> bool:
        return False

    policy = ScalingPolicy([TP1, TP2], headroom=1.0)
    scaler = InstanceScaler(policy, channel, repo, may_act=newer_leader_exists)
    try:
        await repo.unload("ensemble-tp2")  # whatever an earlier test left loaded
        await scaler.start(default_model="ensemble-tp1")
        assert not await scaler.move_to(TP2)
        assert await channel.route() == "ensemble-tp1"
        assert not await repo.ready("ensemble-tp2")
    finally:
        await repo.aclose()

"""`throttllem govern` end to end: a supervisor and its governor against the twin's GPU
control API (served alone, without Triton), with the scoreboard and lock in Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from governor.gpu.base import GpuError
from predictor.shipped import performance_model_path
from tests.servers import free_ports
from throttllem.cli import main
from throttllem.govern import ClockResetter
from throttllem.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[2]
CONTROL_API = """
import sys, uvicorn
from simulator.control_api import create_control_app
from simulator.engine import Engine
from simulator.profile import load_profile
from simulator.realtime import RealtimeEngine
runner = RealtimeEngine(Engine(load_profile("a100-40gb/llama-2-13b/tp1")))
runner.start()
uvicorn.run(create_control_app(runner), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def wait_until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Seconds it took."""
    started_s = time.monotonic()
    while not condition():
        assert time.monotonic() - started_s < timeout_s, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started_s


@pytest.fixture
def control_url() -> Iterator[str]:
    (port,) = free_ports(1)
    server = subprocess.Popen([sys.executable, "-c", CONTROL_API, str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: reachable(url), timeout_s=20.0)
        yield url
    finally:
        server.kill()
        server.wait()


def reachable(url: str) -> bool:
    try:
        return httpx.get(f"{url}/gpus/0").status_code == 200
    except httpx.TransportError:
        return False


def locked_clock_mhz(url: str) -> int | None:
    locked: int | None = httpx.get(f"{url}/gpus/0").json()["locked_clock_mhz"]
    return locked


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture
def supervisor(control_url: str) -> Iterator[subprocess.Popen[bytes]]:
    instance = f"govern-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "THROTTLLEM_REDIS_URL": REDIS_URL,
        "THROTTLLEM_INSTANCE": instance,
        "THROTTLLEM_GPU_BACKEND": "simulated",
        "THROTTLLEM_GPU_CONTROL_URL": control_url,
        "THROTTLLEM_PERFORMANCE_MODEL_PATH": str(
            performance_model_path("a100-40gb/llama-2-13b/tp1")
        ),
        "THROTTLLEM_GOVERNOR_WINDOW_MS": "50",
    }
    process = subprocess.Popen([sys.executable, "-m", "throttllem", "govern"], cwd=ROOT, env=env)
    try:
        # An empty scoreboard: the highest clock, locked once the governor leads.
        wait_until(lambda: locked_clock_mhz(control_url) is not None, timeout_s=20.0)
        yield process
    finally:
        for pid in [*children(process.pid), process.pid] if alive(process.pid) else []:
            os.kill(pid, signal.SIGKILL)
        process.wait()
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(
            f"throttllem:{instance}:governor:leader", f"throttllem:{instance}:governor:fence"
        )
        client.close()


def test_a_killed_governor_has_its_clocks_reset_by_the_supervisor(supervisor, control_url):
    assert locked_clock_mhz(control_url) == 1410  # an empty board: the highest, locked
    (child,) = children(supervisor.pid)
    os.kill(child, signal.SIGKILL)
    took_s = wait_until(lambda: locked_clock_mhz(control_url) is None, timeout_s=2.5)
    assert took_s < 2.5
    assert supervisor.poll() is None  # it restarts the governor rather than giving up


def test_a_governor_whose_supervisor_is_killed_resets_and_exits(supervisor, control_url):
    (child,) = children(supervisor.pid)
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    wait_until(lambda: locked_clock_mhz(control_url) is None, timeout_s=2.5)
    wait_until(lambda: not alive(child), timeout_s=2.5)


def test_sigterm_stops_the_governor_resets_and_exits_0(supervisor, control_url):
    (child,) = children(supervisor.pid)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=10) == 0
    assert locked_clock_mhz(control_url) is None
    assert not alive(child)


def test_govern_without_a_redis_url_says_so_and_exits_2(monkeypatch, capsys):
    monkeypatch.delenv("THROTTLLEM_REDIS_URL", raising=False)
    assert main(["govern"]) == 2
    assert "THROTTLLEM_REDIS_URL is required" in capsys.readouterr().err


def test_one_clock_resetter_resets_every_time_and_says_when_it_cannot(control_url):
    """The supervisor's resetter keeps its GPUs open across resets (a stalled governor's
    reset is on the clock); a GPU it cannot reach is an error the supervisor logs."""
    settings = Settings(gpu_backend="simulated", gpu_control_url=control_url)
    reset = ClockResetter(settings)
    reset.prepare()
    try:
        for clock_mhz in (210, 810):
            httpx.put(f"{control_url}/gpus/0/locked-clocks",
                      json={"min_mhz": clock_mhz, "max_mhz": clock_mhz}).raise_for_status()  # fmt: skip
            assert locked_clock_mhz(control_url) == clock_mhz
            reset()
            assert locked_clock_mhz(control_url) is None
    finally:
        reset.close()
    (closed_port,) = free_ports(1)
    unreachable = ClockResetter(
        Settings(gpu_backend="simulated", gpu_control_url=f"http://127.0.0.1:{closed_port}")
    )
    try:
        with pytest.raises(GpuError):
            unreachable()
    finally:
        unreachable.close()

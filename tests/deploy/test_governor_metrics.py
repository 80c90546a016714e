"""`throttllem govern` serves its clock, power and energy on THROTTLLEM_GOVERNOR_METRICS_PORT:
the Prometheus target `governor:9400` of both Compose stacks and the engine pods."""

from __future__ import annotations

import os
import signal
import sys
import time

import httpx

from tests.conftest import REDIS_URL
from tests.deploy.manifests import series_names
from tests.servers import free_ports, server_process

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


def test_govern_serves_the_clock_power_and_energy_it_reads(tmp_path, instance):
    control_port, metrics_port = free_ports(2)
    control_url = f"http://127.0.0.1:{control_port}"
    env = {
        **os.environ,
        "THROTTLLEM_REDIS_URL": REDIS_URL,
        "THROTTLLEM_INSTANCE": instance,
        "THROTTLLEM_GPU_BACKEND": "simulated",
        "THROTTLLEM_GPU_CONTROL_URL": control_url,
        "THROTTLLEM_GOVERNOR_METRICS_PORT": str(metrics_port),
        "THROTTLLEM_GOVERNOR_WINDOW_MS": "50",
    }
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with (
        server_process(
            [sys.executable, "-c", CONTROL_API, str(control_port)],
            tmp_path / "control.log",
            f"{control_url}/gpus/0",
            30.0,
        ),
        server_process(
            [sys.executable, "-m", "throttllem", "govern"],
            tmp_path / "govern.log",
            metrics_url,
            60.0,
            env=env,
            stop_signal=signal.SIGTERM,
        ),
    ):
        expected = {
            "throttllem_gpu_clock_mhz",
            "throttllem_gpu_power_watts",
            "throttllem_gpu_energy_joules",
            "throttllem_governor_decisions",
        }
        names: set[str] = set()
        # The first decision comes once the governor leads; its first reading of the GPU
        # (clock, then power, then energy) may be half done at a scrape.
        for _ in range(300):
            names = series_names(httpx.get(metrics_url).text)
            if expected <= names:
                break
            time.sleep(0.1)
        gpu = httpx.get(f"{control_url}/gpus/0").json()
    assert expected <= names
    assert gpu["locked_clock_mhz"] is not None  # it governed, too

"""`throttllem run` and `throttllem twin` as test fixtures: the gateway, its governor and
the twin in Triton; or the twin alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_ports, server_process


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    base_url: str
    control_url: str
    triton_http_port: int


@contextmanager
def running_stack(log_dir: Path, env: dict[str, str] | None = None) -> Iterator[Stack]:
    gateway_port, http_port, grpc_port, metrics_port, control_port = free_ports(5)
    command = [
        sys.executable, "-m", "throttllem", "run", "--port", str(gateway_port),
        "--twin-http-port", str(http_port), "--twin-grpc-port", str(grpc_port),
        "--twin-metrics-port", str(metrics_port), "--twin-control-port", str(control_port),
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{gateway_port}"
    with server_process(command, log_dir / "throttllem-run.log", f"{base_url}/health/ready", 120,
                        env={**os.environ, **(env or {})}, stop_timeout_s=60) as process:  # fmt: skip
        yield Stack(process, base_url, f"http://127.0.0.1:{control_port}", http_port)


@dataclass
class TwinServer:
    triton_url: str
    metrics_url: str
    control_url: str


@contextmanager
def running_twin(log_dir: Path, *args: str, ready_model: str = "ensemble") -> Iterator[TwinServer]:
    """`throttllem twin ARGS` on free ports, once `ready_model` answers ready."""
    http_port, grpc_port, metrics_port, control_port = free_ports(4)
    command = [
        sys.executable, "-m", "throttllem", "twin", *args,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port), "--control-port", str(control_port),
    ]  # fmt: skip
    triton_url = f"http://127.0.0.1:{http_port}"
    with server_process(command, log_dir / "twin.log", f"{triton_url}/v2/models/{ready_model}/ready",
                        120, stop_signal=signal.SIGTERM, stop_timeout_s=60, new_session=True):  # fmt: skip
        yield TwinServer(triton_url, f"http://127.0.0.1:{metrics_port}/metrics",
                         f"http://127.0.0.1:{control_port}")  # fmt: skip

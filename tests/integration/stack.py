"""`throttllem run` as a test fixture: the gateway, its governor and the twin in Triton."""

from __future__ import annotations

import os
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

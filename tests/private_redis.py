"""A redis-server of a test's own, that the test can kill and restart (nothing on disk)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis


class PrivateRedis:
    """A redis-server on a fixed port, killed without a goodbye and restarted empty."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self._directory)]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline_s = time.monotonic() + 5.0
        with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError as exc:
                    if self._process.poll() is not None or time.monotonic() > deadline_s:
                        message = f"redis-server on port {self.port} did not start"
                        raise RuntimeError(message) from exc
                time.sleep(0.02)

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()  # SIGKILL: no goodbye to the clients
            self._process.wait(timeout=5.0)
        self._process = None

    def restart(self) -> None:
        self.kill()
        self.start()

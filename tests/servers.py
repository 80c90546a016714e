"""Helpers for tests that start real servers: free ports, readiness, leftover processes."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from throttllem.bench.gateway import free_ports

__all__ = ["free_ports", "processes_with_argument", "server_process", "wait_for_http"]


def wait_for_http(url: str, timeout_s: float, is_alive: Callable[[], bool]) -> None:
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if not is_alive():
            raise RuntimeError(f"the server exited before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s")


def processes_with_argument(program: str, argument: str) -> list[int]:
    """PIDs of running `program` processes whose command line contains `argument`."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            args
            and args[0].decode(errors="replace").endswith(program)
            and argument.encode() in args
        ):
            pids.append(int(cmdline.parent.name))
    return pids


@contextmanager
def server_process(
    command: Sequence[str],
    log_path: Path,
    ready_url: str,
    ready_timeout_s: float,
    env: dict[str, str] | None = None,
    stop_signal: signal.Signals = signal.SIGINT,
    stop_timeout_s: float = 30.0,
    new_session: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server started as a child process, its output in `log_path`, ready once
    `ready_url` answers 200 (else its log is printed and the error raised); stopped with
    `stop_signal` on the way out, and killed if it outlives `stop_timeout_s`."""
    with log_path.open("w") as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=new_session)  # fmt: skip
    try:
        try:
            wait_for_http(ready_url, ready_timeout_s, lambda: process.poll() is None)
        except (RuntimeError, TimeoutError):
            print(log_path.read_text())
            raise
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(stop_signal)
            try:
                process.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()

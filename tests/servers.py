"""Helpers for tests that start real servers: free ports, readiness, leftover processes."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


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

"""The fault suite: the production topology under load, each fault injected in turn.

The twin in Triton, `throttllem serve --workers 2` on a Redis of the suite's own, and
`throttllem govern` on the twin's simulated GPU. Eight clients stream completions
without pause; a sampler reads the GPU's clock every 50 ms. For each fault: requests
answered, failed cleanly (an OpenAI-shaped error, or an error event in the stream),
lost (no answer, a broken connection, an empty success); seconds to recovery; the
lowest clock ordered while the board could not be trusted and the clock after; and
scoreboard entries left once the load stopped and the engine drained.

    python -m tests.faults.suite [--json faults.json]

prints the table (a benchmark: its timings are measured, not asserted);
tests/faults/test_faults.py runs it in `make test` and asserts what must hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from predictor.shipped import length_model_path, performance_model_path
from slo_scoreboard.redis_store import RedisStateStore
from tests.integration.stack import TwinServer, running_twin
from tests.private_redis import PrivateRedis
from tests.servers import free_ports, server_process

MODEL = "llama-2-13b"
PROFILE = "a100-40gb/llama-2-13b/tp1"
INSTANCE = "faults"
TOP_MHZ = 1410
CLIENTS = 8
ADMIN = {"Authorization": "Bearer admin-secret"}
ENTRY_TTL_S = 3.0
SETTLE_S = 2.0  # load before a fault, and after it
# From a fault until the highest clock is in force: the governor's next read (its 100 ms
# window), the GPU's switch (200 ms), and 200 ms for a loaded 2-core host and the sampler.
HIGHEST_WITHIN_S = 0.1 + 0.2 + 0.2


@dataclass
class Outcomes:
    answered: int = 0
    failed_cleanly: int = 0
    lost: int = 0
    lost_reasons: list[str] = field(default_factory=list)


@dataclass
class FaultResult:
    fault: str
    answered: int
    failed_cleanly: int
    lost: int
    recovery_s: float | None  # from the fault's end until everything is normal again
    lowest_mhz_untrusted: int | None  # lowest clock in force while it could not be trusted
    clock_after_mhz: int | None
    leaked_entries: int
    note: str = ""


@dataclass
class Topology:
    twin: TwinServer
    redis: PrivateRedis
    gateway_url: str
    govern: subprocess.Popen[bytes]
    serve: subprocess.Popen[bytes]


async def one_request(client: httpx.AsyncClient, outcomes: Outcomes) -> None:
    body = {"model": MODEL, "prompt": "Tell me about bicycles.", "max_tokens": 16,
            "stream": True, "ignore_eos": True}  # fmt: skip
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                error = json.loads(await response.aread()).get("error", {})
                if {"message", "type"} <= set(error):
                    outcomes.failed_cleanly += 1
                else:
                    outcomes.lost += 1
                    outcomes.lost_reasons.append(f"{response.status_code} without an error")
                return
            text, done, errored = "", False, False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    errored = True
                else:
                    text += event["choices"][0].get("text") or ""
            if errored and done:
                outcomes.failed_cleanly += 1
            elif done and text:
                outcomes.answered += 1
            else:
                outcomes.lost += 1
                outcomes.lost_reasons.append("a stream without [DONE] or without text")
    except (httpx.TransportError, json.JSONDecodeError) as error:
        outcomes.lost += 1
        outcomes.lost_reasons.append(type(error).__name__)


@contextlib.asynccontextmanager
async def load(url: str) -> AsyncIterator[Outcomes]:
    outcomes = Outcomes()
    stop = asyncio.Event()

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while not stop.is_set():
                await one_request(client, outcomes)

    tasks = [asyncio.create_task(client_loop()) for _ in range(CLIENTS)]
    try:
        yield outcomes
    finally:
        stop.set()
        await asyncio.gather(*tasks)


class ClockSampler:
    """The clock in force on GPU 0, every 50 ms, with the time it was read."""

    def __init__(self, control_url: str) -> None:
        self._url = f"{control_url}/gpus/0"
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:  # one request per sample: the twin answers in ~1 ms
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    state = (await client.get(self._url)).json()
                    self.samples.append((time.monotonic(), int(state["clock_mhz"])))
                await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def lowest_between(self, start_s: float, end_s: float) -> int | None:
        within = [mhz for at_s, mhz in self.samples if start_s <= at_s <= end_s]
        return min(within) if within else None

    def latest(self) -> int | None:
        return self.samples[-1][1] if self.samples else None


async def wait_for(condition: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until `condition` held, or None if it did not within `timeout_s`."""
    started_s = time.monotonic()
    while time.monotonic() - started_s < timeout_s:
        if await asyncio.to_thread(condition):
            return time.monotonic() - started_s
        await asyncio.sleep(0.05)
    return None


def gauge(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(f"{name} ") or line.startswith(f"{name}{{"):
            return float(line.split()[-1])
    return math.nan


def engine_active(twin: TwinServer) -> int:
    """Requests the engine holds, from the TensorRT-LLM metrics the twin's control port serves."""
    for line in httpx.get(f"{twin.control_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("nv_trt_llm_request_metrics{") and 'request_type="active"' in line:
            return int(float(line.split()[-1]))
    raise RuntimeError("the twin exports no active-request count")


async def leaked(topology: Topology) -> int:
    """Entries left once the engine is idle and one entry TTL has passed."""
    if await wait_for(lambda: engine_active(topology.twin) == 0, timeout_s=60) is None:
        raise RuntimeError("the engine did not drain within 60 s")
    await asyncio.sleep(ENTRY_TTL_S + 0.5)
    store = RedisStateStore.connect(topology.redis.url, INSTANCE, ENTRY_TTL_S)
    try:
        return len((await store.snapshot()).entries)
    finally:
        await store.aclose()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def uvicorn_workers(master: int) -> list[int]:
    """The master's worker processes (multiprocessing's spawn), not its resource tracker."""
    workers = []
    for pid in children(master):
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
    return workers


async def redis_restart(topology: Topology, clock: ClockSampler) -> FaultResult:
    async with load(topology.gateway_url) as outcomes:
        await asyncio.sleep(SETTLE_S)
        fault_s = time.monotonic()
        topology.redis.kill()
        await asyncio.sleep(2.0)
        await asyncio.to_thread(topology.redis.start)
        back_s = time.monotonic()
        recovery_s = await wait_for(
            lambda: gauge(topology.gateway_url, "throttllem_state_store_degraded") == 0,
            timeout_s=15,
        )
        await asyncio.sleep(SETTLE_S)
    untrusted_end_s = back_s + (recovery_s or 0.0)
    return FaultResult("Redis killed for 2 s, restarted empty", outcomes.answered,
                       outcomes.failed_cleanly, outcomes.lost, recovery_s,
                       clock.lowest_between(fault_s + HIGHEST_WITHIN_S, untrusted_end_s), clock.latest(),
                       await leaked(topology), "; ".join(sorted(set(outcomes.lost_reasons))))  # fmt: skip


async def governor_killed(topology: Topology, clock: ClockSampler, stall: bool) -> FaultResult:
    async with load(topology.gateway_url) as outcomes:
        await asyncio.sleep(SETTLE_S)
        (child,) = children(topology.govern.pid)
        fault_s = time.monotonic()
        os.kill(child, signal.SIGSTOP if stall else signal.SIGKILL)
        recovery_s = await wait_for(lambda: clock.latest() == TOP_MHZ, timeout_s=10)
        await asyncio.sleep(SETTLE_S)
    name = "governor stalled (SIGSTOP)" if stall else "governor killed (SIGKILL)"
    return FaultResult(name, outcomes.answered, outcomes.failed_cleanly, outcomes.lost,
                       recovery_s, None, clock.latest(), await leaked(topology),
                       "recovery: until the default clock is in force" +
                       (f"; clock at the fault {clock.lowest_between(fault_s - 0.1, fault_s)}"
                        " MHz" if clock.samples else ""))  # fmt: skip


async def abandoned_streams(topology: Topology, clock: ClockSampler) -> FaultResult:
    """Clients that leave after their first token: the engine finishes their requests
    (Triton over HTTP), and the board must keep them as long."""
    body = {"model": MODEL, "prompt": "Tell me about bicycles.", "max_tokens": 60,
            "stream": True, "ignore_eos": True}  # fmt: skip
    async with httpx.AsyncClient(base_url=topology.gateway_url, timeout=30) as client:

        async def leave_after_first_token() -> None:
            async with client.stream("POST", "/v1/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        return

        await asyncio.gather(*(leave_after_first_token() for _ in range(24)))
    store = RedisStateStore.connect(topology.redis.url, INSTANCE, ENTRY_TTL_S)
    worst_gap = 0
    try:
        for _ in range(100):
            in_engine = await asyncio.to_thread(engine_active, topology.twin)
            on_board = len((await store.snapshot()).entries)
            worst_gap = max(worst_gap, in_engine - on_board)
            if in_engine == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        await store.aclose()
    return FaultResult("24 clients leave after their first token", 0, 0, 0, None, None,
                       clock.latest(), await leaked(topology),
                       f"most requests in the engine but not on the board: {worst_gap}")  # fmt: skip


async def worker_killed(topology: Topology, clock: ClockSampler) -> FaultResult:
    async with load(topology.gateway_url) as outcomes:
        await asyncio.sleep(SETTLE_S)
        workers = uvicorn_workers(topology.serve.pid)
        os.kill(workers[0], signal.SIGKILL)
        recovery_s = await wait_for(
            lambda: len(set(uvicorn_workers(topology.serve.pid)) - {workers[0]}) == len(workers),
            timeout_s=20,
        )
        await asyncio.sleep(SETTLE_S)
    return FaultResult("a gateway worker killed (SIGKILL)", outcomes.answered,
                       outcomes.failed_cleanly, outcomes.lost, recovery_s, None, clock.latest(),
                       await leaked(topology),
                       "lost: the streams on the killed worker; recovery: a new worker up")  # fmt: skip


@contextlib.contextmanager
def topology(log_dir: Path) -> Iterator[Topology]:
    (redis_port,) = free_ports(1)
    redis = PrivateRedis(redis_port, log_dir)
    redis.start()
    try:
        with running_twin(log_dir, "--profile", PROFILE) as twin:
            (port,) = free_ports(1)
            common = {**os.environ, "THROTTLLEM_REDIS_URL": redis.url,
                      "THROTTLLEM_INSTANCE": INSTANCE,
                      "THROTTLLEM_STATE_ENTRY_TTL_S": str(ENTRY_TTL_S),
                      "THROTTLLEM_PERFORMANCE_MODEL_PATH": str(performance_model_path(PROFILE))}  # fmt: skip
            serve_env = {**common, "THROTTLLEM_BACKEND_URL": twin.triton_url,
                         "THROTTLLEM_SERVED_MODEL_NAME": MODEL,
                         "THROTTLLEM_ADMIN_TOKEN": "admin-secret",
                         "THROTTLLEM_LENGTH_MODEL_PATH": str(length_model_path("llama-2-13b-chat-hf"))}  # fmt: skip
            govern_env = {**common, "THROTTLLEM_GPU_BACKEND": "simulated",
                          "THROTTLLEM_GPU_CONTROL_URL": twin.control_url}  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            serve_command = [sys.executable, "-m", "throttllem", "serve", "--port", str(port),
                             "--workers", "2"]  # fmt: skip
            with server_process(serve_command, log_dir / "serve.log", f"{url}/health/ready", 60,
                                env=serve_env) as serve:  # fmt: skip
                govern_log = (log_dir / "govern.log").open("wb")
                govern = subprocess.Popen(
                    [sys.executable, "-m", "throttllem", "govern"], env=govern_env,
                    stdout=govern_log, stderr=subprocess.STDOUT,
                )  # fmt: skip
                try:
                    yield Topology(twin, redis, url, govern, serve)
                finally:
                    for pid in [*children(govern.pid), govern.pid]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGCONT)
                            os.kill(pid, signal.SIGKILL)
                    govern.wait()
                    govern_log.close()
    finally:
        redis.kill()


async def run_suite(log_dir: Path) -> list[FaultResult]:
    with topology(log_dir) as parts:
        clock = ClockSampler(parts.twin.control_url)
        clock.start()
        try:
            await asyncio.sleep(SETTLE_S)  # the governor leads and plans
            results = [await redis_restart(parts, clock)]
            results.append(await abandoned_streams(parts, clock))
            results.append(await worker_killed(parts, clock))
            results.append(await governor_killed(parts, clock, stall=True))
            await asyncio.sleep(SETTLE_S)  # the supervisor restarts the governor
            results.append(await governor_killed(parts, clock, stall=False))
        finally:
            await clock.stop()
    return results


def print_table(results: list[FaultResult]) -> None:
    print(f"{'fault':<42} {'answered':>8} {'clean':>6} {'lost':>5} {'recovery s':>10} "
          f"{'low MHz*':>8} {'after':>6} {'leaks':>5}  note")  # fmt: skip
    for r in results:
        recovery = f"{r.recovery_s:.2f}" if r.recovery_s is not None else "-"
        low = str(r.lowest_mhz_untrusted) if r.lowest_mhz_untrusted is not None else "-"
        print(f"{r.fault:<42} {r.answered:>8} {r.failed_cleanly:>6} {r.lost:>5} {recovery:>10} "
              f"{low:>8} {r.clock_after_mhz!s:>6} {r.leaked_entries:>5}  {r.note}")  # fmt: skip
    print("* the lowest clock in force while the board could not be trusted")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.suite")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="throttllem-faults-") as log_dir:
        results = asyncio.run(run_suite(Path(log_dir)))
    print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

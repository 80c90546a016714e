"""A real `throttllem govern` holds the highest clock whenever the board cannot be
trusted: a worker still on its local board after Redis restarted, a worker that admits
without planning. The workers here are the gateway's own store stack (failover over
Redis) announcing themselves as the gateway does; the Redis is the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from predictor.shipped import performance_model_path
from slo_scoreboard.failover import FailoverStateStore
from slo_scoreboard.redis_store import RedisStateStore
from slo_scoreboard.roster import ANNOUNCE_EVERY_S
from slo_scoreboard.store import RequestEntry
from tests.governor.test_govern import ROOT, alive, children, control_url, locked_clock_mhz
from tests.private_redis import PrivateRedis

__all__ = ["control_url"]  # a fixture used here

INSTANCE = "trust"
TOP_MHZ = 1410


def light_entry(worker: str) -> RequestEntry:
    """One running request with time to spare: planned alone, well below the top."""
    now_s = time.time()
    return RequestEntry(
        request_id=f"{worker}-1", arrival_s=now_s - 1.0, prompt_tokens=200, max_tokens=4000,
        predicted_tokens=4000, ttft_slo_s=2.0, tbt_slo_s=0.2, e2e_deadline_s=math.inf,
        generated_tokens=10, first_token_s=now_s - 0.5, worker=worker,
    )  # fmt: skip


class Worker:
    """A gateway worker's scoreboard side: its entry, its announcements every 0.25 s."""

    def __init__(self, name: str, url: str, plans: bool, retry_every_s: float) -> None:
        self.name = name
        self.plans = plans
        primary = RedisStateStore.connect(url, INSTANCE, entry_ttl_s=10.0)
        self.store = FailoverStateStore(primary, retry_every_s=retry_every_s)

    async def serve(self) -> None:
        entry = light_entry(self.name)
        while not await self.store.admit(entry, (await self.store.snapshot()).version):
            pass
        while True:
            await self.store.announce(self.name, self.plans)
            await self.store.refresh([entry.request_id])
            await asyncio.sleep(ANNOUNCE_EVERY_S)


@contextlib.asynccontextmanager
async def serving(*workers: Worker) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(worker.serve()) for worker in workers]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in workers:
            await worker.store.aclose()


@dataclass(frozen=True)
class Governed:
    url: str  # the twin's GPU control API
    supervisor: subprocess.Popen[bytes]


@pytest.fixture
def governor(private_redis: PrivateRedis, control_url: str) -> Iterator[Governed]:
    env = {
        **os.environ,
        "THROTTLLEM_REDIS_URL": private_redis.url,
        "THROTTLLEM_INSTANCE": INSTANCE,
        "THROTTLLEM_GPU_BACKEND": "simulated",
        "THROTTLLEM_GPU_CONTROL_URL": control_url,
        "THROTTLLEM_PERFORMANCE_MODEL_PATH": str(
            performance_model_path("a100-40gb/llama-2-13b/tp1")
        ),
        "THROTTLLEM_GOVERNOR_WINDOW_MS": "50",
        "THROTTLLEM_GOVERNOR_MIN_DWELL_MS": "100",
    }
    process = subprocess.Popen([sys.executable, "-m", "throttllem", "govern"], cwd=ROOT, env=env)
    try:
        yield Governed(control_url, process)
    finally:
        for pid in [*children(process.pid), process.pid] if alive(process.pid) else []:
            os.kill(pid, signal.SIGKILL)
        process.wait()


async def until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline_s = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        assert time.monotonic() < deadline_s, "timed out"
        await asyncio.sleep(0.05)


async def clock_within(
    url: str, condition: Callable[[int | None], bool], timeout_s: float
) -> float:
    started_s = time.monotonic()
    while not condition(await asyncio.to_thread(locked_clock_mhz, url)):
        assert time.monotonic() - started_s < timeout_s, "timed out"
        await asyncio.sleep(0.05)
    return time.monotonic() - started_s


def planned(mhz: int | None) -> bool:
    return mhz is not None and mhz < TOP_MHZ


async def test_after_redis_restarts_the_top_clock_holds_until_every_worker_is_back(
    governor: Governed, private_redis: PrivateRedis
):
    quick = Worker("quick", private_redis.url, plans=True, retry_every_s=0.2)
    slow = Worker("slow", private_redis.url, plans=True, retry_every_s=3.0)
    async with serving(quick, slow):
        await clock_within(governor.url, planned, timeout_s=30.0)
        private_redis.kill()
        await until(lambda: quick.store.degraded and slow.store.degraded, timeout_s=5.0)
        await asyncio.sleep(0.3)
        private_redis.start()
        back_s = time.monotonic()
        await asyncio.sleep(0.5)  # quick is back with its entry; slow is on its own board
        assert not quick.store.degraded
        seen: list[int | None] = []
        for _ in range(200):  # 10 s at most
            clock_mhz = await asyncio.to_thread(locked_clock_mhz, governor.url)
            if not slow.store.degraded:  # back before the clock was read: it may be planned
                break
            seen.append(clock_mhz)
            await asyncio.sleep(0.05)
        assert len(seen) > 10
        assert set(seen) == {TOP_MHZ}, "lowered while a worker was not on the shared board"
        await clock_within(governor.url, planned, timeout_s=5.0)
        assert time.monotonic() - back_s < 5.0  # planning again within 5 s of Redis


async def test_a_worker_that_admits_without_planning_holds_the_top_clock(
    governor: Governed, private_redis: PrivateRedis
):
    planner = Worker("plans", private_redis.url, plans=True, retry_every_s=0.2)
    async with serving(planner):
        await clock_within(governor.url, planned, timeout_s=30.0)
        blind = Worker("blind", private_redis.url, plans=False, retry_every_s=0.2)
        async with serving(blind):
            await clock_within(governor.url, lambda mhz: mhz == TOP_MHZ, timeout_s=2.0)
            await asyncio.sleep(1.0)
            assert await asyncio.to_thread(locked_clock_mhz, governor.url) == TOP_MHZ


def gpu_clock_mhz(url: str) -> int:
    clock: int = httpx.get(f"{url}/gpus/0").json()["clock_mhz"]
    return clock


async def test_a_stalled_governor_has_its_clock_back_at_default_within_2_s(
    governor: Governed, private_redis: PrivateRedis
):
    """Measured to the clock in force, the GPU's 200 ms switch included (before: 2.20 s)."""
    async with serving(Worker("w", private_redis.url, plans=True, retry_every_s=0.2)):
        await clock_within(governor.url, planned, timeout_s=30.0)
        await until(lambda: gpu_clock_mhz(governor.url) < TOP_MHZ, timeout_s=2.0)
        (child,) = children(governor.supervisor.pid)
        os.kill(child, signal.SIGSTOP)
        stalled_s = time.monotonic()
        await until(lambda: gpu_clock_mhz(governor.url) == TOP_MHZ, timeout_s=4.0)
        assert time.monotonic() - stalled_s < 2.0

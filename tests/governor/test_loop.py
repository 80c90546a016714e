"""The clock loop against the twin's real GPU control API (in process, over ASGI)."""

import asyncio
from collections.abc import Callable, Sequence

import httpx
import pytest

from governor.gpu.simulated import SimulatedGpu as SimulatedGpuClient
from governor.loop import ClockGovernor, HighestClock
from simulator.control_api import create_control_app
from simulator.engine import Engine
from simulator.profile import load_profile
from simulator.realtime import RealtimeEngine


class FixedClock:
    def __init__(self, clock_mhz: int) -> None:
        self.clock_mhz = clock_mhz

    def target_clock_mhz(self, supported_clocks_mhz: Sequence[int], now_s: float) -> int:
        return self.clock_mhz


@pytest.fixture
def twin() -> RealtimeEngine:
    return RealtimeEngine(Engine(load_profile("a100-40gb/llama-2-13b/tp1")))


def client_for(twin: RealtimeEngine) -> SimulatedGpuClient:
    transport = httpx.ASGITransport(app=create_control_app(twin))
    return SimulatedGpuClient(httpx.AsyncClient(transport=transport, base_url="http://twin"))


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 (polling state another task mutates)
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


async def wait_for_decisions(governor: ClockGovernor, count: int) -> None:
    await wait_until(lambda: governor.status.decisions >= count)


async def test_the_governor_applies_the_policy_clock_and_resets_it_when_stopped(twin):
    governor = ClockGovernor([client_for(twin)], FixedClock(1050), window_s=0.01)
    task = asyncio.create_task(governor.run())
    await wait_for_decisions(governor, 2)
    assert twin.locked(lambda engine, now_s: engine.gpus[0].locked_clock_mhz) == 1050
    assert governor.status.target_clock_mhz == 1050
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert twin.locked(lambda engine, now_s: engine.gpus[0].locked_clock_mhz) is None
    await governor.aclose()


async def test_the_highest_clock_policy_picks_the_top_supported_clock():
    assert HighestClock().target_clock_mhz([1410, 1395, 210], now_s=0.0) == 1410


async def test_a_poke_decides_before_the_window_ends(twin):
    governor = ClockGovernor([client_for(twin)], FixedClock(1410), window_s=60.0)
    task = asyncio.create_task(governor.run())
    await wait_for_decisions(governor, 1)
    governor.poke()
    await wait_for_decisions(governor, 2)  # a 60 s window would time this out
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await governor.aclose()


async def test_an_unreachable_gpu_is_reported_and_the_loop_keeps_going():
    gpu = SimulatedGpuClient.connect("http://127.0.0.1:9", timeout_s=0.5)  # discard port: refused
    governor = ClockGovernor([gpu], HighestClock(), window_s=0.01)
    task = asyncio.create_task(governor.run())
    await wait_until(lambda: governor.status.last_error is not None)
    assert "unreachable" in governor.status.last_error
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await governor.aclose()

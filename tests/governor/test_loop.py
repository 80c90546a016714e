"""The clock loop against the twin's real GPU control API (in process, over ASGI)."""

import asyncio
from collections.abc import Callable, Sequence

import httpx
import pytest

from governor.gpu.twin_client import TwinGpu
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


def client_for(twin: RealtimeEngine) -> TwinGpu:
    transport = httpx.ASGITransport(app=create_control_app(twin))
    return TwinGpu(httpx.AsyncClient(transport=transport, base_url="http://twin"))


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


async def test_an_unreachable_gpu_is_reported_and_the_loop_keeps_going(caplog):
    gpu = TwinGpu.connect("http://127.0.0.1:9", timeout_s=0.5)  # discard port: refused
    governor = ClockGovernor([gpu], HighestClock(), window_s=0.01)
    task = asyncio.create_task(governor.run())
    await wait_until(lambda: sum("unreachable" in r.getMessage() for r in caplog.records) >= 2)
    assert governor.status.decisions == 0
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await governor.aclose()


class RecordingGpu:
    """A fake GPU: remembers every lock and reset."""

    def __init__(self) -> None:
        self.locks: list[int] = []
        self.resets = 0

    async def supported_clocks_mhz(self) -> list[int]:
        return [1410, 1005, 810, 210]

    async def lock_clock(self, clock_mhz: int) -> None:
        self.locks.append(clock_mhz)

    async def reset_clock(self) -> None:
        self.resets += 1

    async def clock_mhz(self) -> int:
        return self.locks[-1] if self.locks else 1410

    async def power_w(self) -> float:
        return 100.0

    async def energy_mj(self) -> float:
        return 0.0

    async def aclose(self) -> None:
        return None


class ScriptedPolicy:
    """An async policy whose answer the test sets; remembers the `now_s` it was given."""

    def __init__(self, clock_mhz: int) -> None:
        self.clock_mhz = clock_mhz
        self.seen_now_s: list[float] = []

    async def target_clock_mhz(self, supported_clocks_mhz: Sequence[int], now_s: float) -> int:
        self.seen_now_s.append(now_s)
        return self.clock_mhz


class FakeTime:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


async def decide(governor: ClockGovernor, policy: ScriptedPolicy, clock_mhz: int) -> None:
    policy.clock_mhz = clock_mhz
    count = governor.status.decisions
    governor.poke()
    await wait_for_decisions(governor, count + 1)


async def test_lowering_waits_for_the_minimum_dwell_and_raising_never_waits():
    gpu, policy, fake = RecordingGpu(), ScriptedPolicy(1005), FakeTime()
    governor = ClockGovernor(
        [gpu], policy, window_s=60.0, clock_s=fake, monotonic_s=fake, min_dwell_s=0.5
    )
    task = asyncio.create_task(governor.run())
    await wait_for_decisions(governor, 1)
    assert gpu.locks == [1005]

    fake.now_s += 0.1
    await decide(governor, policy, 210)  # lower, 0.1 s after the last change: held
    assert gpu.locks == [1005]
    assert governor.status.applied_clock_mhz == 1005
    assert governor.status.held_changes == 1

    fake.now_s += 0.1
    await decide(governor, policy, 1410)  # higher: at once, whatever the dwell
    assert gpu.locks == [1005, 1410]

    fake.now_s += 0.4
    await decide(governor, policy, 810)  # lower, only 0.4 s after the raise: held
    assert gpu.locks == [1005, 1410]
    fake.now_s += 0.1
    await decide(governor, policy, 810)  # 0.5 s: the dwell has passed
    assert gpu.locks == [1005, 1410, 810]
    assert governor.status.clock_changes == 3

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gpu.resets == 1


async def test_the_policy_plans_from_after_the_switch_latency_and_each_pass_is_reported():
    gpu, policy, fake = RecordingGpu(), ScriptedPolicy(1005), FakeTime()
    beats: list[int] = []
    governor = ClockGovernor(
        [gpu], policy, window_s=60.0, clock_s=fake, switch_latency_s=0.2,
        on_decision=lambda: beats.append(governor.status.decisions),
    )  # fmt: skip
    task = asyncio.create_task(governor.run())
    await wait_until(lambda: len(beats) >= 1)
    assert policy.seen_now_s == [pytest.approx(1000.2)]
    assert beats == [1]
    assert governor.status.last_decision_ms is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_governor_whose_fencing_token_is_stale_changes_no_clock():
    gpu = RecordingGpu()
    current = [True]

    async def token_is_current() -> bool:
        return current[0]

    policy = ScriptedPolicy(1005)
    governor = ClockGovernor([gpu], policy, window_s=60.0, may_actuate=token_is_current)
    task = asyncio.create_task(governor.run())
    await wait_for_decisions(governor, 1)
    assert gpu.locks == [1005]
    current[0] = False  # a newer leader took the instance
    policy.clock_mhz = 810
    governor.poke()
    await wait_for_decisions(governor, 2)
    assert gpu.locks == [1005]
    assert governor.status.applied_clock_mhz == 1005
    assert governor.status.clock_changes == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gpu.resets == 1  # stepping down still resets


async def test_raising_to_the_highest_clock_needs_no_fencing_check():
    """The check reads the store; when the store is what failed, the governor must still
    be able to go to the safe clock at once, as losing the lead would anyway."""
    gpu = RecordingGpu()
    checks: list[bool] = []

    async def store_unreachable() -> bool:
        checks.append(False)
        return False

    policy = ScriptedPolicy(1005)
    governor = ClockGovernor([gpu], policy, window_s=60.0, may_actuate=store_unreachable)
    task = asyncio.create_task(governor.run())
    await wait_for_decisions(governor, 1)
    assert gpu.locks == [] and checks == [False]  # lowering is fenced
    await decide(governor, policy, 1410)
    assert gpu.locks == [1410] and checks == [False]  # the highest is not
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

"""The engine on the wall clock, without Triton: streams, cancellation, pacing records."""

import asyncio

from simulator.engine import Engine, EngineRequest
from simulator.profile import load_profile
from simulator.realtime import RealtimeEngine


def make_runner() -> RealtimeEngine:
    runner = RealtimeEngine(Engine(load_profile("a100-40gb/llama-3-8b/tp1")))
    runner.start()
    return runner


async def collect(runner: RealtimeEngine, name: str, tokens: int) -> list[int]:
    return [index async for index in runner.generate(EngineRequest(name, 20, tokens, tokens))]


async def test_concurrent_streams_get_every_token_in_order():
    runner = make_runner()
    try:
        first, second = await asyncio.gather(collect(runner, "a", 5), collect(runner, "b", 8))
    finally:
        runner.stop()
    assert first == list(range(5))
    assert second == list(range(8))
    assert runner.pacing.iterations >= 8


async def test_a_consumer_that_stops_early_frees_its_place_in_the_engine():
    runner = make_runner()
    try:
        stream = runner.generate(EngineRequest("a", 20, 1000, 1000))
        assert await anext(stream) == 0
        await stream.aclose()
        assert runner.locked(lambda engine, now_s: (engine.running, engine.waiting)) == (0, 0)
    finally:
        runner.stop()

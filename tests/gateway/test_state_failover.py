"""FailoverStateStore: a private redis-server killed and restarted, and a primary that fails on cue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from gateway.metrics import GatewayMetrics
from slo_scoreboard.failover import FailoverStateStore
from slo_scoreboard.redis_store import RedisStateStore
from slo_scoreboard.store import MemoryStateStore, RequestEntry, Snapshot, StateStoreError
from tests.private_redis import PrivateRedis

RETRY_EVERY_S = 0.2


def entry(request_id: str, arrival_s: float) -> RequestEntry:
    return RequestEntry(request_id=request_id, arrival_s=arrival_s, prompt_tokens=8, max_tokens=32)


async def ids_in(url: str, instance: str) -> list[str]:
    reader = RedisStateStore.connect(url, instance, 10.0)
    try:
        return [e.request_id for e in (await reader.snapshot()).entries]
    finally:
        await reader.aclose()


async def admit(store: FailoverStateStore, new: RequestEntry) -> None:
    assert await store.admit(new, (await store.snapshot()).version)


async def test_redis_killed_and_restarted(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
):
    primary = RedisStateStore.connect(private_redis.url, "failover", entry_ttl_s=10.0)
    store = FailoverStateStore(primary, retry_every_s=RETRY_EVERY_S)
    try:
        for i, request_id in enumerate(["a", "b", "c"]):
            await admit(store, entry(request_id, float(i)))
        planned = await store.snapshot()
        assert not store.degraded
        assert await ids_in(private_redis.url, "failover") == ["a", "b", "c"]

        private_redis.kill()
        with caplog.at_level(logging.WARNING, logger="slo_scoreboard.failover"):
            local = await store.snapshot()
            assert store.degraded
            assert [e.request_id for e in local.entries] == ["a", "b", "c"]  # own entries kept
            assert not await store.admit(entry("x", 9.0), planned.version)  # Redis-era plan
            await admit(store, entry("d", 3.0))
            await store.remove("b")
            await store.record_tokens("a", 5, now_s=100.0)
            await store.refresh(["a", "c", "d"])
            assert not await store.ping()  # readiness shows the shared store down
            local = await store.snapshot()
        assert [e.request_id for e in local.entries] == ["a", "c", "d"]
        assert local.entries[0].first_token_s == 100.0
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(loud) == 1
        assert "local to this worker" in loud[0].getMessage()
        assert "highest clock" in loud[0].getMessage()

        private_redis.start()  # empty: --save "" kept nothing
        await asyncio.sleep(RETRY_EVERY_S + 0.05)
        with caplog.at_level(logging.WARNING, logger="slo_scoreboard.failover"):
            back = await store.snapshot()
        assert not store.degraded
        assert "is back" in caplog.records[-1].getMessage()
        assert [e.request_id for e in back.entries] == ["a", "c", "d"]
        assert await store.ping()
        assert await ids_in(private_redis.url, "failover") == ["a", "c", "d"]
        await store.remove("c")
        assert await ids_in(private_redis.url, "failover") == ["a", "d"]
    finally:
        await store.aclose()


class FlakyStore:
    """A primary that keeps its entries while `down`, but answers nothing."""

    def __init__(self) -> None:
        self.inner = MemoryStateStore()
        self.down = False
        self.pings = 0

    def _check(self) -> None:
        if self.down:
            raise StateStoreError("flaky store is down")

    async def snapshot(self) -> Snapshot:
        self._check()
        return await self.inner.snapshot()

    async def admit(self, entry: RequestEntry, expected_version: int) -> bool:
        self._check()
        return await self.inner.admit(entry, expected_version)

    async def record_tokens(self, request_id: str, generated_tokens: int, now_s: float) -> None:
        self._check()
        await self.inner.record_tokens(request_id, generated_tokens, now_s)

    async def remove(self, request_id: str) -> None:
        self._check()
        await self.inner.remove(request_id)

    async def refresh(self, request_ids: Sequence[str]) -> None:
        self._check()

    async def ping(self) -> bool:
        self.pings += 1
        return not self.down

    async def aclose(self) -> None:
        return None


async def test_removals_while_degraded_reach_a_primary_that_kept_its_entries():
    primary = FlakyStore()
    store = FailoverStateStore(primary, retry_every_s=RETRY_EVERY_S)
    await admit(store, entry("a", 0.0))
    await admit(store, entry("b", 1.0))
    await store.record_tokens("a", 2, now_s=50.0)

    primary.down = True
    await store.remove("a")  # the failing call itself still removes it locally
    assert store.degraded
    await admit(store, entry("c", 2.0))
    await store.record_tokens("b", 4, now_s=60.0)
    await store.remove("b")
    await admit(store, entry("d", 3.0))

    primary.down = False
    await asyncio.sleep(RETRY_EVERY_S + 0.05)
    await store.refresh(["c", "d"])
    assert not store.degraded
    assert [e.request_id for e in (await primary.inner.snapshot()).entries] == ["c", "d"]


async def test_retries_are_lazy_and_spaced():
    primary = FlakyStore()
    store = FailoverStateStore(primary, retry_every_s=RETRY_EVERY_S)
    primary.down = True
    version = (await store.snapshot()).version
    assert store.degraded
    assert version % 2 == 1  # local versions never match the primary's
    for i in range(20):  # well within one retry period: no pings
        assert await store.admit(entry(f"r{i}", float(i)), version)
        version += 2
    assert primary.pings == 0
    await asyncio.sleep(RETRY_EVERY_S + 0.05)
    await store.snapshot()
    assert (primary.pings, store.degraded) == (1, True)  # tried once, still down
    await store.snapshot()
    assert primary.pings == 1


async def test_a_failing_admit_is_refused_and_the_retry_lands_locally():
    primary = FlakyStore()
    store = FailoverStateStore(primary, retry_every_s=RETRY_EVERY_S)
    version = (await store.snapshot()).version
    assert version % 2 == 0
    primary.down = True
    assert not await store.admit(entry("a", 0.0), version)  # never raises
    assert store.degraded
    await admit(store, entry("a", 0.0))
    assert [e.request_id for e in (await store.snapshot()).entries] == ["a"]


async def test_the_degraded_gauge_follows_each_switch_and_only_switches():
    metrics = GatewayMetrics()
    heard: list[bool] = []
    set_gauge = metrics.watch_state_store()

    def on_degraded(degraded: bool) -> None:
        heard.append(degraded)
        set_gauge(degraded)

    primary = FlakyStore()
    store = FailoverStateStore(primary, retry_every_s=RETRY_EVERY_S, on_degraded=on_degraded)
    assert degraded_gauge(metrics) == 0.0
    primary.down = True
    await store.snapshot()
    await store.snapshot()
    assert (heard, degraded_gauge(metrics)) == ([True], 1.0)
    primary.down = False
    await asyncio.sleep(RETRY_EVERY_S + 0.05)
    await store.snapshot()
    assert (heard, degraded_gauge(metrics)) == ([True, False], 0.0)


def degraded_gauge(metrics: GatewayMetrics) -> float | None:
    return metrics.registry.get_sample_value("throttllem_state_store_degraded")


async def test_after_a_restart_pooled_connections_reconnect_instead_of_failing(
    private_redis: PrivateRedis,
):
    """Every connection pooled before the restart is broken; each command finds out on
    its own one. They must reconnect, not fail (before: 9 of 10 concurrent calls failed)."""
    store = RedisStateStore.connect(private_redis.url, "restart", entry_ttl_s=10.0)
    try:
        await asyncio.gather(*(store.snapshot() for _ in range(10)))  # ten pooled
        private_redis.restart()
        results = await asyncio.gather(
            *(store.snapshot() for _ in range(10)), return_exceptions=True
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
    finally:
        await store.aclose()


async def test_after_a_restart_the_failover_store_degrades_once_and_stays_back(
    private_redis: PrivateRedis,
):
    switches: list[bool] = []
    primary = RedisStateStore.connect(private_redis.url, "flap", entry_ttl_s=10.0)
    store = FailoverStateStore(primary, retry_every_s=RETRY_EVERY_S, on_degraded=switches.append)
    try:
        await asyncio.gather(*(store.snapshot() for _ in range(10)))
        private_redis.kill()
        await store.snapshot()
        private_redis.start()
        await asyncio.sleep(RETRY_EVERY_S + 0.05)
        for i in range(10):  # concurrent calls, on every pooled connection
            await asyncio.gather(*(store.snapshot() for _ in range(10)))
            await admit(store, entry(f"r{i}", float(i)))
        assert switches == [True, False]
    finally:
        await store.aclose()

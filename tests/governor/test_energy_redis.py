"""The energy ledger in the real Redis: the meter over the scripted engine bills as it
does in memory, credits to requests already gone leave nothing, and settled accounts
are deleted."""

from __future__ import annotations

import pytest
import redis

from slo_planner.energy_split import Share, price_window
from slo_scoreboard.energy_ledger import Credit, Settlement
from slo_scoreboard.energy_redis import RedisEnergyLedger
from slo_scoreboard.redis_store import RedisStateStore
from slo_scoreboard.store import RequestEntry, StateStoreError
from tests.conftest import REDIS_URL
from tests.governor.test_energy_meter import run_scripted


def energy_keys(instance: str) -> list[bytes]:
    with redis.Redis.from_url(REDIS_URL) as client:
        return list(client.scan_iter(match=f"throttllem:{instance}:energy:*"))


async def test_the_meter_bills_through_redis_and_leaves_no_account_open(instance):
    store = RedisStateStore.connect(REDIS_URL, instance, entry_ttl_s=10.0)
    ledger = RedisEnergyLedger.connect(REDIS_URL, instance, entry_ttl_s=10.0)
    try:
        engine, meter, _ = await run_scripted(seed=7, streams=16, seconds=15.0, store=store,
                                              ledger=ledger, drain=True)  # fmt: skip
    finally:
        await store.aclose()
        await ledger.aclose()
    settled = [(r, e) for r, e in engine.done if e is not None]
    assert len(settled) == len(engine.done) > 20
    errors = sorted(
        abs(e.total_j - (r.exact_active_j + r.exact_idle_j)) / (r.exact_active_j + r.exact_idle_j)
        for r, e in settled
    )
    assert errors[int(0.9 * len(errors))] < 0.05
    billed_j = sum(e.total_j for _, e in settled) + meter.totals.unattributed_j
    assert billed_j == pytest.approx(engine.energy_mj / 1000, rel=0.01)
    assert energy_keys(instance) == []


async def test_a_credit_for_a_request_gone_from_the_board_is_dropped(instance):
    store = RedisStateStore.connect(REDIS_URL, instance, entry_ttl_s=10.0)
    ledger = RedisEnergyLedger.connect(REDIS_URL, instance, entry_ttl_s=10.0)
    try:
        assert await store.admit(RequestEntry("here", 0.0, 10, 10), 0)
        prices = price_window(10.0, 0.1, 50.0, 4.0, 0.2, end_s=100.0, prefill_weight=0.1)
        share = Share(1.0, 2.0)
        await ledger.credit(prices, [Credit("here", share, 0.1, 2, True),
                                     Credit("gone", share, 0.1, 2, True)])  # fmt: skip
        assert len(energy_keys(instance)) == 1
        energy = await ledger.settle(Settlement("here", 2, 10, 99.95, 100.0))
        assert energy is not None
        assert energy.active_j == pytest.approx(1.0)  # nothing new since the window
        assert energy.idle_j == pytest.approx(2.0)
        assert energy_keys(instance) == []
    finally:
        await store.aclose()
        await ledger.aclose()


async def test_a_ledger_whose_redis_is_down_fails_at_once_for_a_while(private_redis):
    ledger = RedisEnergyLedger.connect(private_redis.url, "down", entry_ttl_s=10.0)
    private_redis.kill()
    with pytest.raises(StateStoreError):
        await ledger.settle(Settlement("a", 1, 1, 0.0, 1.0))
    with pytest.raises(StateStoreError, match="not retried yet"):
        await ledger.settle(Settlement("a", 1, 1, 0.0, 1.0))
    await ledger.aclose()

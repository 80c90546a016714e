"""Admission on the real planner: wait for room, deadline order, bounded queue, lost
requests served at once, and nothing left behind by a client that leaves."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from gateway.admission import WORKER, Admission
from gateway.errors import QueueFullError
from gateway.metrics import GatewayMetrics
from slo_planner.admission import AdmissionPlanner, EngineShape
from slo_planner.feasibility import PreparedTimes
from slo_scoreboard.store import MemoryStateStore, RequestEntry


class SlowerWithBatch:
    """25 ms per iteration alone, 35 ms with two: a TBT SLO of 30 ms fits one request."""

    clocks_mhz = np.array([1000, 1400])

    def prepare(
        self, batch, kv_blocks, prefill_tokens, prefill_square_tokens=None
    ) -> PreparedTimes:
        def run_seconds(clock_index: int) -> np.ndarray:
            return np.where(batch > 0, 0.015 + 0.01 * batch, 0.0)

        return PreparedTimes(np.arange(len(batch)), run_seconds)


ENGINE = EngineShape(max_batch=8, kv_capacity_blocks=10_000, tokens_per_block=64)


def entry(request_id: str, *, tbt_s: float = 1.0, ttft_s: float = 10.0, age_s: float = 0.0,
          tokens: int = 50) -> RequestEntry:  # fmt: skip
    return RequestEntry(
        request_id=request_id,
        arrival_s=time.time() - age_s,
        prompt_tokens=20,
        max_tokens=tokens,
        predicted_tokens=tokens,
        ttft_slo_s=ttft_s,
        tbt_slo_s=tbt_s,
        e2e_deadline_s=math.inf,
    )


@pytest.fixture
def store() -> MemoryStateStore:
    return MemoryStateStore()


def admission_for(store: MemoryStateStore, max_queue: int = 8, planner: bool = True) -> Admission:
    return Admission(
        store,
        AdmissionPlanner(SlowerWithBatch(), ENGINE) if planner else None,
        GatewayMetrics(),
        max_queue=max_queue,
        retry_after_s=3,
        window_s=0.05,
        refresh_every_s=1.0,
    )


@pytest.fixture
async def admission(store: MemoryStateStore) -> AsyncIterator[Admission]:
    admission = admission_for(store)
    pump = asyncio.create_task(admission.run())
    yield admission
    pump.cancel()


async def ids_on_board(store: MemoryStateStore) -> list[str]:
    return [e.request_id for e in (await store.snapshot()).entries]


async def test_a_request_that_would_break_a_tight_tbt_waits_until_room(admission, store):
    assert not (await admission.enter(entry("tight", tbt_s=0.03))).lost
    waiting = asyncio.create_task(admission.enter(entry("second")))
    await asyncio.sleep(0.2)
    assert not waiting.done() and admission.waiting == 1
    assert await ids_on_board(store) == ["tight"]
    await admission.release("tight")
    admitted = await asyncio.wait_for(waiting, timeout=2)
    assert not admitted.lost and admitted.waited_s > 0.1
    assert await ids_on_board(store) == ["second"]


async def test_the_queue_is_bounded_and_a_full_queue_says_when_to_retry(store):
    admission = admission_for(store, max_queue=1)
    await admission.enter(entry("tight", tbt_s=0.03))
    waiting = asyncio.create_task(admission.enter(entry("queued")))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFullError) as refused:
        await admission.enter(entry("refused"))
    assert refused.value.status_code == 429 and refused.value.headers() == {"Retry-After": "3"}
    waiting.cancel()


async def test_a_request_lost_even_at_the_highest_clock_is_served_at_once(admission, store):
    await admission.enter(entry("tight", tbt_s=0.03))
    late = await asyncio.wait_for(admission.enter(entry("late", ttft_s=1.0, age_s=5.0)), 1)
    assert late.lost
    assert await ids_on_board(store) == ["tight", "late"]


async def test_waiters_are_admitted_in_deadline_order(admission, store):
    await admission.enter(entry("tight", tbt_s=0.03))
    relaxed = asyncio.create_task(admission.enter(entry("relaxed", ttft_s=30.0)))
    await asyncio.sleep(0.05)
    urgent = asyncio.create_task(admission.enter(entry("urgent", ttft_s=5.0)))
    await asyncio.sleep(0.05)
    await admission.release("tight")
    await asyncio.wait_for(asyncio.gather(relaxed, urgent), timeout=2)
    assert await ids_on_board(store) == ["urgent", "relaxed"]


async def test_a_client_that_leaves_the_queue_leaves_nothing_behind(admission, store):
    await admission.enter(entry("tight", tbt_s=0.03))
    leaving = asyncio.create_task(admission.enter(entry("leaving")))
    await asyncio.sleep(0.05)
    leaving.cancel()
    await asyncio.sleep(0.05)
    assert admission.waiting == 0
    await admission.release("tight")
    await asyncio.wait_for(admission.enter(entry("next")), 1)
    assert await ids_on_board(store) == ["next"]


async def test_without_predictors_everything_is_admitted_at_once(store):
    admission = admission_for(store, max_queue=0, planner=False)
    for name in ("a", "b", "c"):
        assert not (await admission.enter(entry(name, tbt_s=0.001))).lost
    assert await ids_on_board(store) == ["a", "b", "c"]


def test_an_entry_past_its_median_is_planned_on_the_rest_its_quantiles_give():
    from slo_scoreboard.board import requests_of
    from slo_scoreboard.store import RequestEntry

    def remaining_tokens(entry: RequestEntry) -> int:
        return int(requests_of([entry]).remaining_tokens[0])

    entry = RequestEntry("a", 0.0, prompt_tokens=10, max_tokens=4000, predicted_tokens=300,
                         length_quantiles=(300, 420, 600, 750, 1100), generated_tokens=300)  # fmt: skip
    assert remaining_tokens(entry) == 120
    without = RequestEntry("b", 0.0, prompt_tokens=10, max_tokens=4000, predicted_tokens=300,
                           generated_tokens=300)  # fmt: skip
    assert remaining_tokens(without) == 1
    capped = RequestEntry("c", 0.0, prompt_tokens=10, max_tokens=350, predicted_tokens=300,
                          length_quantiles=(300, 420, 600, 750, 1100), generated_tokens=300)  # fmt: skip
    assert remaining_tokens(capped) == 50  # never past max_tokens
    assert RequestEntry.from_json(entry.to_json()) == entry


@pytest.mark.parametrize("plans", [True, False])
async def test_the_worker_announces_whether_it_plans_and_retires_when_it_stops(store, plans):
    admission = admission_for(store, planner=plans)
    task = asyncio.create_task(admission.run())
    await asyncio.sleep(0.2)  # its first window
    (status,) = (await store.roster()).workers
    assert (status.worker, status.plans, status.retired) == (WORKER, plans, False)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    (status,) = (await store.roster()).workers
    assert status.retired


class CountingStore(MemoryStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.snapshots = 0

    async def snapshot(self):  # type: ignore[no-untyped-def]
        self.snapshots += 1
        return await super().snapshot()


async def test_with_nobody_waiting_the_pump_reads_no_board():
    """Before, every window and every release read the whole board (a Redis round trip)
    to admit from an empty queue."""
    store = CountingStore()
    admission = admission_for(store)
    pump = asyncio.create_task(admission.run())
    try:
        await admission.enter(entry("a"))
        assert store.snapshots == 1  # the admission's own read
        await admission.release("a")
        await asyncio.sleep(0.3)  # six windows and the release's wake-up
        assert store.snapshots == 1
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump

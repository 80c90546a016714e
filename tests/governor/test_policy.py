"""The planner policy: the lowest clock that keeps every promise, failing safe to the top."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest

from governor.policy import PlannerPolicy, store_reader
from predictor.performance import PerformanceModel, PerformanceTable
from predictor.shipped import performance_model_path
from slo_planner.admission import EngineShape
from slo_planner.clock import at_or_above
from slo_planner.iteration_times import TableIterationTimes
from slo_planner.length_risk import ConformalLevel
from slo_scoreboard.store import MemoryStateStore, RequestEntry, Snapshot, StateStoreError

SUPPORTED_MHZ = list(range(1410, 209, -15))  # the A100's, highest first
SHAPE = EngineShape(max_batch=256, kv_capacity_blocks=100_000, tokens_per_block=64)


@pytest.fixture(scope="module")
def model() -> TableIterationTimes:
    table = PerformanceTable.from_model(
        PerformanceModel(performance_model_path("a100-40gb/llama-2-13b/tp1")), 128
    )
    return TableIterationTimes(table)


def running(request_id: str, now_s: float, tbt_slo_s: float, remaining: int = 200) -> RequestEntry:
    return RequestEntry(
        request_id=request_id,
        arrival_s=now_s - 1.0,
        prompt_tokens=200,
        max_tokens=remaining + 10,
        predicted_tokens=remaining + 10,
        ttft_slo_s=2.0,
        tbt_slo_s=tbt_slo_s,
        e2e_deadline_s=math.inf,
        generated_tokens=10,
        first_token_s=now_s - 0.5,
    )


async def store_with(entries: list[RequestEntry]) -> MemoryStateStore:
    store = MemoryStateStore()
    for entry in entries:
        assert await store.admit(entry, (await store.snapshot()).version)
    return store


def policy_on(store: object, model: TableIterationTimes | None) -> PlannerPolicy:
    return PlannerPolicy(store_reader(store), model, SHAPE)  # type: ignore[arg-type]


async def test_a_light_board_runs_below_the_highest_clock_and_a_tight_one_above_it(model):
    now_s = time.time()
    light = policy_on(await store_with([running("a", now_s, tbt_slo_s=0.2)]), model)
    light_mhz = await light.target_clock_mhz(SUPPORTED_MHZ, now_s)
    assert light.last_reason == "planned"
    assert light_mhz < max(SUPPORTED_MHZ)
    assert light_mhz in SUPPORTED_MHZ

    batch = [running(f"r{i}", now_s, tbt_slo_s=0.035) for i in range(64)]
    tight = policy_on(await store_with(batch), model)
    tight_mhz = await tight.target_clock_mhz(SUPPORTED_MHZ, now_s)
    assert tight_mhz > light_mhz


async def test_an_empty_board_waits_at_the_highest_clock_for_the_next_prefill(model):
    policy = policy_on(MemoryStateStore(), model)
    assert await policy.target_clock_mhz(SUPPORTED_MHZ, time.time()) == 1410
    assert policy.last_reason == "empty board"


class UnreachableStore(MemoryStateStore):
    async def snapshot(self) -> Snapshot:
        raise StateStoreError("Redis state store at redis://nowhere: snapshot failed")


class DegradedStore(MemoryStateStore):
    degraded = True


@pytest.mark.parametrize("store", [UnreachableStore(), DegradedStore()])
async def test_an_untrustworthy_scoreboard_fails_safe_to_the_highest_clock(model, store):
    await store.admit(running("a", time.time(), tbt_slo_s=0.2), 0)
    policy = policy_on(store, model)
    assert await policy.target_clock_mhz(SUPPORTED_MHZ, time.time()) == 1410
    assert policy.last_reason == "scoreboard unreadable"


async def test_without_a_performance_model_or_a_length_prediction_the_highest_clock(model):
    now_s = time.time()
    store = await store_with([running("a", now_s, tbt_slo_s=0.2)])
    no_model = policy_on(store, None)
    assert await no_model.target_clock_mhz(SUPPORTED_MHZ, now_s) == 1410
    assert no_model.last_reason == "no performance model"

    unpredicted = RequestEntry("b", now_s, prompt_tokens=10, max_tokens=50, tbt_slo_s=0.2)
    no_length = policy_on(await store_with([unpredicted]), model)
    assert await no_length.target_clock_mhz(SUPPORTED_MHZ, now_s) == 1410
    assert no_length.last_reason == "no length prediction"


async def test_a_promise_lost_even_at_the_top_is_renegotiated_and_does_not_pin_the_clock(model):
    now_s = time.time()
    late = RequestEntry(
        "late", now_s - 10, prompt_tokens=100, max_tokens=500, predicted_tokens=500,
        ttft_slo_s=1.0, tbt_slo_s=0.2,
    )  # fmt: skip
    policy = policy_on(await store_with([late]), model)
    assert await policy.target_clock_mhz(SUPPORTED_MHZ, now_s) < 1410
    assert policy.last_decision is not None and policy.last_decision.lost
    assert policy.last_reason == "planned, lost promises renegotiated"


def test_a_model_clock_maps_to_the_nearest_supported_clock_at_or_above_it():
    assert at_or_above(1000, [1410, 1005, 990, 210]) == 1005
    assert at_or_above(990, [1410, 1005, 990, 210]) == 990
    assert at_or_above(1500, [1410, 1005, 990, 210]) == 1410
    assert at_or_above(100, [1410, 1005, 990, 210]) == 210


async def test_the_planning_level_learns_from_the_requests_that_leave_the_board(model):
    """Answers that run past their predicted 0.9 length raise the level the governor
    plans each request's own promises at; the board it plans on then holds more."""
    risk = ConformalLevel(0.9)
    entries: list[RequestEntry] = []
    policy = PlannerPolicy(lambda: _entries(entries), model, SHAPE, length_risk=risk)
    now_s = time.time()
    quantiles = (100, 120, 140, 150, 170)  # at PLANNING_LEVELS
    for serial in range(40):
        entries[:] = [replace(running(f"q{serial}", now_s, 0.2), length_quantiles=quantiles,
                              max_tokens=2000, generated_tokens=300)]  # fmt: skip
        await policy.target_clock_mhz(SUPPORTED_MHZ, now_s)
    entries.clear()
    await policy.target_clock_mhz(SUPPORTED_MHZ, now_s)
    assert risk.observed == 40 and risk.covered == 0  # each ran 300 tokens, past 170
    assert risk.level > 0.99  # raised from 0.9 by each miss, to its cap


async def _entries(entries: list[RequestEntry]) -> list[RequestEntry]:
    return list(entries)

"""Energy attribution: the rule, the ledger's settlements, and the meter over a scripted
engine whose every iteration's energy and work is known (so the exact per-iteration
attribution is too)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from governor.energy_meter import EnergyMeter, tokens_by
from slo_planner.energy_split import Work, price_window
from slo_scoreboard.energy_ledger import (
    COVERAGE_SLACK_S,
    STALE_AFTER_S,
    EnergyLedger,
    MemoryEnergyLedger,
    RequestEnergy,
    Settlement,
)
from slo_scoreboard.store import MemoryStateStore, RequestEntry, StateStore

WEIGHT = 0.05
IDLE_W = 60.0
PREFILLS_PER_ITERATION = 4
REFERENCE_BATCH = 16


def test_a_window_is_split_whole_over_the_work_and_the_time_held():
    works = [Work(10, 0, 0.1), Work(3, 400, 0.1), Work(0, 0, 0.05)]
    prices = price_window(30.0, 0.1, IDLE_W, sum(w.units(WEIGHT) for w in works),
                          sum(w.held_s for w in works), end_s=1.0, prefill_weight=WEIGHT)  # fmt: skip
    shares = [prices.share(w) for w in works]
    assert sum(s.total_j for s in shares) == pytest.approx(30.0)
    assert sum(s.idle_j for s in shares) == pytest.approx(IDLE_W * 0.1)
    assert shares[2].active_j == 0  # queued: no work, only its share of idle
    assert shares[2].idle_j == pytest.approx(shares[0].idle_j / 2)
    # prefill: 400 tokens at 0.05 weigh as 20 generated ones
    assert shares[1].active_j == pytest.approx(shares[0].active_j * 23 / 10)


def test_energy_with_no_work_to_show_is_carried_and_an_empty_engines_billed_to_nobody():
    waiting = price_window(20.0, 0.1, IDLE_W, 0.0, 0.1, end_s=1.0, prefill_weight=WEIGHT)
    assert waiting.carried_active_j == pytest.approx(14.0)  # a prefill under way
    assert waiting.unattributed_j == 0
    empty = price_window(20.0, 0.1, IDLE_W, 0.0, 0.0, end_s=1.0, prefill_weight=WEIGHT,
                         carried_active_j=5.0)  # fmt: skip
    assert empty.unattributed_j == pytest.approx(25.0)
    assert empty.carried_active_j == 0
    below_idle = price_window(2.0, 0.1, IDLE_W, 5.0, 0.1, end_s=1.0, prefill_weight=WEIGHT)
    assert below_idle.active_j_per_unit == 0 and below_idle.idle_j_per_held_s == 20.0


async def test_a_settlement_needs_a_fresh_window_and_credits_covering_the_request():
    ledger = MemoryEnergyLedger()
    assert await ledger.settle(Settlement("a", 5, 10, 0.0, 0.5)) is None  # never priced
    prices = price_window(10.0, 0.1, IDLE_W, 10.0, 0.1, end_s=1.0, prefill_weight=WEIGHT)
    await ledger.credit(prices, [])
    # admitted after the last window: its tail is its whole life, priced by that window
    energy = await ledger.settle(Settlement("b", 2, 100, 1.02, 1.08))
    assert energy == RequestEnergy(
        pytest.approx(prices.active_j_per_unit * (2 + WEIGHT * 100)),
        pytest.approx(prices.idle_j_per_held_s * 0.06),
    )
    assert await ledger.departed_work() == (pytest.approx(2 + WEIGHT * 100), pytest.approx(0.06))
    stale = Settlement("c", 2, 100, 1.0 + STALE_AFTER_S, 1.1 + STALE_AFTER_S)
    assert await ledger.settle(stale) is None
    # held since 0.2 s but credited nothing before the last window: a gap
    uncovered = Settlement("d", 2, 100, 1.0 - 2 * COVERAGE_SLACK_S, 1.05)
    assert await ledger.settle(uncovered) is None
    assert len(ledger) == 0


@dataclass
class _Request:
    entry: RequestEntry
    length: int
    generated: int = 0
    started_s: float | None = None
    recorded_s: float = -math.inf
    exact_active_j: float = 0.0
    exact_idle_j: float = 0.0


class _ScriptedEngine:
    """Iterations of 20-30 ms, one token per running request each, and a prompt token
    prefilled in one costs WEIGHT of a generated token's time (at REFERENCE_BATCH); energy
    = idle + an active draw that varies per iteration.
    Each iteration's energy is split exactly by the rule; workers record token counts
    once per window, as the gateway does, and settle each request as it ends."""

    def __init__(self, seed: int, streams: int) -> None:
        self.rng = random.Random(seed)
        self.streams = streams
        self.now_s = 0.0
        self.energy_mj = 0.0
        self.waiting: list[_Request] = []
        self.running: list[_Request] = []
        self.done: list[tuple[_Request, RequestEnergy | None]] = []
        self.count = 0

    def new_request(self) -> _Request:
        self.count += 1
        entry = RequestEntry(f"r{self.count}", self.now_s, self.rng.randint(20, 1500),
                             max_tokens=2000, predicted_tokens=100)  # fmt: skip
        return _Request(entry, self.rng.randint(5, 300))

    async def iterate(self, store: StateStore, window_s: float) -> None:
        started = self.waiting[:PREFILLS_PER_ITERATION]
        self.waiting = self.waiting[len(started) :]
        prefill_tokens = sum(r.entry.prompt_tokens for r in started)
        duration_s = self.rng.uniform(0.02, 0.03) * (1 + WEIGHT * prefill_tokens / REFERENCE_BATCH)
        active_j = self.rng.uniform(100, 300) * duration_s
        idle_j = IDLE_W * duration_s
        held = self.running + started + self.waiting
        works = [Work(1, r.entry.prompt_tokens if r in started else 0, duration_s) for r in
                 self.running + started] + [Work(0, 0, duration_s) for r in self.waiting]  # fmt: skip
        prices = price_window(active_j + idle_j, duration_s, IDLE_W,
                              sum(w.units(WEIGHT) for w in works), sum(w.held_s for w in works),
                              end_s=self.now_s + duration_s, prefill_weight=WEIGHT)  # fmt: skip
        for request, work in zip(held, works, strict=True):
            share = prices.share(work)
            request.exact_active_j += share.active_j
            request.exact_idle_j += share.idle_j
        self.now_s += duration_s
        self.energy_mj += (active_j + idle_j) * 1000
        self.running += started
        for request in self.running:
            request.generated += 1
            if request.started_s is None or self.now_s - request.recorded_s >= window_s:
                request.started_s = request.started_s or self.now_s
                request.recorded_s = self.now_s
                await store.record_tokens(request.entry.request_id, request.generated, self.now_s)

    async def finish(self, store: StateStore, ledger: EnergyLedger) -> None:
        for request in [r for r in self.running if r.generated >= r.length]:
            self.running.remove(request)
            await store.remove(request.entry.request_id)  # off the board, then settled
            settled = await ledger.settle(
                Settlement(request.entry.request_id, request.generated,
                           request.entry.prompt_tokens, request.entry.arrival_s, self.now_s)
            )  # fmt: skip
            self.done.append((request, settled))

    async def admit(self, store: StateStore) -> None:
        while len(self.running) + len(self.waiting) < self.streams:
            request = self.new_request()
            snapshot = await store.snapshot()
            assert await store.admit(request.entry, snapshot.version)
            self.waiting.append(request)


async def run_scripted(seed: int, streams: int, seconds: float, window_s: float = 0.1,
                       store: StateStore | None = None, ledger: EnergyLedger | None = None,
                       drain: bool = False):  # fmt: skip
    """`drain`: after `seconds`, admit nothing more and run until every request ended."""
    engine = _ScriptedEngine(seed, streams)
    store = store if store is not None else MemoryStateStore()
    ledger = ledger if ledger is not None else MemoryEnergyLedger()

    async def board() -> list[RequestEntry]:
        return (await store.snapshot()).entries

    meter = EnergyMeter(ledger, board, WEIGHT, gpus=1, idle_power_w=IDLE_W)
    await meter.observe(engine.energy_mj, engine.now_s)
    next_window_s = window_s
    while engine.now_s < seconds or (drain and (engine.running or engine.waiting)):
        if engine.now_s < seconds:
            await engine.admit(store)
        await engine.iterate(store, window_s)
        await engine.finish(store, ledger)
        if engine.now_s >= next_window_s:
            await meter.observe(engine.energy_mj, engine.now_s)
            next_window_s = engine.now_s + window_s
    return engine, meter, ledger


async def test_the_meter_bills_each_request_close_to_its_exact_per_iteration_share():
    engine, meter, _ = await run_scripted(seed=3, streams=16, seconds=60.0)
    settled = [(r, e) for r, e in engine.done if e is not None]
    assert len(settled) == len(engine.done) > 100  # every request vouched for
    errors = sorted(
        abs(e.total_j - (r.exact_active_j + r.exact_idle_j)) / (r.exact_active_j + r.exact_idle_j)
        for r, e in settled
    )
    assert errors[int(0.9 * len(errors))] < 0.05  # p90 relative error
    billed_j = sum(e.total_j for _, e in settled)
    exact_j = sum(r.exact_active_j + r.exact_idle_j for r, _ in settled)
    assert billed_j == pytest.approx(exact_j, rel=0.01)
    assert meter.totals.gaps == 0


async def test_conservation_the_billed_and_the_unbilled_add_up_to_the_counter():
    engine, meter, ledger = await run_scripted(seed=5, streams=8, seconds=30.0, drain=True)
    assert len(ledger) == 0  # every account closed
    billed_j = sum(e.total_j for _, e in engine.done if e is not None)
    measured_j = engine.energy_mj / 1000
    # a tail is billed at its window's prices, and its work counted into the next window
    assert billed_j + meter.totals.unattributed_j == pytest.approx(measured_j, rel=0.01)


async def test_a_window_the_meter_missed_costs_the_requests_it_held_their_energy():
    store, ledger = MemoryStateStore(), MemoryEnergyLedger()
    entry = RequestEntry("a", 0.0, 100, 50, predicted_tokens=10)
    assert await store.admit(entry, 0)

    async def board() -> list[RequestEntry]:
        return (await store.snapshot()).entries

    meter = EnergyMeter(ledger, board, WEIGHT, gpus=1, idle_power_w=IDLE_W)
    await meter.observe(0.0, 0.0)
    await store.record_tokens("a", 3, 0.05)
    await meter.observe(20_000.0, 0.1)
    meter.gap()  # the counter could not be read at 0.2 s
    await store.record_tokens("a", 9, 0.25)
    assert await meter.observe(60_000.0, 0.3) is None  # a new baseline
    await meter.observe(80_000.0, 0.4)
    await store.remove("a")
    assert await ledger.settle(Settlement("a", 10, 100, 0.0, 0.42)) is None
    assert meter.totals.gaps == 1


async def test_the_idle_power_is_learned_from_the_quietest_stretch():
    store, ledger = MemoryStateStore(), MemoryEnergyLedger()

    async def board() -> list[RequestEntry]:
        return (await store.snapshot()).entries

    meter = EnergyMeter(ledger, board, WEIGHT, gpus=2)
    energy_mj = 0.0
    for step in range(60):  # 3 s at 2 x 55 W, in steps of 0 or 2 windows' worth
        if step % 2:
            energy_mj += 2 * 55.0 * 0.2 * 1000
        await meter.observe(energy_mj, step * 0.1)
    assert meter.idle_power_w == pytest.approx(110.0, rel=0.06)
    fixed = EnergyMeter(ledger, board, WEIGHT, gpus=2, idle_power_w=50.0)
    assert fixed.idle_power_w == 100.0


def test_a_lagging_count_is_carried_forward_at_its_own_pace_by_at_most_a_window():
    entry = RequestEntry("a", 0.0, 10, max_tokens=40, generated_tokens=11, first_token_s=1.0,
                         counted_s=2.0)  # fmt: skip
    assert tokens_by(entry, 2.05, most_ahead_s=0.1) == pytest.approx(11.5)  # 10 tokens/s
    assert tokens_by(entry, 3.0, most_ahead_s=0.1) == pytest.approx(12.0)  # a stalled stream
    assert tokens_by(entry, 9.0, most_ahead_s=9.0) == 40  # never past max_tokens
    queued = RequestEntry("b", 0.0, 10, max_tokens=40)
    assert tokens_by(queued, 3.0, most_ahead_s=0.1) == 0

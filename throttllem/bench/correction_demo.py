"""The online correction, shown on the twin: a deliberately optimistic performance model
picks clocks that are too low and misses the TBT SLO, until the correction learns from
the observed iteration times. Everything runs in virtual time.

A steady load: `batch` requests always running (a finished one is replaced at once), true
remaining lengths on the board (so only the performance model is wrong), a TBT SLO the
planner can meet only at a middling clock, loose TTFT and E2E. Misses are counted, and
the correction learns, on decode iterations: the prefill of a replacement stalls its
iteration at any clock, which is no fault of the performance model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictor.board import Board, Requests
from predictor.performance import PerformanceModel, PerformanceTable
from predictor.shipped import performance_model_path
from simulator.engine import Engine, EngineRequest
from simulator.profile import load_profile
from slo_planner.correction import OnlineCorrection
from slo_planner.feasibility import lowest_frequency
from slo_planner.iteration_times import TableIterationTimes

PROFILE = "a100-40gb/llama-2-13b/tp1"


@dataclass(frozen=True)
class SecondReport:
    second: int
    iterations: int
    tbt_misses: int
    mean_clock_mhz: float
    correction: float


def biased_table(table: PerformanceTable, optimism: float) -> PerformanceTable:
    """The same table, predicting `optimism` more iterations per second than it should."""
    return PerformanceTable(table.ips_table * (1 + optimism), table.grid, table.kv_bucket_blocks)


def run(optimism: float = 0.10, correct: bool = True, seconds: int = 20, batch: int = 16,
        tbt_slo_s: float = 0.032, window_s: float = 0.1, seed: int = 0) -> list[SecondReport]:  # fmt: skip
    profile = load_profile(PROFILE)
    table = biased_table(
        PerformanceTable.from_model(PerformanceModel(performance_model_path(PROFILE)), 128),
        optimism,
    )
    correction = OnlineCorrection(smoothing=0.05) if correct else None
    raw = TableIterationTimes(table)
    model = TableIterationTimes(table, correction)
    engine = Engine(profile, seed=seed)
    rng = np.random.default_rng(seed)
    serial = 0

    def submit() -> None:
        nonlocal serial
        output = int(rng.integers(200, 400))
        engine.submit(EngineRequest(f"r{serial}", int(rng.integers(100, 400)), output, output))
        serial += 1

    for _ in range(batch):
        submit()
    now_s, next_decision_s = 0.0, 0.0
    per_second: dict[int, list[tuple[bool, int]]] = {}
    while now_s < seconds:
        if now_s >= next_decision_s:
            decision = lowest_frequency(_board(engine, now_s, tbt_slo_s), model)
            for gpu in engine.gpus:
                gpu.lock_clock(decision.clock_mhz, now_s)  # no-op if unchanged
            next_decision_s = now_s + window_s
        kv_blocks, running = engine.kv_used_blocks, engine.running
        result = engine.step(now_s)
        now_s = result.ended_s
        decode_only = result.prefill_requests == 0  # a prefill stalls decode whatever the clock
        if correction is not None and running and decode_only:
            clock_index = int(np.searchsorted(table.clocks_mhz, result.clock_mhz))
            no_prefill = np.zeros(1, dtype=np.int64)
            predicted = raw.seconds(
                np.array([running]), np.array([kv_blocks]), no_prefill, clock_index
            )[0]
            correction.observe(running, float(predicted), result.duration_s)
        if decode_only:
            miss = result.duration_s > tbt_slo_s
            per_second.setdefault(int(result.started_s), []).append((miss, result.clock_mhz))
        for _ in result.finished:
            submit()
    band = correction.factors(np.array([batch]))[0] if correction is not None else 1.0
    return [
        SecondReport(second, len(items), sum(miss for miss, _ in items), float(np.mean([c for _, c in items])),
                     float(band) if second == seconds - 1 else float("nan"))
        for second, items in sorted(per_second.items()) if second < seconds
    ]  # fmt: skip


def _board(engine: Engine, now_s: float, tbt_slo_s: float) -> Board:
    running = engine.running_sequences()
    done = engine.iterations
    generated = [s.generated_after(done) for s in running]
    count = len(running)
    return Board(
        now_s=now_s,
        running=Requests.of(
            arrival_s=[now_s] * count,
            prompt_tokens=[s.prompt_tokens for s in running],
            generated_tokens=generated,
            remaining_tokens=[
                max(1, s.output_tokens - g) for s, g in zip(running, generated, strict=True)
            ],
            ttft_slo_s=[60.0] * count,
            tbt_slo_s=[tbt_slo_s] * count,
            e2e_deadline_s=[now_s + 600.0] * count,
        ),
        queued=Requests(),
        max_batch=engine.profile.max_batch_size,
        kv_capacity_blocks=engine.kv_capacity_blocks,
        tokens_per_block=engine.profile.tokens_per_block,
    )

"""`throttllem bench projection`: what the planner projects against what the twin does.

A slice of a trace is replayed on the twin's engine with the true lengths, every request
sent at its arrival, the clock planned every governor window by the live planner on the
engine's true board. Every `--every-s` seconds the planner's projection of that board
(`predictor.projection`, priced by its iteration-time model at the clock it chose) is
set against a copy of the engine run on from there with nothing more arriving, at that
clock: the same requests, so every difference is the projection's.

Per compared iteration: the batch and KV errors (mean absolute error over the twin's
value). Per request: the error of its first token's time (those still waiting for one)
and of its last token's. Per projection: the drift, the error of its last compared
iteration's end over the iterations compared. The paper reports batch 0.19 %, KV 2.26 %
and a drift of 0.43 ms per iteration against TensorRT-LLM.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictor.board import Board, Requests, SchedulerPolicy
from predictor.projection import project
from simulator.engine import Engine, EngineRequest
from slo_planner.clock import ClockPlanner
from slo_planner.feasibility import DEFAULT_HORIZON
from slo_planner.iteration_times import TableIterationTimes
from throttllem.replay.policies import DEFAULT_MARGIN
from throttllem.replay.report import ReplayOptions, build_scene
from throttllem.replay.simulate import WINDOW_S, Slo

PAPER = {"batch_error_pct": 0.19, "kv_error_pct": 2.26, "drift_ms_per_iteration": 0.43}
TARGETS = {"batch_error_pct": 0.19, "kv_error_pct": 2.26, "first_token_mae_ms": 50.0}


@dataclass(frozen=True)
class ProjectionOptions:
    trace: Path = Path("../shared/data/traces/AzureLLMInferenceTrace_conv.csv")
    profile: str = "a100-40gb/llama-2-13b/tp2"
    rate: float = 2.0
    duration_s: float = 300.0
    every_s: float = 5.0
    slo: str = "paper"
    seed: int = 0
    scheduler_policies: tuple[SchedulerPolicy, ...] = tuple(SchedulerPolicy)


@dataclass
class _Errors:
    batch: list[float] = field(default_factory=list)
    batch_truth: list[float] = field(default_factory=list)
    kv: list[float] = field(default_factory=list)
    kv_truth: list[float] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)
    last_token_s: list[float] = field(default_factory=list)
    drift_s_per_iteration: list[float] = field(default_factory=list)
    iterations: int = 0
    projections: int = 0

    def summary(self) -> dict[str, Any]:
        first = np.abs(self.first_token_s)
        return {
            "projections": self.projections,
            "iterations_compared": self.iterations,
            "batch_error_pct": 100 * float(np.sum(self.batch) / max(np.sum(self.batch_truth), 1)),
            "kv_error_pct": 100 * float(np.sum(self.kv) / max(np.sum(self.kv_truth), 1)),
            "first_token_requests": len(first),
            "first_token_mae_ms": 1000 * float(first.mean()) if len(first) else math.nan,
            "first_token_p90_ms": 1000 * float(np.percentile(first, 90)) if len(first) else math.nan,
            "first_token_bias_ms": 1000 * float(np.mean(self.first_token_s)) if len(first) else math.nan,
            "last_token_mae_ms": 1000 * float(np.mean(np.abs(self.last_token_s))),
            "drift_ms_per_iteration": 1000 * float(np.mean(np.abs(self.drift_s_per_iteration))),
            "drift_bias_ms_per_iteration": 1000 * float(np.mean(self.drift_s_per_iteration)),
        }  # fmt: skip


def true_board(engine: Engine, now_s: float, policy: SchedulerPolicy, arrival_s: dict[str, float],
               slo: Slo) -> tuple[Board, list[str]]:  # fmt: skip
    """The engine's board with its true remaining lengths, and its request ids in row
    order (running in the order scheduled, then waiting). The promises only steer the
    clock the planner chooses."""
    running, waiting = engine.running_sequences(), engine.waiting_sequences()
    done = engine.iterations

    def rows(requests: list[EngineRequest], generated: list[int]) -> Requests:
        arrived_s = np.array([arrival_s[r.request_id] for r in requests], dtype=np.float64)
        count = len(requests)
        return Requests.of(
            arrival_s=arrived_s,
            prompt_tokens=[r.prompt_tokens for r in requests],
            generated_tokens=generated,
            remaining_tokens=[r.output_tokens - g for r, g in zip(requests, generated, strict=True)],
            ttft_slo_s=np.full(count, slo.ttft_s),
            tbt_slo_s=np.full(count, slo.tbt_s),
            e2e_deadline_s=arrived_s + slo.e2e_s,
            max_tokens=[r.max_tokens for r in requests],
        )  # fmt: skip

    board = Board(
        now_s,
        rows(running, [r.generated_after(done) for r in running]),
        rows(waiting, [r.generated_tokens for r in waiting]),
        engine.profile.max_batch_size,
        engine.kv_capacity_blocks,
        engine.profile.tokens_per_block,
        policy,
    )
    return board, [r.request_id for r in running + waiting]


def compare(engine: Engine, board: Board, ids: list[str], model: TableIterationTimes,
            clock_index: int, clock_mhz: int, now_s: float, errors: _Errors) -> None:  # fmt: skip
    """Project `board`, run a copy of `engine` on at `clock_mhz` with no arrivals, and add
    the differences to `errors`."""
    needed = int(
        board.running.remaining_tokens.max(initial=1) + board.queued.remaining_tokens.sum()
    )
    projected = project(board, max(1, min(DEFAULT_HORIZON, needed)))
    seconds = model.seconds(projected.batch, projected.kv_blocks, projected.prefill_tokens,
                            clock_index, projected.prefill_square_tokens)  # fmt: skip
    projected_end_s = now_s + np.cumsum(seconds)
    twin = copy.deepcopy(engine)
    latency_s = twin.profile.gpu.clock_switch_latency_s
    for gpu in twin.gpus:
        gpu.lock_clock(clock_mhz, now_s - latency_s)  # in force from now
    batch, kv, end_s = [], [], []
    first_s: dict[str, float] = {}
    last_s: dict[str, float] = {}
    t_s = now_s
    while twin.has_work and len(batch) < projected.horizon:
        step = twin.step(t_s)
        t_s = step.ended_s
        batch.append(step.batch_size)
        kv.append(step.kv_blocks)
        end_s.append(t_s)
        for request_id in step.emitted:
            first_s.setdefault(request_id, t_s)
            last_s[request_id] = t_s
    compared = len(batch)
    if not compared:
        return
    unfinished = {r.request_id for r in twin.running_sequences() + twin.waiting_sequences()}
    errors.projections += 1
    errors.iterations += compared
    errors.batch += np.abs(projected.batch[:compared] - np.array(batch)).tolist()
    errors.batch_truth += batch
    errors.kv += np.abs(projected.kv_blocks[:compared] - np.array(kv)).tolist()
    errors.kv_truth += kv
    errors.drift_s_per_iteration.append((projected_end_s[compared - 1] - end_s[-1]) / compared)
    running = len(board.running)
    for row, request_id in enumerate(ids):
        start, end = int(projected.start[row]), int(projected.end[row])
        if row >= running and request_id in first_s and start < compared:
            errors.first_token_s.append(float(projected_end_s[start]) - first_s[request_id])
        if request_id in last_s and request_id not in unfinished and end - 1 < compared:
            errors.last_token_s.append(float(projected_end_s[end - 1]) - last_s[request_id])


def run_policy(options: ProjectionOptions, policy: SchedulerPolicy) -> dict[str, Any]:
    scene = build_scene(ReplayOptions(trace=options.trace, profile=options.profile,
                                      duration_s=options.duration_s, lengths="oracle",
                                      slo=options.slo, seed=options.seed))  # fmt: skip
    workload, _ = scene.workload_at(options.rate)
    assert scene.model is not None
    model = scene.model
    engine = Engine(scene.profile, seed=options.seed, policy=policy.value)
    planner = ClockPlanner(model, DEFAULT_MARGIN)
    clocks = scene.clocks_mhz
    errors = _Errors()
    arrival_s: dict[str, float] = {}
    arrivals = workload.arrival_s.tolist()
    next_arrival, now_s = 0, 0.0
    next_window_s, next_sample_s = 0.0, options.every_s
    while next_arrival < len(arrivals) or engine.has_work:
        while next_arrival < len(arrivals) and arrivals[next_arrival] <= now_s:
            request_id = str(next_arrival)
            arrival_s[request_id] = arrivals[next_arrival]
            output = int(workload.output_tokens[next_arrival])
            engine.submit(EngineRequest(request_id, int(workload.prompt_tokens[next_arrival]),
                                        output, output))  # fmt: skip
            next_arrival += 1
        if now_s >= next_window_s:
            board, ids = true_board(engine, now_s, policy, arrival_s, scene.slo)
            choice = planner.choose(board, clocks)
            for gpu in engine.gpus:
                gpu.lock_clock(choice.clock_mhz, now_s)
            if now_s >= next_sample_s and choice.decision is not None:
                compare(engine, board, ids, model, choice.decision.clock_index, choice.clock_mhz,
                        now_s, errors)  # fmt: skip
                next_sample_s = now_s + options.every_s
            next_window_s = now_s + WINDOW_S
        if engine.has_work:
            now_s = engine.step(now_s).ended_s
        else:
            upcoming = arrivals[next_arrival] if next_arrival < len(arrivals) else now_s
            now_s = max(now_s, min(upcoming, next_window_s))
    return errors.summary()


def bench_projection(options: ProjectionOptions, json_path: Path | None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "setting": {"profile": options.profile, "trace": options.trace.name, "rate_rps": options.rate,
                    "duration_s": options.duration_s, "every_s": options.every_s,
                    "slo": options.slo, "lengths": "oracle (true)"},
        "paper": PAPER,
        "targets": TARGETS,
        "by_scheduler_policy": {policy.value: run_policy(options, policy)
                                for policy in options.scheduler_policies},
    }  # fmt: skip
    print(markdown(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def markdown(report: dict[str, Any]) -> str:
    setting = report["setting"]
    lines = [
        f"{setting['profile']}, {setting['trace']} at {setting['rate_rps']:g} req/s for "
        f"{setting['duration_s']:g} s, true lengths, a projection every {setting['every_s']:g} s",
        "| scheduler | projections | batch error | KV error | first token MAE (p90) | "
        "last token MAE | drift per iteration |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for policy, row in report["by_scheduler_policy"].items():
        lines.append(
            f"| {policy} | {row['projections']} | {row['batch_error_pct']:.3f} % | "
            f"{row['kv_error_pct']:.3f} % | {row['first_token_mae_ms']:.1f} ms "
            f"({row['first_token_p90_ms']:.1f}) | {row['last_token_mae_ms']:.1f} ms | "
            f"{row['drift_ms_per_iteration']:.3f} ms |"
        )
    lines.append(f"| paper (TensorRT-LLM) | | {PAPER['batch_error_pct']} % | {PAPER['kv_error_pct']} % "
                 f"| target ≤ {TARGETS['first_token_mae_ms']:g} ms | | {PAPER['drift_ms_per_iteration']} ms |")  # fmt: skip
    return "\n".join(lines)

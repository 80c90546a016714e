"""One policy over one workload, on the twin's engine in virtual time.

The loop plays the gateway and the governor around the engine, as the live system does:

- arrivals enter the engine at once (ungated policies) or wait at the gateway in arrival
  order and are admitted through the planner (`AdmissionPlanner.verdict_on`, the
  gateway's own decision), tried again whenever the board changes;
- every governor window the policy picks a clock, and, for the gated policies, also
  whenever a request joins or leaves the engine (the gateway pokes the live governor so);
  a lower clock waits out the minimum dwell, and the GPUs take the switch latency to
  apply it (the twin models that, and an iteration under way speeds up or slows down
  from the instant the switch lands);
- the engine steps one iteration at a time; tokens are stamped when their iteration
  ends. Energy is the twin's integral of power over the whole run, idle included.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gateway.planning import AdmissionPlanner, EngineShape, Verdict
from governor.planner import IterationTimes
from predictor.board import Board, Requests
from predictor.length import conditional_remaining_rows
from simulator.engine import Engine
from simulator.engine import Sequence as EngineSequence
from simulator.profile import EngineProfile
from throttllem.replay.policies import EngineLoad, Policy
from throttllem.replay.workload import Workload

WINDOW_S = 0.1  # the governor's decision window (THROTTLLEM_GOVERNOR_WINDOW_MS)
MIN_DWELL_S = 0.5  # least time between two lowering changes (THROTTLLEM_GOVERNOR_MIN_DWELL_MS)


@dataclass(frozen=True)
class Slo:
    ttft_s: float
    tbt_s: float  # mean time between tokens
    e2e_s: float


@dataclass
class Run:
    policy: str
    energy_j: float
    ttft_s: np.ndarray
    tbt_s: np.ndarray
    e2e_s: np.ndarray
    met: np.ndarray
    output_tokens: int
    mean_freq_mhz: float
    wall_s: float
    series_t_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    series_clock_mhz: np.ndarray = field(default_factory=lambda: np.zeros(0))
    series_power_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    queue_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # waited at the gateway


def simulate(
    workload: Workload,
    profile: EngineProfile,
    policy: Policy,
    slo: Slo,
    model: IterationTimes | None,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> Run:
    started_wall_s = time.perf_counter()
    if policy.gated and model is None:
        raise ValueError(f"policy {policy.name} needs the engine's performance model")
    engine = Engine(profile, seed=seed)
    clocks_mhz = profile.gpu.supported_clocks_mhz()
    switch_latency_s = profile.gpu.clock_switch_latency_s
    n = len(workload)
    arrival, prompts, outputs = workload.arrival_s, workload.prompt_tokens, workload.output_tokens
    believed = outputs if policy.true_lengths else workload.predicted_tokens
    # The bound the gateway sees: the rest of the context window (the client set none).
    declared_max = profile.model.context_window_tokens - prompts
    generated = np.zeros(n, dtype=np.int64)
    first_s = np.full(n, math.nan)
    last_s = np.full(n, math.nan)
    finished_s = np.full(n, math.nan)
    admitted_s = np.full(n, math.nan)  # when the request entered the engine
    active: dict[int, None] = {}  # admitted, unfinished, in admission order
    waiting: deque[int] = deque()  # at the gateway (gated policies)
    planner = None
    if policy.gated and model is not None:
        shape = EngineShape(profile.max_batch_size, engine.kv_capacity_blocks,
                            profile.tokens_per_block)  # fmt: skip
        planner = AdmissionPlanner(model, shape)

    quantiles = None if policy.true_lengths else workload.length_quantiles

    def rows(indices: np.ndarray) -> Requests:
        room = declared_max[indices] - generated[indices]
        if quantiles is not None:  # the gateway's rule (gateway.planning.remaining_tokens)
            remaining = np.minimum(
                conditional_remaining_rows(quantiles[indices], generated[indices]), room
            )
        else:
            remaining = np.minimum(believed[indices], declared_max[indices]) - generated[indices]
        count = len(indices)
        return Requests(
            arrival_s=arrival[indices].astype(np.float64),
            prompt_tokens=prompts[indices].astype(np.int64),
            generated_tokens=generated[indices].copy(),
            remaining_tokens=np.maximum(1, remaining).astype(np.int64),
            ttft_slo_s=np.full(count, slo.ttft_s),
            tbt_slo_s=np.full(count, slo.tbt_s),
            e2e_deadline_s=arrival[indices] + slo.e2e_s,
        )

    def board(now_s: float) -> Board:
        indices = np.fromiter(active, dtype=np.int64, count=len(active))
        running = ~np.isnan(first_s[indices])
        queued = indices[~running]
        queued = queued[np.argsort(arrival[queued], kind="stable")]
        return Board(now_s, rows(indices[running]), rows(queued), profile.max_batch_size,
                     engine.kv_capacity_blocks, profile.tokens_per_block)  # fmt: skip

    def submit(index: int) -> None:
        nonlocal poked
        output = int(outputs[index])
        engine.submit(EngineSequence(str(index), int(prompts[index]), output, output))
        active[index] = None
        admitted_s[index] = now_s
        poked = policy.gated

    def admit_waiting(now_s: float) -> None:
        assert planner is not None
        current = board(now_s)
        while waiting:
            candidate = rows(np.array([waiting[0]]))
            if current.size and planner.verdict_on(current, candidate) is Verdict.WAIT:
                return
            submit(waiting.popleft())  # ADMIT, or LOST: served now, never dropped
            current = current.with_queued(candidate)

    now_s = 0.0
    next_arrival = 0
    next_decision_s = 0.0
    applied_mhz: int | None = None
    last_change_s = -math.inf
    board_changed = False
    poked = False  # the gateway pokes the governor when a request joins or leaves
    series: list[tuple[float, int, float]] = []
    reported = 0
    while True:
        while next_arrival < n and arrival[next_arrival] <= now_s:
            if policy.gated:
                waiting.append(next_arrival)
            else:
                submit(next_arrival)
            next_arrival += 1
            board_changed = True
        if waiting and board_changed:
            admit_waiting(now_s)
        board_changed = False
        if now_s >= next_decision_s or poked:
            poked = False
            load = EngineLoad(engine.running, profile.max_batch_size, engine.kv_used_blocks,
                              engine.kv_capacity_blocks)  # fmt: skip
            planned = board(now_s + switch_latency_s) if policy.gated else None
            target_mhz = policy.clock_mhz(clocks_mhz, load, planned, model)
            lowering = applied_mhz is not None and target_mhz < applied_mhz
            held = lowering and now_s - last_change_s < MIN_DWELL_S
            if target_mhz != applied_mhz and not held:
                for gpu in engine.gpus:
                    gpu.lock_clock(target_mhz, now_s)
                applied_mhz, last_change_s = target_mhz, now_s
            if now_s >= next_decision_s:  # a window's end (a poke decides in between)
                power_w = sum(gpu.power_w() for gpu in engine.gpus)
                series.append((now_s, engine.clock_mhz(now_s), power_w))
                next_decision_s = now_s + WINDOW_S
        if engine.has_work:
            result = engine.step(now_s)
            now_s = result.ended_s
            for request_id in result.emitted:
                index = int(request_id)
                generated[index] += 1
                if math.isnan(first_s[index]):
                    first_s[index] = now_s
                    board_changed = True
                last_s[index] = now_s
            for request_id in result.finished:
                index = int(request_id)
                finished_s[index] = now_s
                del active[index]
                board_changed = True
                poked = policy.gated
        elif next_arrival >= n and not waiting:
            break
        else:
            upcoming_s = arrival[next_arrival] if next_arrival < n else math.inf
            now_s = max(now_s, min(upcoming_s, next_decision_s))
        if progress is not None and next_arrival * 100 // max(n, 1) > reported:
            reported = next_arrival * 100 // max(n, 1)
            progress(next_arrival / n)
    for gpu in engine.gpus:
        gpu.idle_until(now_s)
    return _run(policy, workload, slo, engine, admitted_s, first_s, last_s, finished_s,
                generated, series, time.perf_counter() - started_wall_s)  # fmt: skip


def _run(
    policy: Policy,
    workload: Workload,
    slo: Slo,
    engine: Engine,
    admitted_s: np.ndarray,
    first_s: np.ndarray,
    last_s: np.ndarray,
    finished_s: np.ndarray,
    generated: np.ndarray,
    series: list[tuple[float, int, float]],
    wall_s: float,
) -> Run:
    ttft_s = first_s - workload.arrival_s
    tbt_s = np.where(generated > 1, (last_s - first_s) / np.maximum(generated - 1, 1), 0.0)
    e2e_s = finished_s - workload.arrival_s
    met = (ttft_s <= slo.ttft_s) & (tbt_s <= slo.tbt_s) & (e2e_s <= slo.e2e_s)
    t_s, clock_mhz, power_w = (np.array(column) for column in zip(*series, strict=True))
    return Run(
        policy=policy.name,
        energy_j=sum(gpu.energy_mj() for gpu in engine.gpus) / 1000,
        ttft_s=ttft_s,
        tbt_s=tbt_s,
        e2e_s=e2e_s,
        met=met,
        output_tokens=int(generated.sum()),
        mean_freq_mhz=_time_weighted_mean(t_s, clock_mhz),
        wall_s=wall_s,
        series_t_s=t_s,
        series_clock_mhz=clock_mhz,
        series_power_w=power_w,
        queue_s=admitted_s - workload.arrival_s,
    )


def _time_weighted_mean(t_s: np.ndarray, values: np.ndarray) -> float:
    """Each sample holds until the next (samples fall at iteration ends, not evenly)."""
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan
    return float(np.average(values[:-1], weights=np.diff(t_s)))

"""The planner's decisions computed the plain way, one iteration and one request at a time.

Slow on purpose: it is the specification `predictor.projection` and
`slo_planner.feasibility` are tested and timed against.
"""

from __future__ import annotations

import numpy as np

from predictor.board import Board, Requests
from predictor.projection import Projection
from slo_planner.feasibility import CheckResult, IterationTimes, renegotiated


def check_reference(
    board: Board, model: IterationTimes, clock_index: int, horizon: int
) -> CheckResult:
    projection = project_reference(board, horizon)
    requests = board.running.append(board.queued)
    running = len(board.running)
    done_s, now_s = [], board.now_s
    for t in range(horizon):
        batch = np.array([projection.batch[t]])
        kv, prefill = np.array([projection.kv_blocks[t]]), np.array([projection.prefill_tokens[t]])
        seconds = float(model.prepare(batch, kv, prefill).run_seconds(clock_index)[0])
        now_s += seconds
        done_s.append((seconds, now_s))
    overflow = max(0, max(int(kv) - board.kv_capacity_blocks for kv in projection.kv_blocks))
    ttft, tbt, e2e = [], [], []
    for index in range(len(requests)):
        start, end = int(projection.start[index]), int(projection.end[index])
        first_s = _ends_at(done_s, start)
        last_s = _ends_at(done_s, end - 1)
        queued = index >= running
        ttft.append(
            first_s - (requests.arrival_s[index] + requests.ttft_slo_s[index])
            if queued
            else -np.inf
        )
        # The mean gap over the tokens still to come: from now for a running request,
        # from its first token for a queued one.
        gaps = end - start - int(queued)
        opened_s = first_s if queued else board.now_s
        mean_gap_s = (last_s - opened_s) / gaps if gaps > 0 else None
        tbt.append(mean_gap_s - requests.tbt_slo_s[index] if mean_gap_s is not None else -np.inf)
        e2e.append(last_s - requests.e2e_deadline_s[index])
    first_over = next(
        (
            t
            for t, kv in enumerate(projection.kv_blocks)
            if kv - board.kv_capacity_blocks == overflow
        ),
        None,
    )
    return CheckResult(
        clock_index,
        overflow,
        first_over if overflow else None,
        np.array(ttft),
        np.array(tbt),
        np.array(e2e),
    )


def _ends_at(done_s: list[tuple[float, float]], iteration: int) -> float:
    if iteration < len(done_s):
        return done_s[iteration][1]
    return done_s[-1][1] + (iteration - (len(done_s) - 1)) * done_s[-1][0]


def lowest_frequency_reference(board: Board, model: IterationTimes, horizon: int) -> int:
    clocks = len(model.clocks_mhz)
    at_top = check_reference(board, model, clocks - 1, horizon)
    if at_top.kv_overflow_blocks:
        return clocks - 1
    if not at_top.feasible:
        board = renegotiated(board, at_top)
    for index in range(clocks):  # every clock, lowest first
        if check_reference(board, model, index, horizon).feasible:
            return index
    return clocks - 1


def admit_reference(board: Board, request: Requests, model: IterationTimes, horizon: int) -> bool:
    top = len(model.clocks_mhz) - 1
    before = check_reference(board, model, top, horizon)
    after = check_reference(board.with_queued(request), model, top, horizon)
    if after.kv_overflow_blocks > before.kv_overflow_blocks or after.worst_miss_s[-1] > 1e-9:
        return False
    bounded = check_reference(renegotiated(board, before).with_queued(request), model, top, horizon)
    return bool(np.all(bounded.worst_miss_s[:-1] <= 1e-9))


def project_reference(board: Board, horizon: int) -> Projection:
    """The same projection, one iteration at a time: the specification the fast one meets."""
    running = [
        {"context": int(c), "left": int(r), "start": 0}
        for c, r in zip(board.running.context_tokens, board.running.remaining_tokens, strict=True)
    ]
    waiting = [
        {"context": int(p), "left": int(r), "index": len(running) + i}
        for i, (p, r) in enumerate(
            zip(board.queued.prompt_tokens, board.queued.remaining_tokens, strict=True)
        )
    ]
    count = len(running) + len(waiting)
    start = np.zeros(count, dtype=np.int64)
    end = np.array([r["left"] for r in running] + [0] * len(waiting), dtype=np.int64)
    batch, kv, prefill = [], [], []
    active = list(running)
    for t in range(horizon):
        active = [r for r in active if r["left"] > 0]
        filled = 0
        while waiting and len(active) < board.max_batch:
            request = waiting.pop(0)
            start[request["index"]] = t
            end[request["index"]] = t + request["left"]
            filled += request["context"]
            active.append(request)
        for request in active:
            request["context"] += 1
            request["left"] -= 1
        batch.append(len(active))
        kv.append(sum(-(-r["context"] // board.tokens_per_block) for r in active))
        prefill.append(filled)
    for request in waiting:  # never started within the horizon: the fast one still places them
        start[request["index"]] = -1
    return Projection(np.array(batch), np.array(kv), np.array(prefill), start, end)

"""The planner's decisions computed the plain way, one iteration and one request at a time.

Slow on purpose: it is the specification `predictor.projection` and
`slo_planner.feasibility` are tested and timed against.
"""

from __future__ import annotations

import numpy as np

from predictor.board import Board, Requests, SchedulerPolicy
from predictor.projection import Projection
from slo_planner.feasibility import CheckResult, IterationTimes, renegotiated


def check_reference(
    board: Board, model: IterationTimes, clock_index: int, horizon: int
) -> CheckResult:
    projection = project_reference(board, horizon)
    busy = [t for t, batch in enumerate(projection.batch) if batch > 0]
    horizon = busy[-1] + 1 if busy else horizon  # past the last busy one, at its pace
    requests = board.running.append(board.queued)
    running = len(board.running)
    done_s, now_s = [], board.now_s
    for t in range(horizon):
        batch = np.array([projection.batch[t]])
        kv, prefill = np.array([projection.kv_blocks[t]]), np.array([projection.prefill_tokens[t]])
        square = np.array([projection.prefill_square_tokens[t]])
        seconds = float(model.prepare(batch, kv, prefill, square).run_seconds(clock_index)[0])
        now_s += seconds
        done_s.append((seconds, now_s))
    overflow = max(0, max(int(kv) - board.kv_capacity_blocks for kv in projection.kv_blocks))
    ttft, tbt, e2e = [], [], []
    for index in range(len(requests)):
        start, end = int(projection.start[index]), int(projection.end[index])
        end += max(
            0, int(requests.remaining_at_risk_tokens[index] - requests.remaining_tokens[index])
        )
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
    """The same projection, one iteration and one request at a time: the specification the
    fast one meets (a request that never starts within the horizon has start -1)."""
    block, capacity = board.tokens_per_block, board.kv_capacity_blocks
    reserving = board.scheduler_policy == SchedulerPolicy.GUARANTEED_NO_EVICT
    requests = board.running.append(board.queued)
    contexts, lefts = requests.context_tokens.tolist(), requests.remaining_tokens.tolist()
    reserves = requests.reserved_blocks(block).tolist()
    earliest = requests.earliest_start.tolist()
    count = len(requests)
    start = np.full(count, -1, dtype=np.int64)
    start[: len(board.running)] = 0
    end = np.zeros(count, dtype=np.int64)
    active = list(range(len(board.running)))  # in the order they were scheduled
    waiting = list(range(len(board.running), count))
    batch, kv, prefill, square = [], [], [], []

    def blocks_now(row: int) -> int:  # with the token this iteration adds
        return -(-(contexts[row] + 1) // block)

    for t in range(horizon):
        used = sum(blocks_now(row) for row in active)
        while not reserving and used > capacity and len(active) > 1:
            newest = active.pop()
            used -= blocks_now(newest)
            waiting.insert(0, newest)
        filled = filled_square = 0
        while waiting and len(active) < board.max_batch:
            head = waiting[0]
            if t < earliest[head]:
                break
            if reserving:  # one that could never fit starts alone (the engine refuses it)
                if active and sum(reserves[row] for row in active) + reserves[head] > capacity:
                    break
            elif used + blocks_now(head) > capacity:
                break
            waiting.pop(0)
            active.append(head)
            used += blocks_now(head)
            filled, filled_square = filled + contexts[head], filled_square + contexts[head] ** 2
            if start[head] < 0:
                start[head] = t
        batch.append(len(active))
        kv.append(used)
        prefill.append(filled)
        square.append(filled_square)
        for row in active:
            contexts[row] += 1
            lefts[row] -= 1
            if lefts[row] == 0:
                end[row] = t + 1
        active = [row for row in active if lefts[row] > 0]
    for row in active + waiting:  # past the horizon
        end[row] = -1
    return Projection(np.array(batch, dtype=np.int64), np.array(kv, dtype=np.int64),
                      np.array(prefill, dtype=np.int64), np.array(square, dtype=np.int64),
                      start, end)  # fmt: skip

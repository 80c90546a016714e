"""Projection: the batch size and KV blocks of every future iteration, from the board.

It reproduces the engine's scheduler (TensorRT-LLM's in-flight batching) on the believed
lengths. Each iteration, the running requests grow by one token; waiting requests then
start, in order, while a batch slot is free and their KV fits, and their prompt is
prefilled in that same iteration, which emits their first token. What "fits" means is
the board's scheduler policy:

- `guaranteed_no_evict`: the request's reservation (its prompt plus `max_tokens`) fits
  beside those of the requests in the batch; a reservation is released when its request
  finishes. Nothing is ever paused.
- `max_utilization`: the blocks it needs now fit. When the running requests' growth
  overflows the cache, the newest are paused until it fits; a paused request waits at
  the head of the queue and resumes with a prefill of its whole context.

Running requests leave after their predicted remaining tokens. The common cases are
array operations with no Python loop over iterations (a heap over the queued requests
assigns their starts); only a `max_utilization` board whose cache overflows is stepped
one iteration at a time, since its pauses depend on every iteration before.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from predictor.arrays import IntArray
from predictor.board import Board, SchedulerPolicy


@dataclass(frozen=True)
class Projection:
    batch: IntArray  # [H] requests in iteration t
    kv_blocks: IntArray  # [H] blocks in use during iteration t (its finishers included)
    prefill_tokens: IntArray  # [H] context tokens prefilled in iteration t
    prefill_square_tokens: IntArray  # [H] the sum of each prefilled context's square
    start: IntArray  # [N] first iteration of each request (running: 0), running then queued
    end: IntArray  # [N] one past its last iteration (may exceed the horizon)

    @property
    def horizon(self) -> int:
        return len(self.batch)


def project(board: Board, horizon: int) -> Projection:
    """A queued request also waits for its `earliest_start` (an expected arrival does)."""
    if board.scheduler_policy == SchedulerPolicy.GUARANTEED_NO_EVICT:
        return _timeline(board, horizon, reserved_starts(board))
    projection = _timeline(board, horizon, slot_starts(board))
    if projection.kv_blocks.max(initial=0) <= board.kv_capacity_blocks:
        return projection  # nothing paused, and every start found its blocks free
    return _step_by_step(board, horizon)


def slot_starts(board: Board) -> IntArray:
    """The iteration each queued request starts in: in order, into the first free slot."""
    free_now = board.max_batch - len(board.running)
    queued = len(board.queued)
    earliest = board.queued.earliest_start
    if queued <= free_now:  # everyone fits at once, or when it comes
        return np.maximum.accumulate(earliest)
    # Only the slots the queue will ever see matter: the free ones and the earliest ends.
    ends = np.sort(board.running.remaining_tokens)[: queued - max(free_now, 0)].tolist()
    slots = [0] * max(free_now, 0) + ends  # sorted, so already a heap
    starts, previous = [], 0
    for duration, not_before in zip(board.queued.remaining_tokens.tolist(), earliest.tolist(),
                                    strict=True):  # fmt: skip
        start = previous = max(slots[0], not_before, previous)
        starts.append(start)
        heapq.heapreplace(slots, start + duration)
    return np.array(starts, dtype=np.int64)


def reserved_starts(board: Board) -> IntArray:
    """`guaranteed_no_evict`: each queued request, in order, starts in the first iteration
    at or after the one before it started with a free slot and room for its reservation."""
    block, capacity = board.tokens_per_block, board.kv_capacity_blocks
    running_reserved = board.running.reserved_blocks(block)
    queued_reserved = board.queued.reserved_blocks(block)
    reserved = int(running_reserved.sum())
    free_now = board.max_batch - len(board.running)
    earliest = board.queued.earliest_start
    if len(board.queued) <= free_now and reserved + int(queued_reserved.sum()) <= capacity:
        return np.maximum.accumulate(earliest)
    ends = list(zip(board.running.remaining_tokens.tolist(), running_reserved.tolist(),
                    strict=True))  # fmt: skip
    heapq.heapify(ends)
    active, now = len(board.running), 0
    starts = []
    for duration, needed, not_before in zip(board.queued.remaining_tokens.tolist(),
                                            queued_reserved.tolist(), earliest.tolist(),
                                            strict=True):  # fmt: skip
        now = max(now, not_before)
        while ends and (ends[0][0] <= now or active >= board.max_batch
                        or reserved + needed > capacity):  # fmt: skip
            end, freed = heapq.heappop(ends)
            now, reserved, active = max(now, end), reserved - freed, active - 1
        starts.append(now)
        heapq.heappush(ends, (now + duration, needed))
        reserved, active = reserved + needed, active + 1
    return np.array(starts, dtype=np.int64)


def _timeline(board: Board, horizon: int, queued_start: IntArray) -> Projection:
    """Every iteration's batch, blocks and prefill, given when each queued request starts."""
    running = len(board.running)
    start = np.concatenate([np.zeros(running, dtype=np.int64), queued_start])
    duration = np.concatenate([board.running.remaining_tokens, board.queued.remaining_tokens])
    context = np.concatenate([board.running.context_tokens, board.queued.context_tokens])
    end = start + duration
    block = board.tokens_per_block

    size = horizon + 1
    clipped_start, clipped_end = np.minimum(start, horizon), np.minimum(end, horizon)
    batch_delta = np.bincount(clipped_start, minlength=size) - np.bincount(
        clipped_end, minlength=size
    )

    # Blocks: ceil((context + k + 1) / block) during a request's k-th iteration. It holds
    # its first blocks from its start, gains one each time its context passes a block
    # boundary, and frees them all at its end.
    first_blocks = -(-(context + 1) // block)
    last_blocks = -(-(context + duration) // block)
    first_gain = (-context) % block
    first_gain[first_gain == 0] = block
    gains = np.where(first_gain <= duration - 1, (duration - 1 - first_gain) // block + 1, 0)
    # A request gains its blocks every `block` iterations from `first_gain_at` on, so the
    # gains of all requests are a difference array summed with stride `block`.
    first_gain_at = start + first_gain
    gaining = gains > 0
    rows = -(-(size + block) // block) + 1
    strided = np.zeros(rows * block, dtype=np.int64)
    strided += np.bincount(
        np.minimum(first_gain_at[gaining], rows * block - 1), minlength=rows * block
    )
    stops = np.minimum(first_gain_at[gaining] + block * gains[gaining], rows * block - 1)
    strided -= np.bincount(stops, minlength=rows * block)
    gained = np.cumsum(strided.reshape(rows, block), axis=0).reshape(-1)[:size]
    block_delta = (
        gained
        + np.bincount(clipped_start, weights=first_blocks, minlength=size)
        - np.bincount(clipped_end, weights=last_blocks, minlength=size)
    ).astype(np.int64)

    prefilled = clipped_start[running:]
    queued_context = context[running:].astype(np.float64)
    prefill = np.bincount(prefilled, weights=queued_context, minlength=size)
    square = np.bincount(prefilled, weights=queued_context**2, minlength=size)

    return Projection(
        batch=np.cumsum(batch_delta[:horizon]),
        kv_blocks=np.cumsum(block_delta[:horizon]),
        prefill_tokens=prefill[:horizon].astype(np.int64),
        prefill_square_tokens=square[:horizon].astype(np.int64),
        start=start,
        end=end,
    )


@dataclass
class _Stepped:
    """One request in the step-by-step projection, as of when it was last scheduled."""

    row: int
    context_tokens: int  # when it was last scheduled
    left_tokens: int  # when it was last scheduled
    scheduled_at: int = 0

    def context_at(self, iteration: int) -> int:
        return self.context_tokens + iteration - self.scheduled_at


def _step_by_step(board: Board, horizon: int) -> Projection:
    """`max_utilization`, one iteration at a time: growth, pauses of the newest until the
    cache fits, then starts while a slot and the blocks they need now are free. The books
    are O(1) per iteration: which requests grow when is known from when each started."""
    block, capacity, max_batch = board.tokens_per_block, board.kv_capacity_blocks, board.max_batch
    running_rows = len(board.running)
    count = running_rows + len(board.queued)
    start = np.zeros(count, dtype=np.int64)
    end = np.zeros(count, dtype=np.int64)
    started = np.zeros(count, dtype=bool)
    started[:running_rows] = True
    batch = np.zeros(horizon, dtype=np.int64)
    kv = np.zeros(horizon, dtype=np.int64)
    prefill = np.zeros(horizon, dtype=np.int64)
    square = np.zeros(horizon, dtype=np.int64)
    crossings = [0] * block  # running requests that need a new block when t % block == key
    finishing: defaultdict[int, list[_Stepped]] = defaultdict(list)
    running: dict[int, _Stepped] = {}
    contexts = np.concatenate([board.running.context_tokens, board.queued.context_tokens])
    lefts = np.concatenate([board.running.remaining_tokens, board.queued.remaining_tokens])
    earliest = np.concatenate([np.zeros(running_rows, dtype=np.int64),
                               board.queued.earliest_start])  # fmt: skip
    waiting = [_Stepped(row, int(contexts[row]), int(lefts[row]))
               for row in range(running_rows, count)]  # fmt: skip
    waiting.reverse()  # a stack: the head is popped from the end, paused ones pushed back
    used = 0

    def key(request: _Stepped) -> int:
        return (request.scheduled_at - request.context_tokens) % block

    def schedule(request: _Stepped, t: int) -> None:
        request.scheduled_at = t
        running[request.row] = request
        crossings[key(request)] += 1
        finishing[t + request.left_tokens - 1].append(request)

    def release(request: _Stepped, t: int) -> int:
        """Take it off the books before iteration `t`'s growth; its blocks then."""
        del running[request.row]
        crossings[key(request)] -= 1
        return -(-request.context_at(t) // block)

    for row in range(running_rows):
        request = _Stepped(row, int(contexts[row]), int(lefts[row]))
        used += -(-request.context_tokens // block)
        schedule(request, 0)
    for t in range(horizon):
        used += crossings[t % block]
        while used > capacity and len(running) > 1:  # pause the newest
            newest = running[next(reversed(running))]
            growing = key(newest) == t % block
            used -= release(newest, t) + growing
            done = t - newest.scheduled_at
            newest.context_tokens += done
            newest.left_tokens -= done
            waiting.append(newest)
        while waiting and len(running) < max_batch and earliest[waiting[-1].row] <= t:
            head = waiting[-1]
            needed = -(-(head.context_tokens + 1) // block)
            if used + needed > capacity:
                break
            waiting.pop()
            used += needed
            prefill[t] += head.context_tokens
            square[t] += head.context_tokens**2
            if not started[head.row]:
                started[head.row], start[head.row] = True, t
            schedule(head, t)
        batch[t], kv[t] = len(running), used
        for request in finishing.pop(t, ()):
            current = running.get(request.row) is request
            if current and request.scheduled_at + request.left_tokens - 1 == t:  # not paused
                used -= release(request, t + 1)
                end[request.row] = t + 1
    _place_beyond(start, end, started, running, waiting, horizon)
    return Projection(batch, kv, prefill, square, start, end)


def _place_beyond(start: IntArray, end: IntArray, started: npt.NDArray[np.bool_],
                  running: dict[int, _Stepped], waiting: list[_Stepped],
                  horizon: int) -> None:  # fmt: skip
    """Past the horizon, a running request ends after its rest, and a waiting one starts
    at the horizon (the planner prices iterations beyond it at the last one's pace)."""
    for request in running.values():
        end[request.row] = request.scheduled_at + request.left_tokens
    for request in waiting:
        if not started[request.row]:
            start[request.row] = horizon
        end[request.row] = horizon + request.left_tokens

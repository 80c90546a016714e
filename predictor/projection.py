"""Projection: the batch size and KV blocks of every future iteration, from the board.

Running requests leave after their predicted remaining tokens; queued ones start, in
order, in the first iteration with a free batch slot (their prefill runs then, and emits
their first token). Every active request adds one token per iteration. Written with
array operations only: no Python loop over iterations (a heap over queued requests
assigns their slots).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from predictor.arrays import IntArray
from predictor.board import Board


@dataclass(frozen=True)
class Projection:
    batch: IntArray  # [H] requests in iteration t
    kv_blocks: IntArray  # [H] blocks in use after iteration t
    prefill_tokens: IntArray  # [H] prompt tokens prefilled in iteration t
    start: IntArray  # [N] first iteration of each request (running: 0), running then queued
    end: IntArray  # [N] one past its last iteration (may exceed the horizon)

    @property
    def horizon(self) -> int:
        return len(self.batch)


def queued_starts(board: Board) -> IntArray:
    """The iteration each queued request starts in: FIFO into the first free slot."""
    free_now = board.max_batch - len(board.running)
    queued = len(board.queued)
    if queued <= free_now:  # everyone fits at once
        return np.zeros(queued, dtype=np.int64)
    # Only the slots the queue will ever see matter: the free ones and the earliest ends.
    ends = np.sort(board.running.remaining_tokens)[: queued - max(free_now, 0)].tolist()
    slots = [0] * max(free_now, 0) + ends  # sorted, so already a heap
    starts = []
    for duration in board.queued.remaining_tokens.tolist():
        free_at = slots[0]
        starts.append(free_at)
        heapq.heapreplace(slots, free_at + duration)
    return np.array(starts, dtype=np.int64)


def project(board: Board, horizon: int) -> Projection:
    start = np.concatenate([np.zeros(len(board.running), dtype=np.int64), queued_starts(board)])
    duration = np.concatenate([board.running.remaining_tokens, board.queued.remaining_tokens])
    context = np.concatenate([board.running.context_tokens, board.queued.prompt_tokens])
    end = start + duration
    block = board.tokens_per_block

    size = horizon + 1
    clipped_start, clipped_end = np.minimum(start, horizon), np.minimum(end, horizon)
    batch_delta = np.bincount(clipped_start, minlength=size) - np.bincount(
        clipped_end, minlength=size
    )

    # Blocks: ceil((context + k + 1) / block) after a request's k-th iteration. It holds
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

    queued_start = clipped_start[len(board.running) :]
    prefill = np.bincount(queued_start, weights=board.queued.prompt_tokens, minlength=size).astype(
        np.int64
    )

    return Projection(
        batch=np.cumsum(batch_delta[:horizon]),
        kv_blocks=np.cumsum(block_delta[:horizon]),
        prefill_tokens=prefill[:horizon],
        start=start,
        end=end,
    )

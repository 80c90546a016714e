"""From the scoreboard to the planner: the board the engine holds, and whether one more
request may join it.

Entries that have produced a token are running; admitted ones still waiting for their
first token are queued in the engine, oldest first; the candidate queues behind them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.state import RequestEntry
from governor.planner import DEFAULT_HORIZON, TOLERANCE_S, IterationTimes, admit
from predictor.board import Board, Requests
from predictor.length import conditional_remaining


class Verdict(enum.Enum):
    ADMIT = "admit"  # every promise holds with it
    WAIT = "wait"  # it would make an admitted request miss: wait for room
    LOST = "lost"  # it misses its own promise even now at the highest clock: serve it now


@dataclass(frozen=True)
class EngineShape:
    max_batch: int
    kv_capacity_blocks: int
    tokens_per_block: int


class AdmissionPlanner:
    def __init__(
        self, model: IterationTimes, engine: EngineShape, horizon: int = DEFAULT_HORIZON
    ) -> None:
        self.model = model
        self.engine = engine
        self.horizon = horizon

    def board(self, entries: Sequence[RequestEntry], now_s: float) -> Board:
        running = [e for e in entries if e.first_token_s is not None]
        waiting = sorted((e for e in entries if e.first_token_s is None), key=_arrival)
        return Board(
            now_s=now_s,
            running=_requests(running),
            queued=_requests(waiting),
            max_batch=self.engine.max_batch,
            kv_capacity_blocks=self.engine.kv_capacity_blocks,
            tokens_per_block=self.engine.tokens_per_block,
        )

    def verdict(
        self, entries: Sequence[RequestEntry], candidate: RequestEntry, now_s: float
    ) -> Verdict:
        if not entries:  # nobody to protect: the engine is the judge of what fits
            return Verdict.ADMIT
        return self.verdict_on(self.board(entries, now_s), _requests([candidate]))

    def verdict_on(self, board: Board, candidate: Requests) -> Verdict:
        """The verdict for one queued row `candidate` joining `board` (not empty)."""
        decision = admit(board, candidate, self.model, self.horizon)
        if decision.admit:
            return Verdict.ADMIT
        own = decision.with_request
        if own is not None and own.worst_miss_s[-1] > TOLERANCE_S:
            return Verdict.LOST
        return Verdict.WAIT


def _arrival(entry: RequestEntry) -> float:
    return entry.arrival_s


def remaining_tokens(entry: RequestEntry) -> int:
    """Predicted tokens still to come (at least one): the median rest given what it has
    generated when the prediction's quantiles came along, else the point prediction;
    max_tokens when nothing predicts."""
    room = entry.max_tokens - entry.generated_tokens
    if entry.length_quantiles:
        return max(1, min(conditional_remaining(entry.length_quantiles, entry.generated_tokens),
                          room))  # fmt: skip
    expected = entry.predicted_tokens if entry.predicted_tokens is not None else entry.max_tokens
    return max(1, min(expected, entry.max_tokens) - entry.generated_tokens)


def _requests(entries: Sequence[RequestEntry]) -> Requests:
    return Requests.of(
        arrival_s=[e.arrival_s for e in entries],
        prompt_tokens=[e.prompt_tokens for e in entries],
        generated_tokens=[e.generated_tokens for e in entries],
        remaining_tokens=[remaining_tokens(e) for e in entries],
        ttft_slo_s=[e.ttft_slo_s for e in entries],
        tbt_slo_s=[e.tbt_slo_s for e in entries],
        e2e_deadline_s=[e.e2e_deadline_s for e in entries],
    )

"""Whether one more request may join the engine's board: the admission verdict.

The board holds the requests the engine serves (running) and those admitted but still
waiting in it for their first token (queued, oldest first); the candidate queues behind
them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from predictor.board import Board, Requests, SchedulerPolicy
from slo_planner.feasibility import DEFAULT_HORIZON, TOLERANCE_S, IterationTimes, admit


class Verdict(enum.Enum):
    ADMIT = "admit"  # every promise holds with it
    WAIT = "wait"  # it would make an admitted request miss: wait for room
    LOST = "lost"  # it misses its own promise even now at the highest clock: serve it now


@dataclass(frozen=True)
class EngineShape:
    max_batch: int
    kv_capacity_blocks: int
    tokens_per_block: int
    scheduler_policy: SchedulerPolicy = SchedulerPolicy.GUARANTEED_NO_EVICT


RETRY_S = 0.5  # the gate tries a held request again at least this often (the window)


class AdmissionPlanner:
    def __init__(
        self,
        model: IterationTimes,
        engine: EngineShape,
        horizon: int = DEFAULT_HORIZON,
        retry_s: float = RETRY_S,
    ) -> None:
        """`retry_s`: how long until a held request is tried again; one that would lose
        its first token by waiting that long is sent now (feasibility.admit)."""
        self.model = model
        self.engine = engine
        self.horizon = horizon
        self.retry_s = retry_s

    def verdict_on(self, board: Board, candidate: Requests) -> Verdict:
        """The verdict for one queued row `candidate` joining `board`. On an empty board
        there is nobody to protect: the engine is the judge of what fits."""
        if board.size == 0:
            return Verdict.ADMIT
        decision = admit(board, candidate, self.model, self.horizon, self.retry_s)
        if decision.admit:
            return Verdict.ADMIT
        own = decision.with_request
        if own is not None and own.worst_miss_s[-1] > TOLERANCE_S:
            return Verdict.LOST
        return Verdict.WAIT

"""Which clock the GPUs should run at: the planner's choice over a board, and the two
rules the peers use (a clock for one iteration time, a model clock mapped onto the
clocks a GPU supports)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from predictor.board import Board
from slo_planner.arrivals import ArrivalModel
from slo_planner.feasibility import (
    DEFAULT_HORIZON,
    FrequencyDecision,
    IterationTimes,
    lowest_frequency,
)


def at_or_above(model_clock_mhz: int, supported_clocks_mhz: Sequence[int]) -> int:
    """The lowest supported GPU clock at or above the model's; the highest if none is."""
    above = [clock for clock in supported_clocks_mhz if clock >= model_clock_mhz]
    return min(above) if above else max(supported_clocks_mhz)


@dataclass(frozen=True)
class ClockChoice:
    clock_mhz: int
    reason: str
    decision: FrequencyDecision | None = None  # None: not planned (the highest clock)


class ClockPlanner:
    """The lowest clock at which every promise on the board holds, keeping `margin` of
    every budget to spare, and, with an arrival model, leaving room for the requests it
    expects over its horizon (slo_planner/arrivals.py). An empty board waits at the
    highest clock: an idle GPU's power hardly depends on its clock, and the next arrival's
    prefill starts at once, before any clock switch could land (waiting at the lowest
    clock made that prefill the slowest of all). Each search starts from the previous
    decision's clock."""

    def __init__(
        self,
        model: IterationTimes,
        margin: float = 0.0,
        horizon: int = DEFAULT_HORIZON,
        arrivals: ArrivalModel | None = None,
    ) -> None:
        self.model = model
        self.margin = margin
        self.horizon = horizon
        self.arrivals = arrivals
        self._previous: FrequencyDecision | None = None

    def choose(self, board: Board, supported_clocks_mhz: Sequence[int]) -> ClockChoice:
        if self.arrivals is not None:
            self.arrivals.observe(board)
        if board.size == 0:
            return ClockChoice(max(supported_clocks_mhz), "empty board")
        near = self._previous.clock_index if self._previous is not None else None
        planned = board
        if self.arrivals is not None:
            pace_s = self._seconds_per_iteration(board, near)
            planned = self.arrivals.with_expected(board, pace_s)
        decision = lowest_frequency(planned, self.model, self.horizon, self.margin, near)
        self._previous = decision
        reason = "planned, lost promises renegotiated" if decision.lost else "planned"
        return ClockChoice(at_or_above(decision.clock_mhz, supported_clocks_mhz), reason, decision)

    def _seconds_per_iteration(self, board: Board, clock_index: int | None) -> float:
        """The board's iteration time now, at the last decision's clock (the highest at
        first): when an expected arrival's time falls, in iterations."""
        index = len(self.model.clocks_mhz) - 1 if clock_index is None else clock_index
        running = board.running
        kv_blocks = int(np.sum(-(-running.context_tokens // board.tokens_per_block)))
        none = np.zeros(1, dtype=np.int64)
        prepared = self.model.prepare(np.array([max(1, len(running))]), np.array([kv_blocks]),
                                      none, none)  # fmt: skip
        return float(prepared.run_seconds(index)[0])


def lowest_clock_for_iteration(
    model: IterationTimes, batch: int, kv_blocks: int, budget_s: float
) -> int:
    """The model's lowest clock whose iteration time for this batch and KV cache is within
    `budget_s` (its highest if none is): a bisection, the time falling as the clock rises."""
    none = np.zeros(1, dtype=np.int64)
    prepared = model.prepare(np.array([batch]), np.array([kv_blocks]), none, none)
    low, high = 0, len(model.clocks_mhz) - 1
    while low < high:
        middle = (low + high) // 2
        if float(prepared.run_seconds(middle)[0]) <= budget_s:
            high = middle
        else:
            low = middle + 1
    return int(model.clocks_mhz[low])

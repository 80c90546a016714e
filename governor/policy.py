"""The SLO planner as the governor's frequency policy.

Each decision reads the scoreboard, builds the board, and asks the planner for the
lowest clock at which every promise holds. Anything it cannot trust fails safe, to the
highest clock: an unreadable (or degraded, i.e. possibly stale) scoreboard, no
performance model, or entries without a predicted length (the gateway has no length
model, so nothing bounds their output). An empty board waits at the highest clock: an idle
GPU's power hardly depends on its clock, and the next arrival's prefill starts at once,
before any clock switch could land; waiting at the lowest clock made that prefill the
slowest of all (the replay showed it as most of the missed first tokens).
A promise lost even at the highest clock is renegotiated by the planner (planner.py),
not obeyed: the clock is planned for everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from gateway.state import RequestEntry, StateStore, StateStoreError
from governor.planner import (
    DEFAULT_HORIZON,
    FrequencyDecision,
    IterationTimes,
    lowest_frequency,
)
from predictor.board import Board

log = logging.getLogger(__name__)

ReadEntries = Callable[[], Awaitable[list[RequestEntry] | None]]
BoardOf = Callable[[Sequence[RequestEntry], float], Board]
ClockMapping = Callable[[int, Sequence[int]], int]


def at_or_above(model_clock_mhz: int, supported_clocks_mhz: Sequence[int]) -> int:
    """The lowest supported GPU clock at or above the model's; the highest if none is."""
    above = [clock for clock in supported_clocks_mhz if clock >= model_clock_mhz]
    return min(above) if above else max(supported_clocks_mhz)


def store_reader(store: StateStore) -> ReadEntries:
    """Entries of `store`, or None when they cannot be trusted (unreachable, degraded)."""

    async def read() -> list[RequestEntry] | None:
        try:
            snapshot = await store.snapshot()
        except StateStoreError as error:
            log.warning("governor: scoreboard unreadable, highest clock: %s", error)
            return None
        if getattr(store, "degraded", False):
            return None
        return snapshot.entries

    return read


class PlannerPolicy:
    def __init__(
        self,
        read_entries: ReadEntries,
        board_of: BoardOf,
        model: IterationTimes | None,
        clock_mapping: ClockMapping = at_or_above,
        horizon: int = DEFAULT_HORIZON,
        margin: float = 0.0,
    ) -> None:
        """`margin`: the share of every budget the planned clock keeps to spare."""
        self._read_entries = read_entries
        self._board_of = board_of
        self._model = model
        self._clock_mapping = clock_mapping
        self._horizon = horizon
        self._margin = margin
        self.last_reason = ""
        self.last_decision: FrequencyDecision | None = None
        self._previous: FrequencyDecision | None = None  # where the next search starts

    async def target_clock_mhz(self, supported_clocks_mhz: Sequence[int], now_s: float) -> int:
        highest = max(supported_clocks_mhz)
        self.last_decision = None
        if self._model is None:
            return self._because("no performance model", highest)
        try:
            entries = await self._read_entries()
        except StateStoreError as error:
            log.warning("governor: scoreboard unreadable, highest clock: %s", error)
            entries = None
        if entries is None:
            return self._because("scoreboard unreadable", highest)
        if not entries:
            return self._because("empty board", highest)
        if any(entry.predicted_tokens is None for entry in entries):
            return self._because("no length prediction", highest)
        board = self._board_of(entries, now_s)
        near = self._previous.clock_index if self._previous is not None else None
        decision = lowest_frequency(board, self._model, self._horizon, self._margin, near)
        self.last_decision = self._previous = decision
        reason = "planned, lost promises renegotiated" if decision.lost else "planned"
        return self._because(reason, self._clock_mapping(decision.clock_mhz, supported_clocks_mhz))

    def _because(self, reason: str, clock_mhz: int) -> int:
        self.last_reason = reason
        return clock_mhz

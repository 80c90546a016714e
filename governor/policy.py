"""The SLO planner as the governor's frequency policy.

Each decision reads the scoreboard, builds the board, and asks the planner
(slo_planner/clock.py) for the lowest clock at which every promise holds. Anything it
cannot trust fails safe, to the highest clock: an unreadable (or degraded, i.e. possibly
stale) scoreboard, a worker that went silent or admits without planning (slo_scoreboard/
roster.py), no performance model, or entries without a predicted length (the
gateway has no length model, so nothing bounds their output). A promise lost even at the
highest clock is renegotiated by the planner (slo_planner/feasibility.py), not obeyed:
the clock is planned for everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from slo_planner.admission import EngineShape
from slo_planner.arrivals import ArrivalModel
from slo_planner.clock import ClockPlanner
from slo_planner.feasibility import DEFAULT_HORIZON, FrequencyDecision, IterationTimes
from slo_planner.length_risk import ConformalLevel
from slo_scoreboard.board import board_of
from slo_scoreboard.roster import BoardTrust
from slo_scoreboard.store import RequestEntry, StateStore, StateStoreError

log = logging.getLogger(__name__)

ReadEntries = Callable[[], Awaitable[list[RequestEntry] | None]]


class UntrustedBoard(Exception):
    """The scoreboard answered, but may miss requests the engine holds; says why."""


def store_reader(store: StateStore, trust: BoardTrust | None = None) -> ReadEntries:
    """Entries of `store`, or None when it cannot be read (unreachable, degraded).

    With `trust` (a scoreboard shared by several workers), also the roster: raises
    `UntrustedBoard` while a worker is silent or admits without planning."""

    async def read() -> list[RequestEntry] | None:
        try:
            snapshot = await store.snapshot()
            roster = await store.roster() if trust is not None else None
        except StateStoreError as error:
            log.warning("governor: scoreboard unreadable, highest clock: %s", error)
            if trust is not None:
                trust.unreadable()
            return None
        if getattr(store, "degraded", False):
            if trust is not None:
                trust.unreadable()
            return None
        if trust is not None and roster is not None:
            why = trust.distrust(roster, (entry.worker for entry in snapshot.entries))
            if why is not None:
                raise UntrustedBoard(why)
        return snapshot.entries

    return read


class PlannerPolicy:
    def __init__(
        self,
        read_entries: ReadEntries,
        model: IterationTimes | None,
        engine: EngineShape,
        horizon: int = DEFAULT_HORIZON,
        margin: float = 0.0,
        arrivals: ArrivalModel | None = None,
        length_risk: ConformalLevel | None = None,
    ) -> None:
        """`margin`: the share of every budget the planned clock keeps to spare;
        `arrivals`: the expected arrivals it leaves room for (slo_planner/arrivals.py);
        `length_risk`: the quantile of each rest its own promises are planned on,
        calibrated on the requests that leave the board (their last token count)."""
        self._read_entries = read_entries
        self._engine = engine
        self._length_risk = length_risk
        self._on_board: dict[str, tuple[tuple[int, ...], int]] = {}
        self._planner = (
            ClockPlanner(model, margin, horizon, arrivals) if model is not None else None
        )
        self.last_reason = ""
        self.last_decision: FrequencyDecision | None = None

    async def target_clock_mhz(self, supported_clocks_mhz: Sequence[int], now_s: float) -> int:
        highest = max(supported_clocks_mhz)
        self.last_decision = None
        if self._planner is None:
            return self._because("no performance model", highest)
        try:
            entries = await self._read_entries()
        except StateStoreError as error:
            log.warning("governor: scoreboard unreadable, highest clock: %s", error)
            entries = None
        except UntrustedBoard as why:
            return self._because(str(why), highest)
        if entries is None:
            return self._because("scoreboard unreadable", highest)
        if any(entry.predicted_tokens is None for entry in entries):
            return self._because("no length prediction", highest)
        level = 0.5
        if self._length_risk is not None:
            self._learn_lengths(entries, self._length_risk)
            level = self._length_risk.level
        board = board_of(entries, now_s, self._engine, level)
        choice = self._planner.choose(board, supported_clocks_mhz)
        self.last_decision = choice.decision
        return self._because(choice.reason, choice.clock_mhz)

    def _learn_lengths(self, entries: Sequence[RequestEntry], risk: ConformalLevel) -> None:
        """Calibrate on the requests gone since the last pass: the tokens each had
        generated when last seen stand for its length (within a window's tokens)."""
        present = {entry.request_id for entry in entries}
        for request_id, (quantiles, generated) in self._on_board.items():
            if request_id not in present and generated > 0:
                risk.observe(quantiles, generated)
        self._on_board = {e.request_id: (e.length_quantiles, e.generated_tokens)
                          for e in entries if e.length_quantiles}  # fmt: skip

    def _because(self, reason: str, clock_mhz: int) -> int:
        self.last_reason = reason
        return clock_mhz

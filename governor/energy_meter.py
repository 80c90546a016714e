"""The governor's energy meter: every window, the GPUs' energy split among the requests
that ran in it (the rule: slo_planner/energy_split.py; docs/energy.md).

Each pass reads the instance's energy counter (the sum over its GPUs) and the board. A
request's work in the window is what the board shows it did since the last pass: its
new tokens, and its prompt once its first token is there; its held time is the window,
or the part of it since its arrival for one new on the board. Workers count tokens on
the board once a window, so a count may be up to a window old: it is carried forward
to the pass at the request's own pace (never more than a window's worth), since a lag
that aliases with the engine's iterations bills tokens to the wrong window's prices.
The tails of requests settled by their workers meanwhile (slo_scoreboard/
energy_ledger.py) join the window's totals, so the window's energy is split over all
the work done in it.

Idle power is the setting, per GPU, or else the lowest mean power over any stretch of
`IDLE_SPAN_S` seen (a GPU never draws less than idle; with an idle stretch before the
load, that is idle; a stretch, not a window, because energy counters advance in steps).
Until a stretch has been seen, all of the energy counts as above idle.
The first pass, and the first after a gap (an unreadable board or counter, a counter
that went backwards), only takes a baseline: a window the meter did not see whole is
billed to nobody, and the ledger refuses the energy of the requests it held.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from slo_planner.energy_split import WindowPrices, Work, price_window
from slo_scoreboard.energy_ledger import Credit, EnergyLedger
from slo_scoreboard.store import RequestEntry, StateStoreError

log = logging.getLogger(__name__)

IDLE_SPAN_S = 2.0

ReadBoard = Callable[[], Awaitable[list[RequestEntry]]]


@dataclass(frozen=True)
class _Seen:
    tokens: float
    prefilled: bool


@dataclass
class MeterTotals:
    """What the meter has billed since it started (joules), for its metrics."""

    windows: int = 0
    attributed_j: float = 0.0
    unattributed_j: float = 0.0
    gaps: int = 0


def tokens_by(entry: RequestEntry, now_s: float, most_ahead_s: float) -> float:
    """Its tokens by `now_s`: the board's count, carried forward from when it was counted
    at the pace of its answer so far (at most `most_ahead_s`, and never past max_tokens)."""
    counted = entry.generated_tokens
    first_s, counted_s = entry.first_token_s, entry.counted_s
    if first_s is None or counted_s is None or counted < 2 or counted_s <= first_s:
        return float(counted)
    pace = (counted - 1) / (counted_s - first_s)
    ahead_s = min(max(0.0, now_s - counted_s), most_ahead_s)
    return float(min(counted + pace * ahead_s, entry.max_tokens))


class EnergyMeter:
    def __init__(
        self,
        ledger: EnergyLedger,
        read_board: ReadBoard,
        prefill_weight: float,
        gpus: int,
        idle_power_w: float | None = None,
    ) -> None:
        """`idle_power_w`: per GPU; None: learned (the lowest mean power over a stretch
        of `IDLE_SPAN_S`)."""
        if prefill_weight < 0 or gpus < 1:
            raise ValueError("the prefill weight must be >= 0 and the instance have a GPU")
        self._ledger = ledger
        self._read_board = read_board
        self.prefill_weight = prefill_weight
        self._idle_power_w = None if idle_power_w is None else idle_power_w * gpus
        self._lowest_power_w = math.inf
        self._readings: deque[tuple[float, float]] = deque()  # (s, mJ) over IDLE_SPAN_S
        self._last: tuple[float, float, float, float] | None = None  # s, mJ, departed units, s
        self._seen: dict[str, _Seen] = {}
        self._carried_j = 0.0
        self.totals = MeterTotals()

    @property
    def idle_power_w(self) -> float | None:
        """The instance's idle power the meter bills by (all its GPUs)."""
        if self._idle_power_w is not None:
            return self._idle_power_w
        return self._lowest_power_w if math.isfinite(self._lowest_power_w) else None

    def _learn_idle(self, now_s: float, energy_mj: float) -> None:
        readings = self._readings
        readings.append((now_s, energy_mj))
        while len(readings) > 2 and now_s - readings[1][0] >= IDLE_SPAN_S:
            readings.popleft()
        first_s, first_mj = readings[0]
        if now_s - first_s >= IDLE_SPAN_S:
            power_w = (energy_mj - first_mj) / 1000 / (now_s - first_s)
            self._lowest_power_w = min(self._lowest_power_w, power_w)

    def gap(self) -> None:
        """A window was missed (the counter could not be read): start afresh."""
        if self._last is not None:
            self.totals.gaps += 1
        self._last = None
        self._carried_j = 0.0
        self._readings.clear()

    async def observe(self, energy_mj: float, now_s: float) -> WindowPrices | None:
        """Meter the window that ends now; its prices, or None for a baseline."""
        try:
            entries = await self._read_board()
            departed_units, departed_held_s = await self._ledger.departed_work()
        except StateStoreError as error:
            log.warning("energy meter: board or ledger unreadable, window not billed: %s", error)
            self.gap()
            return None
        last, self._last = self._last, (now_s, energy_mj, departed_units, departed_held_s)
        if last is None or now_s <= last[0] or energy_mj < last[1]:
            if last is not None and energy_mj < last[1]:
                self._readings.clear()  # the counter went back: a new origin
            self._remember(entries)
            return None
        last_s, last_mj, last_units, last_held_s = last
        duration_s, energy_j = now_s - last_s, (energy_mj - last_mj) / 1000
        self._learn_idle(now_s, energy_mj)
        credits, works = self._works(entries, last_s, now_s)
        total_units = sum(w.units(self.prefill_weight) for w in works) + max(
            0.0, departed_units - last_units
        )
        total_held_s = sum(w.held_s for w in works) + max(0.0, departed_held_s - last_held_s)
        prices = price_window(
            energy_j, duration_s, self.idle_power_w or 0.0, total_units, total_held_s,
            end_s=now_s, prefill_weight=self.prefill_weight, carried_active_j=self._carried_j,
        )  # fmt: skip
        billed = [
            Credit(request_id, prices.share(work), work.held_s, seen.tokens, seen.prefilled)
            for (request_id, seen), work in zip(credits, works, strict=True)
        ]
        try:
            await self._ledger.credit(prices, billed)
        except StateStoreError as error:
            log.warning("energy meter: ledger unwritable, window not billed: %s", error)
            self.gap()
            return None
        self._carried_j = prices.carried_active_j
        self.totals.windows += 1
        self.totals.attributed_j += energy_j - prices.unattributed_j
        self.totals.unattributed_j += prices.unattributed_j
        return prices

    def _works(
        self, entries: list[RequestEntry], last_s: float, now_s: float
    ) -> tuple[list[tuple[str, _Seen]], list[Work]]:
        seen_now, works = [], []
        for entry in entries:
            before = self._seen.get(entry.request_id)
            started = entry.first_token_s is not None
            seen_before = before.tokens if before else 0.0
            tokens = max(seen_before, tokens_by(entry, now_s, now_s - last_s))
            prefill = entry.prompt_tokens if started and not (before and before.prefilled) else 0
            held_from_s = last_s if before else min(now_s, max(last_s, entry.arrival_s))
            works.append(Work(tokens - seen_before, prefill, now_s - held_from_s))
            seen_now.append((entry.request_id, _Seen(tokens, started)))
        self._seen = dict(seen_now)
        return seen_now, works

    def _remember(self, entries: list[RequestEntry]) -> None:
        """A baseline: what the board says now, carried nowhere."""
        self._seen = {
            e.request_id: _Seen(e.generated_tokens, e.first_token_s is not None) for e in entries
        }

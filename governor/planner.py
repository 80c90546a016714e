"""The planner: is the board feasible at a clock, may a request join, what is the lowest
clock that keeps every promise. Pure functions of a board and an iteration-time model.

Feasible at a clock means, over the projected timeline (cumulative iteration times):
the KV cache never overflows; no iteration a request takes part in (after its first)
lasts longer than its TBT SLO; every queued request's first token comes within its TTFT
SLO; every request finishes by its end-to-end deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from predictor.board import Board, Requests
from predictor.projection import Projection, project

DEFAULT_HORIZON = 4096
TOLERANCE_S = 1e-9


@dataclass(frozen=True)
class PreparedTimes:
    """A projection bound to a model: iterations grouped into runs whose time is the same
    (same batch, same KV bucket, no prefill), and each run's seconds per iteration at a
    clock. The planner's per-clock work then scales with the runs, not the horizon."""

    run_starts: np.ndarray  # first iteration of each run, ascending, starting at 0
    run_seconds: Callable[[int], np.ndarray]


class IterationTimes(Protocol):
    clocks_mhz: np.ndarray  # ascending

    def prepare(
        self, batch: np.ndarray, kv_blocks: np.ndarray, prefill_tokens: np.ndarray
    ) -> PreparedTimes:
        """Bind a projection; what does not depend on the clock is done once, here."""
        ...


class _Runs:
    """The timeline's runs, and where each request's first and last token fall in them."""

    def __init__(self, prepared: PreparedTimes, horizon: int, tightest_tbt_s: np.ndarray,
                 first: np.ndarray, last: np.ndarray) -> None:  # fmt: skip
        self.seconds = prepared.run_seconds
        self.lengths = np.diff(prepared.run_starts, append=horizon)
        self.tightest_tbt_s = np.minimum.reduceat(tightest_tbt_s, prepared.run_starts) + TOLERANCE_S
        run_end = prepared.run_starts + self.lengths  # exclusive
        self.first_run = np.searchsorted(prepared.run_starts, first, side="right") - 1
        self.first_back = run_end[self.first_run] - 1 - first
        self.last_run = np.searchsorted(prepared.run_starts, last, side="right") - 1
        self.last_back = run_end[self.last_run] - 1 - last


@dataclass(frozen=True)
class CheckResult:
    """Per request (running, then queued): how much it misses by, in seconds; <= 0 is met."""

    clock_index: int
    kv_overflow_blocks: int  # the worst excess over capacity; 0 if it fits
    kv_overflow_iteration: int | None
    ttft_miss_s: np.ndarray
    tbt_miss_s: np.ndarray
    e2e_miss_s: np.ndarray

    @property
    def worst_miss_s(self) -> np.ndarray:
        return np.maximum(np.maximum(self.ttft_miss_s, self.tbt_miss_s), self.e2e_miss_s)

    @property
    def missing(self) -> np.ndarray:
        """Indices of the requests that miss a promise."""
        return np.nonzero(self.worst_miss_s > TOLERANCE_S)[0]

    @property
    def feasible(self) -> bool:
        return self.kv_overflow_blocks == 0 and not len(self.missing)


class _Timeline:
    """What does not depend on the clock, computed once per board."""

    def __init__(self, board: Board, horizon: int) -> None:
        running, queued = board.running, board.queued
        self.board = board
        self.running = len(board.running)
        needed = int(np.max(board.running.remaining_tokens, initial=1))
        needed = max(needed, int(np.sum(board.queued.remaining_tokens)) + needed)
        self.projection: Projection = project(board, max(1, min(horizon, needed)))
        p = self.projection
        overflow = p.kv_blocks - board.kv_capacity_blocks
        self.kv_overflow_blocks = int(max(0, overflow.max(initial=0)))
        self.kv_overflow_iteration = int(np.argmax(overflow)) if self.kv_overflow_blocks else None
        # A queued request's first iteration (its prefill) counts for TTFT, not TBT.
        self.tbt_from = p.start.copy()
        self.tbt_from[self.running :] += 1
        # Running requests have had their first token.
        self.ttft_deadline_s = np.concatenate(
            [np.full(self.running, np.inf), queued.arrival_s + queued.ttft_slo_s]
        )
        self.tbt_slo_s = np.concatenate([running.tbt_slo_s, queued.tbt_slo_s])
        self.e2e_deadline_s = np.concatenate([running.e2e_deadline_s, queued.e2e_deadline_s])
        self.tightest_tbt_s = self._tightest_tbt()
        self._ttft_tolerant = self.ttft_deadline_s + TOLERANCE_S
        self._e2e_tolerant = self.e2e_deadline_s + TOLERANCE_S
        last = p.horizon - 1
        self._start_inside, self._start_beyond = (
            np.minimum(p.start, last),
            np.maximum(p.start - last, 0),
        )
        self._end_inside, self._end_beyond = (
            np.minimum(p.end - 1, last),
            np.maximum(p.end - 1 - last, 0),
        )
        self._runs: tuple[IterationTimes, _Runs] | None = None

    def _tightest_tbt(self) -> np.ndarray:
        """Per iteration, the smallest TBT SLO among the requests it serves."""
        horizon = self.projection.horizon
        lo = np.minimum(self.tbt_from, horizon)
        hi = np.minimum(self.projection.end, horizon)
        slo_s = self.tbt_slo_s
        if not len(slo_s) or slo_s.min() == slo_s.max():  # one SLO for all: the usual case
            # The batch, less the queued requests whose prefill this iteration is.
            queued_start = np.minimum(self.projection.start[self.running :], horizon)
            starting = np.bincount(queued_start, minlength=horizon + 1)[:horizon]
            serving = self.projection.batch - starting
            return np.where(serving > 0, slo_s[0] if len(slo_s) else np.inf, np.inf)
        tightest = np.full(horizon, np.inf)
        for slo in np.unique(slo_s):
            mine = slo_s == slo
            delta = np.bincount(lo[mine], minlength=horizon + 1) - np.bincount(
                hi[mine], minlength=horizon + 1
            )
            covered = np.cumsum(delta[:horizon]) > 0
            tightest[covered] = np.minimum(tightest[covered], slo)
        return tightest

    def _runs_for(self, model: IterationTimes) -> _Runs:
        if self._runs is None or self._runs[0] is not model:
            p = self.projection
            prepared = model.prepare(p.batch, p.kv_blocks, p.prefill_tokens)
            runs = _Runs(
                prepared, p.horizon, self.tightest_tbt_s, self._start_inside, self._end_inside
            )
            self._runs = (model, runs)
        return self._runs[1]

    def times(self, model: IterationTimes, clock_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Seconds of each iteration, and when each ends."""
        runs = self._runs_for(model)
        seconds = np.repeat(runs.seconds(clock_index), runs.lengths)
        return seconds, self.board.now_s + np.cumsum(seconds)

    def token_times(
        self, seconds: np.ndarray, done_s: np.ndarray, iterations: np.ndarray
    ) -> np.ndarray:
        """When iteration `iterations` ends; past the horizon, at the last iteration's pace."""
        horizon = len(seconds)
        inside = np.minimum(iterations, horizon - 1)
        beyond = np.maximum(iterations - (horizon - 1), 0)
        return done_s[inside] + beyond * seconds[-1]

    def feasible(self, model: IterationTimes, clock_index: int) -> bool:
        """The same verdict as `check(...).feasible`, computed per run of equal iterations."""
        if self.kv_overflow_blocks:
            return False
        runs = self._runs_for(model)
        seconds = runs.seconds(clock_index)
        if (seconds > runs.tightest_tbt_s).any():
            return False
        run_done_s = self.board.now_s + np.cumsum(seconds * runs.lengths)
        last = seconds[-1]
        queued = slice(self.running, None)  # running requests have had their first token
        first_run = runs.first_run[queued]
        first_s = (run_done_s[first_run] - runs.first_back[queued] * seconds[first_run]
                   + self._start_beyond[queued] * last)  # fmt: skip
        if (first_s > self._ttft_tolerant[queued]).any():
            return False
        last_s = (run_done_s[runs.last_run] - runs.last_back * seconds[runs.last_run]
                  + self._end_beyond * last)  # fmt: skip
        return not (last_s > self._e2e_tolerant).any()

    def check(self, model: IterationTimes, clock_index: int) -> CheckResult:
        seconds, done_s = self.times(model, clock_index)
        p = self.projection
        first_s = self.token_times(seconds, done_s, p.start)
        last_s = self.token_times(seconds, done_s, p.end - 1)
        longest_s = _range_max(
            seconds, np.minimum(self.tbt_from, p.horizon), np.minimum(p.end, p.horizon)
        )
        return CheckResult(
            clock_index=clock_index,
            kv_overflow_blocks=self.kv_overflow_blocks,
            kv_overflow_iteration=self.kv_overflow_iteration,
            ttft_miss_s=first_s - self.ttft_deadline_s,
            tbt_miss_s=np.where(longest_s > 0, longest_s - self.tbt_slo_s, -np.inf),
            e2e_miss_s=last_s - self.e2e_deadline_s,
        )


def _range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """max(values[lo:hi]) per pair (0 for an empty range), via a sparse table."""
    levels = [values]
    while (1 << len(levels)) <= len(values):
        previous, width = levels[-1], 1 << (len(levels) - 1)
        levels.append(np.maximum(previous[:-width], previous[width:]))
    length = hi - lo
    result = np.zeros(len(lo))
    valid = length > 0
    k = np.floor(np.log2(np.maximum(length[valid], 1))).astype(np.int64)
    lo_v, hi_v = lo[valid], hi[valid]
    out = np.empty(int(valid.sum()))
    for level in np.unique(k):
        at = k == level
        table = levels[level]
        out[at] = np.maximum(table[lo_v[at]], table[hi_v[at] - (1 << level)])
    result[valid] = out
    return result


def check(
    board: Board, model: IterationTimes, clock_index: int, horizon: int = DEFAULT_HORIZON
) -> CheckResult:
    return _Timeline(board, horizon).check(model, clock_index)


@dataclass(frozen=True)
class FrequencyDecision:
    clock_index: int
    clock_mhz: int
    lost: bool  # someone misses even at the highest clock, so the highest it is


def lowest_frequency(
    board: Board, model: IterationTimes, horizon: int = DEFAULT_HORIZON
) -> FrequencyDecision:
    """Binary search over the clocks for the lowest at which the board is feasible
    (feasibility is monotone in the clock: a faster clock never makes an iteration slower)."""
    timeline = _Timeline(board, horizon)
    top = len(model.clocks_mhz) - 1
    if not timeline.feasible(model, top):
        return FrequencyDecision(top, int(model.clocks_mhz[top]), lost=True)
    low, high = 0, top  # high is feasible
    while low < high:
        middle = (low + high) // 2
        if timeline.feasible(model, middle):
            high = middle
        else:
            low = middle + 1
    return FrequencyDecision(high, int(model.clocks_mhz[high]), lost=False)


@dataclass(frozen=True)
class AdmitDecision:
    admit: bool
    reason: str
    with_request: CheckResult | None  # who would miss what; None when nobody would


def admit(
    board: Board, request: Requests, model: IterationTimes, horizon: int = DEFAULT_HORIZON
) -> AdmitDecision:
    """Admit `request` (one queued row) if, at the highest clock, it keeps its own promises
    and nobody already admitted misses anything it was not already missing."""
    top = len(model.clocks_mhz) - 1
    candidate = _Timeline(board.with_queued(request), horizon)
    if candidate.feasible(model, top):  # the common case: nobody misses, so nobody is hurt
        return AdmitDecision(True, "every promise holds", None)
    after = candidate.check(model, top)
    worst = after.worst_miss_s
    if worst[-1] > TOLERANCE_S:
        return AdmitDecision(
            False, f"it would miss its own SLO by {worst[-1] * 1000:.1f} ms", after
        )
    before = _Timeline(board, horizon).check(model, top)
    if after.kv_overflow_blocks > before.kv_overflow_blocks:
        return AdmitDecision(False, "the KV cache would overflow", after)
    allowed = np.maximum(before.worst_miss_s, 0.0) + TOLERANCE_S
    hurt = np.nonzero(worst[:-1] > allowed)[0]
    if len(hurt):
        return AdmitDecision(False, f"{len(hurt)} admitted request(s) would miss", after)
    return AdmitDecision(True, "every promise holds", after)

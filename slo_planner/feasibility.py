"""The planner: is the board feasible at a clock, may a request join, what is the lowest
clock that keeps every promise. Pure functions of a board and an iteration-time model.

Feasible at a clock means, over the projected timeline (cumulative iteration times):
the KV cache never overflows; every queued request's first token comes within its TTFT
SLO; the mean time between each request's tokens still to come stays within its TBT
SLO (time per output token, as `x-slo-tpot-ms` means it: one long iteration, such as
another request's prefill, spreads over the whole answer); every request finishes by
its end-to-end deadline.

Lost promises. A promise that cannot be kept even at the highest clock (a long answer
under a short end-to-end deadline, a request that waited too long) is renegotiated
rather than obeyed: its limit moves `LOST_PROMISE_SLACK` of its budget past the original,
or to what the highest clock achieves if that is later. The bound is fixed by the
original promise, so it does not drift as the request runs (a bound recomputed from the
highest clock at every decision moved later each time the clock was planned below it).
The clock search keeps every other promise exactly, and the lost one within that bound;
admission holds a newcomer back only for promises still keepable, since a lost one is
missed either way. The paper instead holds the highest clock while anything is lost,
and one hopeless request in a busy engine then pins the clock and, through admission,
holds back everyone behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from predictor.arrays import FloatArray, IntArray
from predictor.board import Board, Requests
from predictor.projection import Projection, project

DEFAULT_HORIZON = 4096
TOLERANCE_S = 1e-9
LOST_PROMISE_SLACK = 0.1  # a lost promise may slip this share of its budget past the best


@dataclass(frozen=True)
class PreparedTimes:
    """A projection bound to a model: iterations grouped into runs whose time is the same
    (same batch, same KV bucket, no prefill), and each run's seconds per iteration at a
    clock. The planner's per-clock work then scales with the runs, not the horizon."""

    run_starts: IntArray  # first iteration of each run, ascending, starting at 0
    run_seconds: Callable[[int], FloatArray]


class IterationTimes(Protocol):
    clocks_mhz: IntArray  # ascending

    def prepare(
        self,
        batch: IntArray,
        kv_blocks: IntArray,
        prefill_tokens: IntArray,
        prefill_square_tokens: IntArray,
    ) -> PreparedTimes:
        """Bind a projection (per iteration: requests, KV blocks, prefilled tokens and the
        sum of each prefilled context's square, for attention); what does not depend on
        the clock is done once, here."""
        ...


class _Runs:
    """The timeline's runs, and where each request's first and last token fall in them."""

    def __init__(
        self, prepared: PreparedTimes, horizon: int, first: IntArray, last: IntArray
    ) -> None:
        self.seconds = prepared.run_seconds
        self.starts = prepared.run_starts
        self.lengths = np.diff(prepared.run_starts, append=horizon)
        run_end = prepared.run_starts + self.lengths  # exclusive
        self.ends = run_end
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
    ttft_miss_s: FloatArray
    tbt_miss_s: FloatArray
    e2e_miss_s: FloatArray

    @property
    def worst_miss_s(self) -> FloatArray:
        return np.maximum(np.maximum(self.ttft_miss_s, self.tbt_miss_s), self.e2e_miss_s)

    @property
    def missing(self) -> IntArray:
        """Indices of the requests that miss a promise."""
        return np.nonzero(self.worst_miss_s > TOLERANCE_S)[0]

    @property
    def feasible(self) -> bool:
        return self.kv_overflow_blocks == 0 and not len(self.missing)


class _Timeline:
    """What does not depend on the clock, computed once per board."""

    def __init__(self, board: Board, horizon: int, same_work_as: _Timeline | None = None) -> None:
        """`same_work_as`: a timeline of a board that differs from this one only in its
        promises, whose projection (and its binding to a model) is then reused."""
        running, queued = board.running, board.queued
        self.board = board
        self.running = len(board.running)
        self.expected = slice(board.size - board.expected_rows, board.size)
        self._top: tuple[_Runs, FloatArray, FloatArray] | None = None
        self._runs: tuple[IterationTimes, _Runs] | None = None
        self._verdicts: tuple[IterationTimes | None, dict[int, bool]] = (None, {})
        if same_work_as is not None:
            self.projection: Projection = same_work_as.projection
            self._runs = same_work_as._runs
        else:
            # Enough iterations for everyone to end: the longest running one, then every
            # queued one in turn, from the latest any may start.
            needed = (int(np.max(board.running.remaining_tokens, initial=1))
                      + int(np.sum(queued.remaining_tokens))
                      + int(np.max(queued.earliest_start, initial=0)))  # fmt: skip
            projected = project(board, max(1, min(horizon, needed)))
            last_end = int(np.max(projected.end, initial=0))
            if projected.horizon < min(horizon, last_end):  # pauses ran some past the bound
                projected = project(board, min(horizon, last_end))
            self.projection = _until_idle(projected)
        p = self.projection
        overflow = p.kv_blocks - board.kv_capacity_blocks
        self.kv_overflow_blocks = int(max(0, overflow.max(initial=0)))
        self.kv_overflow_iteration = int(np.argmax(overflow)) if self.kv_overflow_blocks else None
        # Gaps between the tokens still to come: a running request's next token follows
        # its last one (now); a queued request's first token (its prefill) opens its gaps.
        # Its own promises are judged at its rest's planning quantile: its last token
        # comes that many iterations later than the projection's expected end.
        risk = np.concatenate([running.remaining_at_risk_tokens - running.remaining_tokens,
                               queued.remaining_at_risk_tokens - queued.remaining_tokens])  # fmt: skip
        self.last_token = p.end - 1 + np.maximum(risk, 0)
        self.tbt_gaps = (self.last_token + 1 - p.start).astype(np.float64)
        self.tbt_gaps[self.running :] -= 1
        self._has_gaps = self.tbt_gaps > 0
        self._gaps_or_one = np.maximum(self.tbt_gaps, 1.0)
        # Running requests have had their first token.
        self.ttft_deadline_s = np.concatenate(
            [np.full(self.running, np.inf), queued.arrival_s + queued.ttft_slo_s]
        )
        self.tbt_slo_s = np.concatenate([running.tbt_slo_s, queued.tbt_slo_s])
        self.e2e_deadline_s = np.concatenate([running.e2e_deadline_s, queued.e2e_deadline_s])
        self._ttft_tolerant = self.ttft_deadline_s + TOLERANCE_S
        self._e2e_tolerant = self.e2e_deadline_s + TOLERANCE_S
        last = p.horizon - 1
        self._start_inside, self._start_beyond = (
            np.minimum(p.start, last),
            np.maximum(p.start - last, 0),
        )
        self._end_inside, self._end_beyond = (
            np.minimum(self.last_token, last),
            np.maximum(self.last_token - last, 0),
        )

    def _runs_for(self, model: IterationTimes) -> _Runs:
        if self._runs is None or self._runs[0] is not model:
            p = self.projection
            prepared = model.prepare(p.batch, p.kv_blocks, p.prefill_tokens,
                                     p.prefill_square_tokens)  # fmt: skip
            runs = _Runs(prepared, p.horizon, self._start_inside, self._end_inside)
            self._runs = (model, runs)
        return self._runs[1]

    def times(self, model: IterationTimes, clock_index: int) -> tuple[FloatArray, FloatArray]:
        """Seconds of each iteration, and when each ends."""
        runs = self._runs_for(model)
        seconds = np.repeat(runs.seconds(clock_index), runs.lengths)
        return seconds, self.board.now_s + np.cumsum(seconds)

    def token_times(
        self, seconds: FloatArray, done_s: FloatArray, iterations: IntArray
    ) -> FloatArray:
        """When iteration `iterations` ends; past the horizon, at the last iteration's pace."""
        horizon = len(seconds)
        inside: IntArray = np.minimum(iterations, horizon - 1)
        beyond = np.maximum(iterations - (horizon - 1), 0)
        pace: np.float64 = seconds[-1]
        return done_s[inside] + beyond * pace

    def feasible(self, model: IterationTimes, clock_index: int) -> bool:
        """The same verdict as `check(...).feasible`, computed per run of equal iterations;
        each clock's verdict once (a search asks the highest clock more than once)."""
        if self.kv_overflow_blocks:
            return False
        if self._verdicts[0] is not model:
            self._verdicts = (model, {})
        verdicts = self._verdicts[1]
        if clock_index not in verdicts:
            verdicts[clock_index] = self._feasible(model, clock_index)
        return verdicts[clock_index]

    def _feasible(self, model: IterationTimes, clock_index: int) -> bool:
        runs = self._runs_for(model)
        seconds = runs.seconds(clock_index)
        run_done_s = self.board.now_s + np.cumsum(seconds * runs.lengths)
        last = seconds[-1]
        queued = slice(self.running, None)  # running requests have had their first token
        first_run = runs.first_run[queued]
        first_s = (run_done_s[first_run] - runs.first_back[queued] * seconds[first_run]
                   + self._start_beyond[queued] * last)  # fmt: skip
        last_s = (run_done_s[runs.last_run] - runs.last_back * seconds[runs.last_run]
                  + self._end_beyond * last)  # fmt: skip
        self._serve_expected_at_top(model, clock_index, runs, seconds, run_done_s,
                                    first_s, last_s)  # fmt: skip
        if (first_s > self._ttft_tolerant[queued]).any():
            return False
        if (last_s > self._e2e_tolerant).any():
            return False
        return not (self._tbt_miss_s(first_s, last_s) > TOLERANCE_S).any()

    def _serve_expected_at_top(self, model: IterationTimes, clock_index: int, runs: _Runs,
                               seconds: FloatArray, run_done_s: FloatArray,
                               queued_first_s: FloatArray, last_s: FloatArray) -> None:  # fmt: skip
        """Rewrite the expected arrivals' first and last token times (in place): the
        iterations before each one's arrival run at `clock_index`, those from then on at
        the highest clock, to which the governor moves when the board needs it. Each is
        served from the first iteration after its arrival at this clock, or, if the
        projection had it wait past its `earliest_start` for a slot or a reservation,
        from when that frees: its `earliest_start` was only estimated at the engine's
        present pace, and a lower clock reaches the arrival in fewer iterations."""
        rows = self.expected
        top = len(model.clocks_mhz) - 1
        if rows.start == rows.stop:
            return
        top_seconds, top_done_s = self._top_pace(model, runs, top)
        arrival_s = self.board.queued.arrival_s[rows.start - self.running :]
        # The first iteration at the highest clock: the first to start after the arrival.
        ended = np.searchsorted(run_done_s, arrival_s, side="right")  # runs over by then
        run = np.minimum(ended, len(run_done_s) - 1)
        before_s = np.where(ended > 0, run_done_s[np.maximum(ended - 1, 0)], self.board.now_s)
        per_iteration_s = np.maximum(seconds[run], 1e-9)  # an empty iteration takes no time
        into = np.ceil((arrival_s - before_s) / per_iteration_s - TOLERANCE_S)
        into = np.minimum(np.maximum(into, 0), 2**40).astype(np.int64)
        inside = ended < len(run_done_s)
        switch = np.where(inside, runs.starts[run] + np.minimum(into, runs.lengths[run]),
                          self.projection.horizon + into)  # fmt: skip
        p = self.projection
        start, earliest = (
            p.start[rows],
            self.board.queued.earliest_start[rows.start - self.running :],
        )
        # Waiting for a slot or a reservation ends at an iteration, whatever the clock;
        # one that waited for nothing but its estimated arrival starts at the real one.
        first = np.where(start > earliest, np.maximum(start, switch), switch)
        last = self.last_token[rows] + first - start
        # When the switch, the first and the last iterations end, at both paces at once.
        count = len(switch)
        iterations = np.concatenate([switch - 1, first, last])
        slow_s = self._end_s(runs, seconds, run_done_s, iterations)
        fast_s = self._end_s(runs, top_seconds, top_done_s, iterations)
        switch_s, top_switch_s = slow_s[:count], fast_s[:count]
        two_speed_s = switch_s + fast_s[count:].reshape(2, count) - top_switch_s
        queued_first_s[rows.start - self.running :] = two_speed_s[0]
        last_s[rows] = two_speed_s[1]

    def _top_pace(
        self, model: IterationTimes, runs: _Runs, top: int
    ) -> tuple[FloatArray, FloatArray]:
        """Each run's seconds per iteration at the highest clock, and when each ends."""
        if self._top is None or self._top[0] is not runs:
            top_seconds = runs.seconds(top)
            self._top = (
                runs,
                top_seconds,
                self.board.now_s + np.cumsum(top_seconds * runs.lengths),
            )
        return self._top[1], self._top[2]

    def _end_s(self, runs: _Runs, seconds: FloatArray, run_done_s: FloatArray,
               iterations: IntArray) -> FloatArray:  # fmt: skip
        """When each iteration ends (-1: now); past the horizon, at the last one's pace."""
        last = self.projection.horizon - 1
        inside = np.minimum(np.maximum(iterations, 0), last)
        run = np.searchsorted(runs.starts, inside, side="right") - 1
        ended_s = (run_done_s[run] - (runs.ends[run] - 1 - inside) * seconds[run]
                   + np.maximum(iterations - last, 0) * seconds[-1])  # fmt: skip
        at_s: FloatArray = np.where(iterations < 0, self.board.now_s, ended_s)
        return at_s

    def _tbt_miss_s(self, queued_first_s: FloatArray, last_s: FloatArray) -> FloatArray:
        """Mean gap over the tokens still to come, less the TBT SLO (-inf: no gap left)."""
        opened_s = np.concatenate([np.full(self.running, self.board.now_s), queued_first_s])
        mean_gap_s = (last_s - opened_s) / self._gaps_or_one
        return np.where(self._has_gaps, mean_gap_s - self.tbt_slo_s, -np.inf)

    def check(self, model: IterationTimes, clock_index: int) -> CheckResult:
        seconds, done_s = self.times(model, clock_index)
        p = self.projection
        first_s = self.token_times(seconds, done_s, p.start)
        last_s = self.token_times(seconds, done_s, self.last_token)
        if self.board.expected_rows:
            runs = self._runs_for(model)
            run_seconds = runs.seconds(clock_index)
            run_done_s = self.board.now_s + np.cumsum(run_seconds * runs.lengths)
            queued_first_s = first_s[self.running :]  # a view: rewritten in place
            self._serve_expected_at_top(model, clock_index, runs, run_seconds, run_done_s,
                                        queued_first_s, last_s)  # fmt: skip
        return CheckResult(
            clock_index=clock_index,
            kv_overflow_blocks=self.kv_overflow_blocks,
            kv_overflow_iteration=self.kv_overflow_iteration,
            ttft_miss_s=first_s - self.ttft_deadline_s,
            tbt_miss_s=self._tbt_miss_s(first_s[self.running :], last_s),
            e2e_miss_s=last_s - self.e2e_deadline_s,
        )


def _until_idle(projection: Projection) -> Projection:
    """The projection up to its last busy iteration: a last token planned past it (a
    long answer's risk) comes at the pace of the last busy one, not of an idle engine."""
    busy = np.flatnonzero(projection.batch > 0)
    if not len(busy) or busy[-1] + 1 == projection.horizon:
        return projection
    last = int(busy[-1]) + 1
    return replace(projection, batch=projection.batch[:last],
                   kv_blocks=projection.kv_blocks[:last],
                   prefill_tokens=projection.prefill_tokens[:last],
                   prefill_square_tokens=projection.prefill_square_tokens[:last])  # fmt: skip


def check(
    board: Board, model: IterationTimes, clock_index: int, horizon: int = DEFAULT_HORIZON
) -> CheckResult:
    return _Timeline(board, horizon).check(model, clock_index)


def renegotiated(board: Board, at_top: CheckResult) -> Board:
    """The board with every promise `at_top` (a check at the highest clock) says is lost
    moved LOST_PROMISE_SLACK of its budget past the original, or to what that clock
    achieves if later."""
    rows = len(board.running)

    def relaxed(part: Requests, span: slice) -> Requests:
        ttft_miss, tbt_miss, e2e_miss = (
            np.maximum(miss[span], 0.0) for miss in (at_top.ttft_miss_s, at_top.tbt_miss_s,
                                                     at_top.e2e_miss_s)
        )  # fmt: skip
        e2e_budget_s = part.e2e_deadline_s - part.arrival_s
        return replace(
            part,
            ttft_slo_s=_moved(part.ttft_slo_s, ttft_miss, part.ttft_slo_s),
            tbt_slo_s=_moved(part.tbt_slo_s, tbt_miss, part.tbt_slo_s),
            e2e_deadline_s=_moved(part.e2e_deadline_s, e2e_miss, e2e_budget_s),
        )

    return replace(
        board,
        running=relaxed(board.running, slice(0, rows)),
        queued=relaxed(board.queued, slice(rows, None)),
    )


def _moved(limit: FloatArray, miss: FloatArray, budget: FloatArray) -> FloatArray:
    lost = miss > TOLERANCE_S
    return np.where(lost, limit + np.maximum(miss, LOST_PROMISE_SLACK * budget), limit)


def with_margin(board: Board, margin: float) -> Board:
    """The board with every promise tightened to (1 - margin) of its budget.

    The clock is planned on this board and admission on the real one: a clock that
    keeps every promise with exactly nothing to spare leaves no room for the next
    arrival even at the highest clock, and it would wait for its first token."""
    if margin <= 0:
        return board
    keep = 1.0 - margin

    def tightened(part: Requests) -> Requests:
        return replace(
            part,
            ttft_slo_s=part.ttft_slo_s * keep,
            tbt_slo_s=part.tbt_slo_s * keep,
            e2e_deadline_s=part.arrival_s + (part.e2e_deadline_s - part.arrival_s) * keep,
        )

    return replace(board, running=tightened(board.running), queued=tightened(board.queued))


def _margin_where(board: Board, tight: Board, keep_margin: npt.NDArray[np.bool_]) -> Board:
    """`tight` (`board` with_margin) for the requests (running, then queued) where
    `keep_margin` is set; the others keep their real promises."""
    rows = len(board.running)

    def chosen(real: Requests, tightened: Requests, mask: npt.NDArray[np.bool_]) -> Requests:
        return replace(
            real,
            ttft_slo_s=np.where(mask, tightened.ttft_slo_s, real.ttft_slo_s),
            tbt_slo_s=np.where(mask, tightened.tbt_slo_s, real.tbt_slo_s),
            e2e_deadline_s=np.where(mask, tightened.e2e_deadline_s, real.e2e_deadline_s),
        )

    return replace(
        board,
        running=chosen(board.running, tight.running, keep_margin[:rows]),
        queued=chosen(board.queued, tight.queued, keep_margin[rows:]),
    )


@dataclass(frozen=True)
class FrequencyDecision:
    clock_index: int
    clock_mhz: int
    lost: bool  # someone misses even at the highest clock: their promises were renegotiated


def lowest_frequency(
    board: Board,
    model: IterationTimes,
    horizon: int = DEFAULT_HORIZON,
    margin: float = 0.0,
    near_index: int | None = None,
) -> FrequencyDecision:
    """Binary search over the clocks for the lowest at which the board is feasible
    (feasibility is monotone in the clock: a faster clock never makes an iteration slower),
    after renegotiating the promises lost even at the highest clock. A KV overflow cannot
    be renegotiated: it gets the highest clock.

    With a `margin`, every promise is planned `with_margin`, except one the highest clock
    can keep only without its margin: that one is planned on its real budget. Only a promise
    lost on its real budget is renegotiated.

    `near_index` (the last decision's clock) makes the search faster: the answer rarely
    moves far between two decisions, so the search starts from there. With a model that is
    monotone in the clock it finds the same clock as the plain search; a learned model is
    only nearly so, and where the search starts can then move the answer by a step."""
    top = len(model.clocks_mhz) - 1
    timeline = _Timeline(with_margin(board, margin), horizon)
    if timeline.kv_overflow_blocks:  # the same at every clock
        return FrequencyDecision(top, int(model.clocks_mhz[top]), lost=True)
    if margin > 0 and not timeline.feasible(model, top):
        short = timeline.check(model, top).worst_miss_s > TOLERANCE_S
        timeline = _Timeline(_margin_where(board, timeline.board, ~short), horizon, timeline)
    lost = not timeline.feasible(model, top)
    if lost:
        at_top = timeline.check(model, top)
        timeline = _Timeline(renegotiated(timeline.board, at_top), horizon, timeline)
        if not timeline.feasible(model, top):  # only rounding could get here
            return FrequencyDecision(top, int(model.clocks_mhz[top]), lost=True)
    low, high = _bracket(timeline, model, top, near_index)
    while low < high:  # high is feasible, everything below low is not
        middle = (low + high) // 2
        if timeline.feasible(model, middle):
            high = middle
        else:
            low = middle + 1
    return FrequencyDecision(high, int(model.clocks_mhz[high]), lost=lost)


def _bracket(
    timeline: _Timeline, model: IterationTimes, top: int, near: int | None
) -> tuple[int, int]:
    """(low, high) with high feasible and every clock below low infeasible: the whole
    range, or, from a hint, a range that grows by doubling steps away from it."""
    if near is None or not 0 <= near < top:
        return 0, top
    step = 1
    if timeline.feasible(model, near):
        high = near
        while high > 0:
            below = max(0, high - step)
            if not timeline.feasible(model, below):
                return below + 1, high
            high, step = below, step * 2
        return 0, 0
    low = near + 1
    while low < top:
        above = min(top, low + step - 1)
        if timeline.feasible(model, above):
            return low, above
        low, step = above + 1, step * 2
    return top, top


@dataclass(frozen=True)
class AdmitDecision:
    admit: bool
    reason: str
    with_request: CheckResult | None  # who would miss what; None when nobody would


def admit(
    board: Board,
    request: Requests,
    model: IterationTimes,
    horizon: int = DEFAULT_HORIZON,
    hold_s: float = 0.0,
) -> AdmitDecision:
    """Admit `request` (one queued row) if, at the highest clock, it keeps its own promises
    and every admitted promise still keepable stays kept (one already lost is missed
    either way; the clock search bounds how late it runs).

    One that would hurt an admitted request is held, unless holding it `hold_s` more
    (until the gate tries again) would cost it its own first token: no request waits
    past its budget for another's sake. Held or sent, one of them may miss; the one
    already admitted was promised first, but not at the price of a newcomer's whole
    TTFT budget spent waiting in the gateway."""
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
    keepable = np.ones(len(worst) - 1, dtype=bool)
    keepable[before.missing] = False
    hurt = np.nonzero((worst[:-1] > TOLERANCE_S) & keepable)[0]
    if not len(hurt):
        return AdmitDecision(True, "every promise holds", after)
    if hold_s > 0 and _first_token_lost_by_waiting(board, request, model, horizon, hold_s):
        return AdmitDecision(True, "its last chance to keep its own first token", after)
    return AdmitDecision(False, f"{len(hurt)} admitted request(s) would miss", after)


def _first_token_lost_by_waiting(board: Board, request: Requests, model: IterationTimes,
                                 horizon: int, hold_s: float) -> bool:  # fmt: skip
    """Whether `request`, sent `hold_s` later onto the same board, would miss its TTFT
    at the highest clock (the board's own progress meanwhile is not counted: it can
    only free a slot sooner, which the next try sees)."""
    later = replace(request, ttft_slo_s=request.ttft_slo_s - hold_s)
    top = len(model.clocks_mhz) - 1
    waited = _Timeline(board.with_queued(later), horizon).check(model, top)
    return bool(waited.ttft_miss_s[-1] > TOLERANCE_S)

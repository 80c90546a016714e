"""The work still to come: the requests expected to arrive over the next seconds.

The clock planned for the requests already on the board alone runs the engine just in
time: near capacity it is full when the next request arrives, and that one waits
behind a slow batch and misses its first token even at the highest clock. So the clock
is planned on the board plus the arrivals expected over a horizon; admission still
judges real requests only.

What is expected comes from what was seen: each board the planner is shown reveals the
requests that arrived since the last (those whose arrival is later than any seen
before). Their count over the last `RATE_WINDOW_S` gives the rate, and the last
`MIX_SIZE` of them the mix of prompts, lengths, limits and promises. The expected
arrivals are a quantile of the count over the horizon: of a Poisson count at that rate,
or, if larger, of the counts seen in spans of one horizon over the last
`BURST_WINDOW_S` (traces come in bursts a Poisson process does not have), evenly
spaced over it, each a request of the mix at evenly spaced quantiles of its length (so
a few stand for the mix, not for its median). None may start before the iteration in
which it arrives (at the engine's present pace): one planned as if present now would
slow the real requests with work that is not there yet. Each is queued behind the real
requests with its own promises counted from its expected arrival, and planned to be
served from then on at the highest clock: the governor re-plans when it really comes, so the clock now needs
only to keep its promises possible then, not to keep them at the clock chosen now.
At low load the expected requests start at once in free slots, long before their
deadlines, and cost nothing.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from predictor.arrays import IntArray
from predictor.board import Board, Requests

RATE_WINDOW_S = 10.0  # short enough to follow a burst, long enough to see one
MIX_SIZE = 256
BURST_WINDOW_S = 60.0  # the recent past whose bursts the count must cover
MIN_SPAN_S = 5.0  # the rate is never measured over less, so one arrival is not a burst


@dataclass(frozen=True)
class _Seen:
    prompt_tokens: int
    length_tokens: int  # believed when first seen: generated + remaining
    max_tokens: int
    ttft_slo_s: float
    tbt_slo_s: float
    e2e_budget_s: float


class ArrivalModel:
    def __init__(self, horizon_s: float, count_quantile: float = 0.5) -> None:
        """`count_quantile`: plan for this quantile of the count of arrivals over the
        horizon, of a Poisson process at the measured rate or, if more, of the counts
        seen over spans of one horizon lately."""
        self.horizon_s = horizon_s
        self.count_quantile = count_quantile
        self._last_arrival_s = -math.inf
        self._first_seen_s: float | None = None
        self._arrivals_s: deque[float] = deque()
        self._mix: deque[_Seen] = deque(maxlen=MIX_SIZE)
        self._by_length: list[_Seen] | None = None  # the mix sorted, until it changes

    def observe(self, board: Board) -> None:
        """Take note of the requests on `board` that arrived since the last one shown."""
        if self._first_seen_s is None:
            self._first_seen_s = board.now_s
        for part in (board.running, board.queued):
            fresh = np.flatnonzero(part.arrival_s > self._last_arrival_s)
            for row in fresh[np.argsort(part.arrival_s[fresh], kind="stable")]:
                self._note(part, int(row))
        kept_s = max(RATE_WINDOW_S, BURST_WINDOW_S)
        while self._arrivals_s and self._arrivals_s[0] < board.now_s - kept_s:
            self._arrivals_s.popleft()

    def _note(self, part: Requests, row: int) -> None:
        arrival_s = float(part.arrival_s[row])
        self._last_arrival_s = max(self._last_arrival_s, arrival_s)
        self._arrivals_s.append(arrival_s)
        self._by_length = None
        self._mix.append(_Seen(
            prompt_tokens=int(part.prompt_tokens[row]),
            length_tokens=int(part.generated_tokens[row] + part.remaining_tokens[row]),
            max_tokens=int(part.max_tokens[row]),
            ttft_slo_s=float(part.ttft_slo_s[row]),
            tbt_slo_s=float(part.tbt_slo_s[row]),
            e2e_budget_s=float(part.e2e_deadline_s[row] - arrival_s),
        ))  # fmt: skip

    def _burst_count(self, now_s: float) -> int:
        """The quantile of the arrivals seen in one horizon's span, over the spans that
        begin at each arrival of the last `BURST_WINDOW_S`: what a burst brought."""
        times_s = np.array(self._arrivals_s)
        times_s = times_s[(times_s >= now_s - BURST_WINDOW_S) & (times_s <= now_s)]
        if len(times_s) < 2:
            return 0
        ends = np.searchsorted(times_s, times_s + self.horizon_s, side="right")
        return int(_quantile(ends - np.arange(len(times_s)), self.count_quantile))

    def rate_rps(self, now_s: float) -> float:
        if self._first_seen_s is None or not self._arrivals_s:
            return 0.0
        span_s = max(MIN_SPAN_S, min(RATE_WINDOW_S, now_s - self._first_seen_s))
        recent = sum(1 for arrival_s in self._arrivals_s if now_s - span_s <= arrival_s <= now_s)
        return recent / span_s

    def expected(self, now_s: float, seconds_per_iteration: float) -> Requests:
        """The requests expected over the horizon from `now_s`, as queued rows; none
        starts before the iteration in which it arrives, at `seconds_per_iteration`."""
        rate = self.rate_rps(now_s)
        count = max(poisson_quantile(rate * self.horizon_s, self.count_quantile),
                    self._burst_count(now_s))  # fmt: skip
        if count == 0 or not self._mix:
            return Requests()
        if self._by_length is None:
            self._by_length = sorted(self._mix, key=lambda seen: seen.length_tokens)
        by_length = self._by_length
        ranks = ((np.arange(count) + 0.5) / count * len(by_length)).astype(np.int64)
        chosen = [by_length[ranks[i]] for i in _short_and_long_in_turn(count)]
        arrival_s = now_s + (np.arange(count) + 1) * (self.horizon_s / count)
        return Requests.of(
            arrival_s=arrival_s,
            prompt_tokens=[seen.prompt_tokens for seen in chosen],
            generated_tokens=np.zeros(count),
            remaining_tokens=[seen.length_tokens for seen in chosen],
            ttft_slo_s=[seen.ttft_slo_s for seen in chosen],
            tbt_slo_s=[seen.tbt_slo_s for seen in chosen],
            e2e_deadline_s=arrival_s + np.array([seen.e2e_budget_s for seen in chosen]),
            max_tokens=[seen.max_tokens for seen in chosen],
            earliest_start=np.floor((arrival_s - now_s) / max(seconds_per_iteration, 1e-6)),
        )

    def with_expected(self, board: Board, seconds_per_iteration: float) -> Board:
        """`board` (already observed) with the expected arrivals queued behind it."""
        expected = self.expected(board.now_s, seconds_per_iteration)
        return board.with_expected(expected) if len(expected) else board


def _quantile(values: IntArray, quantile: float) -> float:
    """`np.quantile(values, quantile)` (linear interpolation), without its overhead on the
    small arrays a decision has."""
    ordered = np.sort(values)
    position = quantile * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return float(ordered[below] + (position - below) * (ordered[above] - ordered[below]))


def _short_and_long_in_turn(count: int) -> list[int]:
    """0, count - 1, 1, count - 2, ...: the quantiles spread over the arrival times."""
    low, high, order = 0, count - 1, []
    while low <= high:
        order.append(low)
        if high != low:
            order.append(high)
        low, high = low + 1, high - 1
    return order


def poisson_quantile(mean: float, quantile: float) -> int:
    """The least k with P(N <= k) >= quantile for N ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    k, term = 0, math.exp(-mean)
    total = term
    while total < quantile and k < 10 * mean + 50:
        k += 1
        term *= mean / k
        total += term
    return k

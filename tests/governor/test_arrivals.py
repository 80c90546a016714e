"""The expected arrivals: what the planner learns from the boards it is shown, and how
the clock it plans leaves room for them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from predictor.board import Board, Requests
from slo_planner.arrivals import RATE_WINDOW_S, ArrivalModel, poisson_quantile
from slo_planner.clock import ClockPlanner
from tests.governor.test_planner import CLOCKS_MHZ, MODEL


def request_rows(arrival_s: list[float], remaining: int = 100, prompt: int = 200,
                 generated: int = 0) -> Requests:  # fmt: skip
    count = len(arrival_s)
    return Requests.of(
        arrival_s=arrival_s,
        prompt_tokens=[prompt] * count,
        generated_tokens=[generated] * count,
        remaining_tokens=[remaining] * count,
        ttft_slo_s=[2.0] * count,
        tbt_slo_s=[0.2] * count,
        e2e_deadline_s=[a + 60.0 for a in arrival_s],
    )


def board_at(now_s: float, running: Requests, queued: Requests | None = None,
             max_batch: int = 64) -> Board:  # fmt: skip
    return Board(now_s, running, queued if queued is not None else Requests(), max_batch, 100_000)


def test_the_rate_is_the_arrivals_seen_over_the_recent_window():
    model = ArrivalModel(horizon_s=4.0)
    arrivals = [i * 0.5 for i in range(60)]  # 2 per second for 30 s
    for now_s in np.arange(0.5, 30.5, 0.5):  # each board shows what has arrived by then
        model.observe(board_at(now_s, request_rows([a for a in arrivals if a <= now_s][-20:])))
    assert model.rate_rps(30.0) == pytest.approx(2.0, rel=0.06)
    assert model.rate_rps(30.0 + RATE_WINDOW_S + 1) == 0.0  # nothing seen since


def test_a_request_seen_on_several_boards_counts_once():
    model = ArrivalModel(horizon_s=4.0)
    for now_s in (10.0, 10.5, 11.0, 11.5):
        model.observe(board_at(now_s, request_rows([9.0, 9.5])))
    assert model.rate_rps(11.5) == pytest.approx(2 / 5.0)  # the rate's span is at least 5 s


def test_the_expected_arrivals_follow_the_rate_the_mix_and_the_engines_pace():
    model = ArrivalModel(horizon_s=4.0, count_quantile=0.9)
    arrivals = list(np.arange(0.0, 10.0, 0.25))  # 4 per second
    lengths = [50, 100, 400, 800]
    rows = Requests.of(**{
        **request_rows(arrivals).__dict__,
        "remaining_tokens": [lengths[i % 4] for i in range(len(arrivals))],
        "earliest_start": [],
        "max_tokens": [],
    })  # fmt: skip
    model.observe(board_at(10.0, rows))
    expected = model.expected(10.0, seconds_per_iteration=0.02)
    assert len(expected) == poisson_quantile(model.rate_rps(10.0) * 4.0, 0.9) > 16
    assert (expected.arrival_s > 10.0).all() and (expected.arrival_s <= 14.0 + 1e-9).all()
    assert np.all(np.diff(expected.arrival_s) > 0)
    assert set(expected.remaining_tokens) == set(lengths)  # the mix, not its median
    assert np.array_equal(expected.earliest_start, np.floor((expected.arrival_s - 10.0) / 0.02))
    assert np.allclose(expected.e2e_deadline_s - expected.arrival_s, 60.0)


def test_nothing_is_expected_before_anything_arrived():
    model = ArrivalModel(horizon_s=4.0)
    board = board_at(5.0, Requests())
    assert model.with_expected(board, 0.02) is board


@pytest.mark.parametrize("mean", [0.3, 2.0, 8.48, 40.0])
@pytest.mark.parametrize("quantile", [0.5, 0.9, 0.99])
def test_the_poisson_quantile_is_the_least_count_whose_cdf_reaches_it(mean, quantile):
    k = poisson_quantile(mean, quantile)

    def cdf(n: int) -> float:
        return sum(math.exp(-mean) * mean**i / math.factorial(i) for i in range(n + 1))

    assert cdf(k) >= quantile
    assert k == 0 or cdf(k - 1) < quantile


def test_at_low_load_the_expected_arrivals_cost_no_clock():
    now_s = 100.0
    running = request_rows([now_s - 5.0, now_s - 3.0], remaining=50, generated=20)
    seen = ArrivalModel(horizon_s=4.0)
    seen.observe(board_at(now_s - 1.0, request_rows([now_s - 20.0, now_s - 10.0, now_s - 5.0])))
    plain = ClockPlanner(MODEL).choose(board_at(now_s, running), CLOCKS_MHZ)
    aware = ClockPlanner(MODEL, arrivals=seen).choose(board_at(now_s, running), CLOCKS_MHZ)
    assert aware.clock_mhz == plain.clock_mhz


def test_near_capacity_the_clock_leaves_room_for_the_next_arrivals():
    """A full batch whose requests finish just in time at a low clock: the next arrivals
    would wait behind it for a slot, so the clock planned for them is higher."""
    now_s = 100.0
    running = request_rows([now_s - 1.0] * 8, remaining=120, generated=10)
    seen = ArrivalModel(horizon_s=4.0)
    seen.observe(board_at(now_s - 0.1, request_rows(list(np.arange(now_s - 10.0, now_s, 0.5)))))
    board = board_at(now_s, running, max_batch=8)
    plain = ClockPlanner(MODEL).choose(board, CLOCKS_MHZ)
    aware = ClockPlanner(MODEL, arrivals=seen).choose(board, CLOCKS_MHZ)
    assert aware.clock_mhz > plain.clock_mhz


def test_a_burst_seen_lately_is_expected_again_though_the_mean_rate_is_low():
    """Ten arrivals within a second, 40 s ago: the rate over the last 10 s is nil, but
    the count planned for the next 4 s covers a burst like it."""
    model = ArrivalModel(horizon_s=4.0, count_quantile=0.9)
    burst = [60.0 + 0.1 * i for i in range(10)]
    model.observe(board_at(61.0, request_rows(burst)))
    model.observe(board_at(100.0, request_rows([99.0])))
    assert model.rate_rps(100.0) == pytest.approx(0.1)
    assert poisson_quantile(0.4, 0.9) <= 1
    assert len(model.expected(100.0, 0.02)) >= 8  # the 0.9 quantile of the spans seen

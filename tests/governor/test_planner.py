"""The projection and the planner, by properties over random boards (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictor.board import Board, Requests, SchedulerPolicy
from predictor.projection import project
from slo_planner.admission import AdmissionPlanner, EngineShape, Verdict
from slo_planner.feasibility import (
    DEFAULT_HORIZON,
    PreparedTimes,
    _Timeline,
    admit,
    check,
    lowest_frequency,
    renegotiated,
    with_margin,
)
from throttllem.bench.reference import check_reference, project_reference

CLOCKS_MHZ = np.arange(210, 1411, 15)


class AnalyticTimes:
    """A monotone model: memory part + per-sequence part, the rest stretching as 1/f."""

    clocks_mhz = CLOCKS_MHZ

    def prepare(self, batch, kv_blocks, prefill_tokens, prefill_square_tokens=None):
        def run_seconds(clock_index):  # every iteration its own run
            stretch = CLOCKS_MHZ[-1] / CLOCKS_MHZ[clock_index]
            per_sequence = (0.004 + 0.0002 * batch + 0.0001 * prefill_tokens) * stretch
            return np.where(batch > 0, 0.015 + 0.00002 * kv_blocks + per_sequence, 0.0)

        return PreparedTimes(np.arange(len(batch)), run_seconds)


MODEL = AnalyticTimes()


@st.composite
def requests(draw, count: int, running: bool, now_s: float = 10.0) -> Requests:
    """Requests whose SLOs are sometimes loose, sometimes tight: a mix of feasible boards."""
    rows = []
    for _ in range(count):
        remaining = draw(st.integers(1, 300))
        rows.append({
            "arrival_s": now_s - draw(st.floats(0, 2)),
            "prompt_tokens": draw(st.integers(1, 600)),
            "generated_tokens": draw(st.integers(0, 300)) if running else 0,
            "remaining_tokens": remaining,
            "ttft_slo_s": draw(st.sampled_from([2.0, 10.0, 30.0, 60.0])),
            "tbt_slo_s": draw(st.sampled_from([0.05, 0.1, 0.2, 0.5])),
            # a deadline of 30 to 300 ms per remaining token, plus up to 10 s
            "e2e_deadline_s": now_s + remaining * draw(st.floats(0.03, 0.3)) + draw(st.floats(0, 10)),
        })  # fmt: skip
        rows[-1]["max_tokens"] = (rows[-1]["generated_tokens"] + remaining
                                  + draw(st.sampled_from([0, 0, 50, 1000])))  # fmt: skip
        rows[-1]["earliest_start"] = 0 if running else draw(st.sampled_from([0, 0, 0, 7, 60]))
        rows[-1]["remaining_at_risk_tokens"] = remaining + draw(st.sampled_from([0, 0, 30, 300]))
    return Requests.of(**{key: [row[key] for row in rows] for key in Requests.__dataclass_fields__})


@st.composite
def boards(draw) -> Board:
    running = draw(st.integers(0, 16))
    queued = draw(st.integers(0, 8))
    return Board(
        now_s=10.0,
        running=draw(requests(running, True)),
        queued=draw(requests(queued, False)),
        max_batch=draw(st.integers(max(1, running), running + 8)),
        kv_capacity_blocks=draw(st.integers(200, 5000)),
        tokens_per_block=draw(st.sampled_from([16, 64])),
        scheduler_policy=draw(st.sampled_from(list(SchedulerPolicy))),
    )


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(boards(), st.integers(1, 700))
def test_the_projection_matches_the_per_iteration_reference_exactly(board: Board, horizon: int):
    fast, reference = project(board, horizon), project_reference(board, horizon)
    assert np.array_equal(fast.batch, reference.batch)
    assert np.array_equal(fast.kv_blocks, reference.kv_blocks)
    assert np.array_equal(fast.prefill_tokens, reference.prefill_tokens)
    assert np.array_equal(fast.prefill_square_tokens, reference.prefill_square_tokens)
    started = reference.start >= 0
    assert np.array_equal(fast.start[started], reference.start[started])
    ended = reference.end >= 0
    assert np.array_equal(fast.end[ended], reference.end[ended])


@FAST
@given(boards())
def test_the_lowest_frequency_is_feasible_and_the_next_lower_is_not(board: Board):
    """Feasible for the promises that can be kept, and for lost ones as renegotiated."""
    top = len(CLOCKS_MHZ) - 1
    decision = lowest_frequency(board, MODEL)
    at_top = check(board, MODEL, top)
    assert decision.lost == (not at_top.feasible)
    if at_top.kv_overflow_blocks:
        assert decision.clock_index == top
        return
    judged = renegotiated(board, at_top) if decision.lost else board
    assert check(judged, MODEL, decision.clock_index).feasible
    if decision.clock_index > 0:
        assert not check(judged, MODEL, decision.clock_index - 1).feasible


@FAST
@given(boards(), st.integers(-1, len(CLOCKS_MHZ)), st.sampled_from([0.0, 0.2]))
def test_starting_the_search_near_the_last_clock_finds_the_same_clock(
    board: Board, near: int, margin: float
):
    plain = lowest_frequency(board, MODEL, margin=margin)
    assert lowest_frequency(board, MODEL, margin=margin, near_index=near) == plain


@FAST
@given(boards())
def test_the_check_agrees_with_the_plain_reference(board: Board):
    for clock_index in (0, 40, len(CLOCKS_MHZ) - 1):
        fast = check(board, MODEL, clock_index, DEFAULT_HORIZON)
        plain = check_reference(board, MODEL, clock_index, DEFAULT_HORIZON)
        assert fast.kv_overflow_blocks == plain.kv_overflow_blocks
        assert np.allclose(fast.worst_miss_s, plain.worst_miss_s, atol=1e-6)


@FAST
@given(boards(), requests(1, False))
def test_admitting_never_breaks_an_admitted_promise_at_the_highest_clock(
    board: Board, new: Requests
):
    """Kept promises stay kept, and the newcomer keeps its own (a lost one is missed
    either way: admission does not hold anyone back for it)."""
    top = len(CLOCKS_MHZ) - 1
    decision = admit(board, new, MODEL)
    if not decision.admit:
        return
    before = check(board, MODEL, top)
    after = check(board.with_queued(new), MODEL, top).worst_miss_s
    kept = before.worst_miss_s <= 1e-9
    assert np.all(after[:-1][kept] <= 1e-9)
    assert after[-1] <= 1e-9


@st.composite
def long_prompts(draw, now_s: float = 10.0) -> Requests:
    """A newcomer with a long prompt and loose promises of its own: its prefill may hurt
    the admitted requests' pace, rarely itself."""
    remaining = draw(st.integers(1, 300))
    return Requests.of(arrival_s=[now_s], prompt_tokens=[draw(st.integers(100, 6000))],
                       generated_tokens=[0], remaining_tokens=[remaining],
                       ttft_slo_s=[draw(st.sampled_from([10.0, 60.0]))], tbt_slo_s=[0.5],
                       e2e_deadline_s=[now_s + 1000.0])  # fmt: skip


@st.composite
def paced_boards(draw, now_s: float = 10.0) -> Board:
    """Running requests near their end under a tight pace: a long prefill can hurt them."""
    count = draw(st.integers(1, 8))
    remaining = draw(st.lists(st.integers(1, 40), min_size=count, max_size=count))
    running = Requests.of(arrival_s=[now_s - 1.0] * count, prompt_tokens=[200] * count,
                          generated_tokens=[20] * count, remaining_tokens=remaining,
                          ttft_slo_s=[2.0] * count,
                          tbt_slo_s=draw(st.lists(st.sampled_from([0.04, 0.05, 0.08]),
                                                  min_size=count, max_size=count)),
                          e2e_deadline_s=[now_s + 100.0] * count)  # fmt: skip
    return Board(now_s, running, Requests(), count + draw(st.integers(0, 4)), 5000, 16,
                 draw(st.sampled_from(list(SchedulerPolicy))))  # fmt: skip


@FAST
@given(st.one_of(boards(), paced_boards()), st.one_of(requests(1, False), long_prompts()))
def test_the_gate_never_holds_a_request_that_would_hurt_nobody(board: Board, new: Requests):
    """Held (WAIT) only when sending it now makes an admitted request miss a promise that
    holding it keeps, by the plain reference check; a request that would miss its own
    promise whatever happens (LOST) is sent at once, and one that fits is admitted."""
    top = len(CLOCKS_MHZ) - 1
    verdict = AdmissionPlanner(MODEL, EngineShape(board.max_batch, board.kv_capacity_blocks,
                                                  board.tokens_per_block,
                                                  board.scheduler_policy)).verdict_on(board, new)  # fmt: skip
    if verdict is not Verdict.WAIT:
        return
    horizon = DEFAULT_HORIZON
    before = check_reference(board, MODEL, top, horizon)
    after = check_reference(board.with_queued(new), MODEL, top, horizon)
    assert after.worst_miss_s[-1] <= 1e-9  # it would keep its own promise
    kept_if_held = before.worst_miss_s <= 1e-9
    hurt = kept_if_held & (after.worst_miss_s[:-1] > 1e-9)
    overflow = after.kv_overflow_blocks > before.kv_overflow_blocks
    assert hurt.any() or overflow


def test_a_lost_request_does_not_hold_back_one_that_fits():
    """A long answer that misses its deadline even alone at the highest clock: a short
    request may still join, as long as the long one slips no more than its slack."""
    board = simple_board()
    doomed = Requests.of(**{**board.running.__dict__, "e2e_deadline_s": [40.0, 40.0, 40.0, 10.2]})
    short = Requests.of(
        arrival_s=[10.0], prompt_tokens=[50], generated_tokens=[0], remaining_tokens=[5],
        ttft_slo_s=[1.0], tbt_slo_s=[0.2], e2e_deadline_s=[40.0],
    )  # fmt: skip
    lost_board = simple_board(running=doomed)
    assert not check(lost_board, MODEL, len(CLOCKS_MHZ) - 1).feasible
    assert admit(lost_board, short, MODEL).admit


def simple_board(**overrides) -> Board:
    running = Requests.of(
        arrival_s=[9.0] * 4, prompt_tokens=[100] * 4, generated_tokens=[10] * 4,
        remaining_tokens=[50, 60, 70, 80], ttft_slo_s=[1.0] * 4, tbt_slo_s=[0.2] * 4,
        e2e_deadline_s=[40.0] * 4,
    )  # fmt: skip
    fields = {
        "now_s": 10.0,
        "running": running,
        "queued": Requests(),
        "max_batch": 8,
        "kv_capacity_blocks": 1000,
    }
    return Board(**{**fields, **overrides})


def test_loose_slos_allow_a_low_clock_and_lost_ones_are_renegotiated():
    loose = lowest_frequency(simple_board(), MODEL)
    assert loose.clock_mhz < 1410 and not loose.lost
    tight = simple_board(
        running=Requests.of(**{**simple_board().running.__dict__, "tbt_slo_s": [0.01] * 4})
    )
    top = len(CLOCKS_MHZ) - 1
    at_top = check(tight, MODEL, top)
    assert not at_top.feasible
    decision = lowest_frequency(tight, MODEL)
    assert decision.lost
    # The bound: a tenth of the 10 ms SLO past it, or what the highest clock achieves.
    bound = renegotiated(tight, at_top)
    assert np.allclose(bound.running.tbt_slo_s, 0.01 + np.maximum(at_top.tbt_miss_s, 0.001))
    assert check(bound, MODEL, decision.clock_index).feasible
    assert not check(bound, MODEL, decision.clock_index - 1).feasible
    assert loose.clock_mhz <= decision.clock_mhz <= 1410


def test_a_lost_promise_has_a_bound_that_does_not_drift_with_the_clock():
    """Renegotiated from the original promise, not from where the last decision left it:
    a request that ran below the highest clock gets no later bound for it."""
    board = simple_board()
    top = len(CLOCKS_MHZ) - 1
    finish_at_top_s = board.running.e2e_deadline_s[2] + check(board, MODEL, top).e2e_miss_s[2]
    deadline_s = finish_at_top_s - 0.05  # lost by less than a tenth of its budget
    late = Requests.of(**{**board.running.__dict__,
                          "e2e_deadline_s": [40.0, 40.0, deadline_s, 40.0]})  # fmt: skip
    lost_board = simple_board(running=late)
    bound_s = renegotiated(lost_board, check(lost_board, MODEL, top)).running.e2e_deadline_s[2]
    assert bound_s == pytest.approx(deadline_s + 0.1 * (deadline_s - late.arrival_s[2]))
    slower = replace(lost_board, now_s=lost_board.now_s + 0.05)  # as if it had run slowly
    assert renegotiated(slower, check(slower, MODEL, top)).running.e2e_deadline_s[2] == bound_s


def test_a_promise_the_margin_cannot_keep_is_planned_on_its_real_budget():
    """Planning with a margin never declares lost what the real budget still keeps."""
    board = simple_board()
    at_top = check(board, MODEL, len(CLOCKS_MHZ) - 1)
    # A deadline 10 ms after the highest clock's finish: kept, but with no 50 % margin.
    finish_at_top_s = board.running.e2e_deadline_s[0] + at_top.e2e_miss_s[0]
    close = Requests.of(**{**board.running.__dict__,
                           "e2e_deadline_s": [finish_at_top_s + 0.01, 40.0, 40.0, 40.0]})  # fmt: skip
    near = simple_board(running=close)
    decision = lowest_frequency(near, MODEL, margin=0.5)
    assert not decision.lost
    assert check(near, MODEL, decision.clock_index).feasible


def test_a_kv_overflow_still_takes_the_highest_clock():
    decision = lowest_frequency(simple_board(kv_capacity_blocks=5), MODEL)
    assert decision.lost and decision.clock_mhz == 1410


def test_check_says_who_misses_what_and_by_how_much():
    board = simple_board()
    running = board.running
    late = Requests.of(**{**running.__dict__, "e2e_deadline_s": [40.0, 40.0, 10.5, 40.0]})
    result = check(simple_board(running=late), MODEL, 0)
    assert list(result.missing) == [2]
    assert result.e2e_miss_s[2] > 0
    assert result.kv_overflow_blocks == 0


def test_kv_overflow_is_reported_with_its_iteration():
    result = check(simple_board(kv_capacity_blocks=5), MODEL, len(CLOCKS_MHZ) - 1)
    assert result.kv_overflow_blocks > 0
    assert result.kv_overflow_iteration is not None
    assert not result.feasible


def test_a_request_that_cannot_meet_its_ttft_waits():
    hopeless = Requests.of(
        arrival_s=[10.0], prompt_tokens=[100], generated_tokens=[0], remaining_tokens=[20],
        ttft_slo_s=[0.001], tbt_slo_s=[0.2], e2e_deadline_s=[40.0],
    )  # fmt: skip
    decision = admit(simple_board(), hopeless, MODEL)
    assert not decision.admit
    assert "its own SLO" in decision.reason


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(boards(), st.integers(0, len(CLOCKS_MHZ) - 1))
def test_check_agrees_with_the_plain_reference(board: Board, clock_index: int):
    from slo_planner.feasibility import _Timeline
    from throttllem.bench.reference import check_reference

    timeline = _Timeline(board, 4096)
    fast = timeline.check(MODEL, clock_index)
    slow = check_reference(board, MODEL, clock_index, timeline.projection.horizon)
    assert fast.kv_overflow_blocks == slow.kv_overflow_blocks
    for name in ("ttft_miss_s", "tbt_miss_s", "e2e_miss_s"):
        np.testing.assert_allclose(getattr(fast, name), getattr(slow, name), rtol=1e-9, atol=1e-9)
    assert fast.feasible == slow.feasible == timeline.feasible(MODEL, clock_index)


def test_a_margin_tightens_every_budget_and_plans_a_clock_at_least_as_high():
    board = simple_board()
    assert with_margin(board, 0.0) is board
    tight = with_margin(board, 0.25)
    assert np.allclose(tight.running.tbt_slo_s, board.running.tbt_slo_s * 0.75)
    budget = board.running.e2e_deadline_s - board.running.arrival_s
    assert np.allclose(tight.running.e2e_deadline_s - tight.running.arrival_s, budget * 0.75)
    assert lowest_frequency(tight, MODEL).clock_mhz >= lowest_frequency(board, MODEL).clock_mhz


@FAST
@given(boards(), requests(3, False, now_s=11.0), st.floats(0.0, 8.0))
def test_expected_arrivals_are_judged_alike_by_the_fast_verdict_and_the_full_check(
    board: Board, expected: Requests, later_s: float
):
    """Expected arrivals are served from their arrival at the highest clock: the run-wise
    verdict and the per-iteration check agree at every clock, and none gets its first
    token before it arrives."""
    expected = replace(expected, arrival_s=expected.arrival_s + later_s,
                       earliest_start=np.full(3, int(later_s * 40)))  # fmt: skip
    planned = board.with_expected(expected)
    timeline = _Timeline(planned, DEFAULT_HORIZON)
    for clock_index in range(0, len(CLOCKS_MHZ), 8):
        result = timeline.check(MODEL, clock_index)
        assert timeline.feasible(MODEL, clock_index) == result.feasible
        first_s = result.ttft_miss_s[-3:] + expected.arrival_s + expected.ttft_slo_s
        assert (first_s >= expected.arrival_s - 1e-9).all()


def test_a_newcomer_is_held_for_an_admitted_request_only_while_it_can_afford_to_wait():
    """A long prompt that would stretch a nearly finished request's pace: held while its
    own first token can wait for the next try, sent once waiting would cost it that."""
    running = Requests.of(arrival_s=[9.0], prompt_tokens=[100], generated_tokens=[10],
                          remaining_tokens=[5], ttft_slo_s=[2.0], tbt_slo_s=[0.05],
                          e2e_deadline_s=[100.0])  # fmt: skip
    board = Board(10.0, running, Requests(), 4, 5000, 16)

    def newcomer(ttft_slo_s: float) -> Requests:
        return Requests.of(arrival_s=[10.0], prompt_tokens=[6000], generated_tokens=[0],
                           remaining_tokens=[50], ttft_slo_s=[ttft_slo_s], tbt_slo_s=[0.5],
                           e2e_deadline_s=[1000.0])  # fmt: skip

    top = len(CLOCKS_MHZ) - 1
    first_token_s = check(board.with_queued(newcomer(60.0)), MODEL, top).ttft_miss_s[-1] + 70.0
    assert not admit(board, newcomer(60.0), MODEL, hold_s=0.5).admit  # it can wait
    tight = newcomer(first_token_s - 10.0 + 0.2)  # 0.2 s to spare: not the 0.5 s a wait takes
    decision = admit(board, tight, MODEL, hold_s=0.5)
    assert decision.admit and "last chance" in decision.reason
    assert not admit(board, tight, MODEL, hold_s=0.0).admit

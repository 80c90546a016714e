"""The conformal planning level, on made-up streams of predictions and true lengths."""

import math
from statistics import NormalDist

import numpy as np
import pytest

from predictor.length import PLANNING_LEVELS, conditional_remaining
from slo_planner.length_risk import ConformalLevel, length_at_level

SIGMA = 0.6  # the spread of log-lengths around each request's median


def stream(requests: int, bias: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log-normal true lengths around each request's own median, and the lengths at
    PLANNING_LEVELS a predictor believes, `bias` times the true quantiles."""
    rng = np.random.default_rng(seed)
    medians = rng.uniform(50, 800, requests)
    z = np.array([NormalDist().inv_cdf(level) for level in PLANNING_LEVELS])
    quantiles = np.ceil(bias * medians[:, None] * np.exp(SIGMA * z[None, :]))
    truth = np.ceil(medians * np.exp(SIGMA * rng.standard_normal(requests)))
    return quantiles, truth.astype(np.int64)


def calibrated_coverage(
    conformal: ConformalLevel, quantiles: np.ndarray, truth: np.ndarray, warmup: int = 200
) -> float:
    covered = [conformal.observe(row, int(length))
               for row, length in zip(quantiles.tolist(), truth.tolist(), strict=True)]  # fmt: skip
    return float(np.mean(covered[warmup:]))


def raw_coverage(quantiles: np.ndarray, truth: np.ndarray, level: float) -> float:
    bounds = [length_at_level(row, level) for row in quantiles.tolist()]
    return float(np.mean(truth <= np.array(bounds)))


@pytest.mark.parametrize("nominal", [0.5, 0.9, 0.95])
def test_quantiles_that_are_too_short_are_steered_to_the_nominal_coverage(nominal: float):
    quantiles, truth = stream(1000, bias=0.7)
    assert raw_coverage(quantiles, truth, nominal) < nominal - 0.05  # far too short
    conformal = ConformalLevel(nominal)
    assert abs(calibrated_coverage(conformal, quantiles, truth) - nominal) <= 0.03
    assert conformal.level > nominal  # it plans on a higher quantile to get there
    assert not conformal.saturated


def test_a_tail_too_short_to_reach_the_nominal_pins_the_level_at_its_top():
    quantiles, truth = stream(1000, bias=0.4)
    conformal = ConformalLevel(0.95)
    assert calibrated_coverage(conformal, quantiles, truth) < 0.92
    assert conformal.saturated and conformal.level > 0.99


def test_quantiles_that_are_too_long_are_steered_down_below_the_median():
    quantiles, truth = stream(1000, bias=1.6)
    assert raw_coverage(quantiles, truth, 0.5) > 0.7
    conformal = ConformalLevel(0.5)
    assert abs(calibrated_coverage(conformal, quantiles, truth) - 0.5) <= 0.03
    assert conformal.level < 0.4


@pytest.mark.parametrize("nominal", [0.5, 0.9, 0.95])
def test_well_calibrated_quantiles_stay_near_the_nominal(nominal: float):
    quantiles, truth = stream(1000, bias=1.0, seed=1)
    assert abs(raw_coverage(quantiles, truth, nominal) - nominal) <= 0.03
    conformal = ConformalLevel(nominal)
    levels = []
    for row, length in zip(quantiles.tolist(), truth.tolist(), strict=True):
        conformal.observe(row, int(length))
        levels.append(conformal.level)
    assert abs(float(np.mean(levels[200:])) - nominal) <= 0.03
    assert abs((conformal.coverage or 0.0) - nominal) <= 0.03


def test_a_miss_raises_the_level_a_cover_lowers_it_within_the_bounds():
    row = (100, 150, 200, 250, 300)
    conformal = ConformalLevel(0.9, step=0.01, high=0.92)
    assert conformal.coverage is None and conformal.observed == 0
    assert conformal.bound_tokens(row) == 200
    assert conformal.observe(row, 201) is False  # past the 90 % length: a miss
    assert math.isclose(conformal.level, 0.9 + 0.01 * 0.9)
    assert conformal.observe(row, 10) is True
    assert math.isclose(conformal.level, 0.909 - 0.01 * 0.1)
    for _ in range(10):
        conformal.observe(row, 10_000)
    assert conformal.level == 0.92  # clamped
    assert (conformal.observed, conformal.covered) == (12, 1)
    assert conformal.coverage == pytest.approx(1 / 12)


def test_the_bound_is_the_planner_s_own_reading_of_the_quantiles():
    row = (300, 420, 600, 750, 1100)
    for level in (0.05, 0.5, 0.8, 0.9, 0.97, 0.995):
        assert length_at_level(row, level) == conditional_remaining(row, 0, level)
    with pytest.raises(ValueError, match=r"got 3 values"):
        length_at_level((1, 2, 3), 0.9)


@pytest.mark.parametrize(
    "arguments", [{"nominal": 0.01}, {"nominal": 1.0}, {"step": 0.0}, {"low": 0.95}]
)
def test_settings_out_of_range_are_refused(arguments: dict[str, float]):
    with pytest.raises(ValueError):
        ConformalLevel(**arguments)

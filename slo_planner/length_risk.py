"""The level at which a request's length is planned, calibrated online (conformal).

A promise planned on the median length is missed by every answer that runs longer,
about half of them. Planning on a higher quantile of the predicted length keeps that
chance small, but only if the predictor's quantiles cover what they claim, and they
do not on a model the predictor was not trained on (its answers run longer or shorter).

Adaptive conformal inference (Gibbs & Candès, 2021) steers the level from what completed
requests show: each one either ran past the length predicted at the level in force
(a miss) or not, and

    level <- clamp(level + step * (miss - (1 - nominal)), low, high)

so a miss raises the level by `step * nominal` and a cover lowers it by
`step * (1 - nominal)`; the two balance exactly when a share `1 - nominal` misses. Summed
over any run of requests without clamping, `step * (misses - (1 - nominal) * n)` is the
level's change, so the coverage of those n requests is the nominal within
`|change of level| / (step * n)`: a guarantee that needs no model of the errors.

The level can only ask for what the predicted quantiles reach: past the last planning
level (0.99), the planner's CDF goes on at its last slope, so at `high` a bound is its
0.99 length plus a quarter of its 0.99 - 0.95 gap. Quantiles with a tail far too short
pin the level there (`saturated`) and their coverage stays below the nominal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from predictor.length import PLANNING_LEVELS, conditional_remaining_rows

# Measured by `throttllem bench length-coverage` (3 shipped predictors x 4 answer sets x
# nominal 0.5, 0.9, 0.95 x 20 shuffles, coverage of requests 201..805): the worst error is
# 7.4 pp at a step of 0.005 (too slow: the level still travels after 200 requests), 3.1 at
# 0.01, 2.1 at 0.015, 1.9 at 0.02; the level's wobble once settled grows with the step
# (standard deviation 0.013, 0.020, 0.026, 0.032). 0.015: within target with margin, and
# the planned quantile moving little from one request to the next.
DEFAULT_STEP = 0.015


class ConformalLevel:
    """The quantile level to plan lengths at now, steered by the coverage observed.

    Not thread-safe; one instance per served model (its predictor's errors are its own).
    """

    def __init__(
        self,
        nominal: float = 0.9,
        step: float = DEFAULT_STEP,
        low: float = 0.05,
        high: float = 0.999,
    ) -> None:
        if not 0.0 < low <= nominal <= high < 1.0:
            raise ValueError(f"need 0 < low <= nominal <= high < 1, got {low}, {nominal}, {high}")
        if not step > 0.0:
            raise ValueError(f"the step must be positive, got {step}")
        self.nominal = nominal
        self.step = step
        self.low = low
        self.high = high
        self._level = nominal
        self.observed = 0
        self.covered = 0

    @property
    def level(self) -> float:
        """The level to plan at now: the nominal, corrected by what has been observed."""
        return self._level

    @property
    def coverage(self) -> float | None:
        """The share of observed requests that ended within the length planned for them
        (None before the first)."""
        return self.covered / self.observed if self.observed else None

    @property
    def saturated(self) -> bool:
        """Whether the level is pinned at `high` (within a step of it): the quantiles' tail is too short for
        the nominal coverage (worth an alert: the predictor does not fit this model)."""
        return self._level > self.high - self.step

    def bound_tokens(self, quantiles_row: Sequence[float]) -> int:
        """The length at the current level, from the lengths at PLANNING_LEVELS."""
        return length_at_level(quantiles_row, self._level)

    def observe(self, quantiles_row: Sequence[float], true_length_tokens: int) -> bool:
        """Take in one completed request: its lengths at PLANNING_LEVELS as predicted at
        admission and the length it really had. Returns whether the length at the
        current level covered it, and moves the level by the rule above."""
        covered = true_length_tokens <= self.bound_tokens(quantiles_row)
        miss = 0.0 if covered else 1.0
        moved = self._level + self.step * (miss - (1.0 - self.nominal))
        self._level = min(self.high, max(self.low, moved))
        self.observed += 1
        self.covered += int(covered)
        return covered


def length_at_level(quantiles_row: Sequence[float], level: float) -> int:
    """The length at `level` of the piecewise-linear CDF through the lengths at
    PLANNING_LEVELS (the planner's own reading of them, with nothing generated yet)."""
    if len(quantiles_row) != len(PLANNING_LEVELS):
        raise ValueError(f"need lengths at {PLANNING_LEVELS}, got {len(quantiles_row)} values")
    rows = np.asarray([quantiles_row], dtype=np.float64)
    return int(conditional_remaining_rows(rows, np.zeros(1), level)[0])

"""Regression and split helpers shared by the training pipelines."""

from __future__ import annotations

import numpy as np

from predictor.arrays import FloatArray, IntArray


def regression_metrics(truth: FloatArray, predicted: FloatArray) -> dict[str, float]:
    """R², mean absolute percentage error (%) and mean absolute error."""
    residual = truth - predicted
    total = float(np.sum((truth - truth.mean()) ** 2))
    r2 = 1 - float(np.sum(residual**2)) / total if total > 0 else 0.0
    return {
        "r2": r2,
        "mape_pct": float(np.mean(np.abs(residual) / np.abs(truth)) * 100),
        "mae": float(np.mean(np.abs(residual))),
    }


def split_indices(count: int, train_fraction: float, seed: int) -> tuple[IntArray, IntArray]:
    """A seeded random split of `range(count)` into train and test indices."""
    order = np.random.default_rng(seed).permutation(count)
    cut = round(count * train_fraction)
    return order[:cut], order[cut:]

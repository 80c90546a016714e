"""The output-length predictor: a distribution over length buckets, from the prompt.

Features are the prompt's tokens (hashed counts of tokens, of token pairs and of the first
three tokens in place, L2-normalised) and its length; an ONNX classifier gives the
probability of each bucket of output length (powers of two).
Within a bucket, lengths follow the training data's own spread (quantiles kept in the
model's metadata), so the distribution is continuous and a bound at quantile q covers
about q of the answers. `max_tokens` caps the distribution: the engine stops there, so
the mass beyond it collapses onto it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from predictor.arrays import Float32Array, FloatArray, IntArray
from predictor.errors import ModelFileError
from predictor.onnx_file import OnnxSession, load_onnx

LENGTH_METADATA_KEY = "throttllem.length_model"


_PAIR_MULTIPLIER = 1_000_003
_LEADING_TOKENS = 3
_LEADING_WEIGHT = 2.0  # "Write…", "List…", "What is…": how a prompt opens says a lot


def prompt_features(token_ids: Sequence[int] | IntArray, hash_buckets: int) -> Float32Array:
    """One row: hashed counts of tokens, token pairs and leading tokens (L2-normalised),
    then the log of the prompt's length."""
    ids = np.asarray(token_ids, dtype=np.int64)
    counts = np.bincount(ids % hash_buckets, minlength=hash_buckets).astype(np.float32)
    if len(ids) > 1:
        pairs = (ids[:-1] * _PAIR_MULTIPLIER + ids[1:]) % hash_buckets
        counts += np.bincount(pairs, minlength=hash_buckets).astype(np.float32)
    for position, token in enumerate(ids[:_LEADING_TOKENS].tolist()):
        counts[(token * 7919 + position * 104_729 + 17) % hash_buckets] += _LEADING_WEIGHT
    norm = float(np.linalg.norm(counts))
    if norm > 0:
        counts /= norm
    return np.concatenate([counts, np.array([np.log1p(len(ids))], dtype=np.float32)])


@dataclass(frozen=True)
class LengthSpec:
    """What the classifier's buckets mean; travels in the ONNX metadata."""

    edges: tuple[int, ...]  # bucket i holds lengths in [edges[i], edges[i + 1])
    within: tuple[tuple[float, ...], ...]  # per bucket: lengths at quantiles 0, 0.05, ..., 1
    hash_buckets: int
    # Asked quantile -> quantile of the model's distribution that covers it, measured by
    # cross-validation on the training prompts (small data makes a classifier overconfident).
    calibration: tuple[tuple[float, float], ...] = ()

    def calibrated(self, q: float) -> float:
        if not self.calibration:
            return q
        asked, used = zip(*self.calibration, strict=True)
        return float(np.interp(q, asked, used))

    def to_json(self) -> dict[str, object]:
        return {
            "edges": list(self.edges),
            "within": [list(w) for w in self.within],
            "hash_buckets": self.hash_buckets,
            "calibration": [list(pair) for pair in self.calibration],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LengthSpec:
        return cls(
            tuple(data["edges"]),
            tuple(tuple(w) for w in data["within"]),
            int(data["hash_buckets"]),
            tuple((float(a), float(b)) for a, b in data.get("calibration", ())),
        )


@dataclass(frozen=True)
class LengthPrediction:
    """The predicted distribution of one answer's length, in tokens."""

    probabilities: FloatArray  # per bucket
    spec: LengthSpec
    max_tokens: int | None = None

    def quantile(self, q: float, generated_so_far: int = 0) -> int:
        """The length not exceeded with probability q, given `generated_so_far` already."""
        grid, cdf = self._cdf_points
        floor = np.interp(generated_so_far, grid, cdf, left=0.0, right=1.0)
        if generated_so_far > 0 and floor >= 1.0 - 1e-9:
            tokens = generated_so_far + 1  # past everything seen in training: one more at least
        else:
            target = floor + self.spec.calibrated(q) * (1.0 - floor)
            tokens = int(np.ceil(np.interp(target, cdf, grid)))
        tokens = max(tokens, generated_so_far + 1, 1)
        return min(tokens, self.max_tokens) if self.max_tokens else tokens

    def point(self) -> int:
        """The median: the estimate with the smallest expected absolute error."""
        return self.quantile(0.5)

    def bound(self, q: float = 0.9) -> int:
        return self.quantile(q)

    def remaining(self, generated_so_far: int, q: float = 0.5) -> int:
        """Tokens still to come for a request that has generated `generated_so_far`: the
        conditional estimate P(L | L > generated), not a jump to max_tokens."""
        return self.quantile(q, generated_so_far) - generated_so_far

    @cached_property
    def _cdf_points(self) -> tuple[FloatArray, FloatArray]:
        return self._cdf()

    def _cdf(self) -> tuple[FloatArray, FloatArray]:
        """Piecewise-linear CDF through every bucket's within-bucket quantiles."""
        grid, cdf, mass = [0.0], [0.0], 0.0
        for probability, within in zip(self.probabilities, self.spec.within, strict=True):
            steps = np.linspace(0, 1, len(within))
            for step, tokens in zip(steps[1:], within[1:], strict=True):
                grid.append(max(float(tokens), grid[-1]))
                cdf.append(mass + probability * step)
            mass += probability
        return np.array(grid), np.array(cdf) / max(mass, 1e-12)


# The levels at which a prediction travels with its request (gateway -> scoreboard ->
# planner): enough to re-estimate a request that has outlived its median.
PLANNING_LEVELS = (0.5, 0.75, 0.9, 0.95, 0.99)


def planning_quantiles(prediction: LengthPrediction) -> tuple[int, ...]:
    return tuple(prediction.quantile(q) for q in PLANNING_LEVELS)


def conditional_remaining(quantiles: Sequence[int], generated: int, level: float = 0.5) -> int:
    """Tokens still to come, the quantile at `level` (the median by default) of the length
    given that it already passed `generated` (P(L | L > generated)), from the lengths at
    PLANNING_LEVELS. A request planned on its unconditional median would look one token
    from its end for as long as it outlives it; this keeps its expected rest in
    proportion. Past the last level, the rest is what the last level's slope gives for
    the share of the probability left that `level` asks for."""
    rows = np.asarray([quantiles], dtype=np.float64)
    return int(conditional_remaining_rows(rows, np.asarray([generated]), level)[0])


def conditional_remaining_rows(
    quantiles: npt.ArrayLike, generated: npt.ArrayLike, level: float | FloatArray = 0.5
) -> IntArray:
    """`conditional_remaining` for many requests at once: one row of lengths each, and
    one `level` for all or one per row.

    Per row, a piecewise-linear CDF through (0, 0) and (length at level, level): the
    share already passed is read off it at `generated`, and the quantile at `level` of
    what is left is read back (a risk-aware plan asks for more than the median). The
    levels are shared, so the way back is one search for all rows."""
    lengths = np.maximum.accumulate(np.asarray(quantiles, dtype=np.float64), axis=1)
    count, points = lengths.shape[0], lengths.shape[1] + 1
    levels = np.asarray(PLANNING_LEVELS, dtype=np.float64)
    grid = np.empty((count, points))  # the lengths at the CDF's points
    grid[:, 0] = 0.0
    grid[:, 1:] = lengths
    cdf = np.concatenate([[0.0], levels])
    done = np.asarray(generated, dtype=np.float64)
    rows = np.arange(count)
    # The share passed: F(done), clamped to the last level.
    # (np.clip costs more than the two bounds it applies)
    segment = np.minimum(np.maximum((grid <= done[:, None]).sum(axis=1) - 1, 0), points - 2)
    x0, x1 = grid[rows, segment], grid[rows, segment + 1]
    share = np.minimum(np.maximum((done - x0) / np.where(x1 > x0, x1 - x0, 1.0), 0.0), 1.0)
    passed = np.where(x1 > x0, cdf[segment] + share * (cdf[segment + 1] - cdf[segment]),
                      cdf[segment + 1])  # fmt: skip
    target = passed + level * (1.0 - passed)
    # The length at `target`: F^-1 on the shared levels.
    back = np.minimum(np.searchsorted(cdf, target, side="right") - 1, points - 2)
    c0, c1 = cdf[back], cdf[back + 1]
    y0, y1 = grid[rows, back], grid[rows, back + 1]
    length: FloatArray = y0 + np.minimum((target - c0) / (c1 - c0), 1.0) * (y1 - y0)
    slope = (lengths[:, -1] - lengths[:, -2]) / (levels[-1] - levels[-2])
    beyond = target > levels[-1]
    tail_from = np.maximum(lengths[:, -1], done)
    length = np.where(beyond, tail_from + slope * (target - levels[-1]), length)
    return np.maximum(1, np.ceil(length) - done).astype(np.int64)


class LengthPredictor:
    def __init__(self, path: Path) -> None:
        self._session, metadata = load_onnx(path, LENGTH_METADATA_KEY)
        try:
            self.spec = LengthSpec.from_json(metadata)
        except (KeyError, ValueError, TypeError) as error:
            raise ModelFileError(
                path, f"no valid {LENGTH_METADATA_KEY} metadata ({error})"
            ) from error
        self._input = self._session.get_inputs()[0].name
        self._probabilities = _probability_output(self._session)
        self.path = path

    def predict(
        self, token_ids: Sequence[int] | IntArray, max_tokens: int | None = None
    ) -> LengthPrediction:
        features = prompt_features(token_ids, self.spec.hash_buckets)[None, :]
        return LengthPrediction(self.predict_proba(features)[0], self.spec, max_tokens)

    def predict_proba(self, features: Float32Array | FloatArray) -> FloatArray:
        outputs = self._session.run(
            [self._probabilities], {self._input: features.astype(np.float32)}
        )
        return np.asarray(outputs[0], dtype=np.float64)


def _probability_output(session: OnnxSession) -> str:
    names = [output.name for output in session.get_outputs()]
    for name in names:
        if "prob" in name:
            return name
    return names[-1]

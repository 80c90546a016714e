"""How many tokens a request still has to produce, as the planner believes."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from predictor.length import conditional_remaining_rows

IntArray = NDArray[np.int64]


def remaining_tokens(
    max_tokens: IntArray,
    generated_tokens: IntArray,
    predicted_tokens: IntArray,
    length_quantiles: NDArray[np.float64] | None = None,
    level: float = 0.5,
) -> IntArray:
    """Tokens still to come per request, at least one.

    With the length prediction's quantiles (one row per request), the rest at `level`
    (the median by default) given what the request has generated so far; else its
    point prediction less what it has generated, whatever the level. Never more than
    `max_tokens` allows. A request without a prediction is given `max_tokens` as its
    prediction by the caller.
    """
    room = max_tokens - generated_tokens
    if length_quantiles is not None:
        rest = conditional_remaining_rows(length_quantiles, generated_tokens, level)
        return np.maximum(1, np.minimum(rest, room)).astype(np.int64)
    believed = np.minimum(predicted_tokens, max_tokens)
    return np.maximum(1, believed - generated_tokens).astype(np.int64)

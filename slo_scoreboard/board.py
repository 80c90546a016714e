"""From the scoreboard's entries to the planner's board.

Entries that have produced a token are running; admitted ones still waiting for their
first token are queued in the engine, oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from predictor.board import Board, Requests
from slo_planner.admission import EngineShape
from slo_planner.remaining import remaining_tokens
from slo_scoreboard.store import RequestEntry


def board_of(entries: Sequence[RequestEntry], now_s: float, engine: EngineShape,
             risk_level: float = 0.5) -> Board:  # fmt: skip
    """`risk_level`: the quantile of each rest its own promises are judged on."""
    running = [e for e in entries if e.first_token_s is not None]
    waiting = sorted((e for e in entries if e.first_token_s is None), key=_arrival)
    return Board(
        now_s=now_s,
        running=requests_of(running, risk_level),
        queued=requests_of(waiting, risk_level),
        max_batch=engine.max_batch,
        kv_capacity_blocks=engine.kv_capacity_blocks,
        tokens_per_block=engine.tokens_per_block,
        scheduler_policy=engine.scheduler_policy,
    )


def requests_of(entries: Sequence[RequestEntry], risk_level: float = 0.5) -> Requests:
    expected = _remaining(entries)
    return Requests.of(
        arrival_s=[e.arrival_s for e in entries],
        prompt_tokens=[e.prompt_tokens for e in entries],
        generated_tokens=[e.generated_tokens for e in entries],
        remaining_tokens=expected,
        remaining_at_risk_tokens=expected if risk_level == 0.5 else _remaining(entries, risk_level),
        ttft_slo_s=[e.ttft_slo_s for e in entries],
        tbt_slo_s=[e.tbt_slo_s for e in entries],
        e2e_deadline_s=[e.e2e_deadline_s for e in entries],
        max_tokens=[e.max_tokens for e in entries],
    )


def _remaining(entries: Sequence[RequestEntry], level: float = 0.5) -> np.ndarray:
    """The planner's rule (slo_planner/remaining.py), for entries with the prediction's
    quantiles (at `level`) and for those with a point prediction (or none: max_tokens)
    apart."""
    remaining = np.zeros(len(entries), dtype=np.int64)
    with_quantiles = [i for i, e in enumerate(entries) if e.length_quantiles]
    if with_quantiles:
        chosen = [entries[i] for i in with_quantiles]
        remaining[with_quantiles] = remaining_tokens(
            _ints([e.max_tokens for e in chosen]),
            _ints([e.generated_tokens for e in chosen]),
            _ints([e.max_tokens for e in chosen]),
            np.array([e.length_quantiles for e in chosen], dtype=np.float64),
            level,
        )
    point = [i for i, e in enumerate(entries) if not e.length_quantiles]
    if point:
        chosen = [entries[i] for i in point]
        predicted = [e.max_tokens if e.predicted_tokens is None else e.predicted_tokens
                     for e in chosen]  # fmt: skip
        remaining[point] = remaining_tokens(
            _ints([e.max_tokens for e in chosen]),
            _ints([e.generated_tokens for e in chosen]),
            _ints(predicted),
        )
    return remaining


def _ints(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _arrival(entry: RequestEntry) -> float:
    return entry.arrival_s

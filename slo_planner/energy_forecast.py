"""A request's energy, predicted when it is admitted: `usage.predicted_energy_j`.

At the planned clock, the board it joins runs iterations of the performance model's
length, each drawing the power model's power on every GPU of the instance; every request
in the batch gets one work unit per iteration (slo_planner/energy_split.py), so a unit
costs the iteration's energy over the batch. The request's units are its predicted
answer plus its prompt at the prefill weight. The batch is the larger of the board's
at admission and the mean of the boards recent admissions joined (a request admitted as
the load rises shares its iterations with those admitted after it); the cache and the
clock are those at admission. A board that moves over the answer's life, and the length
prediction's own error, are what its error measures (`throttllem bench energy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from predictor.board import Board
from predictor.power import PowerModel
from slo_planner.iteration_times import TableIterationTimes

MEAN_BATCH_WEIGHT = 0.05  # of each admission in the running mean of the batch


@dataclass
class EnergyForecast:
    times: TableIterationTimes
    power: PowerModel
    gpus: int
    prefill_weight: float
    _mean_batch: float = field(default=0.0, init=False)

    def predict_j(
        self, board: Board, prompt_tokens: int, answer_tokens: int, clock_mhz: int | None
    ) -> float:
        """Joules of a request of `prompt_tokens` answering `answer_tokens`, admitted
        onto `board` (which does not hold it yet), at `clock_mhz` (None: the highest)."""
        clocks = self.times.clocks_mhz
        clock = int(clocks[-1]) if clock_mhz is None else clock_mhz
        clock_index = int(np.argmin(np.abs(clocks - clock)))
        in_engine = len(board.running) + len(board.queued) + 1
        self._mean_batch += MEAN_BATCH_WEIGHT * (in_engine - self._mean_batch)
        batch = max(1, min(board.max_batch, round(max(in_engine, self._mean_batch))))
        contexts = np.concatenate([
            board.running.prompt_tokens + board.running.generated_tokens,
            board.queued.prompt_tokens, [prompt_tokens],
        ])  # fmt: skip
        kv_blocks = int(np.sum(-(-contexts // board.tokens_per_block)))
        iteration_s = float(self.times.seconds(
            np.array([batch]), np.array([kv_blocks]), np.array([0]), clock_index
        )[0])  # fmt: skip
        iteration_j = self.power.busy_w(float(clocks[clock_index]), batch) * self.gpus * iteration_s
        units = answer_tokens + self.prefill_weight * prompt_tokens
        return iteration_j / batch * units

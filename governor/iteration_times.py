"""Iteration times for the planner: the performance table, corrected online, plus prefill."""

from __future__ import annotations

import numpy as np

from governor.correction import OnlineCorrection
from predictor.performance import PerformanceTable


class TableIterationTimes:
    """Seconds per iteration = 1 / table IPS x the online correction of its batch band,
    plus the prefill of the prompts starting in it (which the decode profile leaves out),
    stretched by 1/f like any SM-bound work."""

    def __init__(
        self,
        table: PerformanceTable,
        correction: OnlineCorrection | None = None,
        prefill_s_per_token: float = 0.0,
    ) -> None:
        self.table = table
        self.clocks_mhz = table.clocks_mhz
        self.correction = correction
        self._seconds_table = 1.0 / table.ips_table
        self._prefill_s = prefill_s_per_token * (table.clocks_mhz[-1] / table.clocks_mhz)

    def seconds(
        self, batch: np.ndarray, kv_blocks: np.ndarray, prefill_tokens: np.ndarray, clock_index: int
    ) -> np.ndarray:
        grid = self.table.grid
        batch_index = np.clip(batch - 1, 0, grid.max_batch - 1)
        kv_index = np.clip(
            kv_blocks // self.table.kv_bucket_blocks, 0, self._seconds_table.shape[1] - 1
        )
        seconds = self._seconds_table[batch_index, kv_index, clock_index].astype(np.float64)
        if self.correction is not None:
            seconds *= self.correction.factors(batch)
        seconds += prefill_tokens * self._prefill_s[clock_index]
        seconds[batch == 0] = 0.0
        return seconds

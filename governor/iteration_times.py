"""Iteration times for the planner: the performance table, corrected online, plus prefill."""

from __future__ import annotations

from collections.abc import Callable

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
        batches, buckets, clocks = table.ips_table.shape
        # One row per clock, one column per (batch, KV bucket): a projection binds the
        # columns once, and each clock tried is then one contiguous gather.
        seconds = 1.0 / table.ips_table.astype(np.float64)
        self._seconds_by_clock = np.ascontiguousarray(seconds.reshape(batches * buckets, clocks).T)
        self._buckets = buckets
        self._prefill_s = prefill_s_per_token * (table.clocks_mhz[-1] / table.clocks_mhz)

    def prepare(
        self, batch: np.ndarray, kv_blocks: np.ndarray, prefill_tokens: np.ndarray
    ) -> Callable[[int | np.ndarray], np.ndarray]:
        batch_index = np.clip(batch - 1, 0, self.table.grid.max_batch - 1)
        kv_index = np.clip(kv_blocks // self.table.kv_bucket_blocks, 0, self._buckets - 1)
        columns = batch_index * self._buckets + kv_index
        scale = (batch > 0).astype(np.float64)
        if self.correction is not None:
            scale *= self.correction.factors(batch)
        prefill_at = np.nonzero(prefill_tokens)[0]
        prefill_tokens_at = prefill_tokens[prefill_at].astype(np.float64)
        by_clock = self._seconds_by_clock
        prefill_s = self._prefill_s

        def seconds(clock_index: int | np.ndarray) -> np.ndarray:
            if np.ndim(clock_index):
                result = by_clock[np.asarray(clock_index)[:, None], columns]
            else:
                result = by_clock[clock_index][columns]
            result *= scale
            result[..., prefill_at] += np.multiply.outer(prefill_s[clock_index], prefill_tokens_at)
            return result

        return seconds

    def seconds(
        self, batch: np.ndarray, kv_blocks: np.ndarray, prefill_tokens: np.ndarray, clock_index: int
    ) -> np.ndarray:
        return self.prepare(batch, kv_blocks, prefill_tokens)(clock_index)

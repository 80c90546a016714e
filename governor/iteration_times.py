"""Iteration times for the planner: the performance table, corrected online, plus prefill."""

from __future__ import annotations

import numpy as np

from governor.correction import OnlineCorrection
from governor.planner import PreparedTimes
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
    ) -> PreparedTimes:
        # np.clip costs more than the two bounds it applies
        batch_index = np.minimum(np.maximum(batch - 1, 0), self.table.grid.max_batch - 1)
        kv_index = np.minimum(kv_blocks // self.table.kv_bucket_blocks, self._buckets - 1)
        columns = batch_index * self._buckets + kv_index
        scale = (batch > 0).astype(np.float64)
        if self.correction is not None:
            scale *= self.correction.factors(batch)
        changes = (
            (columns[1:] != columns[:-1])
            | (scale[1:] != scale[:-1])
            | (prefill_tokens[1:] != prefill_tokens[:-1])
        )
        starts = np.flatnonzero(np.concatenate(([True], changes)))
        run_columns, run_scale = columns[starts], scale[starts]
        run_prefill = prefill_tokens[starts].astype(np.float64)
        by_clock, prefill_s = self._seconds_by_clock, self._prefill_s

        def run_seconds(clock_index: int) -> np.ndarray:
            return (
                by_clock[clock_index][run_columns] * run_scale
                + run_prefill * prefill_s[clock_index]
            )

        return PreparedTimes(starts, run_seconds)

    def seconds(
        self, batch: np.ndarray, kv_blocks: np.ndarray, prefill_tokens: np.ndarray, clock_index: int
    ) -> np.ndarray:
        """Seconds of each iteration at one clock (convenience; the planner uses prepare)."""
        prepared = self.prepare(batch, kv_blocks, prefill_tokens)
        lengths = np.diff(np.append(prepared.run_starts, len(batch)))
        return np.repeat(prepared.run_seconds(clock_index), lengths)

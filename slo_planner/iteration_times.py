"""Iteration times for the planner: the performance table, corrected online, plus prefill."""

from __future__ import annotations

import numpy as np

from predictor.arrays import FloatArray, IntArray
from predictor.performance import PerformanceTable
from slo_planner.correction import OnlineCorrection
from slo_planner.feasibility import PreparedTimes
from slo_planner.settings import PlannerSettings


class TableIterationTimes:
    """Seconds per iteration = 1 / table IPS x the online correction of its batch band,
    plus the prefill of the prompts starting in it (which the decode profile leaves out),
    stretched by 1/f like any SM-bound work. A prefill costs per token (the GEMMs) and
    per square token (causal attention: each token attends to those before it)."""

    def __init__(
        self,
        table: PerformanceTable,
        correction: OnlineCorrection | None = None,
        prefill_s_per_token: float = 0.0,
        prefill_s_per_square_token: float = 0.0,
    ) -> None:
        self.table = table
        self.clocks_mhz = table.clocks_mhz
        self.correction = correction
        batches, buckets, clocks = table.ips_table.shape
        # One row per clock, one column per (batch, KV bucket): a projection binds the
        # columns once, and each clock tried is then one contiguous gather.
        seconds = 1.0 / table.ips_table.astype(np.float64)
        self._seconds_by_clock: FloatArray = np.ascontiguousarray(
            seconds.reshape(batches * buckets, clocks).T
        )
        self._buckets = buckets
        stretch = table.clocks_mhz[-1] / table.clocks_mhz
        self._prefill_s: FloatArray = prefill_s_per_token * stretch
        self._prefill_square_s: FloatArray = prefill_s_per_square_token * stretch

    def prepare(
        self,
        batch: IntArray,
        kv_blocks: IntArray,
        prefill_tokens: IntArray,
        prefill_square_tokens: IntArray,
    ) -> PreparedTimes:
        # np.clip costs more than the two bounds it applies
        batch_index = np.minimum(np.maximum(batch - 1, 0), self.table.grid.max_batch - 1)
        kv_index = np.minimum(kv_blocks // self.table.kv_bucket_blocks, self._buckets - 1)
        columns: IntArray = batch_index * self._buckets + kv_index
        scale = (batch > 0).astype(np.float64)
        if self.correction is not None:
            scale *= self.correction.factors(batch)
        changes = (
            (columns[1:] != columns[:-1])
            | (scale[1:] != scale[:-1])
            | (prefill_tokens[1:] != prefill_tokens[:-1])
            | (prefill_square_tokens[1:] != prefill_square_tokens[:-1])
        )
        starts = np.flatnonzero(np.concatenate(([True], changes)))
        run_columns: IntArray = columns[starts]
        run_scale: FloatArray = scale[starts]
        run_prefill: FloatArray = prefill_tokens[starts].astype(np.float64)
        run_square: FloatArray = prefill_square_tokens[starts].astype(np.float64)
        by_clock, prefill_s = self._seconds_by_clock, self._prefill_s
        square_s = self._prefill_square_s

        def run_seconds(clock_index: int) -> FloatArray:
            at_clock: FloatArray = by_clock[clock_index]
            prefill_s_at_clock: np.float64 = prefill_s[clock_index]
            square_s_at_clock: np.float64 = square_s[clock_index]
            seconds: FloatArray = at_clock[run_columns] * run_scale
            seconds += run_prefill * prefill_s_at_clock + run_square * square_s_at_clock
            return seconds

        return PreparedTimes(starts, run_seconds)

    def seconds(
        self,
        batch: IntArray,
        kv_blocks: IntArray,
        prefill_tokens: IntArray,
        clock_index: int,
        prefill_square_tokens: IntArray | None = None,
    ) -> FloatArray:
        """Seconds of each iteration at one clock (convenience; the planner uses prepare)."""
        square = prefill_tokens**2 if prefill_square_tokens is None else prefill_square_tokens
        prepared = self.prepare(batch, kv_blocks, prefill_tokens, square)
        lengths = np.diff(np.append(prepared.run_starts, len(batch)))
        return np.repeat(prepared.run_seconds(clock_index), lengths)


def planned_iteration_times(
    table: PerformanceTable, settings: PlannerSettings, correction: OnlineCorrection | None = None
) -> TableIterationTimes:
    """The iteration times a deployment plans with: its table, priced prefill included."""
    return TableIterationTimes(
        table,
        correction,
        prefill_s_per_token=settings.prefill_us_per_token / 1e6,
        prefill_s_per_square_token=settings.prefill_ns_per_square_token / 1e9,
    )

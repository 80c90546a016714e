"""Iteration times for the planner: the performance table, corrected online, plus prefill."""

from __future__ import annotations

import numpy as np

from predictor.arrays import FloatArray, IntArray
from predictor.performance import PerformanceTable
from slo_planner.correction import OnlineCorrection
from slo_planner.feasibility import PreparedTimes
from slo_planner.settings import PlannerSettings


class TableIterationTimes:
    """Seconds per iteration = 1 / table IPS x the online correction of its batch band.

    An iteration that also prefills prompts (which the decode profile leaves out) takes
    the longer of its decode and of a lone request's first iteration: the profiled decode
    of one plus the prompts' price, per token (the GEMMs) and per square token (causal
    attention), stretched by 1/f like any SM-bound work. The decode streams weights and
    cache from memory while the prefill keeps the SMs busy, so the two overlap: adding
    them priced an iteration up to a decode's length too slow, and a request waiting
    behind a few prefills then saw its first token projected ~70 ms late on average
    (`throttllem bench projection`); the longer of the two is within ~10 ms."""

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
        self.prefill_s_per_token = prefill_s_per_token  # at the highest clock
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

        prefilling = run_prefill > 0
        any_prefill = bool(prefilling.any())

        def run_seconds(clock_index: int) -> FloatArray:
            at_clock: FloatArray = by_clock[clock_index]
            decode_s: FloatArray = at_clock[run_columns] * run_scale
            if not any_prefill:
                return decode_s
            lone_s = (
                at_clock[0]
                + run_prefill * prefill_s[clock_index]
                + run_square * square_s[clock_index]
            )
            seconds: FloatArray = np.where(prefilling, np.maximum(decode_s, lone_s), decode_s)
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


REFERENCE_BATCH = 16  # the batch a prefill token's relative cost is measured against


def prefill_weight(times: TableIterationTimes) -> float:
    """A prompt token's engine time over a generated token's, at the highest clock: a
    batch of `REFERENCE_BATCH` (the engine's largest if smaller) over a half-full cache
    decodes one token per request in one iteration. The energy rule's prefill weight."""
    grid = times.table.grid
    batch = min(REFERENCE_BATCH, grid.max_batch)
    iteration_s = times.seconds(
        np.array([batch]), np.array([grid.max_kv_blocks // 2]), np.array([0]),
        clock_index=len(times.clocks_mhz) - 1,
    )[0]  # fmt: skip
    return float(times.prefill_s_per_token / (iteration_s / batch))

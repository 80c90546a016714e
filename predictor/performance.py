"""The performance model: iterations per second from (tp, batch, kv_blocks, freq_mhz).

The ONNX model (gradient-boosted trees) is loaded once and evaluated once, over the
whole grid its metadata describes (every batch size x KV-block buckets x every supported
clock), into a dense table; after that a prediction is an array index, cheap enough to
run for every iteration of a projection at every decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from predictor.arrays import Float32Array, FloatArray, IntArray
from predictor.errors import ModelFileError
from predictor.onnx_file import load_onnx

FEATURES = ("tp", "batch", "kv_blocks", "freq_mhz")
GRID_METADATA_KEY = "throttllem.performance_grid"
MAX_TABLE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PerformanceGrid:
    """The region the model was profiled on, and so the region the table spans."""

    tp: int
    max_batch: int
    max_kv_blocks: int
    min_clock_mhz: int
    max_clock_mhz: int
    clock_step_mhz: int

    def clocks_mhz(self) -> IntArray:
        """Ascending."""
        return np.arange(self.min_clock_mhz, self.max_clock_mhz + 1, self.clock_step_mhz)

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PerformanceGrid:
        return cls(**{key: int(data[key]) for key in cls.__dataclass_fields__})


class PerformanceModel:
    """The ONNX model itself: exact, and about 5 us per point in a batch."""

    def __init__(self, path: Path) -> None:
        self._session, metadata = load_onnx(path, GRID_METADATA_KEY)
        try:
            self.grid = PerformanceGrid.from_json(metadata)
        except (KeyError, ValueError, TypeError) as error:
            raise ModelFileError(
                path, f"no valid {GRID_METADATA_KEY} metadata ({error})"
            ) from error
        self._input = self._session.get_inputs()[0].name
        self.path = path

    def ips(self, features: npt.ArrayLike) -> FloatArray:
        """Iterations per second for rows of FEATURES."""
        output = self._session.run(None, {self._input: np.asarray(features, dtype=np.float32)})[0]
        return np.asarray(output, dtype=np.float64).reshape(-1)


class PerformanceTable:
    """Iterations per second, precomputed over the grid: `ips[batch - 1, kv_bucket, clock]`."""

    def __init__(self, ips: Float32Array, grid: PerformanceGrid, kv_bucket_blocks: int) -> None:
        self.ips_table = ips
        self.grid = grid
        self.kv_bucket_blocks = kv_bucket_blocks
        self.clocks_mhz = grid.clocks_mhz()
        self._last_bucket = ips.shape[1] - 1

    @classmethod
    def from_model(cls, model: PerformanceModel, kv_buckets: int = 256) -> PerformanceTable:
        grid = model.grid
        kv_buckets = max(1, min(kv_buckets, grid.max_kv_blocks + 1))
        bucket_blocks = -(-(grid.max_kv_blocks + 1) // kv_buckets)
        batches = np.arange(1, grid.max_batch + 1)
        kv_points = np.arange(kv_buckets) * bucket_blocks + (bucket_blocks - 1) / 2
        clocks = grid.clocks_mhz()
        size = len(batches) * kv_buckets * len(clocks) * np.dtype(np.float32).itemsize
        if size > MAX_TABLE_BYTES:
            raise ValueError(
                f"a {size / 2**20:.0f} MB table is over the {MAX_TABLE_BYTES // 2**20} MB budget"
            )
        b, k, f = np.meshgrid(batches, kv_points, clocks, indexing="ij")
        features = np.column_stack([np.full(b.size, grid.tp), b.ravel(), k.ravel(), f.ravel()])
        ips = model.ips(features).reshape(b.shape).astype(np.float32)
        return cls(np.maximum(ips, 1e-3), grid, bucket_blocks)

    @property
    def nbytes(self) -> int:
        return int(self.ips_table.nbytes)

    def kv_point(self, bucket: int) -> float:
        """The KV-block value the table holds for a bucket (its middle)."""
        return bucket * self.kv_bucket_blocks + (self.kv_bucket_blocks - 1) / 2

    def clock_index(self, clock_mhz: int) -> int:
        index = int(np.searchsorted(self.clocks_mhz, clock_mhz))
        if index >= len(self.clocks_mhz) or self.clocks_mhz[index] != clock_mhz:
            raise ValueError(f"{clock_mhz} MHz is not on the profiled grid")
        return index

    @overload
    def ips(self, batch: int, kv_blocks: int, clock_index: int) -> np.float32: ...

    @overload
    def ips(self, batch: IntArray, kv_blocks: IntArray | int, clock_index: int) -> Float32Array: ...

    @overload
    def ips(self, batch: int, kv_blocks: IntArray, clock_index: int) -> Float32Array: ...

    def ips(
        self, batch: IntArray | int, kv_blocks: IntArray | int, clock_index: int
    ) -> Float32Array | np.float32:
        """Vectorised lookup; batch sizes and KV beyond the grid are clamped to its edge.
        One value for scalar arguments, else an array of their broadcast shape."""
        batch_index = np.clip(np.asarray(batch) - 1, 0, self.grid.max_batch - 1)
        kv_index = np.clip(np.asarray(kv_blocks) // self.kv_bucket_blocks, 0, self._last_bucket)
        looked_up: Float32Array | np.float32 = self.ips_table[batch_index, kv_index, clock_index]
        return looked_up

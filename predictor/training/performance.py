"""`throttllem train performance`: profile rows -> LightGBM -> ONNX, with the paper's table.

The report trains on 90 % and tests on 10 %, then trains on 10 % and tests on 90 % (the
paper's check that a small profile suffices). The exported model is trained on every row.
The grid the runtime table spans (tensor-parallel degree, batch sizes, KV blocks, clocks)
travels in the ONNX file's metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from predictor.arrays import Float32Array, FloatArray
from predictor.performance import FEATURES, GRID_METADATA_KEY, PerformanceGrid
from predictor.training.metrics import regression_metrics, split_indices

if TYPE_CHECKING:
    from lightgbm import LGBMRegressor
    from onnx import ModelProto

SPLITS = {"90/10": 0.9, "10/90": 0.1}
MIN_ROWS = 20  # the 10/90 split must still have rows to train on


@dataclass(frozen=True)
class PerformanceData:
    features: Float32Array  # columns FEATURES
    ips: FloatArray

    @classmethod
    def from_csv(cls, path: Path) -> PerformanceData:
        table = np.genfromtxt(path, delimiter=",", names=True, dtype=float)
        if table.size == 0:
            raise ValueError(f"{path} has no rows")
        missing = [c for c in (*FEATURES, "ips") if c not in (table.dtype.names or ())]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing}")
        table = np.atleast_1d(table)
        table = table[table["batch"] >= 1]  # batch 0 is the idle power row (predictor/power.py)
        if len(table) < MIN_ROWS:
            raise ValueError(f"{path} has {len(table)} rows; training needs at least {MIN_ROWS}")
        features = np.column_stack([table[c] for c in FEATURES]).astype(np.float32)
        return cls(features, table["ips"].astype(float))

    def grid(self) -> PerformanceGrid:
        tp = np.unique(self.features[:, 0]).astype(int)
        clocks = np.unique(self.features[:, 3]).astype(int)
        step = 0
        for difference in np.diff(clocks):
            step = gcd(step, int(difference))
        return PerformanceGrid(
            tp=int(tp[0]) if len(tp) == 1 else 0,
            max_batch=int(self.features[:, 1].max()),
            max_kv_blocks=int(self.features[:, 2].max()),
            min_clock_mhz=int(clocks.min()),
            max_clock_mhz=int(clocks.max()),
            clock_step_mhz=step or 1,
        )


def _regressor(seed: int) -> LGBMRegressor:
    from lightgbm import LGBMRegressor

    return LGBMRegressor(
        n_estimators=300, learning_rate=0.05, num_leaves=31, min_child_samples=5,
        subsample=0.9, subsample_freq=1, random_state=seed, verbose=-1,
        deterministic=True, force_row_wise=True,
    )  # fmt: skip


def evaluate(data: PerformanceData, seed: int = 0) -> dict[str, dict[str, float]]:
    splits = {}
    for name, fraction in SPLITS.items():
        train, test = split_indices(len(data.ips), fraction, seed)
        model = _regressor(seed).fit(data.features[train], data.ips[train])
        predicted = np.asarray(model.predict(data.features[test]), dtype=np.float64)
        scores = regression_metrics(data.ips[test], predicted)
        splits[name] = {
            "r2": scores["r2"], "mape_pct": scores["mape_pct"], "mae_ips": scores["mae"],
            "train_rows": len(train), "test_rows": len(test),
        }  # fmt: skip
    return splits


def train_performance(
    data_path: Path, out_path: Path, report_path: Path | None, seed: int = 0
) -> dict[str, Any]:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    data = PerformanceData.from_csv(data_path)
    report: dict[str, Any] = {
        "data": data_path.name,
        "rows": len(data.ips),
        "splits": evaluate(data, seed),
    }
    model = _regressor(seed).fit(data.features, data.ips)
    onnx_model: ModelProto = convert_lightgbm(
        model, initial_types=[("features", FloatTensorType([None, len(FEATURES)]))], target_opset=15
    )
    grid = data.grid()
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = GRID_METADATA_KEY, json.dumps(grid.to_json())
    out_path.write_bytes(onnx_model.SerializeToString())
    report["grid"] = grid.to_json()
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report

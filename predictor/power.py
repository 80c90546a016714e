"""The power model: one GPU's power while the engine runs a batch at a clock, and idle.

Fitted from the profile's rows (`throttllem profile` records each window's mean power
per GPU, and a first row with the GPUs idle): per profiled clock, power is a line in the
batch size, `intercept_w + per_batch_w x batch`, and between profiled clocks the lines
are interpolated. Power is set mostly by the clock (the paper measures it roughly flat
across batch sizes), so a line per clock is enough, and the holdout error says so.
Stored as JSON beside the performance model (`power-<gpu>-<model>-tp<N>.json`).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor.errors import ModelFileError

HOLDOUT_SHARE = 0.2


@dataclass(frozen=True)
class PowerModel:
    idle_w: float  # one GPU, nothing to do
    clocks_mhz: tuple[int, ...]  # ascending
    intercept_w: tuple[float, ...]
    per_batch_w: tuple[float, ...]
    holdout_mape: float | None = None  # the fit's error on rows it was not fitted on

    def busy_w(self, clock_mhz: float, batch: float) -> float:
        """One GPU's power while a batch of `batch` runs at `clock_mhz`."""
        intercept = float(np.interp(clock_mhz, self.clocks_mhz, self.intercept_w))
        slope = float(np.interp(clock_mhz, self.clocks_mhz, self.per_batch_w))
        return max(self.idle_w, intercept + slope * batch)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_file(cls, path: Path) -> PowerModel:
        try:
            data = json.loads(path.read_text())
            return cls(float(data["idle_w"]), tuple(int(c) for c in data["clocks_mhz"]),
                       tuple(float(w) for w in data["intercept_w"]),
                       tuple(float(w) for w in data["per_batch_w"]),
                       data.get("holdout_mape"))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelFileError(path, f"not a power model ({error})") from error


def fit_power(rows: list[tuple[int, int, float]], idle_w: float) -> PowerModel:
    """`rows`: (batch, clock MHz, one GPU's power W) of busy windows."""
    by_clock: dict[int, list[tuple[int, float]]] = {}
    for batch, clock_mhz, power_w in rows:
        by_clock.setdefault(clock_mhz, []).append((batch, power_w))
    clocks, intercepts, slopes = [], [], []
    for clock_mhz in sorted(by_clock):
        batches = np.array([b for b, _ in by_clock[clock_mhz]], dtype=np.float64)
        powers = np.array([p for _, p in by_clock[clock_mhz]], dtype=np.float64)
        if len(set(batches.tolist())) > 1:
            slope, intercept = np.polyfit(batches, powers, 1)
        else:
            slope, intercept = 0.0, float(powers.mean())
        clocks.append(clock_mhz)
        intercepts.append(float(intercept))
        slopes.append(float(slope))
    if not clocks:
        raise ValueError("no busy rows with a measured power")
    return PowerModel(idle_w, tuple(clocks), tuple(intercepts), tuple(slopes))


def fit_power_with_holdout(
    rows: list[tuple[int, int, float]], idle_w: float, seed: int = 0
) -> PowerModel:
    """The fit on every row, with its mean absolute percentage error on a random
    `HOLDOUT_SHARE` of them when fitted on the rest."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    cut = max(1, int(len(shuffled) * HOLDOUT_SHARE))
    held, kept = shuffled[:cut], shuffled[cut:]
    mape = None
    if kept:
        trial = fit_power(kept, idle_w)
        errors = [abs(trial.busy_w(c, b) - p) / p for b, c, p in held if p > 0]
        mape = float(np.mean(errors)) if errors else None
    model = fit_power(rows, idle_w)
    return PowerModel(model.idle_w, model.clocks_mhz, model.intercept_w, model.per_batch_w, mape)

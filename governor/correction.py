"""Online correction of the performance model from observed iteration times.

Per batch-size band, an exponentially weighted ratio of observed to predicted iteration
time. A model that is 10 % optimistic drifts towards a factor of 1.1 in that band within
a few dozen observations, and the planner's timeline stretches with it.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BAND_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class OnlineCorrection:
    def __init__(
        self, smoothing: float = 0.1, band_edges: tuple[int, ...] = DEFAULT_BAND_EDGES
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        self._edges = np.asarray(band_edges)
        self._smoothing = smoothing
        self.factors_by_band = np.ones(len(band_edges))
        self.observations = np.zeros(len(band_edges), dtype=np.int64)

    def band(self, batch: np.ndarray | int) -> np.ndarray:
        return np.clip(
            np.searchsorted(self._edges, batch, side="right") - 1, 0, len(self._edges) - 1
        )

    def observe(self, batch: int, predicted_s: float, observed_s: float) -> None:
        """One iteration (or the mean of several) at `batch`: how long it took vs the model."""
        if predicted_s <= 0 or observed_s <= 0 or batch < 1:
            return
        band = int(self.band(batch))
        ratio = min(max(observed_s / predicted_s, 0.25), 4.0)  # one outlier must not swing it
        self.factors_by_band[band] += self._smoothing * (ratio - self.factors_by_band[band])
        self.observations[band] += 1

    def factors(self, batch: np.ndarray) -> np.ndarray:
        return self.factors_by_band[self.band(batch)]

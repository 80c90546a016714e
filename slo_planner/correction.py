"""Online correction of the performance model from observed iteration times.

Per batch-size band, an exponentially weighted mean and variance of the ratio of observed
to predicted iteration time; the factor applied is mean + z x standard deviation, so the
planner keeps headroom for the iteration-to-iteration spread and not only for the bias. A
model that is 10 % optimistic drifts to a factor of about 1.1 plus that headroom within a
few dozen observations, and the planner's timeline stretches with it.
"""

from __future__ import annotations

from typing import overload

import numpy as np

from predictor.arrays import FloatArray, IntArray

DEFAULT_BAND_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class OnlineCorrection:
    def __init__(
        self,
        smoothing: float = 0.05,
        headroom_sigmas: float = 2.33,
        band_edges: tuple[int, ...] = DEFAULT_BAND_EDGES,
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        self._edges: IntArray = np.asarray(band_edges, dtype=np.int64)
        self._smoothing = smoothing
        self._sigmas = headroom_sigmas
        self._mean: FloatArray = np.ones(len(band_edges))
        self._variance: FloatArray = np.zeros(len(band_edges))
        self.observations: IntArray = np.zeros(len(band_edges), dtype=np.int64)

    @property
    def factors_by_band(self) -> FloatArray:
        return self._mean + self._sigmas * np.sqrt(self._variance)

    @overload
    def band(self, batch: int) -> np.int64: ...

    @overload
    def band(self, batch: IntArray) -> IntArray: ...

    def band(self, batch: IntArray | int) -> IntArray | np.int64:
        return np.clip(
            np.searchsorted(self._edges, batch, side="right") - 1, 0, len(self._edges) - 1
        )

    def observe(self, batch: int, predicted_s: float, observed_s: float) -> None:
        """One iteration at `batch`: how long it took against what the model said."""
        if predicted_s <= 0 or observed_s <= 0 or batch < 1:
            return
        band = int(self.band(batch))
        ratio = min(max(observed_s / predicted_s, 0.25), 4.0)  # one outlier must not swing it
        difference = ratio - self._mean[band]
        increment = self._smoothing * difference
        self._mean[band] += increment
        self._variance[band] = (1 - self._smoothing) * (
            self._variance[band] + difference * increment
        )
        self.observations[band] += 1

    def factors(self, batch: IntArray) -> FloatArray:
        return self.factors_by_band[self.band(batch)]

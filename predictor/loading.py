"""The predictors the gateway loads at start, each optional.

A missing or corrupt model file is logged with its name and counted in the metrics; the
gateway then serves without it (at default clocks) rather than not at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from predictor.errors import ModelFileError
from predictor.length import LengthPredictor
from predictor.performance import PerformanceModel, PerformanceTable
from predictor.power import PowerModel
from predictor.settings import PredictorSettings

log = logging.getLogger(__name__)

PERFORMANCE_KV_BUCKETS = 128


@dataclass
class Predictions:
    length: LengthPredictor | None = None
    performance: PerformanceTable | None = None
    power: PowerModel | None = None
    problems: dict[str, str] = field(default_factory=dict)

    def ready(self, name: str) -> bool:
        return getattr(self, name) is not None


def load_predictions(settings: PredictorSettings) -> Predictions:
    """Blocking (the performance table is computed here): call it from a thread."""
    predictions = Predictions()
    if settings.length_model_path is not None:
        try:
            predictions.length = LengthPredictor(settings.length_model_path)
        except ModelFileError as error:
            predictions.problems["length"] = str(error)
            log.error("serving without length predictions: %s", error)
    if settings.performance_model_path is not None:
        try:
            model = PerformanceModel(settings.performance_model_path)
            predictions.performance = PerformanceTable.from_model(model, PERFORMANCE_KV_BUCKETS)
        except (ModelFileError, ValueError) as error:
            predictions.problems["performance"] = str(error)
            log.error("serving at default clocks, without the performance model: %s", error)
    if settings.power_model_path is not None:
        try:
            predictions.power = PowerModel.from_file(settings.power_model_path)
        except ModelFileError as error:
            predictions.problems["power"] = str(error)
            log.error("serving without energy predictions: %s", error)
    return predictions

"""The predictors' settings: which model files to load (part of `THROTTLLEM_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class PredictorSettings(BaseModel):
    tokenizer_path: Path | None = Field(
        None,
        description="tokenizer.json of the served model; default: the bundled Llama 3 tokenizer.",
    )
    length_model_path: Path | None = Field(
        None,
        description="ONNX output-length model (onnx_models/length-*.onnx); none: no length "
        "predictions, and the governor holds default clocks.",
    )
    performance_model_path: Path | None = Field(
        None,
        description="ONNX performance model (onnx_models/performance-*.onnx); none: the "
        "governor holds default clocks.",
    )
    power_model_path: Path | None = Field(
        None,
        description="Power model (onnx_models/power-*.json, `throttllem train power`); none: "
        "no predicted energy (`usage.predicted_energy_j`).",
    )

"""Loading a shipped ONNX model: one core, our metadata, and errors that name the file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from predictor.arrays import Float32Array
from predictor.errors import ModelFileError


class OnnxNode(Protocol):
    """An input or output of the model (`onnxruntime.NodeArg`)."""

    @property
    def name(self) -> str: ...


class OnnxMetadata(Protocol):
    """The model's metadata (`onnxruntime.ModelMetadata`)."""

    @property
    def custom_metadata_map(self) -> dict[str, str]: ...


class OnnxSession(Protocol):
    """The part of `onnxruntime.InferenceSession` the predictors use."""

    def get_inputs(self) -> Sequence[OnnxNode]: ...

    def get_outputs(self) -> Sequence[OnnxNode]: ...

    def get_modelmeta(self) -> OnnxMetadata: ...

    def run(
        self, output_names: Sequence[str] | None, input_feed: Mapping[str, Float32Array]
    ) -> Sequence[object]:
        """One result per output asked for (all of them for None): arrays for tensors."""


def load_onnx(path: Path, metadata_key: str) -> tuple[OnnxSession, dict[str, Any]]:
    """The onnxruntime session and the JSON stored under `metadata_key`."""
    import onnxruntime

    if not path.is_file():
        raise ModelFileError(path, "not found")
    try:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session: OnnxSession = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelFileError(path, f"not a loadable ONNX model ({error})") from error
    try:
        metadata = json.loads(session.get_modelmeta().custom_metadata_map[metadata_key])
    except (KeyError, ValueError) as error:
        raise ModelFileError(path, f"no valid {metadata_key} metadata ({error})") from error
    return session, metadata

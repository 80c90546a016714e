"""Loading a shipped ONNX model: one core, our metadata, and errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from predictor.errors import ModelFileError


def load_onnx(path: Path, metadata_key: str) -> tuple[Any, dict[str, Any]]:
    """The onnxruntime session and the JSON stored under `metadata_key`."""
    import onnxruntime

    if not path.is_file():
        raise ModelFileError(path, "not found")
    try:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelFileError(path, f"not a loadable ONNX model ({error})") from error
    try:
        metadata = json.loads(session.get_modelmeta().custom_metadata_map[metadata_key])
    except (KeyError, ValueError) as error:
        raise ModelFileError(path, f"no valid {metadata_key} metadata ({error})") from error
    return session, metadata

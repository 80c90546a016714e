"""Where the shipped models live inside the `onnx_models` package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def models_dir() -> Path:
    return Path(str(resources.files("onnx_models")))


def performance_model_path(profile: str) -> Path:
    """`a100-40gb/llama-2-13b/tp1` -> onnx_models/performance-a100-40gb-llama-2-13b-tp1.onnx"""
    return models_dir() / f"performance-{profile.replace('/', '-')}.onnx"


def power_model_path(profile: str) -> Path:
    """`a100-40gb/llama-2-13b/tp1` -> onnx_models/power-a100-40gb-llama-2-13b-tp1.json"""
    return models_dir() / f"power-{profile.replace('/', '-')}.json"


def length_model_path(responses_model: str) -> Path:
    """`Meta-Llama-3-8B-Instruct` -> onnx_models/length-Meta-Llama-3-8B-Instruct.onnx"""
    return models_dir() / f"length-{responses_model}.onnx"

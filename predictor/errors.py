"""Errors of the predictor package."""

from __future__ import annotations

from pathlib import Path


class ModelFileError(RuntimeError):
    """A model file is missing, unreadable or not what it should be. Names the file."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"model file {path}: {problem}")
        self.path = path

"""Where the shared data sets live, read by path (never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(relative: str) -> Path:
    """The file under ../shared/data; skips when absent on a developer's machine, but in CI
    (where ../shared is always present) a missing file is a failure."""
    path = DATA_DIR / relative
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing in CI")
        pytest.skip(f"{path} is absent: these tests need the shared data sets")
    return path

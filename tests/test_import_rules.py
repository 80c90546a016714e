"""The import rules (pyproject.toml's import-linter contracts) hold, and breaking one
fails the check: run on a copy of the packages, with one forbidden import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("throttllem", "gateway", "governor", "slo_scoreboard", "slo_planner", "predictor",
            "onnx_models", "simulator")  # fmt: skip
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def copy_of_the_project(into: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", into / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, into / package,
                        ignore=shutil.ignore_patterns("*.onnx", "*.json", "__pycache__"))  # fmt: skip
    return into


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(project)}  # the copy, not the installed tree
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_project_keeps_every_contract(tmp_path: Path):
    result = lint_imports(copy_of_the_project(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("governor/loop.py", "import gateway.app", "Each package imports only the packages below"),
        ("slo_planner/clock.py", "import slo_scoreboard.store", "Each package imports only"),
        ("predictor/board.py", "import gateway.errors", "Nothing but the composition root"),
        ("gateway/slo.py", "import simulator.engine", "Nothing that serves or governs"),
    ],
)
def test_a_forbidden_import_breaks_the_check(tmp_path: Path, module: str, line: str,
                                             contract: str):  # fmt: skip
    project = copy_of_the_project(tmp_path)
    target = project / module
    target.write_text(target.read_text() + f"\n{line}  # a back-edge\n")
    result = lint_imports(project)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(row.startswith(contract) for row in broken), result.stdout

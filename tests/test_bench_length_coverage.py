"""`throttllem bench length-coverage` on one pair: answers the predictor never saw."""

import json
from pathlib import Path

import pytest

from tests.data import shared_data
from throttllem.cli import main


def test_calibration_brings_unseen_answers_to_the_nominal_coverage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    answers = shared_data("alpaca_eval/Mistral-7B-Instruct-v0.2.json").parent
    report_path = tmp_path / "coverage.json"
    code = main(["bench", "length-coverage", "--alpaca-eval", str(answers), "--seeds", "1",
                 "--pair", "Meta-Llama-3-8B-Instruct:Mistral-7B-Instruct-v0.2",
                 "--json", str(report_path)])  # fmt: skip
    assert code == 0
    assert (
        "| Meta-Llama-3-8B-Instruct | Mistral-7B-Instruct-v0.2 | 0.50 |" in capsys.readouterr().out
    )
    report = json.loads(report_path.read_text())
    (pair,) = report["pairs"]
    assert pair["unseen"] and pair["prompts"] == 805
    levels = {level["nominal"]: level for level in pair["levels"]}
    assert set(levels) == {0.5, 0.9, 0.95}
    # Mistral answers shorter than Llama 3: the raw median covers far more than half ...
    assert levels[0.5]["raw_coverage"] > 0.65
    # ... and the calibrated level plans below the median to cover just half.
    assert levels[0.5]["level_at_end"] < 0.5
    for nominal, level in levels.items():
        assert abs(level["calibrated_coverage"] - nominal) <= 0.03
    assert report["within_target"]


def test_a_pair_needs_both_names(capsys: pytest.CaptureFixture[str]):
    assert main(["bench", "length-coverage", "--pair", "Meta-Llama-3-8B-Instruct"]) == 2
    assert "LENGTH_MODEL:ANSWERS" in capsys.readouterr().err

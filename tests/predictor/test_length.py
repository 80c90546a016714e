"""The length pipeline on small made-up data, and the prediction's arithmetic."""

import json
from pathlib import Path

import numpy as np
import pytest

from predictor.errors import ModelFileError
from predictor.length import LengthPrediction, LengthPredictor, LengthSpec
from predictor.tokenizer import PromptTokenizer
from predictor.training.length import bucket_spec, train_length

TOKENIZER = PromptTokenizer.from_file()
TOPICS = ["rivers", "owls", "bridges", "tea", "comets", "violins", "glaciers", "maps", "bees", "salt",
          "lanterns", "moss", "trains", "clocks", "whales", "kites", "deserts", "ink", "pumpkins", "caves"]  # fmt: skip


def made_up_responses(path: Path) -> Path:
    """Short answers to 'Name one …', long ones to 'Write a long essay about …'."""
    rows = []
    for i, topic in enumerate(TOPICS * 2):
        rows.append(
            {"instruction": f"Name one fact about {topic} ({i}).", "output": f"{topic} exist." * 2}
        )
        essay = " ".join(f"Paragraph {p} about {topic} goes on and on." for p in range(30 + i % 7))
        rows.append({"instruction": f"Write a long essay about {topic} ({i}).", "output": essay})
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("length")
    responses = made_up_responses(folder / "responses.json")
    report = train_length(
        responses, folder / "length.onnx", folder / "report.json", TOKENIZER, context_window=4096
    )
    return folder / "length.onnx", report


def test_the_report_has_the_metrics_and_both_baselines(trained):
    _, report = trained
    assert {"bucket_accuracy", "mae_tokens", "coverage", "quantile"} <= set(report)
    assert {"baseline_median_mae_tokens", "baseline_prompt_length_mae_tokens"} <= set(report)
    assert report["quantile"] == 0.9
    assert (
        report["mae_tokens"] < 0.5 * report["baseline_median_mae_tokens"]
    )  # the data is that easy


def test_the_model_tells_short_answers_from_long_ones(trained):
    predictor = LengthPredictor(trained[0])
    short = predictor.predict(TOKENIZER.encode("Name one fact about otters (99)."))
    long = predictor.predict(TOKENIZER.encode("Write a long essay about otters (99)."))
    assert short.point() < 32 < long.point()
    assert short.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_max_tokens_caps_the_prediction(trained):
    long = LengthPredictor(trained[0]).predict(
        TOKENIZER.encode("Write a long essay about otters."), max_tokens=50
    )
    assert long.point() == 50
    assert long.bound(0.9) == 50


def make_prediction(max_tokens: int | None = None) -> LengthPrediction:
    lengths = np.array([20, 30, 40, 100, 200, 300, 400, 500, 600, 1000])
    spec = bucket_spec(lengths, 4096)
    probabilities = np.full(len(spec.edges) - 1, 1 / (len(spec.edges) - 1))
    return LengthPrediction(probabilities, spec, max_tokens)


def test_quantiles_rise_with_q_and_the_bound_is_above_the_point():
    prediction = make_prediction()
    quantiles = [prediction.quantile(q) for q in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)]
    assert quantiles == sorted(quantiles)
    assert prediction.bound(0.9) > prediction.point()


def test_remaining_is_conditional_on_what_was_generated_not_a_jump_to_max_tokens():
    prediction = make_prediction(max_tokens=4000)
    point = prediction.point()
    past = point + 50
    remaining = prediction.remaining(past)
    assert remaining >= 1
    assert past + remaining < 4000
    assert past + prediction.remaining(past, q=0.9) >= past + remaining


def test_a_request_past_everything_seen_still_expects_one_more_token():
    prediction = make_prediction()
    assert prediction.remaining(5000) == 1


def test_calibration_maps_the_asked_quantile():
    spec = LengthSpec(
        (1, 16, 4096), ((1.0,) * 21, tuple(np.linspace(16, 4095, 21))), 8, ((0.5, 0.5), (0.9, 0.95))
    )
    assert spec.calibrated(0.9) == 0.95
    assert LengthSpec.from_json(spec.to_json()) == spec


def test_too_few_prompts_are_refused(tmp_path: Path):
    path = tmp_path / "few.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    with pytest.raises(ValueError, match="too few"):
        train_length(path, tmp_path / "m.onnx", None, TOKENIZER)


def test_a_missing_or_corrupt_length_model_is_named(tmp_path: Path):
    with pytest.raises(ModelFileError, match=r"absent\.onnx: not found"):
        LengthPredictor(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00\x01")
    with pytest.raises(ModelFileError, match=r"corrupt\.onnx"):
        LengthPredictor(corrupt)


def test_the_rest_of_an_answer_is_its_median_given_what_it_has_generated():
    from predictor.length import conditional_remaining, conditional_remaining_rows

    lengths = (300, 420, 600, 750, 1100)  # at 50, 75, 90, 95, 99 %
    assert conditional_remaining(lengths, 0) == 300  # nothing generated: the median
    # Having passed the median, half of what is left lies past the 75 % length.
    assert conditional_remaining(lengths, 300) == 420 - 300
    # An answer that outlives its prediction still has a rest worth planning for,
    # instead of always looking one token from its end.
    assert conditional_remaining(lengths, 1000) > 1
    assert conditional_remaining(lengths, 5000) == conditional_remaining(lengths, 1100) > 1
    ends = [g + conditional_remaining(lengths, g) for g in range(0, 1500, 25)]
    assert ends == sorted(ends)  # the expected end never moves earlier as it generates
    rows = conditional_remaining_rows(np.array([lengths, (10, 20, 30, 40, 50)]), np.array([300, 5]))
    assert list(rows) == [
        conditional_remaining(lengths, 300),
        conditional_remaining((10, 20, 30, 40, 50), 5),
    ]


def test_the_rest_at_a_level_is_that_quantile_of_what_is_left():
    from predictor.length import conditional_remaining, conditional_remaining_rows

    lengths = (300, 420, 600, 750, 1100)  # at 50, 75, 90, 95, 99 %
    rng = np.random.default_rng(3)
    rows = np.sort(rng.integers(1, 3000, (200, 5)), axis=1)
    generated = rng.integers(0, 4000, 200)
    # The default is the median, exactly as before the level existed.
    assert np.array_equal(
        conditional_remaining_rows(rows, generated, 0.5),
        conditional_remaining_rows(rows, generated),
    )
    # With nothing generated, a planning level reads back the length predicted at it.
    assert conditional_remaining(lengths, 0, 0.9) == 600
    assert conditional_remaining(lengths, 0, 0.99) == 1100
    # Having passed the median, the 90 % of what is left ends at the 95 % length.
    assert conditional_remaining(lengths, 300, 0.9) == 750 - 300
    assert conditional_remaining(lengths, 0, 0.995) > 1100  # past the last level: its slope
    # A higher level never asks for less: monotone in the level, for every row.
    rests = np.stack([conditional_remaining_rows(rows, generated, level)
                      for level in (0.05, 0.3, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995)])  # fmt: skip
    assert np.all(np.diff(rests, axis=0) >= 0)
    assert np.all(rests[-1] > rests[2])  # and past the median it asks for strictly more
    # One level per row is the same as each row on its own.
    levels = rng.uniform(0.05, 0.995, 200)
    each = [conditional_remaining(tuple(row), int(g), float(level))
            for row, g, level in zip(rows, generated, levels, strict=True)]  # fmt: skip
    assert list(conditional_remaining_rows(rows, generated, levels)) == each

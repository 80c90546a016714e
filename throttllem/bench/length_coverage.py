"""`throttllem bench length-coverage`: do the planned length quantiles cover what they claim?

For each (length model, answers) pair, the AlpacaEval prompts stream in a seeded shuffled
order, as completed requests would. Per nominal level, two coverages over the requests
after the first `calibration` ones: the raw quantile's (the predictor's own quantile at
the nominal) and the calibrated one's (`ConformalLevel`, which has seen every earlier
request complete). The answers of models the predictor was not trained on show how far
the raw quantiles drift; the calibrated ones should stay within 3 pp of the nominal.
Lengths are in Llama 3 tokens, as `read_prompt_set` counts them, capped at what the
context window leaves after the prompt (the engine stops there).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor.length import LengthPredictor, conditional_remaining_rows
from predictor.shipped import length_model_path
from predictor.tokenizer import PromptTokenizer
from slo_planner.length_risk import DEFAULT_STEP, ConformalLevel
from throttllem.replay.workload import read_prompt_set

# The shipped length models and the context window of the model each was trained for
# (simulator/profiles/models/*.json).
CONTEXT_WINDOW_TOKENS = {
    "Meta-Llama-3-8B-Instruct": 8192,
    "Meta-Llama-3-70B-Instruct": 8192,
    "llama-2-13b-chat-hf": 4096,
}
# Answers no shipped length model was trained on.
UNSEEN_ANSWERS = ("Mistral-7B-Instruct-v0.2", "gpt4_1106_preview", "Qwen1.5-72B-Chat")
DEFAULT_PAIRS = tuple(
    (model, answers) for model in CONTEXT_WINDOW_TOKENS for answers in (model, *UNSEEN_ANSWERS)
)
TARGET_PP = 3.0


@dataclass(frozen=True)
class CoverageOptions:
    alpaca_eval_dir: Path = Path("../shared/data/alpaca_eval")
    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS
    nominals: tuple[float, ...] = (0.5, 0.9, 0.95)
    calibration: int = 200  # requests seen before coverage is counted
    step: float = DEFAULT_STEP
    seed: int = 0  # the shuffle shown in the table
    seeds: int = 10  # shuffles seed, seed + 1, ...: the worst error over them is reported


def bench_length_coverage(options: CoverageOptions, json_path: Path | None) -> dict[str, Any]:
    tokenizer = PromptTokenizer.from_file()
    models: dict[str, LengthPredictor] = {}
    rows = []
    for model, answers in options.pairs:
        if model not in models:
            models[model] = LengthPredictor(length_model_path(model))
        window = CONTEXT_WINDOW_TOKENS.get(model, 8192)
        prompts = read_prompt_set(options.alpaca_eval_dir / f"{answers}.json", tokenizer,
                                  models[model], window)  # fmt: skip
        truth = np.minimum(prompts.output_tokens, np.maximum(1, window - prompts.prompt_tokens))
        levels = [pair_coverage(prompts.quantiles, truth, nominal, options)
                  for nominal in options.nominals]  # fmt: skip
        rows.append({"length_model": model, "answers": answers, "unseen": answers != model,
                     "prompts": len(truth), "levels": levels})  # fmt: skip
    worst_pp = max(level["worst_error_pp"] for row in rows for level in row["levels"])
    report = {
        "options": asdict(options) | {"alpaca_eval_dir": str(options.alpaca_eval_dir)},
        "pairs": rows,
        "worst_calibrated_error_pp": worst_pp,
        "target_pp": TARGET_PP,
        "within_target": worst_pp <= TARGET_PP,
    }
    print(markdown_table(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def pair_coverage(
    quantiles: np.ndarray, truth: np.ndarray, nominal: float, options: CoverageOptions
) -> dict[str, float]:
    """Raw and calibrated coverage after the first `options.calibration` requests, for
    the shown shuffle, and the worst calibrated error over all the shuffles."""
    raw_bounds = conditional_remaining_rows(quantiles, np.zeros(len(truth)), nominal)
    shown: dict[str, float] = {}
    errors_pp = []
    for seed in range(options.seed, options.seed + max(1, options.seeds)):
        order = np.random.default_rng(seed).permutation(len(truth))
        calibrated, level_after, level_end = stream(quantiles[order], truth[order], nominal,
                                                    options)  # fmt: skip
        errors_pp.append(abs(calibrated - nominal) * 100)
        if seed == options.seed:
            after = order[options.calibration :]
            shown = {
                "nominal": nominal,
                "raw_coverage": float(np.mean(truth[after] <= raw_bounds[after])),
                "calibrated_coverage": calibrated,
                "level_after_calibration": level_after,
                "level_at_end": level_end,
            }
    return shown | {"worst_error_pp": float(max(errors_pp))}


def stream(
    quantiles: np.ndarray, truth: np.ndarray, nominal: float, options: CoverageOptions
) -> tuple[float, float, float]:
    """One pass in the given order: the calibrated coverage after the calibration
    requests, the level when they are done, and the level at the end."""
    conformal = ConformalLevel(nominal, options.step)
    level_after = conformal.level
    covered = []
    for index, (row, length) in enumerate(zip(quantiles.tolist(), truth.tolist(), strict=True)):
        if index == options.calibration:
            level_after = conformal.level
        covered.append(conformal.observe(row, int(length)))
    counted = covered[options.calibration :]
    return float(np.mean(counted)) if counted else float("nan"), level_after, conformal.level


def markdown_table(report: dict[str, Any]) -> str:
    options = report["options"]
    shuffles = max(1, options["seeds"])
    lines = [
        f"Coverage of the planned length after {options['calibration']} completed requests "
        f"(step {options['step']:g}, shuffle seed {options['seed']}; worst over {shuffles} "
        "shuffles in the last column)",
        "",
        f"| length model | answers | nominal | raw | calibrated "
        f"| level at {options['calibration']} -> end | worst error pp |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for row in report["pairs"]:
        answers = row["answers"] + ("" if row["unseen"] else " (own)")
        for level in row["levels"]:
            lines.append(
                f"| {row['length_model']} | {answers} | {level['nominal']:.2f} "
                f"| {level['raw_coverage']:.3f} | {level['calibrated_coverage']:.3f} "
                f"| {level['level_after_calibration']:.3f} -> {level['level_at_end']:.3f} "
                f"| {level['worst_error_pp']:.1f} |"
            )
    verdict = "within" if report["within_target"] else "NOT within"
    lines += ["", f"worst calibrated error {report['worst_calibrated_error_pp']:.1f} pp: "
              f"{verdict} the ±{report['target_pp']:g} pp target"]  # fmt: skip
    return "\n".join(lines)

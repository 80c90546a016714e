"""`throttllem train length`: recorded answers -> bucket classifier -> ONNX, with a report.

Input: a JSON list of `{instruction, output}` (AlpacaEval's `model_outputs.json` format,
any model). Lengths are counted with the served model's tokenizer. The split is by prompt,
seeded; the report compares the model with two baselines on the held-out prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from predictor.arrays import Float32Array, FloatArray, IntArray
from predictor.length import LENGTH_METADATA_KEY, LengthPrediction, LengthSpec, prompt_features
from predictor.tokenizer import PromptTokenizer
from predictor.training.metrics import split_indices

if TYPE_CHECKING:
    from onnx import ModelProto
    from sklearn.linear_model import LogisticRegression

HASH_BUCKETS = 2048
FOLDS = 3
CALIBRATED_QUANTILES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
WITHIN_QUANTILES = 21
REGULARISATION_GRID = (0.3, 1.0, 3.0)


@dataclass(frozen=True)
class LengthData:
    prompts: list[str]
    prompt_ids: list[list[int]]
    lengths: IntArray  # tokens

    @classmethod
    def from_responses(cls, path: Path, tokenizer: PromptTokenizer) -> LengthData:
        try:
            rows = json.loads(path.read_text())
            pairs = {str(row["instruction"]): str(row["output"]) for row in rows}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path}: expected a JSON list of {{instruction, output}} ({error})"
            ) from error
        if len(pairs) < 20:
            raise ValueError(f"{path}: {len(pairs)} distinct prompts are too few to train on")
        prompts = list(pairs)
        return cls(
            prompts=prompts,
            prompt_ids=[tokenizer.encode(p) for p in prompts],
            lengths=np.array([max(1, tokenizer.count(pairs[p])) for p in prompts]),
        )

    def features(self, indices: IntArray) -> Float32Array:
        return np.stack([prompt_features(self.prompt_ids[i], HASH_BUCKETS) for i in indices])


def bucket_spec(lengths: IntArray, context_window: int) -> LengthSpec:
    """Powers-of-two buckets (16, 32, ... up to the context window), empty ones merged
    into their lower neighbour, with each bucket's own length quantiles."""
    top = max(context_window, int(lengths.max()) + 1)
    powers = [16]
    while powers[-1] < top:
        powers.append(powers[-1] * 2)
    edges = [1, *[p for p in powers if p < top], top]
    labels = np.digitize(lengths, edges[1:-1])
    kept = [0, *[b for b in range(1, len(edges) - 1) if np.any(labels == b)]]
    merged_edges = [edges[b] for b in kept] + [top]
    merged_labels = np.digitize(lengths, merged_edges[1:-1])
    within = []
    for bucket in range(len(kept)):
        members = lengths[merged_labels == bucket]
        if len(members):
            within.append(
                tuple(float(v) for v in np.quantile(members, np.linspace(0, 1, WITHIN_QUANTILES)))
            )
        else:
            low, high = merged_edges[bucket], merged_edges[bucket + 1] - 1
            within.append(tuple(float(v) for v in np.linspace(low, high, WITHIN_QUANTILES)))
    return LengthSpec(tuple(merged_edges), tuple(within), HASH_BUCKETS)


def labels_of(lengths: IntArray, spec: LengthSpec) -> IntArray:
    return np.digitize(lengths, spec.edges[1:-1])


def _classifier(c: float) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000)


def _fit(
    features: Float32Array, lengths: IntArray, spec: LengthSpec, seed: int
) -> tuple[LogisticRegression, LengthSpec]:
    """Pick the regularisation by cross-validated log-loss on the training prompts (the
    planner uses the whole distribution, so a proper score picks it), calibrate the
    quantiles on the same out-of-fold predictions, then fit on all of them."""
    buckets = len(spec.edges) - 1
    labels = labels_of(lengths, spec)
    folds = np.array_split(np.random.default_rng(seed + 1).permutation(len(labels)), FOLDS)
    best: tuple[float, float, FloatArray] | None = None
    for c in REGULARISATION_GRID:
        out_of_fold = np.zeros((len(labels), buckets))
        for fold in folds:
            rest = np.setdiff1d(np.arange(len(labels)), fold)
            model = _classifier(c).fit(features[rest], labels[rest])
            out_of_fold[fold] = _full_proba(model, features[fold], buckets)
        loss = -float(np.mean(np.log(out_of_fold[np.arange(len(labels)), labels] + 1e-9)))
        if best is None or loss < best[1]:
            best = (c, loss, out_of_fold)
    assert best is not None
    calibrated = LengthSpec(
        spec.edges, spec.within, spec.hash_buckets, _calibration(best[2], lengths, spec)
    )
    return _classifier(best[0]).fit(features, labels), calibrated


def _calibration(
    probabilities: FloatArray, lengths: IntArray, spec: LengthSpec
) -> tuple[tuple[float, float], ...]:
    """For each asked quantile, the smallest model quantile whose bound covered as often."""
    predictions = [LengthPrediction(p, spec) for p in probabilities]
    candidates = np.linspace(0.3, 0.999, 141)
    coverage = np.array(
        [
            np.mean([lengths[i] <= p.quantile(u) for i, p in enumerate(predictions)])
            for u in candidates
        ]
    )
    pairs: list[tuple[float, float]] = []
    for asked in CALIBRATED_QUANTILES:
        reaching = np.nonzero(coverage >= asked)[0]
        used = float(candidates[reaching[0]]) if len(reaching) else float(candidates[-1])
        pairs.append((asked, max(used, pairs[-1][1] if pairs else 0.0)))
    return tuple(pairs)


def _full_proba(model: LogisticRegression, features: Float32Array, buckets: int) -> FloatArray:
    """Probabilities over every bucket, including any the fit never saw."""
    probabilities = np.zeros((len(features), buckets))
    probabilities[:, model.classes_] = model.predict_proba(features)
    return probabilities


def train_length(
    responses_path: Path,
    out_path: Path,
    report_path: Path | None,
    tokenizer: PromptTokenizer,
    context_window: int = 8192,
    quantile: float = 0.9,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    data = LengthData.from_responses(responses_path, tokenizer)
    train, test = split_indices(len(data.lengths), 1 - test_fraction, seed)
    train_spec = bucket_spec(data.lengths[train], context_window)
    model, spec = _fit(data.features(train), data.lengths[train], train_spec, seed)
    report = evaluate(model, spec, data, train, test, quantile)

    # The shipped model learns from every prompt, the same way.
    everything = np.arange(len(data.lengths))
    final_spec = bucket_spec(data.lengths, context_window)
    final, final_spec = _fit(data.features(everything), data.lengths, final_spec, seed)
    if len(final.classes_) != len(final_spec.edges) - 1:  # bucket_spec merges empty buckets
        raise ValueError("every length bucket needs at least one answer")
    onnx_model: ModelProto = convert_sklearn(
        final,
        initial_types=[("features", FloatTensorType([None, HASH_BUCKETS + 1]))],
        options={id(final): {"zipmap": False}},
        target_opset=15,
    )
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = LENGTH_METADATA_KEY, json.dumps(final_spec.to_json())
    out_path.write_bytes(onnx_model.SerializeToString())
    report.update(
        {
            "responses": responses_path.name,
            "prompts": len(data.lengths),
            "buckets": list(final_spec.edges),
            # the fit's last digits depend on them
            "libraries": {name: version(name) for name in ("scikit-learn", "scipy", "numpy")},
        }
    )
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def evaluate(model: LogisticRegression, spec: LengthSpec, data: LengthData, train: IntArray,
             test: IntArray, quantile: float) -> dict[str, Any]:  # fmt: skip
    buckets = len(spec.edges) - 1
    truth = data.lengths[test]
    probabilities = _full_proba(model, data.features(test), buckets)
    predictions = [LengthPrediction(p, spec) for p in probabilities]
    points = np.array([p.point() for p in predictions])
    bounds = np.array([p.bound(quantile) for p in predictions])
    median = float(np.median(data.lengths[train]))
    return {
        "quantile": quantile,
        "train_prompts": len(train),
        "test_prompts": len(test),
        "bucket_accuracy": float(np.mean(probabilities.argmax(axis=1) == labels_of(truth, spec))),
        "mae_tokens": float(np.mean(np.abs(points - truth))),
        "coverage": float(np.mean(truth <= bounds)),
        "baseline_median_mae_tokens": float(np.mean(np.abs(median - truth))),
        "baseline_prompt_length_mae_tokens": _prompt_length_baseline_mae(data, train, test),
    }


def _prompt_length_baseline_mae(
    data: LengthData, train: IntArray, test: IntArray, bins: int = 5
) -> float:
    """Predict the median answer length of training prompts of similar length (quantile bins)."""
    prompt_lengths = np.array([len(ids) for ids in data.prompt_ids])
    cuts = np.quantile(prompt_lengths[train], np.linspace(0, 1, bins + 1)[1:-1])
    train_bins = np.digitize(prompt_lengths[train], cuts)
    medians = np.array([
        np.median(data.lengths[train][train_bins == b]) if np.any(train_bins == b) else np.median(data.lengths[train])
        for b in range(bins)
    ])  # fmt: skip
    predicted = medians[np.digitize(prompt_lengths[test], cuts)]
    return float(np.mean(np.abs(predicted - data.lengths[test])))

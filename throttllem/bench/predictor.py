"""`throttllem bench predictor`: the latency of the two predictions on one core."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from predictor.length import LengthPredictor
from predictor.performance import PerformanceModel, PerformanceTable
from predictor.shipped import length_model_path, performance_model_path
from predictor.tokenizer import PromptTokenizer

PROMPT_TOKENS = (16, 128, 512, 1000, 2000)
REPEATS = 300
LOOKUPS = 10_000


def bench_predictor(
    length_path: Path | None, performance_path: Path | None, json_path: Path | None
) -> dict[str, Any]:
    tokenizer = PromptTokenizer.from_file()
    length_model = LengthPredictor(length_path or length_model_path("Meta-Llama-3-8B-Instruct"))
    table = PerformanceTable.from_model(
        PerformanceModel(performance_path or performance_model_path("a100-40gb/llama-2-13b/tp1"))
    )
    rng = np.random.default_rng(0)
    length_rows = []
    for tokens in PROMPT_TOKENS:
        ids = rng.integers(0, 128_000, tokens).tolist()
        text = tokenizer_text(tokenizer, tokens)
        predict_ms = timings_ms(
            lambda ids=ids: length_model.predict(ids, max_tokens=4096).bound(0.9)
        )
        tokenize_ms = timings_ms(lambda text=text: tokenizer.encode(text), repeats=50)
        length_rows.append({
            "prompt_tokens": tokens,
            "predict_p50_ms": float(np.percentile(predict_ms, 50)),
            "predict_p99_ms": float(np.percentile(predict_ms, 99)),
            "tokenize_p50_ms": float(np.percentile(tokenize_ms, 50)),
        })  # fmt: skip
    batches = rng.integers(1, table.grid.max_batch + 1, LOOKUPS)
    kv = rng.integers(0, table.grid.max_kv_blocks + 1, LOOKUPS)
    lookup_ms = timings_ms(lambda: table.ips(batches, kv, 0), repeats=200)
    report = {
        "length_model": length_model.path.name,
        "length": length_rows,
        "performance_model": table.grid.to_json(),
        "table_mb": table.nbytes / 2**20,
        "lookups": LOOKUPS,
        "lookups_p50_ms": float(np.percentile(lookup_ms, 50)),
        "lookups_p99_ms": float(np.percentile(lookup_ms, 99)),
    }
    _print(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def tokenizer_text(tokenizer: PromptTokenizer, tokens: int) -> str:
    """English text of about `tokens` tokens."""
    sentence = "The engine reads every weight once per iteration, so memory sets the pace. "
    per_sentence = tokenizer.count(sentence)
    return sentence * max(1, tokens // per_sentence)


def timings_ms(action: Any, repeats: int = REPEATS, warmups: int = 5) -> np.ndarray:
    """Wall time of each of `repeats` calls, in ms, after `warmups` untimed calls."""
    for _ in range(warmups):
        action()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append((time.perf_counter() - started) * 1000)
    return np.array(timings)


def _print(report: dict[str, Any]) -> None:
    print(f"length prediction ({report['length_model']}), one request at a time, one core")
    print(
        f"  {'prompt tokens':>13} {'predict p50 ms':>15} {'predict p99 ms':>15} {'tokenize p50 ms':>16}"
    )
    for row in report["length"]:
        print(f"  {row['prompt_tokens']:>13} {row['predict_p50_ms']:>15.3f} {row['predict_p99_ms']:>15.3f} "
              f"{row['tokenize_p50_ms']:>16.3f}")  # fmt: skip
    print("  target: predict p99 <= 2 ms per prompt of up to 2,000 tokens")
    print(f"performance table: {report['table_mb']:.1f} MB (target <= 64 MB)")
    print(f"  {report['lookups']:,} lookups: p50 {report['lookups_p50_ms']:.3f} ms, "
          f"p99 {report['lookups_p99_ms']:.3f} ms (target <= 0.5 ms)")  # fmt: skip

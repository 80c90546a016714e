"""Request traces: when each request arrives, how long its prompt is, how long its answer.

The Azure LLM inference traces (AzurePublicDataset, CC BY 4.0) are CSV files with
`TIMESTAMP,ContextTokens,GeneratedTokens`; they are read by path, never copied.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np


class TraceError(ValueError):
    """The trace file is missing or not in the expected format."""


@dataclass(frozen=True)
class Trace:
    arrival_s: np.ndarray  # seconds since the first arrival, ascending
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0


def read_azure_trace(path: Path) -> Trace:
    if not path.is_file():
        raise TraceError(f"no trace at {path}")
    stamps: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        expected = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if reader.fieldnames is None or not expected <= set(reader.fieldnames):
            raise TraceError(
                f"{path}: expected the columns {sorted(expected)}, got {reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                stamps.append(_timestamp_s(row["TIMESTAMP"]))
                prompts.append(int(row["ContextTokens"]))
                outputs.append(int(row["GeneratedTokens"]))
            except ValueError as error:
                raise TraceError(f"{path}:{line}: {error}") from error
    arrival = np.array(stamps)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order] - arrival[order][0] if len(arrival) else arrival
    return Trace(arrival, np.array(prompts)[order], np.array(outputs)[order])


def _timestamp_s(text: str) -> float:
    # "2023-11-16 18:15:46.6805900": seven fractional digits, one more than strptime takes.
    whole, _, fraction = text.strip().partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def fit_to_window(
    prompt_tokens: int, output_tokens: int, window_tokens: int
) -> tuple[int, int, bool]:
    """Cut the prompt's head so prompt + output fits the context window."""
    output_tokens = max(1, min(output_tokens, window_tokens - 1))
    if prompt_tokens + output_tokens <= window_tokens:
        return max(1, prompt_tokens), output_tokens, False
    return window_tokens - output_tokens, output_tokens, True

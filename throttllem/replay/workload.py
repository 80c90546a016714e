"""A trace made into the requests every policy replays: same arrivals, same lengths.

Rates. `peak` scales time so that the trace's busiest 60-second window arrives at the
engine's capacity: the average load stays below it and the bursts reach it (the paper's
setting). A number scales time so that the replayed span's mean rate is that many
requests per second.

Lengths. The engine always generates the true output length (as a replay with
`ignore_eos` and `max_tokens` = that length does). What the gateway believes is separate:
`oracle` is the truth, `noisy:<e>` the truth times log-normal noise whose relative error
is within `e` for 95 % of requests. `model` pairs each request with an AlpacaEval prompt
(in turn, from a seeded shuffle): the trace's context length pads the prompt, the true
output is the length of the response the served model really gave, and the gateway's
length model predicts from the prompt alone, so it never sees the answer. The workload
keeps each request's prompt text (`prompt_texts`), which the live replay sends.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictor.length import LengthPredictor, planning_quantiles
from predictor.tokenizer import PromptTokenizer
from simulator.traces import Trace, TraceError, fit_to_window, read_azure_trace

PEAK_WINDOW_S = 60.0
TRACE_FORMATS = ("azure", "mooncake", "jsonl")


@dataclass(frozen=True)
class Workload:
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray  # after truncation to the context window
    output_tokens: np.ndarray  # what the engine generates
    predicted_tokens: np.ndarray  # what the gateway's length predictor says
    cut: np.ndarray  # whether the request's prompt lost its head to fit the window
    # With the length model: its lengths at PLANNING_LEVELS, one row per request.
    length_quantiles: np.ndarray | None = None
    # With the length model: each request's AlpacaEval instruction, the text its
    # prediction was made from (the live replay sends it).
    prompt_texts: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def span_s(self) -> float:
        """From the first arrival to the last (1 s for fewer than two requests)."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 1.0

    @property
    def rate_rps(self) -> float:
        """The mean arrival rate over the span."""
        return (len(self) - 1) / self.span_s if len(self) > 1 else 0.0

    @property
    def truncated(self) -> int:
        return int(self.cut.sum())

    def scaled(self, scale: float, duration_s: float | None = None) -> Workload:
        """The same requests with their arrival times multiplied by `scale`, only those
        arriving within `duration_s` (the first ones: arrivals are in order)."""
        arrival_s = self.arrival_s * scale
        kept = (
            int(np.searchsorted(arrival_s, duration_s, side="right"))
            if duration_s is not None
            else len(self)
        )
        quantiles, texts = self.length_quantiles, self.prompt_texts
        return Workload(
            arrival_s=arrival_s[:kept],
            prompt_tokens=self.prompt_tokens[:kept],
            output_tokens=self.output_tokens[:kept],
            predicted_tokens=self.predicted_tokens[:kept],
            cut=self.cut[:kept],
            length_quantiles=quantiles[:kept] if quantiles is not None else None,
            prompt_texts=texts[:kept] if texts is not None else None,
        )


def read_trace(path: Path, trace_format: str) -> Trace:
    if trace_format == "azure":
        return read_azure_trace(path)
    if trace_format in ("mooncake", "jsonl"):
        return _read_jsonl(path)
    raise TraceError(f"unknown trace format {trace_format!r}; use one of {TRACE_FORMATS}")


def _read_jsonl(path: Path) -> Trace:
    """Rows `{"timestamp": ms, "input_length": n, "output_length": n}` (Mooncake's)."""
    if not path.is_file():
        raise TraceError(f"no trace at {path}")
    stamps, prompts, outputs = [], [], []
    with path.open() as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                stamps.append(float(row["timestamp"]) / 1000)
                prompts.append(int(row["input_length"]))
                outputs.append(int(row["output_length"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise TraceError(f"{path}:{line_number}: {error!r}") from error
    arrival = np.array(stamps)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order] - arrival[order][0] if len(arrival) else arrival
    return Trace(arrival, np.array(prompts)[order], np.array(outputs)[order])


def busiest_window_rps(arrival_s: np.ndarray, window_s: float = PEAK_WINDOW_S) -> float:
    """Requests per second in the busiest `window_s` of arrivals."""
    if len(arrival_s) == 0:
        return 0.0
    ends = np.searchsorted(arrival_s, arrival_s + window_s, side="left")
    return float(np.max(ends - np.arange(len(arrival_s)))) / window_s


def time_scale(
    arrival_s: np.ndarray, rate: str | float, capacity_rps: float, duration_s: float | None = None
) -> float:
    """The factor arrival times are multiplied by for `rate` (`peak` or requests/s).

    A number is the mean rate of what is replayed: with `duration_s`, the first
    `duration_s` seconds of the scaled trace hold `rate x duration_s` requests (the
    trace's own mean rate can differ a lot from its first minutes')."""
    if rate == "peak":
        return busiest_window_rps(arrival_s) / capacity_rps
    rate_rps = float(rate)
    if not rate_rps > 0:
        raise ValueError(f"the rate must be positive, got {rate!r}")
    if duration_s is not None and len(arrival_s) > 1:
        wanted = min(len(arrival_s) - 1, max(1, round(rate_rps * duration_s)))
        span_s = float(arrival_s[wanted])  # scaled, it lands on duration_s
        if span_s > 0 and wanted < len(arrival_s) - 1:
            return duration_s / span_s
    mean_rps = (len(arrival_s) - 1) / max(float(arrival_s[-1]), 1e-9)
    return mean_rps / rate_rps


@dataclass(frozen=True)
class PromptSet:
    """Prompts with the true length of each one's recorded answer, and what the length
    model predicts for it (in tokens of the served model's tokenizer)."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    predicted_tokens: np.ndarray
    quantiles: np.ndarray  # [prompts, PLANNING_LEVELS]
    texts: tuple[str, ...] = ()  # the instructions themselves, when read from a file


def build_workload(
    trace: Trace,
    scale: float,
    window_tokens: int,
    lengths: str,
    duration_s: float | None = None,
    seed: int = 0,
    prompts: PromptSet | None = None,
) -> Workload:
    trace_prompts, outputs = trace.prompt_tokens, trace.output_tokens
    believed: np.ndarray | None = None
    quantiles: np.ndarray | None = None
    texts: tuple[str, ...] | None = None
    if lengths == "model":
        if prompts is None:
            raise ValueError("--lengths model needs the AlpacaEval prompts and the length model")
        pick = np.random.default_rng(seed).permutation(len(prompts.output_tokens))
        paired = pick[np.arange(len(trace_prompts)) % len(pick)]
        trace_prompts = np.maximum(trace_prompts, prompts.prompt_tokens[paired])  # padded
        outputs = prompts.output_tokens[paired]
        believed = prompts.predicted_tokens[paired]
        quantiles = prompts.quantiles[paired]
        if prompts.texts:
            texts = tuple(prompts.texts[i] for i in paired)
    fitted = [fit_to_window(int(p), int(o), window_tokens)
              for p, o in zip(trace_prompts, outputs, strict=True)]  # fmt: skip
    fitted_prompts = np.array([p for p, _, _ in fitted], dtype=np.int64)
    fitted_outputs = np.array([o for _, o, _ in fitted], dtype=np.int64)
    if believed is None:
        believed = predicted_lengths(fitted_outputs, lengths, seed)
    whole = Workload(
        arrival_s=trace.arrival_s,
        prompt_tokens=fitted_prompts,
        output_tokens=fitted_outputs,
        predicted_tokens=np.asarray(believed, dtype=np.int64),
        cut=np.array([cut for _, _, cut in fitted], dtype=bool),
        length_quantiles=quantiles,
        prompt_texts=texts,
    )
    return whole.scaled(scale, duration_s)


def read_prompt_set(responses: Path, tokenizer: PromptTokenizer, length_model: LengthPredictor,
                    window_tokens: int) -> PromptSet:  # fmt: skip
    """AlpacaEval's `<model>.json`: instructions and the answers that model gave."""
    try:
        rows = json.loads(responses.read_text())
        instructions = [str(row["instruction"]) for row in rows]
        answers = [str(row["output"]) for row in rows]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise TraceError(f"cannot read AlpacaEval responses at {responses}: {error!r}") from error
    encoded = [tokenizer.encode(text) for text in instructions]
    predictions = [length_model.predict(ids, window_tokens - len(ids)) for ids in encoded]
    return PromptSet(
        prompt_tokens=np.array([max(1, len(ids)) for ids in encoded], dtype=np.int64),
        output_tokens=np.array([max(1, tokenizer.count(text)) for text in answers], dtype=np.int64),
        predicted_tokens=np.array([p.point() for p in predictions], dtype=np.int64),
        quantiles=np.array([planning_quantiles(p) for p in predictions], dtype=np.int64),
        texts=tuple(instructions),
    )


def predicted_lengths(outputs: np.ndarray, lengths: str, seed: int = 0) -> np.ndarray:
    if lengths == "oracle":
        return outputs.copy()
    if lengths.startswith("noisy:"):
        p95_error = float(lengths.removeprefix("noisy:"))
        if not p95_error > 0:
            raise ValueError(f"noisy lengths need a positive p95 relative error, got {lengths!r}")
        sigma = _sigma_for_p95(p95_error)
        noise = np.exp(np.random.default_rng(seed).normal(0.0, sigma, len(outputs)))
        return np.maximum(1, np.rint(outputs * noise)).astype(np.int64)
    raise ValueError(f"unknown lengths {lengths!r}: use oracle, noisy:<p95 relative error>, model")


def _sigma_for_p95(error: float) -> float:
    """The log-normal sigma at which |prediction / truth - 1| <= `error` for 95 % of
    requests (the band is lopsided in log space: log(1 + e) above, log(1 - e) below)."""

    def covered(sigma: float) -> float:
        upper = math.log1p(error) / sigma
        lower = math.log1p(-error) / sigma if error < 1 else -math.inf
        return 0.5 * (math.erf(upper / math.sqrt(2)) - math.erf(lower / math.sqrt(2)))

    low, high = 1e-6, 10.0
    for _ in range(100):  # covered() falls as sigma grows
        middle = (low + high) / 2
        low, high = (middle, high) if covered(middle) > 0.95 else (low, middle)
    return (low + high) / 2

"""An engine size's capacity under saturating load at the highest clock, and its E2E SLO.

Capacity is what instance scaling compares the request rate with, and what `replay
--rate peak` scales a trace to; the p99 end-to-end latency of the same run is the
paper's E2E SLO, and its mean time between tokens is what the interactive regime's TPOT
SLO is derived from. The run is a closed loop in virtual time at the default (highest)
clock: requests from a length mix are fed so that the engine's own queue never runs dry
(`QUEUED` always waiting) but never grows either, so the latencies are those of a full
engine, not of a backlog. Only completions between the first and last tenth count: the
ramp-up and the final drain would dilute both figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simulator.engine import Engine, EngineRequest
from simulator.engine_sizes import ensemble_model_name, size_label
from simulator.profile import EngineProfile
from simulator.traces import Trace, fit_to_window

DEFAULT_REQUESTS = 2000
QUEUED = 2


@dataclass(frozen=True)
class Saturation:
    capacity_rps: float
    e2e_p99_s: float
    requests: int
    tbt_mean_s: float = float("nan")  # the mean over requests of each one's mean token gap


def saturate(
    profile: EngineProfile,
    prompt_tokens: Sequence[int],
    output_tokens: Sequence[int],
    seed: int = 0,
) -> Saturation:
    if len(prompt_tokens) != len(output_tokens) or len(prompt_tokens) < 20:
        raise ValueError(
            "capacity needs at least 20 requests, with a prompt and output length each"
        )
    engine = Engine(profile, seed=seed)
    window = profile.model.context_window_tokens
    mix = [fit_to_window(int(p), int(o), window)[:2]
           for p, o in zip(prompt_tokens, output_tokens, strict=True)]  # fmt: skip
    submitted_s: dict[str, float] = {}
    first_s: dict[str, float] = {}
    finished: list[tuple[float, float, float]] = []  # (finished at, e2e, mean token gap)
    now_s = 0.0

    def top_up() -> None:
        while engine.waiting < QUEUED and len(submitted_s) < len(mix):
            index = len(submitted_s)
            prompt, output = mix[index]
            engine.submit(EngineRequest(str(index), prompt, output, output))
            submitted_s[str(index)] = now_s

    top_up()
    while engine.has_work:
        result = engine.step(now_s)
        now_s = result.ended_s
        if result.prefill_requests:  # started this iteration: the batch's newest entries
            for rid in result.emitted[len(result.emitted) - result.prefill_requests :]:
                first_s.setdefault(rid, now_s)
        for rid in result.finished:
            tokens = mix[int(rid)][1]
            gap_s = (now_s - first_s[rid]) / (tokens - 1) if tokens > 1 else math.nan
            finished.append((now_s, now_s - submitted_s[rid], gap_s))
        top_up()
    first, last = len(finished) // 10, len(finished) * 9 // 10
    steady = finished[first : last + 1]
    gaps_s = [gap_s for _, _, gap_s in steady if not math.isnan(gap_s)]
    return Saturation(
        capacity_rps=(last - first) / (finished[last][0] - finished[first][0]),
        e2e_p99_s=float(np.percentile([e2e for _, e2e, _ in steady], 99)),
        requests=len(mix),
        tbt_mean_s=float(np.mean(gaps_s)) if gaps_s else math.nan,
    )


@dataclass(frozen=True)
class PrefillCost:
    """What a prompt adds to its iteration at the highest clock: per token (the GEMMs)
    and per square token (causal attention)."""

    s_per_token: float
    s_per_square_token: float


PREFILL_PROBE_TOKENS = (256, 512, 1024, 2048)


def prefill_cost(profile: EngineProfile, samples: int = 4) -> PrefillCost:
    """Measured as a profiler would on a server: the first iteration of a lone request
    (its prefill and first token) against its second (one token), over a few prompt
    lengths and seeds, fitted by least squares to `c + a P + b P^2`. The constant is
    the decode iteration's own SM slack, which the planner's decode table already holds."""
    window = profile.model.context_window_tokens
    lengths, extra_s = [], []
    for prompt_tokens in (p for p in PREFILL_PROBE_TOKENS if p + 2 <= window):
        for seed in range(samples):
            engine = Engine(profile, seed=seed)
            engine.submit(EngineRequest("probe", prompt_tokens, 2, 2))
            first = engine.step(0.0)
            second = engine.step(first.ended_s)
            lengths.append(prompt_tokens)
            extra_s.append(first.duration_s - second.duration_s)
    tokens = np.array(lengths, dtype=np.float64)
    design = np.stack([np.ones_like(tokens), tokens, tokens**2], axis=1)
    (_, per_token_s, per_square_s), *_ = np.linalg.lstsq(design, np.array(extra_s), rcond=None)
    return PrefillCost(max(0.0, float(per_token_s)), max(0.0, float(per_square_s)))


def saturated_capacity_rps(
    profile: EngineProfile,
    prompt_tokens: Sequence[int],
    output_tokens: Sequence[int],
    seed: int = 0,
) -> float:
    return saturate(profile, prompt_tokens, output_tokens, seed).capacity_rps


def length_mix(
    trace: Trace, requests: int = DEFAULT_REQUESTS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`requests` requests drawn from the trace's own lengths."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(trace.prompt_tokens), size=min(requests, len(trace.prompt_tokens)),
                        replace=False)  # fmt: skip
    return trace.prompt_tokens[chosen], trace.output_tokens[chosen]


def engine_sizes_json(capacities_rps: dict[str, float]) -> str:
    """THROTTLLEM_ENGINE_SIZES for the twin's engine sizes (profile name -> capacity)."""
    rows = [{"label": size_label(name), "triton_model": ensemble_model_name(size_label(name)),
             "capacity_rps": round(rps, 3)} for name, rps in capacities_rps.items()]  # fmt: skip
    return json.dumps(rows)

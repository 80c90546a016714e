"""An engine size's capacity: requests per second at the highest clock, never running dry.

This is the figure instance scaling compares the request rate with (the paper profiles
each engine size the same way). Every request of a length mix is queued at once and the
engine is stepped in virtual time at its default (highest) clock; the rate counts the
completions between the first and last tenth, where the queue still holds work, so the
ramp-up and the final drain do not dilute it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from simulator.bench import fit_to_window
from simulator.engine import Engine
from simulator.engine import Sequence as EngineSequence
from simulator.engine_sizes import ensemble_model_name, size_label
from simulator.profile import EngineProfile
from simulator.traces import Trace

DEFAULT_REQUESTS = 2000


def saturated_capacity_rps(
    profile: EngineProfile,
    prompt_tokens: Sequence[int],
    output_tokens: Sequence[int],
    seed: int = 0,
) -> float:
    if len(prompt_tokens) != len(output_tokens) or len(prompt_tokens) < 20:
        raise ValueError(
            "capacity needs at least 20 requests, with a prompt and output length each"
        )
    engine = Engine(profile, seed=seed)
    window = profile.model.context_window_tokens
    for index, (prompt, output) in enumerate(zip(prompt_tokens, output_tokens, strict=True)):
        prompt, output, _ = fit_to_window(int(prompt), int(output), window)
        engine.submit(EngineSequence(str(index), prompt, output, output))
    finished_at_s: list[float] = []
    now_s = 0.0
    while engine.has_work:
        result = engine.step(now_s)
        now_s = result.ended_s
        finished_at_s.extend([now_s] * len(result.finished))
    first, last = len(finished_at_s) // 10, len(finished_at_s) * 9 // 10
    return (last - first) / (finished_at_s[last] - finished_at_s[first])


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

"""`throttllem replay`: set the scene once, run every policy on it, report.

The scene: the trace's length mix measures the engine's capacity and the E2E SLO
(simulator/capacity.py), the rate scales the trace, and the workload fixes every
arrival and length. Each policy then runs on that same workload. `static-best` is
found by a sweep: the lowest fixed clock whose SLO attainment is within
`STATIC_BEST_TOLERANCE` of max's.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from governor.iteration_times import TableIterationTimes
from predictor.length import LengthPredictor
from predictor.performance import PerformanceModel, PerformanceTable
from predictor.shipped import length_model_path, performance_model_path
from predictor.tokenizer import PromptTokenizer
from simulator.capacity import length_mix, prefill_s_per_token, saturate
from simulator.profile import EngineProfile, load_profile
from simulator.traces import Trace
from throttllem.replay.live import drive
from throttllem.replay.plots import require_matplotlib, write_plots
from throttllem.replay.policies import Policy, parse_policy
from throttllem.replay.scaling import ScaleSetup, scale_setup
from throttllem.replay.simulate import Run, Slo, simulate
from throttllem.replay.workload import (
    PromptSet,
    build_workload,
    read_prompt_set,
    read_trace,
    time_scale,
)

STATIC_BEST_TOLERANCE = 0.01  # one percentage point of SLO attainment
TBT_SLO_S = 0.2  # the paper's: a 200 ms mean, about 250 words a minute of reading
DEFAULT_TTFT_SLO_S = 2.0  # the gateway's default (THROTTLLEM_SLO_TTFT_MS)
DEFAULT_POLICIES = ("max", "static-best", "reactive", "throttllem", "oracle")
KV_BUCKETS = 128


@dataclass(frozen=True)
class ReplayOptions:
    trace: Path
    trace_format: str = "azure"
    profile: str = "a100-40gb/llama-2-13b/tp2"
    rate: str | float = "peak"
    duration_s: float | None = None
    policies: Sequence[str] = DEFAULT_POLICIES
    lengths: str = "noisy:0.3"
    seed: int = 0
    ttft_slo_s: float = DEFAULT_TTFT_SLO_S
    alpaca_eval_dir: Path = Path("../shared/data/alpaca_eval")  # for --lengths model
    plots_dir: Path | None = None
    live_url: str | None = None  # drive this gateway instead of the virtual engine


def replay(options: ReplayOptions, progress: bool = False) -> dict[str, Any]:
    if options.plots_dir is not None:
        require_matplotlib()  # before the runs, not after them
    profile = load_profile(options.profile)
    trace = read_trace(options.trace, options.trace_format)
    window = profile.model.context_window_tokens
    prompts = _prompt_set(options, profile) if options.lengths == "model" else None
    # Capacity and the E2E SLO on the lengths the engine will really serve (with
    # --lengths model, the recorded answers' rather than the trace's).
    whole = build_workload(trace, 1.0, window, options.lengths, None, options.seed, prompts)
    mix = length_mix(Trace(whole.arrival_s, whole.prompt_tokens, whole.output_tokens),
                     seed=options.seed)  # fmt: skip
    saturation = saturate(profile, *mix, seed=options.seed)
    scale = time_scale(trace.arrival_s, options.rate, saturation.capacity_rps)
    workload = whole.scaled(scale, options.duration_s)
    slo = Slo(options.ttft_slo_s, TBT_SLO_S, saturation.e2e_p99_s)
    virtual = options.live_url is None  # live: the gateway plans, not this process
    model = _planner_model(options.profile, profile) if virtual else None
    clocks = profile.gpu.supported_clocks_mhz()
    scaling = None
    if virtual and any(parse_policy(name, clocks).scaling for name in options.policies
                       if name != "static-best"):  # fmt: skip
        assert model is not None
        scaling = scale_setup(options.profile, *mix, _planner_model, seed=options.seed,
                              measured=(saturation.capacity_rps, model))  # fmt: skip

    def run(policy: Policy) -> Run:
        bar = _ProgressBar(policy.name) if progress else None
        result = simulate(workload, profile, policy, slo, model, options.seed,
                          bar.update if bar else None, scaling)  # fmt: skip
        if bar:
            bar.done(result.wall_s)
        return result

    runs: dict[str, Run] = {}
    live: dict[str, Any] = {}
    if options.live_url is not None:
        bar = _ProgressBar("live") if progress else None
        runs["live"], failed = asyncio.run(drive(options.live_url, workload, slo,
                                                 bar.update if bar else None))  # fmt: skip
        if bar:
            bar.done(runs["live"].wall_s)
        live = {"live": {"url": options.live_url, "failed": failed}}
    for name in options.policies if virtual else ():
        if name == "static-best":
            baseline = runs.get("max") or run(parse_policy("max", clocks))
            runs[name] = _static_best(run, clocks, baseline.met.mean())
        else:
            runs[name] = run(parse_policy(name, clocks))
    span_s = float(workload.arrival_s[-1] - workload.arrival_s[0]) if len(workload) > 1 else 1.0
    plots = write_plots(runs, slo, options.plots_dir) if options.plots_dir is not None else []
    return {
        "engine": options.profile,
        "trace": {
            "file": options.trace.name,
            "format": options.trace_format,
            "requests": len(workload),
            "duration_s": span_s,
            "time_scale": scale,
            "lengths": options.lengths,
            "seed": options.seed,
        },
        "rate_rps": (len(workload) - 1) / span_s if len(workload) > 1 else 0.0,
        "capacity_rps": saturation.capacity_rps,
        "slo": {
            "ttft_ms": slo.ttft_s * 1000,
            "tbt_ms": slo.tbt_s * 1000,
            "e2e_ms": slo.e2e_s * 1000,
            "derivation": "E2E: p99 end-to-end latency at the highest clock under saturating "
            "load on the replayed length mix (the paper's); TBT: a 200 ms mean time between "
            "tokens (the paper's); TTFT: the gateway's default",
        },
        "policies": {
            name: _policy_report(result, workload.truncated) for name, result in runs.items()
        },
        **({"scaling": _scaling_report(scaling, runs)} if scaling is not None else {}),
        **({"plots": [str(path) for path in plots]} if plots else {}),
        **live,
    }


def _prompt_set(options: ReplayOptions, profile: EngineProfile) -> PromptSet:
    """The served model's recorded answers and its shipped length model."""
    served = profile.model.recorded_responses
    return read_prompt_set(options.alpaca_eval_dir / f"{served}.json", PromptTokenizer.from_file(),
                           LengthPredictor(length_model_path(served)),
                           profile.model.context_window_tokens)  # fmt: skip


def _static_best(run: Callable[[Policy], Run], clocks: list[int], max_attainment: float) -> Run:
    """The lowest fixed clock within STATIC_BEST_TOLERANCE of max's attainment (a binary
    search: a faster fixed clock never serves worse)."""
    ordered = sorted(clocks)
    low, high = 0, len(ordered) - 1
    best = run(Policy(f"static:{ordered[high]}", fixed_clock_mhz=ordered[high]))
    while low < high:
        middle = (low + high) // 2
        trial = run(Policy(f"static:{ordered[middle]}", fixed_clock_mhz=ordered[middle]))
        if trial.met.mean() >= max_attainment - STATIC_BEST_TOLERANCE:
            high, best = middle, trial
        else:
            low = middle + 1
    return best


def _planner_model(profile_name: str, profile: EngineProfile) -> TableIterationTimes:
    table = PerformanceTable.from_model(
        PerformanceModel(performance_model_path(profile_name)), KV_BUCKETS
    )
    return TableIterationTimes(table, prefill_s_per_token=prefill_s_per_token(profile))


def _policy_report(run: Run, truncated: int) -> dict[str, Any]:
    measured = not math.isnan(run.energy_j) and run.energy_j > 0
    return {
        "energy_j": run.energy_j if measured else None,
        "output_tokens": run.output_tokens,
        "tokens_per_j": run.output_tokens / run.energy_j if measured else None,
        "slo_attainment": float(run.met.mean()),
        "ttft_ms": _summary(run.ttft_s),
        "tbt_ms": _summary(run.tbt_s),
        "e2e_ms": _summary(run.e2e_s),
        "queue_ms": _summary(run.queue_s),  # arrival to entering the engine
        "mean_freq_mhz": run.mean_freq_mhz,
        "mean_gpus": run.mean_gpus,
        "requests": len(run.met),
        "truncated": truncated,
        "wall_s": run.wall_s,
        "clock": run.policy,
    }


def _scaling_report(setup: ScaleSetup, runs: dict[str, Run]) -> dict[str, Any]:
    return {
        "sizes": [
            {"label": o.size.label, "profile": o.profile_name, "capacity_rps": o.size.capacity_rps}
            for o in setup.options
        ],
        "interval_s": setup.interval_s,
        "engine_load_s": setup.load_s,
        "grace_s": setup.grace_s,
        "drain_s": setup.drain_s,
        "headroom": setup.headroom,
        "moves": {
            name: [{"t_s": t_s, "to": label} for t_s, label in run.moves]
            for name, run in runs.items()
            if run.moves
        },
        "energy": "every GPU while it holds an engine, loading and draining included; "
        "GPUs without an engine are handed back and not counted",
    }


def _summary(seconds: np.ndarray) -> dict[str, float]:
    ms = seconds[~np.isnan(seconds)] * 1000
    percentiles = np.percentile(ms, [50, 90, 99]) if len(ms) else [float("nan")] * 3
    return {"p50": float(percentiles[0]), "p90": float(percentiles[1]),
            "p99": float(percentiles[2]), "mean": float(ms.mean()) if len(ms) else float("nan")}  # fmt: skip


def markdown_table(report: dict[str, Any]) -> str:
    policies = report["policies"]
    max_energy_j = policies["max"]["energy_j"] if "max" in policies else None
    rows = [
        "| policy | energy kJ | energy vs max | tokens/J | SLO attainment | TTFT p99 ms | TBT p99 ms "
        "| E2E p99 ms | mean MHz | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, p in policies.items():
        energy_j = p["energy_j"]
        change = (f"{(energy_j / max_energy_j - 1) * 100:+.1f} %"
                  if max_energy_j and energy_j is not None else "—")  # fmt: skip
        label = name if p["clock"] == name else f"{name} ({p['clock']})"
        kilojoules = f"{energy_j / 1000:.1f}" if energy_j is not None else "—"
        tokens_per_j = f"{p['tokens_per_j']:.3f}" if p["tokens_per_j"] is not None else "—"
        rows.append(
            f"| {label} | {kilojoules} | {change} | {tokens_per_j} "
            f"| {p['slo_attainment'] * 100:.1f} % | {p['ttft_ms']['p99']:.0f} "
            f"| {p['tbt_ms']['p99']:.0f} | {p['e2e_ms']['p99']:.0f} | {p['mean_freq_mhz']:.0f} "
            f"| {p['wall_s']:.1f} |"
        )
    return "\n".join(rows) + "\n"


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_without_nan(report), indent=2, allow_nan=False) + "\n")


def _without_nan(value: Any) -> Any:
    """What was not measured (NaN) is null in the JSON, which has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nan(item) for item in value]
    return value


class _ProgressBar:
    WIDTH = 30

    def __init__(self, name: str) -> None:
        self._name = name
        self.update(0.0)

    def update(self, fraction: float) -> None:
        filled = round(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        print(f"\r  {self._name:<16} [{bar}] {fraction * 100:3.0f} %", end="", file=sys.stderr)

    def done(self, wall_s: float) -> None:
        self.update(1.0)
        print(f"  {wall_s:.1f} s", file=sys.stderr)

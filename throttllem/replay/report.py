"""`throttllem replay`: set the scene once, run every policy on it, report.

The scene: the trace's length mix measures the engine's saturated throughput and the
SLOs of the regime (simulator/capacity.py), the rate (or the load, a share of max's
goodput capacity, found by bisection) scales the trace, and the workload fixes every
arrival and length. Each policy then runs on that same workload. `static-best` and
`power-cap-best` are found by sweeps: the lowest fixed clock, or power cap, whose SLO
attainment is within `STATIC_BEST_TOLERANCE` of max's.
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

from predictor.length import LengthPredictor
from predictor.performance import PerformanceModel, PerformanceTable
from predictor.shipped import length_model_path, performance_model_path
from predictor.tokenizer import PromptTokenizer
from simulator.capacity import Saturation, length_mix, prefill_cost, saturate
from simulator.physics import PowerModel
from simulator.profile import EngineProfile, load_profile
from simulator.traces import Trace
from slo_planner.iteration_times import TableIterationTimes
from throttllem.replay.live import drive
from throttllem.replay.plots import require_matplotlib, write_plots
from throttllem.replay.policies import Policy, parse_policy
from throttllem.replay.scaling import ScaleSetup, scale_setup
from throttllem.replay.simulate import Run, Slo, simulate
from throttllem.replay.workload import (
    PromptSet,
    Workload,
    build_workload,
    read_prompt_set,
    read_trace,
    time_scale,
)

STATIC_BEST_TOLERANCE = 0.01  # one percentage point of SLO attainment
TBT_SLO_S = 0.2  # the paper's: a 200 ms mean, about 250 words a minute of reading
DEFAULT_TTFT_SLO_S = 2.0  # the gateway's default (THROTTLLEM_SLO_TTFT_MS)
INTERACTIVE_TTFT_SLO_S = 1.0  # a chat product's first token
INTERACTIVE_TPOT_FACTOR = 1.5  # x max's mean time between tokens under saturating load
SLO_REGIMES = ("paper", "interactive")
GOODPUT_ATTAINMENT = 0.99  # DistServe's goodput: the rate at which this share is met
CAPACITY_PRECISION = 0.02  # the bisection stops when its bracket is this narrow (relative)
POWER_CAP_STEP_W = 5.0  # the power-cap-best sweep's resolution
DEFAULT_POLICIES = ("max", "static-best", "reactive", "throttllem", "oracle")
SWEPT_POLICIES = ("static-best", "power-cap-best")
USES_PREDICTIONS = ("throttllem", "throttllem+scale")  # the gateway's predicted lengths
KV_BUCKETS = 128


@dataclass(frozen=True)
class ReplayOptions:
    trace: Path
    trace_format: str = "azure"
    profile: str = "a100-40gb/llama-2-13b/tp2"
    rate: str | float = "peak"
    load: float | None = None  # a share of max's goodput capacity; overrides `rate`
    slo: str = "paper"
    duration_s: float | None = None
    policies: Sequence[str] = DEFAULT_POLICIES
    lengths: str = "noisy:0.3"
    seed: int = 0
    ttft_slo_s: float = DEFAULT_TTFT_SLO_S  # the paper regime's
    alpaca_eval_dir: Path = Path("../shared/data/alpaca_eval")  # for --lengths model
    plots_dir: Path | None = None
    live_url: str | None = None  # drive this gateway instead of the virtual engine


@dataclass
class Scene:
    """What every run on one trace, engine, length mix and SLO regime shares: the
    workload before rate scaling, the engine's saturation figures, the SLOs, the
    planner's model. Built once; each rate is then a rescaling of `whole`."""

    options: ReplayOptions
    profile: EngineProfile
    trace: Trace
    whole: Workload
    mix: tuple[np.ndarray, np.ndarray]
    saturation: Saturation
    slo: Slo
    slo_derivation: str
    model: TableIterationTimes | None
    _scaling: ScaleSetup | None = None

    @property
    def clocks_mhz(self) -> list[int]:
        return self.profile.gpu.supported_clocks_mhz()

    @property
    def power_limits_w(self) -> tuple[float, float]:
        gpu = self.profile.gpu
        return gpu.power_limit_min_w, gpu.power_limit_max_w

    def policy(self, name: str) -> Policy:
        return parse_policy(name, self.clocks_mhz, self.power_limits_w)

    def scaling(self) -> ScaleSetup:
        """The engine sizes `throttllem+scale` moves between (and `max-largest` takes the
        largest of), measured on first use."""
        if self._scaling is None:
            assert self.model is not None
            self._scaling = scale_setup(self.options.profile, *self.mix, _planner_model,
                                        seed=self.options.seed,
                                        measured=(self.saturation.capacity_rps, self.model))  # fmt: skip
        return self._scaling

    def workload_at(self, rate: str | float) -> tuple[Workload, float]:
        """The workload at `rate` (peak or a mean req/s), and the time scale applied."""
        scale = time_scale(self.trace.arrival_s, rate, self.saturation.capacity_rps,
                           self.options.duration_s)  # fmt: skip
        return self.whole.scaled(scale, self.options.duration_s), scale


def build_scene(options: ReplayOptions, with_model: bool = True) -> Scene:
    if options.slo not in SLO_REGIMES:
        raise ValueError(f"unknown SLO regime {options.slo!r}; use one of {SLO_REGIMES}")
    profile = load_profile(options.profile)
    trace = read_trace(options.trace, options.trace_format)
    window = profile.model.context_window_tokens
    prompts = _prompt_set(options, profile) if options.lengths == "model" else None
    # Capacity and the SLOs on the lengths the engine will really serve (with
    # --lengths model, the recorded answers' rather than the trace's).
    whole = build_workload(trace, 1.0, window, options.lengths, None, options.seed, prompts)
    mix = length_mix(Trace(whole.arrival_s, whole.prompt_tokens, whole.output_tokens),
                     seed=options.seed)  # fmt: skip
    saturation = saturate(profile, *mix, seed=options.seed)
    slo, derivation = slo_regime(options.slo, saturation, options.ttft_slo_s)
    model = _planner_model(options.profile, profile) if with_model else None
    return Scene(options, profile, trace, whole, mix, saturation, slo, derivation, model)


def slo_regime(regime: str, saturation: Saturation, paper_ttft_s: float) -> tuple[Slo, str]:
    """The promises of a regime, measured on this engine and length mix, and how."""
    if regime == "interactive":
        tpot_s = INTERACTIVE_TPOT_FACTOR * saturation.tbt_mean_s
        return Slo(INTERACTIVE_TTFT_SLO_S, tpot_s), (
            f"interactive: TTFT {INTERACTIVE_TTFT_SLO_S:g} s; TPOT {INTERACTIVE_TPOT_FACTOR:g} x "
            f"max's mean time between tokens at the highest clock under saturating load on the "
            f"replayed length mix ({saturation.tbt_mean_s * 1000:.1f} ms); each request's E2E "
            "budget is its TTFT plus its output tokens x TPOT, as x-slo-ttft-ms and "
            "x-slo-tpot-ms imply (no separate deadline)"
        )
    return Slo(paper_ttft_s, TBT_SLO_S, saturation.e2e_p99_s), (
        "paper: E2E is the p99 end-to-end latency at the highest clock under saturating "
        "load on the replayed length mix (the paper's); TBT a 200 ms mean time between "
        "tokens (the paper's); TTFT the gateway's default"
    )


def goodput_capacity(scene: Scene) -> dict[str, Any]:
    """The highest mean rate at which `max` keeps GOODPUT_ATTAINMENT of its promises on
    this scene (DistServe's goodput), by bisection over the rate with `max` only.

    The bracket starts at the saturated throughput (no open-loop rate above what the
    engine sustains closed-loop can be kept for long) and widens until it holds the
    target; then the geometric middle is probed until the bracket is within
    CAPACITY_PRECISION. Attainment is not strictly monotone in the rate (each rate
    replays a different stretch of the trace), so the answer is a crossing, not the only
    one; every probe is recorded."""
    probes: list[dict[str, float]] = []
    max_policy = scene.policy("max")

    def attainment(rate_rps: float) -> float:
        workload, _ = scene.workload_at(rate_rps)
        run = simulate(workload, scene.profile, max_policy, scene.slo, None, scene.options.seed)
        kept = float(run.met.mean())
        probes.append({"rate_rps": rate_rps, "slo_attainment": kept})
        return kept

    high = scene.saturation.capacity_rps
    low: float | None = None
    for _ in range(8):  # widen upwards while the top still keeps the target
        if attainment(high) < GOODPUT_ATTAINMENT:
            break
        low, high = high, high * 1.5
    if low is None:
        low = high / 2
        for _ in range(12):
            if attainment(low) >= GOODPUT_ATTAINMENT:
                break
            low, high = low / 2, low
        else:
            raise ValueError(f"max keeps {GOODPUT_ATTAINMENT:.0%} of its promises at no rate "
                             f"down to {low:.3g} req/s on this trace")  # fmt: skip
    while high / low - 1 > CAPACITY_PRECISION:
        middle = math.sqrt(low * high)
        low, high = (middle, high) if attainment(middle) >= GOODPUT_ATTAINMENT else (low, middle)
    return {
        "capacity_rps": low,
        "target_attainment": GOODPUT_ATTAINMENT,
        "method": "bisection over the mean request rate with max only: the highest rate "
        f"probed at which max kept >= {GOODPUT_ATTAINMENT:.0%} SLO attainment, its bracket "
        f"within {CAPACITY_PRECISION:.0%}",
        "saturated_throughput_rps": scene.saturation.capacity_rps,
        "probes": probes,
    }


def run_policies(
    scene: Scene,
    workload: Workload,
    names: Sequence[str],
    progress: bool = False,
) -> dict[str, Run]:
    """Every policy in `names` on `workload`, in order (the sweeps reuse max's run)."""

    def run(policy: Policy) -> Run:
        bar = _ProgressBar(policy.name) if progress else None
        result = simulate(workload, scene.profile, policy, scene.slo, scene.model,
                          scene.options.seed, bar.update if bar else None,
                          scene.scaling() if policy.needs_sizes else None)  # fmt: skip
        if bar:
            bar.done(result.wall_s)
        return result

    runs: dict[str, Run] = {}
    for name in names:
        if name in SWEPT_POLICIES:
            baseline = runs.get("max") or run(scene.policy("max"))
            target = float(baseline.met.mean()) - STATIC_BEST_TOLERANCE
            if name == "static-best":
                settings = [f"static:{clock}" for clock in sorted(scene.clocks_mhz)]
            else:
                settings = [f"power-cap:{cap:g}" for cap in _power_caps_w(scene.profile)]
            runs[name] = _lowest_within(run, [scene.policy(s) for s in settings], target)
        else:
            runs[name] = run(scene.policy(name))
    return runs


def replay(options: ReplayOptions, progress: bool = False) -> dict[str, Any]:
    if options.plots_dir is not None:
        require_matplotlib()  # before the runs, not after them
    virtual = options.live_url is None  # live: the gateway plans, not this process
    if options.load is not None and not options.load > 0:  # before the long setup
        raise ValueError(f"--load must be positive, got {options.load:g}")
    check_policies(options.profile, options.policies)
    scene = build_scene(options, with_model=virtual)
    capacity = None
    rate: str | float = options.rate
    if options.load is not None:
        capacity = goodput_capacity(scene)
        rate = options.load * capacity["capacity_rps"]
    workload, scale = scene.workload_at(rate)
    runs: dict[str, Run] = {}
    live: dict[str, Any] = {}
    if options.live_url is not None:
        bar = _ProgressBar("live") if progress else None
        runs["live"], failed = asyncio.run(drive(options.live_url, workload, scene.slo,
                                                 bar.update if bar else None))  # fmt: skip
        if bar:
            bar.done(runs["live"].wall_s)
        live = {"live": {"url": options.live_url, "failed": failed}}
    else:
        runs = run_policies(scene, workload, options.policies, progress)
    plots = write_plots(runs, scene.slo, options.plots_dir) if options.plots_dir is not None else []
    scaling = scene._scaling
    return {
        **scene_report(scene, workload, scale, capacity, options.load),
        "policies": {
            name: policy_report(result, workload, scene.slo) for name, result in runs.items()
        },
        **({"scaling": _scaling_report(scaling, runs)} if scaling is not None else {}),
        **({"plots": [str(path) for path in plots]} if plots else {}),
        **live,
    }


def check_policies(profile_name: str, names: Sequence[str]) -> None:
    """Raise ValueError for a policy name this engine cannot run (unknown profiles raise
    UnknownProfileError)."""
    gpu = load_profile(profile_name).gpu
    for name in names:
        if name not in SWEPT_POLICIES:
            parse_policy(name, gpu.supported_clocks_mhz(),
                         (gpu.power_limit_min_w, gpu.power_limit_max_w))  # fmt: skip


def scene_report(scene: Scene, workload: Workload, scale: float, capacity: dict[str, Any] | None,
                 load: float | None) -> dict[str, Any]:  # fmt: skip
    options = scene.options
    return {
        "engine": options.profile,
        "trace": {
            "file": options.trace.name,
            "format": options.trace_format,
            "requests": len(workload),
            "duration_s": workload.span_s,
            "time_scale": scale,
            "lengths": options.lengths,
            "seed": options.seed,
        },
        "rate_rps": workload.rate_rps,
        "capacity_rps": capacity["capacity_rps"] if capacity else scene.saturation.capacity_rps,
        "saturated_throughput_rps": scene.saturation.capacity_rps,
        **({"load": load, "goodput": capacity} if capacity is not None else {}),
        "slo": slo_report(scene),
    }


def slo_report(scene: Scene) -> dict[str, Any]:
    """The scene's promises as the JSON gives them: regime, values, derivation."""
    slo = scene.slo
    return {
        "regime": scene.options.slo,
        "ttft_ms": slo.ttft_s * 1000,
        "tbt_ms": slo.tbt_s * 1000,
        "e2e_ms": slo.e2e_s * 1000 if math.isfinite(slo.e2e_s) else None,
        "derivation": scene.slo_derivation,
    }


def _prompt_set(options: ReplayOptions, profile: EngineProfile) -> PromptSet:
    """The served model's recorded answers and its shipped length model."""
    served = profile.model.recorded_responses
    return read_prompt_set(options.alpaca_eval_dir / f"{served}.json", PromptTokenizer.from_file(),
                           LengthPredictor(length_model_path(served)),
                           profile.model.context_window_tokens)  # fmt: skip


def _lowest_within(run: Callable[[Policy], Run], ordered: Sequence[Policy],
                   target_attainment: float) -> Run:  # fmt: skip
    """The least of `ordered` (settings from least to most generous: clocks, power caps)
    whose attainment reaches `target_attainment`; the most generous if none does. A
    binary search: a faster fixed clock, or a higher cap, never serves worse."""
    low, high = 0, len(ordered) - 1
    best = run(ordered[high])
    while low < high:
        middle = (low + high) // 2
        trial = run(ordered[middle])
        if trial.met.mean() >= target_attainment:
            high, best = middle, trial
        else:
            low = middle + 1
    return best


def _power_caps_w(profile: EngineProfile) -> list[float]:
    """Caps from the GPU's lowest power limit up to its peak draw in the twin (a cap
    above that changes nothing), in POWER_CAP_STEP_W steps."""
    gpu = profile.gpu
    peak_w = PowerModel(profile).busy_w(gpu.max_clock_mhz, 1.0)
    top_w = min(gpu.power_limit_max_w, math.ceil(peak_w / POWER_CAP_STEP_W) * POWER_CAP_STEP_W)
    caps = np.arange(gpu.power_limit_min_w, top_w + POWER_CAP_STEP_W / 2, POWER_CAP_STEP_W)
    return [float(cap) for cap in caps]


def _planner_model(profile_name: str, profile: EngineProfile) -> TableIterationTimes:
    table = PerformanceTable.from_model(
        PerformanceModel(performance_model_path(profile_name)), KV_BUCKETS
    )
    prefill = prefill_cost(profile)
    return TableIterationTimes(table, prefill_s_per_token=prefill.s_per_token,
                               prefill_s_per_square_token=prefill.s_per_square_token)  # fmt: skip


def policy_report(run: Run, workload: Workload, slo: Slo) -> dict[str, Any]:
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
        "energy_per_request_j": _energy_quantiles(run.energy_active_j + run.energy_idle_j),
        "energy_per_request_above_idle_j": _energy_quantiles(run.energy_active_j),
        "requests": len(run.met),
        "truncated": workload.truncated,
        "misses": miss_breakdown(run, workload, slo, run.policy in USES_PREDICTIONS),
        "wall_s": run.wall_s,
        "clock": run.policy,
    }


def _energy_quantiles(joules: np.ndarray) -> dict[str, float] | None:
    """p50, p90, p99 of the requests' billed energy (None: a live run bills none)."""
    if not len(joules) or not joules.any():
        return None
    return {f"p{q}": float(np.percentile(joules, q)) for q in (50, 90, 99)}


TTFT_CAUSES = ("gateway_queue", "engine_wait", "prefill")


def miss_breakdown(run: Run, workload: Workload, slo: Slo, uses_predictions: bool
                   ) -> dict[str, Any]:  # fmt: skip
    """Why promises were missed. By promise: how many requests missed each (one request
    can miss several). A TTFT miss is put down to where most of its time went: waiting in
    the gateway's admission queue, waiting inside the engine (for a batch slot or its KV
    reservation), or the prefill iteration itself; `ttft_miss_mean_ms` gives the mean of
    each part over the TTFT misses. `predicted_too_short`: missed requests whose predicted
    length was below the true one (null for policies that use no prediction). A live run,
    which cannot see where a request waited, has null causes."""
    tokens = workload.output_tokens
    with np.errstate(invalid="ignore"):  # NaN (never served) compares False: a miss
        ttft = ~(run.ttft_s <= slo.ttft_s)
        tbt = ~(run.tbt_s <= slo.tbt_s)
        e2e = ~(run.e2e_s <= slo.e2e_budget_s(tokens))
    missed = ~run.met
    parts = np.stack([run.queue_s, run.engine_wait_s, run.prefill_s])
    located = not np.isnan(parts).all()  # a live run sees no engine queue: unknown, null
    parts_s = np.nan_to_num(parts[:, ttft])
    causes = np.bincount(np.argmax(parts_s, axis=0), minlength=3) if ttft.any() else np.zeros(3)
    too_short = missed & (workload.predicted_tokens < tokens)
    by_cause = {cause: int(count) for cause, count in zip(TTFT_CAUSES, causes, strict=True)}
    mean_ms = {cause: float(parts_s[i].mean() * 1000) if ttft.any() else None
               for i, cause in enumerate(TTFT_CAUSES)}  # fmt: skip
    return {
        "missed": int(missed.sum()),
        "by_promise": {"ttft": int(ttft.sum()), "tbt": int(tbt.sum()), "e2e": int(e2e.sum())},
        "ttft_by_cause": by_cause if located else None,
        "ttft_miss_mean_ms": mean_ms if located else None,
        "predicted_too_short": int(too_short.sum()) if uses_predictions else None,
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
    """What was not measured (NaN) is null in the JSON, which has no NaN; numpy's
    scalars become Python's."""
    if isinstance(value, np.generic):
        value = value.item()
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

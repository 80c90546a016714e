"""`throttllem frontier`: every policy over a grid of traces, engines, SLO regimes and loads.

A cell is one trace, engine, SLO regime and load, the load a share of max's goodput
capacity on that trace, engine and regime (report.goodput_capacity). In every cell each
policy replays identical work, and the cell is marked: is throttllem's attainment within
1 pp of max's; does it use the least energy of every peer within 1 pp of max ("wins");
what share of oracle's saving it gets. The peers are the policies a user would pick
instead of throttllem: Triton's default (`max`), the best fixed clock, the best power
cap, a utilization governor and the VoltanaLLM/GreenLLM rule. `oracle` (our planner on
the true lengths) is a bound, not a peer. Where the engine has sizes to scale between,
`throttllem+scale` is also measured against `max-largest`, Triton's default on the largest
size: the paper's baseline for instance scaling.

Work runs in processes: first each (trace, engine, regime)'s capacity, then every cell.
A process keeps the scenes it built (workload, saturation, planner model), so cells of
the same trace and engine share them.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from simulator.traces import TraceError
from throttllem.replay.report import (
    SLO_REGIMES,
    STATIC_BEST_TOLERANCE,
    ReplayOptions,
    Scene,
    build_scene,
    check_policies,
    goodput_capacity,
    policy_report,
    run_policies,
    slo_report,
)
from throttllem.replay.scaling import sibling_profiles

TRACES_DIR = Path("../shared/data/traces")
DEFAULT_TRACES = (
    TRACES_DIR / "AzureLLMInferenceTrace_conv.csv",
    TRACES_DIR / "AzureLLMInferenceTrace_code.csv",
)
DEFAULT_PROFILES = ("a100-40gb/llama-2-13b/tp2", "h100-80gb/llama-3.1-8b/tp1")
DEFAULT_LOADS = (0.25, 0.5, 0.75, 1.0)
DEFAULT_DURATION_S = 1200.0
PEERS = ("max", "static-best", "power-cap-best", "reactive", "slo-feedback")
OURS = ("throttllem", "throttllem+scale", "oracle")
SIZED = ("throttllem+scale", "max-largest")  # need sibling sizes with performance models
DEFAULT_POLICIES = PEERS + OURS + ("max-largest",)


@dataclass(frozen=True)
class FrontierOptions:
    traces: tuple[Path, ...] = DEFAULT_TRACES
    profiles: tuple[str, ...] = DEFAULT_PROFILES
    slos: tuple[str, ...] = SLO_REGIMES
    loads: tuple[float, ...] = DEFAULT_LOADS
    policies: tuple[str, ...] = DEFAULT_POLICIES
    duration_s: float = DEFAULT_DURATION_S
    trace_format: str = "azure"
    lengths: str = "model"
    seed: int = 1
    alpaca_eval_dir: Path = Path("../shared/data/alpaca_eval")
    workers: int = 0  # 0: one per core

    def replay_options(self, trace: Path, profile: str, slo: str) -> ReplayOptions:
        return ReplayOptions(
            trace=trace, trace_format=self.trace_format, profile=profile, slo=slo,
            duration_s=self.duration_s, lengths=self.lengths, seed=self.seed,
            alpaca_eval_dir=self.alpaca_eval_dir,
        )  # fmt: skip


def validate(options: FrontierOptions) -> None:
    """Raise ValueError (or TraceError, UnknownProfileError) before any work starts."""
    for trace in options.traces:
        if not trace.is_file():
            raise TraceError(f"no trace at {trace}")
    if not options.loads or any(not load > 0 for load in options.loads):
        raise ValueError(f"every load must be positive, got {list(options.loads)}")
    if not options.duration_s > 0:
        raise ValueError(f"--duration-s must be positive, got {options.duration_s:g}")
    for slo in options.slos:
        if slo not in SLO_REGIMES:
            raise ValueError(f"unknown SLO regime {slo!r}; use one of {SLO_REGIMES}")
    for profile in options.profiles:
        check_policies(profile, options.policies)  # and that the profile exists
    if "max" not in options.policies:
        raise ValueError("the frontier measures every policy against max: keep it in --policies")


@functools.lru_cache(maxsize=4)
def _scene(replay_options: ReplayOptions) -> Scene:
    return build_scene(replay_options)


def _capacity_task(replay_options: ReplayOptions) -> dict[str, Any]:
    return goodput_capacity(_scene(replay_options))


def _cell_task(replay_options: ReplayOptions, capacity_rps: float, load: float,
               policies: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    started_s = time.perf_counter()
    scene = _scene(replay_options)
    workload, _ = scene.workload_at(load * capacity_rps)
    skipped: dict[str, str] = {}
    names = list(policies)
    if len(sibling_profiles(replay_options.profile)) < 2:
        for name in SIZED:
            if name in names:
                names.remove(name)
                skipped[name] = "one engine size has a shipped performance model"
    runs = run_policies(scene, workload, names)
    return {
        "rate_rps": workload.rate_rps,
        "requests": len(workload),
        "promises": slo_report(scene),
        "policies": {name: policy_report(run, workload, scene.slo) for name, run in runs.items()},
        **({"skipped": skipped} if skipped else {}),
        "wall_s": time.perf_counter() - started_s,
    }


def frontier(
    options: FrontierOptions, progress: Callable[[int, int, float], None] | None = None
) -> dict[str, Any]:
    """Every cell of the grid; `progress(done, total, elapsed_s)` after each task."""
    validate(options)
    started_s = time.perf_counter()
    groups = [(trace, profile, slo) for trace in options.traces for profile in options.profiles
              for slo in options.slos]  # fmt: skip
    total = len(groups) * (1 + len(options.loads))
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, time.perf_counter() - started_s)

    workers = options.workers or os.cpu_count() or 1
    # Spawned, not forked: a fork of a process whose threads (onnxruntime's, a caller's)
    # hold locks can hang in the child.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        capacity_of: dict[Future[dict[str, Any]], tuple[Path, str, str]] = {
            pool.submit(_capacity_task, options.replay_options(*group)): group for group in groups
        }
        capacities: dict[tuple[Path, str, str], dict[str, Any]] = {}
        cell_of: dict[Future[dict[str, Any]], tuple[tuple[Path, str, str], float]] = {}
        for future in as_completed(capacity_of):
            group = capacity_of[future]
            capacities[group] = future.result()
            tick()
            for load in options.loads:  # this group's cells start as soon as it is measured
                cell = pool.submit(_cell_task, options.replay_options(*group),
                                   capacities[group]["capacity_rps"], load, options.policies)  # fmt: skip
                cell_of[cell] = (group, load)
        results: dict[tuple[tuple[Path, str, str], float], dict[str, Any]] = {}
        for future in as_completed(cell_of):
            results[cell_of[future]] = future.result()
            tick()
    cells = []
    for group in groups:
        trace, profile, slo = group
        for load in options.loads:
            cells.append(_cell(trace, profile, slo, load, capacities[group], results[group, load]))
    return {
        "grid": {
            "traces": [str(trace) for trace in options.traces],
            "profiles": list(options.profiles),
            "slo": list(options.slos),
            "loads": list(options.loads),
            "policies": list(options.policies),
            "peers": [name for name in PEERS if name in options.policies],
            "duration_s": options.duration_s,
            "lengths": options.lengths,
            "seed": options.seed,
            "tolerance_pp": STATIC_BEST_TOLERANCE * 100,
        },
        "energy": "simulated: the twin's power model integrated over each replay",
        "cells": cells,
        "wall_s": time.perf_counter() - started_s,
        "workers": workers,
    }


def _cell(trace: Path, profile: str, slo: str, load: float, capacity: dict[str, Any],
          result: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    policies = result["policies"]
    return {
        "trace": trace.name,
        "profile": profile,
        "slo": slo,
        "load": load,
        "capacity_rps": capacity["capacity_rps"],
        "goodput": capacity,
        **result,
        **marks(policies),
    }


def marks(policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """throttllem's standing in one cell: within 1 pp of max; the least energy of every
    peer within 1 pp of max ("wins"); its share of oracle's saving over max."""
    floor = policies["max"]["slo_attainment"] - STATIC_BEST_TOLERANCE
    ours = policies.get("throttllem")
    if ours is None:
        return {"throttllem_within_1pp": None, "throttllem_wins": None, "oracle_share": None,
                "attainment_gap_pp": None, "best_peer": None, **scaling_marks(policies)}  # fmt: skip
    eligible = {name: p["energy_j"] for name, p in policies.items()
                if name in PEERS and p["slo_attainment"] >= floor - 1e-12}  # fmt: skip
    best_peer = min(eligible, key=lambda name: eligible[name]) if eligible else None
    within = bool(ours["slo_attainment"] >= floor - 1e-12)
    wins = within and (best_peer is None or bool(ours["energy_j"] <= eligible[best_peer]))
    max_j = policies["max"]["energy_j"]
    oracle = policies.get("oracle")
    share = None
    if oracle is not None and max_j - oracle["energy_j"] > 0:
        share = (max_j - ours["energy_j"]) / (max_j - oracle["energy_j"])
    return {
        "throttllem_within_1pp": within,
        "throttllem_wins": wins,
        "oracle_share": share,
        "attainment_gap_pp": (ours["slo_attainment"] - policies["max"]["slo_attainment"]) * 100,
        "best_peer": best_peer,
        **scaling_marks(policies),
    }


def scaling_marks(policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`throttllem+scale` against `max-largest` (the paper's baseline): its energy change
    and attainment gap, where both ran."""
    scaled, largest = policies.get("throttllem+scale"), policies.get("max-largest")
    if scaled is None or largest is None:
        return {}
    return {
        "scale_vs_largest_energy_pct": (scaled["energy_j"] / largest["energy_j"] - 1) * 100,
        "scale_vs_largest_gap_pp": (scaled["slo_attainment"] - largest["slo_attainment"]) * 100,
    }


class ProgressBar:
    """One line on stderr: tasks done of all, elapsed time, and a rough time left."""

    WIDTH = 30

    def __call__(self, done: int, total: int, elapsed_s: float) -> None:
        filled = round(done / total * self.WIDTH)
        left_s = elapsed_s / done * (total - done) if done else math.nan
        print(f"\r  frontier [{'#' * filled}{'-' * (self.WIDTH - filled)}] {done}/{total} "
              f"tasks, {elapsed_s:.0f} s, about {left_s:.0f} s left  ", end="",
              file=sys.stderr)  # fmt: skip
        if done == total:
            print(file=sys.stderr)


def parse_list(text: str, convert: Callable[[str], Any] = str) -> tuple[Any, ...]:
    return tuple(convert(part.strip()) for part in text.split(",") if part.strip())


def cells_by_group(
    cells: Sequence[dict[str, Any]],
) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        grouped.setdefault((cell["trace"], cell["profile"], cell["slo"]), []).append(cell)
    return grouped

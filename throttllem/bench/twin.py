"""`throttllem bench twin`: how fast the twin simulates, and its calibration anchors.

1. The whole Azure conversation trace replayed in virtual time at the highest clock:
   wall time and iterations simulated per second.
2. A few seconds on the wall clock, with concurrent streams: the pacing drift.
3. The paper's characterisation, measured on the calibration profile.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulator import calibration
from simulator.engine import Engine, EngineRequest
from simulator.profile import EngineProfile, load_profile
from simulator.realtime import RealtimeEngine
from simulator.traces import Trace, fit_to_window


@dataclass(frozen=True)
class TraceRun:
    profile: str
    requests: int
    truncated: int
    finished: int
    iterations: int
    generated_tokens: int
    virtual_s: float
    wall_s: float
    energy_j: float

    @property
    def iterations_per_wall_s(self) -> float:
        return self.iterations / self.wall_s


def replay_virtual(trace: Trace, profile: EngineProfile, seed: int = 0) -> TraceRun:
    """Every request of `trace` at its arrival time, the engine at its default (highest)
    clock, stepped in virtual time until the last request is done."""
    started_wall_s = time.perf_counter()
    engine = Engine(profile, seed=seed)
    window = profile.model.context_window_tokens
    arrivals = trace.arrival_s.tolist()
    prompts = trace.prompt_tokens.tolist()
    outputs = trace.output_tokens.tolist()
    truncated = finished = generated = 0
    next_request, now_s = 0, 0.0
    while next_request < len(arrivals) or engine.has_work:
        while next_request < len(arrivals) and arrivals[next_request] <= now_s:
            prompt, output, cut = fit_to_window(
                prompts[next_request], outputs[next_request], window
            )
            truncated += cut
            engine.submit(EngineRequest(str(next_request), prompt, output, output))
            next_request += 1
        if not engine.has_work:
            now_s = arrivals[next_request]
            continue
        result = engine.step(now_s)
        now_s = result.ended_s
        generated += result.batch_size
        finished += len(result.finished)
    for gpu in engine.gpus:
        gpu.idle_until(now_s)
    return TraceRun(
        profile=profile.name,
        requests=len(arrivals),
        truncated=truncated,
        finished=finished,
        iterations=engine.iterations,
        generated_tokens=generated,
        virtual_s=now_s,
        wall_s=time.perf_counter() - started_wall_s,
        energy_j=sum(gpu.energy_mj() for gpu in engine.gpus) / 1000,
    )


@dataclass(frozen=True)
class PacingRun:
    streams: int
    iterations: int
    mean_drift_ms: float
    max_drift_ms: float
    wall_s: float


def measure_pacing(profile: EngineProfile, streams: int = 8, tokens: int = 150) -> PacingRun:
    """Concurrent streams on the wall clock; how late iterations end against schedule."""
    runner = RealtimeEngine(Engine(profile))
    runner.start()

    async def stream(index: int) -> int:
        sequence = EngineRequest(f"s{index}", 100, tokens, tokens)
        received = 0
        async for _ in runner.generate(sequence):
            received += 1
        return received

    async def all_streams() -> list[int]:
        return await asyncio.gather(*(stream(i) for i in range(streams)))

    started_s = time.perf_counter()
    try:
        counts = asyncio.run(all_streams())
    finally:
        runner.stop()
    if counts != [tokens] * streams:
        raise RuntimeError(f"streams got {counts} tokens, expected {tokens} each")
    pacing = runner.pacing
    return PacingRun(
        streams=streams,
        iterations=pacing.iterations,
        mean_drift_ms=pacing.mean_drift_s * 1000,
        max_drift_ms=pacing.max_drift_s * 1000,
        wall_s=time.perf_counter() - started_s,
    )


def calibration_anchors() -> list[dict[str, Any]]:
    """Each anchor of the paper, measured on the calibration profile, with its target."""
    profile = load_profile(calibration.CALIBRATION_PROFILE)
    comparison = calibration.compare_clocks(profile)
    batches = [1, 2, 4, 8, 16, 32]
    power = np.array(list(calibration.power_by_batch_size(profile, batches, 1410).values()))
    spread_pct = float(np.max(np.abs(power - power.mean())) / power.mean() * 100)
    iteration_ms = calibration.decode_iteration_ms(profile, batches)
    clocks = profile.gpu.supported_clocks_mhz()
    joules = calibration.joules_per_token_by_clock(profile, clocks)
    best_mhz = min(joules, key=joules.__getitem__)
    return [
        _anchor("throughput, 1050 vs 1410 MHz, full batch (%)", comparison.throughput_change_pct, "-6.25 +/- 2"),
        _anchor("tokens per joule, 1050 vs 1410 MHz, full batch (%)", comparison.tokens_per_joule_change_pct, "+37.4 +/- 5"),
        _anchor("power spread across batch 1-32 at 1410 MHz (+/- %)", spread_pct, "< 10"),
        _anchor("Pearson(iteration time, KV blocks), batch 16", calibration.kv_time_correlation(profile), ">= 0.9"),
        _anchor("decode iteration, batch 1 (ms)", iteration_ms[1], "15-30"),
        _anchor("decode iteration, batch 32 (ms)", iteration_ms[32], "15-30"),
        _anchor("J/token optimum (MHz)", best_mhz, "interior of 210-1410"),
        _anchor("J/token at 210 MHz over the optimum (x)", joules[210] / joules[best_mhz], "> 1 (U-shaped)"),
    ]  # fmt: skip


def _anchor(name: str, measured: float, target: str) -> dict[str, Any]:
    return {"anchor": name, "measured": round(float(measured), 3), "target": target}


def bench_twin(trace_path: Path, profile_name: str, json_path: Path | None) -> dict[str, Any]:
    from simulator.traces import read_azure_trace

    trace = read_azure_trace(trace_path)
    run = replay_virtual(trace, load_profile(profile_name))
    pacing = measure_pacing(load_profile(profile_name))
    anchors = calibration_anchors()
    report = {
        "trace": trace_path.name,
        "replay": {**asdict(run), "iterations_per_wall_s": run.iterations_per_wall_s},
        "pacing": asdict(pacing),
        "calibration_profile": calibration.CALIBRATION_PROFILE,
        "calibration": anchors,
    }
    _print_report(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _print_report(report: dict[str, Any]) -> None:
    replay, pacing = report["replay"], report["pacing"]
    print(f"virtual-time replay of {report['trace']} on {replay['profile']}, highest clock")
    rows = [
        ("requests (truncated to the window)", f"{replay['requests']} ({replay['truncated']})"),
        ("finished", replay["finished"]),
        ("iterations", replay["iterations"]),
        ("virtual time (s)", f"{replay['virtual_s']:.0f}"),
        ("wall time (s)", f"{replay['wall_s']:.2f}   target <= 30"),
        ("iterations simulated per wall second", f"{replay['iterations_per_wall_s']:,.0f}"),
    ]
    for name, value in rows:
        print(f"  {name:<40} {value}")
    print(
        f"wall-clock pacing, {pacing['streams']} concurrent streams, {pacing['iterations']} iterations"
    )
    print(f"  {'mean drift per iteration (ms)':<40} {pacing['mean_drift_ms']:.3f}   target < 1")
    print(f"  {'max drift (ms)':<40} {pacing['max_drift_ms']:.3f}")
    print(f"calibration anchors on {report['calibration_profile']}")
    for anchor in report["calibration"]:
        print(f"  {anchor['anchor']:<52} {anchor['measured']:>10}   target {anchor['target']}")

"""`throttllem bench planner`: decision latency at the issue's scale, against the reference.

256 running requests, 64 queued, a horizon of 4,096 iterations, 81 clocks (the A100's),
iteration times from the shipped performance table. Run it pinned to one core
(`taskset -c 0`) for the one-core figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from predictor.board import Board, Requests
from predictor.performance import PerformanceModel, PerformanceTable
from predictor.shipped import performance_model_path
from slo_planner.feasibility import admit, lowest_frequency
from slo_planner.iteration_times import TableIterationTimes
from throttllem.bench.predictor import timings_ms
from throttllem.bench.reference import admit_reference, lowest_frequency_reference

RUNNING, QUEUED, HORIZON = 256, 64, 4096
BENCH_PROFILE = "a100-40gb/llama-3-70b/tp8"


def bench_board(rng: np.random.Generator, now_s: float = 100.0) -> Board:
    def requests(count: int, running: bool, longest: int) -> Requests:
        remaining = rng.integers(1, longest, count)
        return Requests.of(
            arrival_s=now_s - rng.uniform(0, 5, count),
            prompt_tokens=rng.integers(50, 2000, count),
            generated_tokens=rng.integers(0, 500, count) if running else np.zeros(count),
            remaining_tokens=remaining,
            ttft_slo_s=np.full(count, 60.0),
            tbt_slo_s=np.full(count, 0.2),
            e2e_deadline_s=now_s + remaining * rng.uniform(0.06, 0.12, count) + 30,
        )

    return Board(now_s, requests(RUNNING, True, HORIZON), requests(QUEUED, False, 1000),
                 max_batch=RUNNING, kv_capacity_blocks=1_000_000)  # fmt: skip


def _summary(timings: np.ndarray) -> dict[str, float]:
    return {"p50": float(np.percentile(timings, 50)), "p99": float(np.percentile(timings, 99))}


def bench_planner(
    json_path: Path | None, repeats: int = 1000, reference_repeats: int = 2
) -> dict[str, Any]:
    table = PerformanceTable.from_model(
        PerformanceModel(performance_model_path(BENCH_PROFILE)), 128
    )
    model = TableIterationTimes(table, prefill_s_per_token=2.5e-5)
    rng = np.random.default_rng(0)
    boards = [bench_board(rng) for _ in range(8)]
    news = [bench_board(rng).queued for _ in range(8)]
    new_rows = [Requests(**{k: v[:1] for k, v in n.__dict__.items()}) for n in news]
    picks = iter(range(10**9))

    def next_admit() -> object:
        i = next(picks) % len(boards)
        return admit(boards[i], new_rows[i], model, HORIZON)

    def next_lowest() -> object:
        return lowest_frequency(boards[next(picks) % len(boards)], model, HORIZON)

    decisions = [lowest_frequency(b, model, HORIZON) for b in boards]
    report: dict[str, Any] = {
        "setting": {"running": RUNNING, "queued": QUEUED, "horizon": HORIZON, "clocks": len(table.clocks_mhz),
                    "performance_model": BENCH_PROFILE},
        "admit_ms": _summary(timings_ms(next_admit, repeats)),
        "lowest_frequency_ms": _summary(timings_ms(next_lowest, repeats)),
        "chosen_clocks_mhz": [d.clock_mhz for d in decisions],
        "machine_jitter_ms": _summary(timings_ms(_fixed_work, repeats)),
    }  # fmt: skip
    reference_admit = timings_ms(
        lambda: admit_reference(boards[0], new_rows[0], model, HORIZON),
        reference_repeats,
        warmups=0,
    )
    reference_lowest = timings_ms(
        lambda: lowest_frequency_reference(boards[0], model, HORIZON), 1, warmups=0
    )
    report["reference_ms"] = {
        "admit": _summary(reference_admit),
        "lowest_frequency": _summary(reference_lowest),
        "agrees": bool(
            lowest_frequency_reference(boards[0], model, HORIZON) == decisions[0].clock_index
            and admit_reference(boards[0], new_rows[0], model, HORIZON) == admit(boards[0], new_rows[0], model, HORIZON).admit
        ),
    }  # fmt: skip
    report["online_correction"] = _correction_runs()
    _print(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fixed_work() -> None:
    """Identical numpy work of about the decisions' size: its p99/p50 is the machine's
    own timing noise, which no change to the planner can remove."""
    values = np.arange(4096, dtype=np.float64)
    for _ in range(40):
        np.cumsum(values)


def _correction_runs() -> dict[str, Any]:
    """The twin with a 10 %-optimistic model: TBT misses per second, without and with
    the online correction (virtual time; see throttllem.bench.correction_demo)."""
    from throttllem.bench.correction_demo import (
        run,
    )  # the twin: a benchmark's business, not the planner's

    runs = {"uncorrected": run(correct=False), "corrected": run(correct=True)}
    return {
        name: [{"second": r.second, "decode_iterations": r.iterations, "tbt_misses": r.tbt_misses,
                "mean_clock_mhz": round(r.mean_clock_mhz)} for r in rows]
        for name, rows in runs.items()
    }  # fmt: skip


def _print(report: dict[str, Any]) -> None:
    s = report["setting"]
    print(
        f"planner: {s['running']} running, {s['queued']} queued, horizon {s['horizon']}, {s['clocks']} clocks"
    )
    print(f"  {'decision':<20} {'p50 ms':>10} {'p99 ms':>10} {'reference ms':>14}   target p99")
    ref = report["reference_ms"]
    for name, key in (("admit", "admit_ms"), ("lowest frequency", "lowest_frequency_ms")):
        ref_key = "admit" if key == "admit_ms" else "lowest_frequency"
        print(
            f"  {name:<20} {report[key]['p50']:>10.3f} {report[key]['p99']:>10.3f} {ref[ref_key]['p50']:>14.1f}   <= 1 ms"
        )
    jitter = report["machine_jitter_ms"]
    print(f"  {'fixed work (noise)':<20} {jitter['p50']:>10.3f} {jitter['p99']:>10.3f}")
    print(
        f"  reference agrees on board 0: {ref['agrees']}; chosen clocks: {report['chosen_clocks_mhz']}"
    )
    correction = report["online_correction"]
    print("online correction, twin a100-40gb/llama-2-13b/tp1, model 10 % optimistic, TBT SLO 32 ms")
    print(
        f"  {'second':>6} {'uncorrected: misses/decode iterations':>38} {'MHz':>5}   {'corrected':>10} {'MHz':>5}"
    )
    for plain, fixed in zip(correction["uncorrected"], correction["corrected"], strict=False):
        print(
            f"  {plain['second']:>6} {plain['tbt_misses']:>30}/{plain['decode_iterations']:<7} "
            f"{plain['mean_clock_mhz']:>5}   {fixed['tbt_misses']:>5}/{fixed['decode_iterations']:<4} "
            f"{fixed['mean_clock_mhz']:>5}"
        )

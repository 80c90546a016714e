"""The predictor commands: `profile`, `train performance|length`, `bench predictor`,
`bench length-coverage`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from governor.gpu.base import GpuClock

Subparsers = Any  # argparse's _SubParsersAction is private


def add_profile_command(commands: Subparsers) -> None:
    profile = commands.add_parser(
        "profile",
        help="profile a Triton server: batch size x KV x clock -> iterations per second",
        description="Sweep the batch size from 1 to the engine's maximum, each step at a random "
        "supported clock set through the governor's GPU backend, reading the iteration counter "
        "and KV blocks from the server's metrics; write rows of tp, batch, kv_blocks, freq_mhz, "
        "ips. With --virtual PROFILE, run the same sweep on the twin's engine in virtual time.",
    )
    where = profile.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="Triton HTTP URL, e.g. http://127.0.0.1:8000")
    where.add_argument("--virtual", metavar="PROFILE", help="a twin profile, swept in virtual time")
    profile.add_argument("--out", type=Path, required=True, help="CSV to write")
    profile.add_argument(
        "--metrics-url",
        help="TensorRT-LLM metrics page (default: the twin's, on --gpu-control-url)",
    )
    profile.add_argument("--gpu-backend", choices=["simulated", "nvml"], default="simulated",
                         help="how clocks are set: the twin's control API, or NVML on real GPUs "
                         "(needs CAP_SYS_ADMIN and --metrics-url)")  # fmt: skip
    profile.add_argument(
        "--gpu-control-url", default="http://127.0.0.1:8003", help="the twin's GPU control API"
    )
    profile.add_argument(
        "--gpus", type=int, default=1, help="GPUs of the instance (its tensor-parallel degree)"
    )
    profile.add_argument(
        "--model", default="ensemble", help="Triton model to call (default: ensemble)"
    )
    profile.add_argument(
        "--context-window", type=int, default=4096, help="the model's context window, tokens"
    )
    profile.add_argument(
        "--max-batch", type=int, default=None, help="stop the sweep at this batch size"
    )
    profile.add_argument("--batch-step", type=int, default=1, help="sweep every Nth batch size")
    profile.add_argument(
        "--passes", type=int, default=1, help="repeat the sweep, with fresh random clocks"
    )
    profile.add_argument(
        "--output-tokens", type=int, default=256, help="tokens each request generates"
    )
    profile.add_argument(
        "--window-s", type=float, default=0.5, help="seconds per measured row (live)"
    )
    profile.add_argument("--seed", type=int, default=0)
    profile.set_defaults(handler=_profile)


def add_train_command(commands: Subparsers) -> None:
    train = commands.add_parser(
        "train", help="train a predictor and export it to ONNX, with a report",
        description="Train the performance model or the output-length model.",
    )  # fmt: skip
    kinds = train.add_subparsers(dest="kind", required=True, metavar="MODEL")
    performance = kinds.add_parser(
        "performance", help="profile rows -> iterations per second (LightGBM)",
        description="Fit gradient-boosted trees to profile rows; report R², MAPE and MAE for "
        "90/10 and 10/90 train/test splits; export the model trained on all rows.",
    )  # fmt: skip
    performance.add_argument(
        "--data", type=Path, required=True, help="CSV from `throttllem profile`"
    )
    performance.add_argument("--out", type=Path, required=True, help="ONNX model to write")
    performance.add_argument("--report", type=Path, default=None, help="JSON report to write")
    performance.add_argument("--seed", type=int, default=0)
    performance.set_defaults(handler=_train_performance)
    power = kinds.add_parser(
        "power", help="profile rows -> one GPU's power by clock and batch (JSON)",
        description="Fit the power model (predictor/power.py) to the power each profile row "
        "measured; report its mean absolute percentage error on a 20 %% holdout.",
    )  # fmt: skip
    power.add_argument("--data", type=Path, required=True, help="CSV from `throttllem profile`")
    power.add_argument("--out", type=Path, required=True, help="JSON power model to write")
    power.add_argument("--seed", type=int, default=0)
    power.set_defaults(handler=_train_power)
    length = kinds.add_parser(
        "length", help="prompts and recorded answers -> output-length buckets",
        description="Fit the length classifier on recorded answers (a JSON list of "
        "{instruction, output}); report accuracy, MAE and bound coverage on held-out prompts "
        "against two baselines; export the model trained on all prompts.",
    )  # fmt: skip
    length.add_argument(
        "--responses", type=Path, required=True, help="e.g. an AlpacaEval <model>.json"
    )
    length.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer.json (default: Llama 3)"
    )
    length.add_argument("--out", type=Path, required=True, help="ONNX model to write")
    length.add_argument("--report", type=Path, default=None, help="JSON report to write")
    length.add_argument(
        "--quantile", type=float, default=0.9, help="quantile of the conservative bound"
    )
    length.add_argument(
        "--context-window", type=int, default=8192, help="the model's context window, tokens"
    )
    length.add_argument("--seed", type=int, default=0)
    length.set_defaults(handler=_train_length)


def add_predictor_bench(benches: Subparsers) -> None:
    bench = benches.add_parser(
        "predictor", help="latency of length predictions and performance lookups",
        description="Time the length predictor on prompts of up to 2,000 tokens (p50/p99, one "
        "core) and 10,000 performance-table lookups.",
    )  # fmt: skip
    bench.add_argument("--json", type=Path, default=None, help="write the report here")
    bench.add_argument(
        "--length-model",
        type=Path,
        default=None,
        help="default: the shipped Llama-3-8B-Instruct model",
    )
    bench.add_argument(
        "--performance-model",
        type=Path,
        default=None,
        help="default: the shipped a100-40gb/llama-2-13b/tp1 model",
    )
    bench.set_defaults(handler=_bench_predictor)


def add_length_coverage_bench(benches: Subparsers) -> None:
    from throttllem.bench.length_coverage import CoverageOptions

    defaults = CoverageOptions()
    bench = benches.add_parser(
        "length-coverage", help="coverage of the planned length quantiles, raw and calibrated",
        description="Stream the AlpacaEval prompts (seeded shuffle) through each shipped length "
        "model, on its own model's answers and on answers of models it was not trained on; per "
        "nominal level, the coverage of the raw quantile and of the online-calibrated "
        "(conformal) level after the first --calibration requests. Target: calibrated within "
        "3 pp of nominal.",
    )  # fmt: skip
    bench.add_argument("--alpaca-eval", type=Path, default=defaults.alpaca_eval_dir,
                       help=f"AlpacaEval answers, <model>.json (default: {defaults.alpaca_eval_dir})")  # fmt: skip
    bench.add_argument(
        "--pair",
        action="append",
        default=None,
        metavar="LENGTH_MODEL:ANSWERS",
        help="a shipped length model and an answers file (repeatable; default: each shipped "
        "model on its own answers and on Mistral-7B, GPT-4 1106 and Qwen1.5-72B)",
    )
    bench.add_argument(
        "--calibration",
        type=int,
        default=defaults.calibration,
        help=f"requests seen before coverage counts (default: {defaults.calibration})",
    )
    bench.add_argument("--step", type=float, default=defaults.step,
                       help=f"the conformal step (default: {defaults.step:g})")  # fmt: skip
    bench.add_argument("--seed", type=int, default=defaults.seed, help="the shuffle shown")
    bench.add_argument("--seeds", type=int, default=defaults.seeds,
                       help=f"shuffles for the worst error (default: {defaults.seeds})")  # fmt: skip
    bench.add_argument("--json", type=Path, default=None, help="write the report here")
    bench.set_defaults(handler=_bench_length_coverage)


def _bench_length_coverage(args: argparse.Namespace) -> int:
    from predictor.errors import ModelFileError
    from simulator.traces import TraceError
    from throttllem.bench.length_coverage import (
        DEFAULT_PAIRS,
        CoverageOptions,
        bench_length_coverage,
    )

    pairs = DEFAULT_PAIRS
    if args.pair:
        if not all(":" in pair for pair in args.pair):
            print("throttllem bench length-coverage: --pair is LENGTH_MODEL:ANSWERS",
                  file=sys.stderr)  # fmt: skip
            return 2
        pairs = tuple(tuple(pair.split(":", 1)) for pair in args.pair)
    options = CoverageOptions(alpaca_eval_dir=args.alpaca_eval, pairs=pairs,
                              calibration=args.calibration, step=args.step, seed=args.seed,
                              seeds=args.seeds)  # fmt: skip
    try:
        bench_length_coverage(options, args.json)
    except (ModelFileError, TraceError) as error:
        print(f"throttllem bench length-coverage: {error}", file=sys.stderr)
        return 2
    return 0


def _profile(args: argparse.Namespace) -> int:
    from throttllem.profiler import LiveTarget, profile_live, profile_virtual, write_rows

    if args.virtual:
        from simulator.profile import UnknownProfileError

        try:
            rows = profile_virtual(args.virtual, output_tokens=args.output_tokens, seed=args.seed,
                                   batch_step=args.batch_step, passes=args.passes)  # fmt: skip
        except UnknownProfileError as error:
            print(f"throttllem profile: {error}", file=sys.stderr)
            return 2
    else:
        gpus = _profiled_gpus(args)
        if gpus is None:
            return 2
        target = LiveTarget(
            triton_url=args.target.rstrip("/"),
            metrics_url=args.metrics_url or f"{args.gpu_control_url.rstrip('/')}/metrics",
            model=args.model,
            tp=args.gpus,
            context_window_tokens=args.context_window,
        )
        rows = asyncio.run(
            profile_live(target, gpus, output_tokens=args.output_tokens, window_s=args.window_s,
                         max_batch=args.max_batch, batch_step=args.batch_step, seed=args.seed,
                         passes=args.passes)
        )  # fmt: skip
    write_rows(args.out, rows)
    print(f"{len(rows)} rows written to {args.out}")
    return 0


def _profiled_gpus(args: argparse.Namespace) -> list[GpuClock] | None:
    """The instance's GPUs through the chosen backend; None (said why) if they cannot be had."""
    if args.gpu_backend == "simulated":
        from governor.gpu.twin_client import TwinGpu

        return [TwinGpu.connect(args.gpu_control_url, index) for index in range(args.gpus)]
    from governor.gpu.base import GpuError
    from governor.gpu.observe import open_nvml_instance

    if not args.metrics_url:
        print("throttllem profile: --gpu-backend nvml needs --metrics-url (Triton's metrics "
              "page, http://HOST:8002/metrics)", file=sys.stderr)  # fmt: skip
        return None
    try:
        return list(open_nvml_instance(list(range(args.gpus)), "control"))
    except GpuError as error:
        print(f"throttllem profile: {error}", file=sys.stderr)
        return None


def _train_performance(args: argparse.Namespace) -> int:
    from predictor.training.performance import train_performance

    try:
        report = train_performance(args.data, args.out, args.report, seed=args.seed)
    except (OSError, ValueError) as error:
        print(f"throttllem train performance: {error}", file=sys.stderr)
        return 2
    print(f"{'split':<8} {'R²':>8} {'MAPE %':>8} {'MAE IPS':>9}")
    for name, split in report["splits"].items():
        print(f"{name:<8} {split['r2']:>8.4f} {split['mape_pct']:>8.2f} {split['mae_ips']:>9.3f}")
    print(f"model written to {args.out}")
    return 0


def _train_power(args: argparse.Namespace) -> int:
    import json
    import math

    from predictor.power import fit_power_with_holdout
    from throttllem.profiler import read_rows

    try:
        rows = read_rows(args.data)
        idle = [r.power_w for r in rows if r.batch == 0 and not math.isnan(r.power_w)]
        busy = [(r.batch, r.freq_mhz, r.power_w) for r in rows
                if r.batch > 0 and not math.isnan(r.power_w)]  # fmt: skip
        if not idle or not busy:
            raise ValueError(f"{args.data} has no measured power (profile it again)")
        model = fit_power_with_holdout(busy, sum(idle) / len(idle), seed=args.seed)
        args.out.write_text(json.dumps(model.to_json(), indent=2) + "\n")
    except (OSError, ValueError) as error:
        print(f"throttllem train power: {error}", file=sys.stderr)
        return 2
    mape = "—" if model.holdout_mape is None else f"{model.holdout_mape * 100:.2f} %"
    print(f"idle {model.idle_w:.1f} W per GPU, {len(model.clocks_mhz)} clocks, {len(busy)} rows; "
          f"holdout MAPE {mape}; written to {args.out}")  # fmt: skip
    return 0


def _train_length(args: argparse.Namespace) -> int:
    from predictor.tokenizer import PromptTokenizer, TokenizerNotFoundError
    from predictor.training.length import train_length

    try:
        tokenizer = PromptTokenizer.from_file(args.tokenizer)
        report = train_length(args.responses, args.out, args.report, tokenizer,
                              context_window=args.context_window, quantile=args.quantile, seed=args.seed)  # fmt: skip
    except (OSError, ValueError, TokenizerNotFoundError) as error:
        print(f"throttllem train length: {error}", file=sys.stderr)
        return 2
    shown = {k: v for k, v in report.items() if k != "buckets"}
    print(json.dumps(shown, indent=2))
    print(f"model written to {args.out}")
    return 0


def _bench_predictor(args: argparse.Namespace) -> int:
    from predictor.errors import ModelFileError
    from throttllem.bench.predictor import bench_predictor

    try:
        bench_predictor(args.length_model, args.performance_model, args.json)
    except ModelFileError as error:
        print(f"throttllem bench predictor: {error}", file=sys.stderr)
        return 2
    return 0


def add_planner_bench(benches: Subparsers) -> None:
    bench = benches.add_parser(
        "planner", help="admission and lowest-frequency latency, and the reference's",
        description="Time admit() and lowest_frequency() with 256 running and 64 queued requests, "
        "a 4,096-iteration horizon and 81 clocks, next to the plain reference implementation; "
        "then show the online correction fixing a 10 %-optimistic model on the twin. Pin it to "
        "one core with taskset for the one-core figure.",
    )  # fmt: skip
    bench.add_argument("--json", type=Path, default=None, help="write the report here")
    bench.add_argument("--repeats", type=int, default=300, help="timed decisions of each kind")
    bench.set_defaults(handler=_bench_planner)


def add_projection_bench(benches: Subparsers) -> None:
    from throttllem.bench.projection import ProjectionOptions

    defaults = ProjectionOptions()
    bench = benches.add_parser(
        "projection", help="the planner's projection against what the twin then did",
        description="Replay a slice of a trace on the twin with the true lengths, the clock "
        "planned every window; every --every-s seconds, set the planner's projection of the "
        "engine's board (at the clock it chose) against a copy of the engine run on with "
        "nothing more arriving. Prints the batch and KV errors, each request's first- and "
        "last-token time error and the drift per iteration, under both scheduler policies, "
        "next to the paper's figures for TensorRT-LLM.",
    )  # fmt: skip
    bench.add_argument(
        "--profile", default=defaults.profile, help=f"twin engine (default: {defaults.profile})"
    )
    bench.add_argument(
        "--trace", type=Path, default=defaults.trace, help="Azure trace CSV (default: conversation)"
    )
    bench.add_argument(
        "--rate", type=float, default=defaults.rate, help=f"mean req/s (default: {defaults.rate:g})"
    )
    bench.add_argument(
        "--duration-s",
        type=float,
        default=defaults.duration_s,
        help=f"seconds of the scaled trace (default: {defaults.duration_s:g})",
    )
    bench.add_argument(
        "--every-s",
        type=float,
        default=defaults.every_s,
        help=f"seconds between two compared projections (default: {defaults.every_s:g})",
    )
    bench.add_argument("--json", type=Path, default=None, help="write the report here")
    bench.set_defaults(handler=_bench_projection)  # fmt: skip


def _bench_projection(args: argparse.Namespace) -> int:
    from throttllem.bench.projection import ProjectionOptions, bench_projection

    options = ProjectionOptions(trace=args.trace, profile=args.profile, rate=args.rate,
                                duration_s=args.duration_s, every_s=args.every_s)  # fmt: skip
    bench_projection(options, args.json)
    return 0


def _bench_planner(args: argparse.Namespace) -> int:
    from throttllem.bench.planner import bench_planner

    bench_planner(args.json, repeats=args.repeats)
    return 0

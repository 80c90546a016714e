"""The `throttllem` command line: one subcommand per way of running the project."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from throttllem.cli_frontier import add_frontier_command
from throttllem.cli_predictors import (
    add_length_coverage_bench,
    add_planner_bench,
    add_predictor_bench,
    add_profile_command,
    add_projection_bench,
    add_train_command,
)
from throttllem.cli_replay import add_replay_command
from throttllem.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="throttllem",
        description="Energy-saving, SLO-keeping gateway for LLM inference servers.",
    )
    parser.add_argument("--log-level", default="INFO", help="Python log level (default: INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="the embedded stack: twin in Triton, gateway and governor",
        description="Start the digital twin in a real Triton server, the gateway with in-memory "
        "state and the governor on the twin's simulated GPU; serve until Ctrl-C.",
    )
    _add_gateway_address(run)
    _add_twin_ports(run, flag_prefix="twin-", first_port=8010)
    _add_twin_engine_options(run, flag_prefix="twin-")
    run.set_defaults(handler=_run)

    serve = commands.add_parser(
        "serve",
        help="the gateway alone, in front of an existing server",
        description="Serve the OpenAI-compatible gateway. Everything else comes from "
        "THROTTLLEM_* environment variables (see docs/configuration.md).",
    )
    _add_gateway_address(serve)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway worker processes (default: 1); more than one needs THROTTLLEM_REDIS_URL, "
        "so that all of them share one scoreboard",
    )
    serve.set_defaults(handler=_serve)

    twin = commands.add_parser(
        "twin",
        help="the digital twin hosted in a real Triton server",
        description="Host the engine twin as the Triton model `ensemble` (TensorRT-LLM's "
        "inputs and outputs) with an HTTP control API for its simulated GPU.",
    )
    twin.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    _add_twin_ports(twin, flag_prefix="", first_port=8000)
    _add_twin_engine_options(twin, flag_prefix="")
    twin.add_argument("--seed", type=int, default=0, help="seed of the iteration-time noise")
    twin.add_argument(
        "--triton-log-file", type=Path, default=None, help="Triton's log (default: stdout)"
    )
    twin.add_argument("--parent-pid", type=int, default=None, help="stop when this process is gone")
    twin.add_argument(
        "--scale-profiles",
        default="",
        help="more engine sizes for instance scaling, comma-separated profiles; each size is "
        "served as ensemble-<label> (e.g. ensemble-tp2) and loaded through Triton's repository "
        "API; the --profile's ensemble is loaded at start",
    )
    twin.add_argument(
        "--repository-token",
        default=None,
        help="the triton-access-token header Triton's repository API wants (default: a random "
        "one, so nothing outside can load or unload)",
    )
    twin.set_defaults(handler=_twin)

    bench = commands.add_parser(
        "bench",
        help="run a benchmark: print a table and write its JSON",
        description="Benchmarks print a table and write JSON; tests never assert timings.",
    )
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    twin_bench = benches.add_parser(
        "twin",
        help="replay the Azure conversation trace in virtual time; pacing; calibration anchors",
        description="Replay a whole Azure trace in virtual time at the highest clock and report "
        "iterations simulated per second; measure wall-clock pacing drift; measure the paper's "
        "calibration anchors.",
    )
    twin_bench.add_argument("--json", type=Path, default=None, help="write the report here")
    twin_bench.add_argument(
        "--trace",
        type=Path,
        default=Path("../shared/data/traces/AzureLLMInferenceTrace_conv.csv"),
        help="Azure trace CSV (default: ../shared/data/traces/AzureLLMInferenceTrace_conv.csv)",
    )
    twin_bench.add_argument("--profile", default=None, help="twin profile of the replay")
    twin_bench.set_defaults(handler=_bench_twin)
    add_predictor_bench(benches)
    add_length_coverage_bench(benches)
    add_planner_bench(benches)
    add_projection_bench(benches)
    gateway_bench = benches.add_parser(
        "gateway",
        help="the latency the gateway adds in front of an instant Triton upstream, and the "
        "gateway side by side with a bare pass-through proxy",
        description="Open-loop Poisson load straight to an instant Triton upstream and through "
        "the gateway (`throttllem serve`): added latency p50/p99 and added trip of each "
        "streamed token. Then closed loops (c=1 latency, c=N throughput) against the upstream, "
        "a bare FastAPI + httpx proxy and the deployed gateway (prediction, admission, Redis "
        "scoreboard) over each upstream client, with their ratios to the bare proxy. The load "
        "generator shares the cores.",
    )
    gateway_bench.add_argument("--json", type=Path, default=None, help="write the report here")
    gateway_bench.add_argument("--rate", type=float, default=200.0, help="req/s (default: 200)")
    gateway_bench.add_argument(
        "--duration-s", type=float, default=10.0, help="seconds of each measured run (default: 10)"
    )
    gateway_bench.add_argument(
        "--compare-duration-s", type=float, default=6.0,
        help="seconds of each side-by-side server's c=1 and c=N loads, split over 3 "
        "interleaved rounds (default: 6)",
    )  # fmt: skip
    gateway_bench.add_argument(
        "--concurrency", type=int, default=32,
        help="requests in flight in the side-by-side throughput loop (default: 32)",
    )  # fmt: skip
    gateway_bench.set_defaults(handler=_bench_gateway)
    _add_live_agreement_bench(benches)
    _add_energy_bench(benches)
    capacity = commands.add_parser(
        "capacity",
        help="each engine size's capacity (req/s at the highest clock) for instance scaling",
        description="Queue a trace's length mix on the twin of each engine size, at its "
        "highest clock in virtual time, and print the requests/s it completes, with the "
        "THROTTLLEM_ENGINE_SIZES that serves the twin's sizes.",
    )
    capacity.add_argument(
        "--profiles",
        default="a100-40gb/llama-2-13b/tp1,a100-40gb/llama-2-13b/tp2,a100-40gb/llama-2-13b/tp4",
        help="comma-separated twin profiles, one per engine size (default: Llama-2-13B on "
        "A100-40GB at TP1, TP2, TP4, the paper's)",
    )
    capacity.add_argument(
        "--trace",
        type=Path,
        default=Path("../shared/data/traces/AzureLLMInferenceTrace_conv.csv"),
        help="Azure trace CSV whose lengths make the mix (default: the conversation trace)",
    )
    capacity.add_argument("--requests", type=int, default=2000, help="requests in the mix")
    capacity.set_defaults(handler=_capacity)
    add_profile_command(commands)
    add_train_command(commands)

    govern = commands.add_parser(
        "govern",
        help="run the governor alone next to the GPUs, reading the scoreboard from Redis",
        description="Run the governor next to the instance's GPUs: it reads the scoreboard "
        "from Redis (THROTTLLEM_REDIS_URL, required), takes the instance's leader lock, and "
        "locks the lowest clock that keeps every SLO. A supervisor process resets the clocks "
        "if the governor dies or stalls. Everything comes from THROTTLLEM_* environment "
        "variables (see docs/configuration.md).",
    )
    govern.set_defaults(handler=_govern)
    add_replay_command(commands)
    add_frontier_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _add_gateway_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=None, help="gateway address (default: THROTTLLEM_HOST or 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="gateway port (default: THROTTLLEM_PORT or 8000)"
    )


def _add_twin_engine_options(parser: argparse.ArgumentParser, flag_prefix: str) -> None:
    from simulator.profile import DEFAULT_PROFILE, available_profiles

    parser.add_argument(
        f"--{flag_prefix}profile",
        dest="twin_profile",
        default=DEFAULT_PROFILE,
        help=f"engine profile (default: {DEFAULT_PROFILE}); one of: {', '.join(available_profiles())}",
    )
    parser.add_argument(
        f"--{flag_prefix}policy",
        dest="twin_policy",
        choices=["guaranteed_no_evict", "max_utilization"],
        default=None,
        help="scheduler policy (default: the profile's, guaranteed_no_evict)",
    )
    parser.add_argument(
        f"--{flag_prefix}responses",
        dest="twin_responses",
        type=Path,
        default=None,
        help="recorded answers to stream for known prompts: an AlpacaEval <model>.json",
    )


def _add_twin_ports(parser: argparse.ArgumentParser, flag_prefix: str, first_port: int) -> None:
    """The twin's four ports, consecutive from `first_port` unless given."""
    for offset, (name, what) in enumerate(
        [
            ("http", "Triton HTTP"),
            ("grpc", "Triton gRPC"),
            ("metrics", "Triton metrics"),
            ("control", "GPU control API"),
        ]
    ):
        parser.add_argument(
            f"--{flag_prefix}{name}-port",
            dest=f"twin_{name}_port",
            type=int,
            default=first_port + offset,
            help=f"{what} port (default: {first_port + offset})",
        )


def _twin(args: argparse.Namespace) -> int:
    from simulator.twin_server import TwinOptions, TwinOptionsError, serve_twin

    options = TwinOptions(
        host=args.host,
        http_port=args.twin_http_port,
        grpc_port=args.twin_grpc_port,
        metrics_port=args.twin_metrics_port,
        control_port=args.twin_control_port,
        profile=args.twin_profile,
        scheduler_policy=args.twin_policy,
        responses_file=args.twin_responses,
        seed=args.seed,
        triton_log_file=args.triton_log_file,
        parent_pid=args.parent_pid,
        scale_profiles=tuple(p.strip() for p in args.scale_profiles.split(",") if p.strip()),
        repository_token=args.repository_token,
    )
    try:
        serve_twin(options)
    except TwinOptionsError as error:
        print(f"throttllem twin: {error}", file=sys.stderr)
        return 2
    return 0


def _capacity(args: argparse.Namespace) -> int:
    from simulator.capacity import engine_sizes_json, length_mix, saturated_capacity_rps
    from simulator.profile import UnknownProfileError, load_profile
    from simulator.traces import TraceError, read_azure_trace

    try:
        prompts, outputs = length_mix(read_azure_trace(args.trace), args.requests)
        names = [name.strip() for name in args.profiles.split(",") if name.strip()]
        capacities = {name: saturated_capacity_rps(load_profile(name), prompts, outputs)
                      for name in names}  # fmt: skip
    except (TraceError, UnknownProfileError, ValueError) as error:
        print(f"throttllem capacity: {error}", file=sys.stderr)
        return 2
    print(f"capacity at the highest clock, {len(prompts)} requests of {args.trace.name}:")
    for name, rps in capacities.items():
        print(f"  {name:<32} {rps:8.3f} req/s")
    print(f"THROTTLLEM_ENGINE_SIZES='{engine_sizes_json(capacities)}'")
    return 0


def _bench_twin(args: argparse.Namespace) -> int:
    from simulator.profile import DEFAULT_PROFILE, UnknownProfileError
    from simulator.traces import TraceError
    from throttllem.bench.twin import bench_twin

    try:
        bench_twin(args.trace, args.profile or DEFAULT_PROFILE, args.json)
    except (TraceError, UnknownProfileError) as error:
        print(f"throttllem bench twin: {error}", file=sys.stderr)
        return 2
    return 0


def _bench_gateway(args: argparse.Namespace) -> int:
    from throttllem.bench.gateway import BenchOptions, bench_gateway

    try:
        options = BenchOptions(
            rate_per_s=args.rate, duration_s=args.duration_s,
            compare_duration_s=args.compare_duration_s, compare_concurrency=args.concurrency,
        )  # fmt: skip
        bench_gateway(args.json, options)
    except RuntimeError as error:
        print(f"throttllem bench gateway: {error}", file=sys.stderr)
        return 1
    return 0


def _add_live_agreement_bench(benches: Any) -> None:
    from throttllem.bench.live_agreement import (
        ATTAINMENT_TOLERANCE_PP,
        ENERGY_TOLERANCE,
        AgreementOptions,
    )

    defaults = AgreementOptions()
    agreement = benches.add_parser(
        "live-agreement",
        help="the live replay against `throttllem run` and the virtual one agree on a slice",
        description="Make one workload of a trace's slice, replay it with the virtual "
        "throttllem policy, then start `throttllem run` on free ports and send it the same "
        "workload with `replay --live` in real time (a 300 s slice takes about 300 s). Prints "
        "both runs' attainment and energy and their differences; exits 1 unless they agree "
        f"within {ATTAINMENT_TOLERANCE_PP:g} pp of attainment and {ENERGY_TOLERANCE:.0%} of "
        "energy.",
    )
    agreement.add_argument("--duration-s", type=float, default=defaults.duration_s,
                           help=f"seconds of the scaled trace (default: {defaults.duration_s:g})")  # fmt: skip
    agreement.add_argument("--rate", type=float, default=defaults.rate,
                           help=f"the slice's mean req/s (default: {defaults.rate:g})")  # fmt: skip
    agreement.add_argument("--profile", default=defaults.profile,
                           help=f"twin engine (default: {defaults.profile})")  # fmt: skip
    agreement.add_argument("--trace", type=Path, default=defaults.trace,
                           help="Azure trace CSV (default: the conversation trace)")  # fmt: skip
    agreement.add_argument("--alpaca-eval", type=Path, default=defaults.alpaca_eval_dir,
                           help="folder of AlpacaEval <model>.json files")  # fmt: skip
    agreement.add_argument("--seed", type=int, default=defaults.seed,
                           help=f"the prompts' pairing (default: {defaults.seed})")  # fmt: skip
    agreement.add_argument("--json", type=Path, default=None, help="write the report here")
    agreement.set_defaults(handler=_bench_live_agreement)


def _bench_live_agreement(args: argparse.Namespace) -> int:
    from simulator.profile import UnknownProfileError
    from simulator.traces import TraceError
    from throttllem.bench.live_agreement import AgreementOptions, bench_live_agreement
    from throttllem.replay.live import LiveTargetError

    options = AgreementOptions(duration_s=args.duration_s, rate=args.rate, profile=args.profile,
                               trace=args.trace, alpaca_eval_dir=args.alpaca_eval,
                               seed=args.seed)  # fmt: skip
    try:
        report = bench_live_agreement(options, args.json)
    except (TraceError, UnknownProfileError, ValueError, LiveTargetError, RuntimeError) as error:
        print(f"throttllem bench live-agreement: {error}", file=sys.stderr)
        return 2
    return 0 if report["agreement"]["passed"] else 1


def _add_energy_bench(benches: Any) -> None:
    from throttllem.bench.energy import EnergyBenchOptions

    defaults = EnergyBenchOptions()
    energy = benches.add_parser(
        "energy",
        help="each answer's attributed energy against the twin's exact per-iteration share",
        description="Start `throttllem run` on free ports, keep --streams streamed "
        "completions in flight with the official openai client, and compare each answer's "
        "usage.energy_j with the share the twin's iteration log gives it by the same rule, "
        "and their sum with the GPUs' energy counter.",
    )
    energy.add_argument("--profile", default=defaults.profile,
                        help=f"twin engine (default: {defaults.profile})")  # fmt: skip
    energy.add_argument("--streams", type=int, default=defaults.streams,
                        help=f"answers in flight (default: {defaults.streams})")  # fmt: skip
    energy.add_argument("--duration-s", type=float, default=defaults.duration_s,
                        help=f"seconds new answers are started (default: {defaults.duration_s:g})")  # fmt: skip
    energy.add_argument("--alpaca-eval", type=Path, default=defaults.alpaca_eval,
                        help="AlpacaEval <model>.json whose instructions are the prompts")  # fmt: skip
    energy.add_argument("--json", type=Path, default=None, help="write the report here")
    energy.set_defaults(handler=_bench_energy)


def _bench_energy(args: argparse.Namespace) -> int:
    from throttllem.bench.energy import EnergyBenchOptions, bench_energy

    options = EnergyBenchOptions(profile=args.profile, streams=args.streams,
                                 duration_s=args.duration_s, alpaca_eval=args.alpaca_eval)  # fmt: skip
    try:
        bench_energy(options, args.json)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"throttllem bench energy: {error}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    from throttllem.stack import serve_gateway

    return serve_gateway(host=args.host, port=args.port, workers=args.workers)


def _run(args: argparse.Namespace) -> int:
    from simulator.profile import UnknownProfileError, load_profile
    from throttllem.stack import TwinPorts, run_stack

    try:
        profile = load_profile(args.twin_profile)
    except UnknownProfileError as error:
        print(f"throttllem run: {error}", file=sys.stderr)
        return 2

    ports = TwinPorts(
        http=args.twin_http_port,
        grpc=args.twin_grpc_port,
        metrics=args.twin_metrics_port,
        control=args.twin_control_port,
    )
    twin_args = ["--profile", args.twin_profile]
    if args.twin_policy:
        twin_args += ["--policy", args.twin_policy]
    if args.twin_responses:
        twin_args += ["--responses", str(args.twin_responses.resolve())]
    return run_stack(args.host, args.port, ports, twin_args, twin_profile=profile.name)


def _govern(args: argparse.Namespace) -> int:
    from throttllem.govern import govern

    return govern(log_level=args.log_level)

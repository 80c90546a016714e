"""`throttllem replay`: its flags, and the table it prints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

Subparsers = Any  # argparse's _SubParsersAction is private


def add_replay_command(commands: Subparsers) -> None:
    from throttllem.replay.report import DEFAULT_POLICIES, SLO_REGIMES
    from throttllem.replay.workload import TRACE_FORMATS

    replay = commands.add_parser(
        "replay",
        help="replay a trace against every policy and report energy and SLOs",
        description="Replay a trace on the twin in virtual time under each policy, on "
        "identical work: the engine's capacity and E2E SLO are measured first, under "
        "saturating load at the highest clock. Prints a Markdown table; --json writes the "
        "full report. The energies are simulated.",
    )
    replay.add_argument(
        "--trace",
        type=Path,
        default=Path("../shared/data/traces/AzureLLMInferenceTrace_conv.csv"),
        help="the trace (default: the Azure conversation trace)",
    )
    replay.add_argument("--format", choices=TRACE_FORMATS, default="azure", dest="trace_format",
                        help="azure CSV, or JSONL rows {timestamp ms, input_length, "
                        "output_length} (mooncake, jsonl)")  # fmt: skip
    replay.add_argument("--profile", default="a100-40gb/llama-2-13b/tp2", help="twin engine")
    replay.add_argument("--rate", default="peak",
                        help="peak (the busiest minute at the saturated throughput: overload) "
                        "or the replayed span's mean req/s")  # fmt: skip
    replay.add_argument("--load", type=float, default=None,
                        help="a share of max's goodput capacity (the highest rate at which "
                        "max keeps 99 %% of its promises, found by bisection); overrides "
                        "--rate")  # fmt: skip
    replay.add_argument("--slo", choices=SLO_REGIMES, default="paper",
                        help="paper (TBT 200 ms mean, E2E max's p99 under saturation, TTFT 2 s) "
                        "or interactive (TTFT 1 s, TPOT 1.5 x max's mean under saturation)")  # fmt: skip
    replay.add_argument("--duration-s", type=float, default=None,
                        help="replay only the first seconds of the scaled trace")  # fmt: skip
    replay.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                        help="comma-separated: max, max-largest, static:<MHz>, static-best, "
                        "reactive, "
                        "slo-feedback, power-cap:<W>, power-cap-best, throttllem, "
                        "throttllem+scale, oracle")  # fmt: skip
    replay.add_argument("--lengths", default="noisy:0.3",
                        help="what the gateway believes: oracle, noisy:<p95 relative error>, or "
                        "model (AlpacaEval prompts through the shipped length model; default: "
                        "noisy:0.3)")  # fmt: skip
    replay.add_argument("--alpaca-eval", type=Path, default=Path("../shared/data/alpaca_eval"),
                        help="folder of AlpacaEval <model>.json files, for --lengths model")  # fmt: skip
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--json", type=Path, default=None, help="write the report here")
    replay.add_argument("--plots", type=Path, default=None, metavar="DIR",
                        help="write PNG plots here: clock and power over time, latency CDFs, "
                        "energy and tokens per joule (needs the reports extra: matplotlib)")  # fmt: skip
    replay.add_argument("--live", default=None, metavar="URL",
                        help="send the workload to the gateway at URL over HTTP, at its "
                        "time-scaled arrival times, instead of running the policies on the "
                        "virtual engine (--profile names the engine behind it, for the "
                        "capacity and the SLOs)")  # fmt: skip
    replay.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    from simulator.profile import UnknownProfileError
    from simulator.traces import TraceError
    from throttllem.replay.live import LiveTargetError
    from throttllem.replay.plots import PlotsUnavailableError
    from throttllem.replay.report import ReplayOptions, markdown_table, replay, write_json

    policies = [name.strip() for name in args.policies.split(",") if name.strip()]
    rate: str | float = args.rate
    if rate != "peak":
        try:
            rate = float(rate)
        except ValueError:
            print(f"throttllem replay: --rate is peak or a number, not {rate!r}", file=sys.stderr)
            return 2
    options = ReplayOptions(
        trace=args.trace, trace_format=args.trace_format, profile=args.profile, rate=rate,
        load=args.load, slo=args.slo,
        duration_s=args.duration_s, policies=policies, lengths=args.lengths, seed=args.seed,
        alpaca_eval_dir=args.alpaca_eval, plots_dir=args.plots, live_url=args.live,
    )  # fmt: skip
    try:
        report = replay(options, progress=sys.stderr.isatty())
    except (TraceError, UnknownProfileError, ValueError, PlotsUnavailableError,
            LiveTargetError) as error:  # fmt: skip
        print(f"throttllem replay: {error}", file=sys.stderr)
        return 2
    slo = report["slo"]
    e2e = f"{slo['e2e_ms'] / 1000:.1f} s" if slo["e2e_ms"] is not None else "TTFT + tokens x TBT"
    print(f"{report['engine']}, {report['trace']['file']}: {report['trace']['requests']} "
          f"requests at {report['rate_rps']:.2f} req/s (capacity {report['capacity_rps']:.2f}); "
          f"{slo['regime']} SLOs TTFT {slo['ttft_ms']:.0f} ms, TBT {slo['tbt_ms']:.0f} ms, "
          f"E2E {e2e}; simulated energy")  # fmt: skip
    print(markdown_table(report), end="")
    if args.json is not None:
        write_json(report, args.json)
    return 0

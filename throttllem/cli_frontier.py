"""`throttllem frontier`: its flags, and what it writes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

Subparsers = Any  # argparse's _SubParsersAction is private


def add_frontier_command(commands: Subparsers) -> None:
    from throttllem.replay.frontier import (
        DEFAULT_DURATION_S,
        DEFAULT_LOADS,
        DEFAULT_POLICIES,
        DEFAULT_PROFILES,
        DEFAULT_TRACES,
    )
    from throttllem.replay.report import SLO_REGIMES
    from throttllem.replay.workload import TRACE_FORMATS

    frontier = commands.add_parser(
        "frontier",
        help="every policy over traces x engines x SLO regimes x loads",
        description="Replay every policy in every cell of a grid: each trace, engine, SLO "
        "regime and load, the load a share of max's goodput capacity (the highest rate at "
        "which max keeps 99 %% of its promises, found by bisection). Writes frontier.json, "
        "frontier.md and one PNG per cell to --out. The energies are simulated.",
    )
    joined = ",".join
    frontier.add_argument("--traces", default=joined(str(t) for t in DEFAULT_TRACES),
                          help="comma-separated trace files")  # fmt: skip
    frontier.add_argument("--format", choices=TRACE_FORMATS, default="azure", dest="trace_format",
                          help="azure CSV, or JSONL rows {timestamp ms, input_length, "
                          "output_length} (mooncake, jsonl)")  # fmt: skip
    frontier.add_argument("--profiles", default=joined(DEFAULT_PROFILES),
                          help="comma-separated twin engines")  # fmt: skip
    frontier.add_argument("--slo", default=joined(SLO_REGIMES),
                          help="comma-separated SLO regimes: paper, interactive")  # fmt: skip
    frontier.add_argument("--loads", default=joined(f"{load:g}" for load in DEFAULT_LOADS),
                          help="comma-separated shares of max's goodput capacity")  # fmt: skip
    frontier.add_argument("--policies", default=joined(DEFAULT_POLICIES),
                          help="comma-separated policies (see `throttllem replay --help`)")  # fmt: skip
    frontier.add_argument("--duration-s", type=float, default=DEFAULT_DURATION_S,
                          help="replay the first seconds of each scaled trace")  # fmt: skip
    frontier.add_argument("--lengths", default="model",
                          help="what the gateway believes (as for replay; default: model)")  # fmt: skip
    frontier.add_argument("--alpaca-eval", type=Path, default=Path("../shared/data/alpaca_eval"),
                          help="folder of AlpacaEval <model>.json files, for --lengths model")  # fmt: skip
    frontier.add_argument("--seed", type=int, default=1)
    frontier.add_argument("--workers", type=int, default=0,
                          help="processes (default: one per core)")  # fmt: skip
    frontier.add_argument("--out", type=Path, default=Path("frontier"),
                          help="folder for frontier.json, frontier.md and plots/")  # fmt: skip
    frontier.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    frontier.set_defaults(handler=_frontier)


def _frontier(args: argparse.Namespace) -> int:
    from simulator.profile import UnknownProfileError
    from simulator.traces import TraceError
    from throttllem.replay.frontier import FrontierOptions, ProgressBar, frontier, parse_list
    from throttllem.replay.frontier_summary import (
        cell_plot_name,
        markdown_summary,
        write_cell_plots,
    )
    from throttllem.replay.plots import PlotsUnavailableError, require_matplotlib
    from throttllem.replay.report import write_json

    try:
        options = FrontierOptions(
            traces=parse_list(args.traces, Path), profiles=parse_list(args.profiles),
            slos=parse_list(args.slo), loads=parse_list(args.loads, float),
            policies=parse_list(args.policies), duration_s=args.duration_s,
            trace_format=args.trace_format, lengths=args.lengths, seed=args.seed,
            alpaca_eval_dir=args.alpaca_eval, workers=max(0, args.workers),
        )  # fmt: skip
        if not args.no_plots:
            require_matplotlib()
        report = frontier(options, ProgressBar() if sys.stderr.isatty() else None)
    except (TraceError, UnknownProfileError, ValueError, PlotsUnavailableError) as error:
        print(f"throttllem frontier: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:  # named first, so that the JSON is written before they are drawn
        report["plots"] = [f"plots/{cell_plot_name(cell)}" for cell in report["cells"]]
    write_json(report, args.out / "frontier.json")
    summary = markdown_summary(report)
    (args.out / "frontier.md").write_text(summary)
    if not args.no_plots:
        write_cell_plots(report, args.out / "plots")
    print(summary, end="")
    return 0

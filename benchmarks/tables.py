"""Print BENCHMARKS.md's tables from the JSON reports `benchmarks/run.sh` wrote.

.venv/bin/python benchmarks/tables.py benchmarks/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from throttllem.replay.report import markdown_table


def section(path: Path) -> str:
    report = json.loads(path.read_text())
    trace, slo = report["trace"], report["slo"]
    lines = [
        f"### {report['engine']}, {trace['file']} (`{path.name}`)",
        "",
        f"{trace['requests']} requests at {report['rate_rps']:.2f} req/s (capacity "
        f"{report['capacity_rps']:.2f} req/s, time scale {trace['time_scale']:.3f}), lengths "
        f"`{trace['lengths']}`; SLOs TTFT {slo['ttft_ms']:.0f} ms, TBT {slo['tbt_ms']:.0f} ms, "
        f"E2E {slo['e2e_ms'] / 1000:.1f} s.",
        "",
        markdown_table(report).rstrip("\n"),
    ]
    scaling = report.get("scaling")
    if scaling:
        sizes = ", ".join(f"{s['label']} {s['capacity_rps']:.2f} req/s" for s in scaling["sizes"])
        moves = {name: len(moved) for name, moved in scaling["moves"].items()}
        gpus = {name: p["mean_gpus"] for name, p in report["policies"].items()}
        lines += [
            "",
            f"Scaling: sizes {sizes}; moves {moves or 'none'}; mean GPUs held "
            + ", ".join(f"{name} {value:.2f}" for name, value in gpus.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main(paths: list[str]) -> None:
    for path in paths:
        print(section(Path(path)))


if __name__ == "__main__":
    main(sys.argv[1:])

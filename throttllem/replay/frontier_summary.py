"""The frontier as a Markdown summary and one PNG per cell (energy against attainment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from throttllem.replay.frontier import cells_by_group
from throttllem.replay.plots import require_matplotlib


def _energy_change(policy: dict[str, Any], max_policy: dict[str, Any]) -> float:
    return (policy["energy_j"] / max_policy["energy_j"] - 1) * 100


def markdown_summary(report: dict[str, Any]) -> str:
    grid = report["grid"]
    names = list(grid["policies"])
    lines = [
        f"Each cell: energy vs max / SLO attainment. Simulated energy. Lengths: "
        f"{grid['lengths']}; first {grid['duration_s']:g} s of each trace at the load's rate; "
        f"seed {grid['seed']}. Load = a share of max's goodput capacity (the highest rate at "
        "which max keeps 99 % of its promises). `within` = throttllem's attainment within "
        "1 pp of max's; `wins` = also the least energy of every peer within 1 pp of max; "
        "`oracle share` = throttllem's saving over oracle's.",
        "",
    ]
    for (trace, profile, slo), cells in cells_by_group(report["cells"]).items():
        first = cells[0]
        e2e = first["promises"]["e2e_ms"]
        e2e_text = f"E2E {e2e / 1000:.1f} s" if e2e is not None else "E2E = TTFT + tokens x TPOT"
        lines += [
            f"### {trace}, {profile}, {slo} SLOs (TTFT {first['promises']['ttft_ms']:.0f} ms, "
            f"TBT {first['promises']['tbt_ms']:.0f} ms, {e2e_text}); capacity "
            f"{first['capacity_rps']:.2f} req/s",
            "",
            "| load | req/s | " + " | ".join(names) + " | within | wins | gap pp | oracle share |",
            "| ---: | ---: | " + " | ".join("---" for _ in names) + " | --- | --- | ---: | ---: |",
        ]
        for cell in cells:
            policies = cell["policies"]
            entries = []
            for name in names:
                policy = policies.get(name)
                if policy is None:
                    entries.append("—")
                    continue
                label = f" ({policy['clock'].split(':')[1]})" if name.endswith("-best") else ""
                entries.append(f"{_energy_change(policy, policies['max']):+.1f} / "
                               f"{policy['slo_attainment'] * 100:.1f}{label}")  # fmt: skip
            share = cell["oracle_share"]
            lines.append(
                f"| {cell['load']:g} | {cell['rate_rps']:.2f} | "
                + " | ".join(entries)
                + f" | {_yes(cell['throttllem_within_1pp'])} | {_yes(cell['throttllem_wins'])}"
                f" | {_number(cell['attainment_gap_pp'], '+.1f')}"
                f" | {_number(share * 100 if share is not None else None, '.0f', ' %')} |"
            )
        lines.append("")
    cells = report["cells"]
    within = sum(1 for cell in cells if cell["throttllem_within_1pp"])
    wins = sum(1 for cell in cells if cell["throttllem_wins"])
    lines.append(f"throttllem within 1 pp of max in {within} of {len(cells)} cells; wins in "
                 f"{wins} of {len(cells)}. Wall time {report['wall_s'] / 60:.1f} min on "
                 f"{report['workers']} processes.")  # fmt: skip
    scaled = [cell for cell in cells if "scale_vs_largest_energy_pct" in cell]
    if scaled:
        lines += ["", "throttllem+scale against max on the largest size (the paper's baseline), "
                  "energy / attainment gap:", ""]  # fmt: skip
        lines += [f"- {cell['trace']}, {cell['profile']}, {cell['slo']}, load {cell['load']:g}: "
                  f"{cell['scale_vs_largest_energy_pct']:+.1f} % / "
                  f"{cell['scale_vs_largest_gap_pp']:+.1f} pp" for cell in scaled]  # fmt: skip
    return "\n".join(lines) + "\n"


def _yes(flag: bool | None) -> str:
    return "—" if flag is None else ("yes" if flag else "**no**")


def _number(value: float | None, spec: str, unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def cell_plot_name(cell: dict[str, Any]) -> str:
    trace = Path(cell["trace"]).stem.removeprefix("AzureLLMInferenceTrace_")
    return f"{trace}-{cell['profile'].replace('/', '-')}-{cell['slo']}-load{cell['load']:g}.png"


def write_cell_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per cell: energy vs max against attainment, a point per policy, and the
    line at max - 1 pp that a policy must reach to count."""
    pyplot = require_matplotlib()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for cell in report["cells"]:
        policies = cell["policies"]
        figure, axis = pyplot.subplots(figsize=(6, 4.5))
        for name, policy in policies.items():
            x = policy["slo_attainment"] * 100
            y = _energy_change(policy, policies["max"])
            axis.scatter([x], [y], s=36, zorder=3)
            axis.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        floor = policies["max"]["slo_attainment"] * 100 - 1
        axis.axvline(floor, color="black", linestyle="--", linewidth=0.8, label="max - 1 pp")
        axis.set_xlabel("SLO attainment (%)")
        axis.set_ylabel("energy vs max (%, simulated)")
        axis.set_title(f"{cell['trace']}\n{cell['profile']}, {cell['slo']}, load {cell['load']:g} "
                       f"({cell['rate_rps']:.2f} req/s)", fontsize=9)  # fmt: skip
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
        figure.tight_layout()
        path = out_dir / cell_plot_name(cell)
        figure.savefig(path, dpi=110)
        pyplot.close(figure)
        paths.append(path)
    return paths

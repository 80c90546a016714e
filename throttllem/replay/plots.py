"""`throttllem replay --plots DIR`: the report as pictures, one PNG per question.

- `clock_power.png`: the routed engine's clock and the power of every GPU held, over
  time, per policy (averaged into bins, so hours of trace stay readable);
- `latency_cdfs.png`: CDFs of TTFT, TBT and E2E per policy, with the SLO marked;
- `energy.png`: energy and tokens per joule per policy.

matplotlib comes with the `reports` extra; it is imported only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from throttllem.replay.simulate import Run, Slo

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BINS = 600  # points per line in the time series


class PlotsUnavailableError(RuntimeError):
    pass


def require_matplotlib() -> Any:
    """pyplot, drawing to files; a clear error without the `reports` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as error:
        raise PlotsUnavailableError(
            "--plots needs matplotlib: pip install 'throttllem[reports]'"
        ) from error
    return pyplot


def write_plots(runs: Mapping[str, Run], slo: Slo, out_dir: Path) -> list[Path]:
    """The three figures, written into `out_dir` (made if missing); their paths."""
    pyplot = require_matplotlib()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("clock_power.png", _clock_power), ("latency_cdfs.png", _latency_cdfs),
                       ("energy.png", _energy)):  # fmt: skip
        figure = draw(pyplot, runs, slo)
        path = out_dir / name
        figure.savefig(path, dpi=110, bbox_inches="tight")
        pyplot.close(figure)
        written.append(path)
    return written


def binned(t_s: np.ndarray, values: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted means of `values` (each holding until the next sample) in equal bins."""
    if len(t_s) < 2:
        return t_s, values
    edges = np.linspace(t_s[0], t_s[-1], min(bins, len(t_s) - 1) + 1)
    held_s = np.diff(t_s)
    which = np.clip(np.searchsorted(edges, t_s[:-1], side="right") - 1, 0, len(edges) - 2)
    weight = np.bincount(which, weights=held_s, minlength=len(edges) - 1)
    total = np.bincount(which, weights=held_s * values[:-1], minlength=len(edges) - 1)
    filled = weight > 0
    centres = (edges[:-1] + edges[1:]) / 2
    return centres[filled], total[filled] / weight[filled]


def _clock_power(pyplot: Any, runs: Mapping[str, Run], slo: Slo) -> Figure:
    figure, (clock, power) = pyplot.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    for name, run in runs.items():
        minutes = run.series_t_s / 60
        clock.plot(*binned(minutes, run.series_clock_mhz), label=name, linewidth=0.9)
        power.plot(*binned(minutes, run.series_power_w), label=name, linewidth=0.9)
    clock.set_ylabel("clock (MHz)")
    power.set_ylabel("power, every GPU held (W)")
    power.set_xlabel("trace time (min)")
    clock.legend(loc="lower right", fontsize=8, ncols=min(len(runs), 4))
    clock.set_title("Clock and power over the replay (simulated)")
    for axis in (clock, power):
        axis.grid(alpha=0.3)
    return figure


def _latency_cdfs(pyplot: Any, runs: Mapping[str, Run], slo: Slo) -> Figure:
    figure, axes = pyplot.subplots(1, 3, figsize=(13, 4))
    panels = (("TTFT", "ttft_s", slo.ttft_s, "log"),
              ("TBT (mean per request)", "tbt_s", slo.tbt_s, "linear"),
              ("E2E", "e2e_s", slo.e2e_s, "log"))  # fmt: skip
    for axis, (title, attribute, limit_s, scale) in zip(axes, panels, strict=True):
        for name, run in runs.items():
            seconds = np.sort(getattr(run, attribute)[~np.isnan(getattr(run, attribute))])
            share = np.arange(1, len(seconds) + 1) / max(len(seconds), 1)
            axis.plot(seconds, share, label=name, linewidth=1)
        if np.isfinite(limit_s):  # the interactive regime has no fixed E2E limit
            axis.axvline(limit_s, color="black", linestyle="--", linewidth=0.8, label="SLO")
        axis.set_xscale(scale)
        axis.set_title(title)
        axis.set_xlabel("seconds")
        axis.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("share of requests")
    axes[-1].legend(loc="lower right", fontsize=8)
    return figure


def _energy(pyplot: Any, runs: Mapping[str, Run], slo: Slo) -> Figure:
    figure, (energy, efficiency) = pyplot.subplots(1, 2, figsize=(11, 4))
    names = list(runs)
    kilojoules = [runs[name].energy_j / 1000 for name in names]
    tokens_per_j = [runs[name].output_tokens / runs[name].energy_j for name in names]
    energy.bar(names, kilojoules, color="tab:red")
    energy.set_ylabel("energy (kJ, simulated)")
    efficiency.bar(names, tokens_per_j, color="tab:green")
    efficiency.set_ylabel("output tokens per joule")
    for axis in (energy, efficiency):
        axis.tick_params(axis="x", rotation=30)
        axis.grid(alpha=0.3, axis="y")
    return figure

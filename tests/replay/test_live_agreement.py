"""`throttllem bench live-agreement`'s verdict and table, on made-up runs (the benchmark
itself takes minutes of wall clock and is not run here)."""

from __future__ import annotations

import math

from throttllem.bench.live_agreement import agreement


def run(attainment: float, energy_j: float | None, mhz: float = 800.0) -> dict[str, object]:
    return {"slo_attainment": attainment, "energy_j": energy_j, "mean_freq_mhz": mhz}


def test_runs_agree_within_two_points_of_attainment_and_five_percent_of_energy():
    agreed = agreement(run(0.50, 60_000.0), run(0.515, 62_400.0, 830.0))
    assert math.isclose(agreed["attainment_pp"], 1.5)
    assert math.isclose(agreed["energy_relative"], 0.04)
    assert math.isclose(agreed["mean_freq_mhz"], 30.0)
    assert agreed["passed"]
    assert not agreement(run(0.50, 60_000.0), run(0.525, 60_000.0))["passed"]
    assert not agreement(run(0.50, 60_000.0), run(0.50, 56_000.0))["passed"]


def test_a_live_run_without_an_energy_reading_does_not_agree():
    agreed = agreement(run(0.5, 60_000.0), run(0.5, None))
    assert math.isnan(agreed["energy_relative"])
    assert agreed["attainment_ok"] and not agreed["energy_ok"] and not agreed["passed"]

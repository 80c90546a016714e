"""The power model from a profile, and the energy predicted at admission."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from predictor.board import Board, Requests
from predictor.errors import ModelFileError
from predictor.performance import PerformanceModel, PerformanceTable
from predictor.power import PowerModel, fit_power, fit_power_with_holdout
from predictor.shipped import performance_model_path, power_model_path
from simulator.physics import PowerModel as TwinPower
from simulator.profile import available_profiles, load_profile
from slo_planner.energy_forecast import EnergyForecast
from slo_planner.iteration_times import TableIterationTimes, prefill_weight
from throttllem.cli import main
from throttllem.profiler import profile_virtual, write_rows

PROFILE = "a100-40gb/llama-2-13b/tp1"


def test_the_virtual_profile_measures_power_and_idle_and_the_fit_follows_the_twin(tmp_path):
    rows = profile_virtual(PROFILE, passes=2, seed=3)
    idle, busy = rows[0], rows[1:]
    profile = load_profile(PROFILE)
    assert idle.batch == 0 and idle.power_w == pytest.approx(profile.gpu.idle_power_w)
    assert all(profile.gpu.idle_power_w < r.power_w <= profile.gpu.power_limit_max_w for r in busy)
    model = fit_power_with_holdout([(r.batch, r.freq_mhz, r.power_w) for r in busy], idle.power_w)
    twin = TwinPower(profile)  # power is set mostly by the clock, as the twin's model says
    powers = [model.busy_w(clock_mhz, 16) for clock_mhz in (210, 810, 1410)]
    assert idle.power_w < powers[0] < powers[1] < powers[2]
    for clock_mhz, power_w in zip((210, 810, 1410), powers, strict=True):
        assert twin.busy_w(clock_mhz, 0.0) * 0.99 <= power_w <= twin.busy_w(clock_mhz, 1.0) * 1.01
    assert model.holdout_mape is not None and model.holdout_mape < 0.05
    data = tmp_path / "rows.csv"
    write_rows(data, rows)
    out = tmp_path / "power.json"
    assert main(["train", "power", "--data", str(data), "--out", str(out)]) == 0
    assert PowerModel.from_file(out).idle_w == pytest.approx(idle.power_w)


def test_a_profile_without_power_or_a_broken_power_file_is_refused(tmp_path):
    data = tmp_path / "old.csv"
    data.write_text("tp,batch,kv_blocks,freq_mhz,ips\n1,4,10,1410,30.0\n")
    assert main(["train", "power", "--data", str(data), "--out", str(tmp_path / "p.json")]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(ModelFileError, match="power model"):
        PowerModel.from_file(broken)
    with pytest.raises(ValueError, match="no busy rows"):
        fit_power([], 50.0)


@pytest.mark.parametrize("profile", available_profiles())
def test_every_shipped_power_model_has_its_error_on_the_performance_card(profile):
    model = PowerModel.from_file(power_model_path(profile))
    card = json.loads(Path(str(performance_model_path(profile))).with_suffix(".json").read_text())
    assert card["power_model"]["holdout_mape"] == model.holdout_mape < 0.02
    assert model.idle_w == load_profile(profile).gpu.idle_power_w


def board_of(running: int, context_tokens: int = 500) -> Board:
    requests = Requests.of(
        arrival_s=[0.0] * running, prompt_tokens=[context_tokens] * running,
        generated_tokens=[0] * running, remaining_tokens=[100] * running,
        ttft_slo_s=[1.0] * running, tbt_slo_s=[0.1] * running,
        e2e_deadline_s=[60.0] * running, max_tokens=[200] * running,
    )  # fmt: skip
    return Board(0.0, requests, Requests.of(), max_batch=64, kv_capacity_blocks=254)


def test_a_request_costs_more_alone_at_the_highest_clock_than_in_a_batch_at_a_lower_one():
    table = PerformanceTable.from_model(PerformanceModel(performance_model_path(PROFILE)), 64)
    times = TableIterationTimes(table, prefill_s_per_token=60e-6)
    power = PowerModel.from_file(power_model_path(PROFILE))
    forecast = EnergyForecast(times, power, gpus=1, prefill_weight=prefill_weight(times))
    alone_j = forecast.predict_j(board_of(0), 500, 200, None)
    # alone at 1410 MHz: 200 iterations of the model's length at the model's power
    iteration_s = float(times.seconds(np.array([1]), np.array([8]), np.array([0]), -1)[0])
    assert alone_j == pytest.approx(
        power.busy_w(1410, 1) * iteration_s * (200 + forecast.prefill_weight * 500), rel=0.01
    )
    shared_j = EnergyForecast(times, power, 1, forecast.prefill_weight).predict_j(
        board_of(15), 500, 200, 810
    )
    assert shared_j < alone_j / 4

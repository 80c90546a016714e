"""Policies on identical work, on the twin in virtual time (a short slice of the trace)."""

from pathlib import Path

import numpy as np
import pytest

from governor.iteration_times import TableIterationTimes
from predictor.performance import PerformanceModel, PerformanceTable
from predictor.shipped import performance_model_path
from simulator.capacity import prefill_s_per_token, saturate
from simulator.profile import load_profile
from simulator.traces import read_azure_trace
from tests.data import shared_data
from throttllem.replay.policies import parse_policy
from throttllem.replay.simulate import Run, Slo, simulate
from throttllem.replay.workload import Workload, build_workload, time_scale

PROFILE = "a100-40gb/llama-2-13b/tp2"


@pytest.fixture(scope="module")
def setting() -> tuple[Workload, Slo, TableIterationTimes]:
    profile = load_profile(PROFILE)
    trace = read_azure_trace(shared_data("traces/AzureLLMInferenceTrace_conv.csv"))
    saturation = saturate(profile, trace.prompt_tokens[:400], trace.output_tokens[:400])
    scale = time_scale(trace.arrival_s, "peak", saturation.capacity_rps)
    workload = build_workload(trace, scale, profile.model.context_window_tokens, "noisy:0.3",
                              duration_s=120)  # fmt: skip
    table = PerformanceTable.from_model(
        PerformanceModel(Path(performance_model_path(PROFILE))), 128
    )
    model = TableIterationTimes(table, prefill_s_per_token=prefill_s_per_token(profile))
    return workload, Slo(2.0, 0.2, saturation.e2e_p99_s), model


@pytest.fixture(scope="module")
def runs(setting: tuple[Workload, Slo, TableIterationTimes]) -> dict[str, Run]:
    workload, slo, model = setting
    profile = load_profile(PROFILE)
    clocks = profile.gpu.supported_clocks_mhz()
    names = ["max", "static:1050", "reactive", "throttllem", "oracle"]
    return {name: simulate(workload, profile, parse_policy(name, clocks), slo, model)
            for name in names}  # fmt: skip


def test_every_policy_serves_every_token_of_the_same_work(
    setting: tuple[Workload, Slo, TableIterationTimes], runs: dict[str, Run]
):
    workload, _, _ = setting
    for run in runs.values():
        assert run.output_tokens == int(workload.output_tokens.sum())
        assert not np.isnan(run.e2e_s).any()


def test_fixed_clocks_hold_and_max_is_the_most_expensive(runs: dict[str, Run]):
    assert runs["max"].mean_freq_mhz == 1410
    # The first switch takes the GPU's switch latency: a few samples at the default clock.
    assert runs["static:1050"].mean_freq_mhz == pytest.approx(1050, abs=5)
    assert runs["max"].energy_j > runs["static:1050"].energy_j
    for name in ("reactive", "throttllem", "oracle"):
        assert runs[name].energy_j < runs["max"].energy_j


def test_the_planner_saves_energy_and_keeps_most_promises(runs: dict[str, Run]):
    for name in ("throttllem", "oracle"):
        assert runs[name].mean_freq_mhz < 1410
        assert runs[name].met.mean() >= 0.8  # a floor that catches a broken planner


def test_a_gated_policy_needs_a_performance_model(setting):
    workload, slo, _ = setting
    profile = load_profile(PROFILE)
    with pytest.raises(ValueError, match="performance model"):
        simulate(workload, profile, parse_policy("throttllem", [1410]), slo, None)


def test_unknown_policies_and_clocks_are_refused():
    clocks = load_profile(PROFILE).gpu.supported_clocks_mhz()
    with pytest.raises(ValueError, match="unknown policy"):
        parse_policy("fastest", clocks)
    with pytest.raises(ValueError, match="not a supported clock"):
        parse_policy("static:1051", clocks)

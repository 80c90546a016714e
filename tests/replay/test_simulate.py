"""Policies on identical work, on the twin in virtual time (a short slice of the trace)."""

from pathlib import Path

import numpy as np
import pytest

from predictor.performance import PerformanceModel, PerformanceTable
from predictor.shipped import performance_model_path
from simulator.capacity import prefill_cost, saturate
from simulator.profile import load_profile
from simulator.traces import read_azure_trace
from slo_planner.iteration_times import TableIterationTimes
from slo_planner.scaling import EngineSize
from tests.data import shared_data
from throttllem.replay.plots import binned
from throttllem.replay.policies import EngineLoad, parse_policy
from throttllem.replay.scaling import EngineOption, ScaleSetup, sibling_profiles
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
    prefill = prefill_cost(profile)
    model = TableIterationTimes(table, prefill_s_per_token=prefill.s_per_token,
                                prefill_s_per_square_token=prefill.s_per_square_token)  # fmt: skip
    return workload, Slo(2.0, 0.2, saturation.e2e_p99_s), model


@pytest.fixture(scope="module")
def runs(setting: tuple[Workload, Slo, TableIterationTimes]) -> dict[str, Run]:
    workload, slo, model = setting
    profile = load_profile(PROFILE)
    clocks = profile.gpu.supported_clocks_mhz()
    names = ["max", "static:1050", "reactive", "slo-feedback", "power-cap:200", "throttllem",
             "oracle"]  # fmt: skip
    return {name: simulate(workload, profile, parse_policy(name, clocks, (100, 400)), slo, model)
            for name in names}  # fmt: skip


def test_every_policy_serves_every_token_of_the_same_work(
    setting: tuple[Workload, Slo, TableIterationTimes], runs: dict[str, Run]
):
    workload, _, _ = setting
    for run in runs.values():
        assert run.output_tokens == int(workload.output_tokens.sum())
        assert not np.isnan(run.e2e_s).any()


def test_fixed_clocks_hold_and_max_is_the_most_expensive(runs: dict[str, Run]):
    assert runs["max"].mean_freq_mhz == pytest.approx(1410)
    # The first switch takes the GPU's switch latency: a few samples at the default clock.
    assert runs["static:1050"].mean_freq_mhz == pytest.approx(1050, abs=5)
    assert runs["max"].energy_j > runs["static:1050"].energy_j
    for name in ("reactive", "slo-feedback", "power-cap:200", "throttllem", "oracle"):
        assert runs[name].energy_j < runs["max"].energy_j


def test_a_power_cap_holds_busy_power_under_it_by_running_slower(runs: dict[str, Run]):
    capped = runs["power-cap:200"]
    per_gpu_w = capped.series_power_w / capped.series_gpus
    assert per_gpu_w.max() <= 200 + 1e-6
    assert runs["max"].series_power_w.max() / 2 > 200  # the cap binds
    assert capped.mean_freq_mhz < runs["max"].mean_freq_mhz  # the clock it really ran at


def test_slo_feedback_holds_the_top_clock_while_any_request_waits_for_its_first_token():
    profile = load_profile(PROFILE)
    clocks = profile.gpu.supported_clocks_mhz()
    table = PerformanceTable.from_model(PerformanceModel(performance_model_path(PROFILE)), 64)
    model = TableIterationTimes(table)
    policy = parse_policy("slo-feedback", clocks)
    kv = profile.kv_capacity_blocks

    def clock(batch: int, waiting: int, tpot_s: float) -> int:
        load = EngineLoad(batch, profile.max_batch_size, batch * 10, kv, waiting)
        return policy.clock_mhz(clocks, load, None, None, model, tbt_slo_s=tpot_s)

    assert clock(8, waiting=1, tpot_s=0.2) == 1410
    assert clock(0, waiting=0, tpot_s=0.2) == 1410  # idle: ready for the next prefill
    relaxed, tight = clock(8, 0, tpot_s=0.2), clock(8, 0, tpot_s=0.045)
    assert relaxed < tight < 1410  # the tighter the TPOT, the higher the clock
    seconds = model.seconds(np.array([8]), np.array([80]), np.zeros(1, dtype=np.int64),
                            int(np.searchsorted(model.clocks_mhz, tight)))  # fmt: skip
    assert seconds[0] <= 0.8 * 0.045  # the margin is kept


def test_the_planner_saves_energy_and_keeps_most_promises(runs: dict[str, Run]):
    for name in ("throttllem", "oracle"):
        assert runs[name].mean_freq_mhz < 1410
        assert runs[name].met.mean() >= 0.8  # a floor that catches a broken planner


def test_each_request_is_billed_its_share_and_the_shares_stay_within_the_energy(
    runs: dict[str, Run],
):
    for name, run in runs.items():
        billed_j = run.energy_active_j + run.energy_idle_j
        assert (run.energy_active_j >= 0).all() and (billed_j > 0).all(), name
        # an empty engine's idle power is billed to nobody; the rest is all billed
        assert 0.6 * run.energy_j < billed_j.sum() <= run.energy_j * (1 + 1e-9), name
    # at the highest clock every token costs more than at a fixed low one
    assert runs["max"].energy_active_j.sum() > runs["static:1050"].energy_active_j.sum()


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
    with pytest.raises(ValueError, match="power limit"):
        parse_policy("power-cap:50", clocks, (100, 400))
    with pytest.raises(ValueError, match="power limit"):
        parse_policy("power-cap:lots", clocks, (100, 400))


def _scale_setup(capacities: dict[str, float], **timing: float) -> ScaleSetup:
    options = []
    for label, capacity_rps in capacities.items():
        name = f"a100-40gb/llama-2-13b/{label}"
        profile = load_profile(name)
        table = PerformanceTable.from_model(PerformanceModel(performance_model_path(name)), 64)
        options.append(EngineOption(EngineSize(label, f"ensemble-{label}", capacity_rps), name,
                                    profile, TableIterationTimes(table)))  # fmt: skip
    return ScaleSetup(tuple(options), **timing)


def _phases(*phases: tuple[float, float]) -> Workload:
    """Arrivals at a steady rate per phase: (seconds, requests per second)."""
    arrival_s, start_s = [], 0.0
    for seconds, rate_rps in phases:
        arrival_s += list(np.arange(start_s, start_s + seconds, 1 / rate_rps))
        start_s += seconds
    n = len(arrival_s)
    outputs = np.full(n, 60)
    return Workload(np.array(arrival_s), np.full(n, 200), outputs, outputs.copy(),
                    np.zeros(n, dtype=bool))  # fmt: skip


def test_scaling_grows_in_the_shadow_and_shrinks_after_the_grace_period():
    setup = _scale_setup({"tp1": 1.0, "tp2": 4.0}, load_s=10.0, interval_s=5.0, grace_s=20.0,
                         drain_s=10.0)  # fmt: skip
    workload = _phases((60, 0.5), (60, 3.0), (120, 0.5))
    tp1 = load_profile("a100-40gb/llama-2-13b/tp1")
    policy = parse_policy("throttllem+scale", tp1.gpu.supported_clocks_mhz())
    run = simulate(workload, tp1, policy, Slo(2.0, 0.2, 60.0), setup.option("tp1").model,
                   scaling=setup)  # fmt: skip
    assert [label for _, label in run.moves] == ["tp2", "tp1"]
    (grew_s, _), (shrank_s, _) = run.moves
    # The rate is seen at the first tick past 60 s; the engine then loads for 10 s.
    assert 60 + 10 <= grew_s <= 60 + 5 + 10 + 1
    assert shrank_s >= 120 + 20  # only after the rate fitted TP1 for the grace period
    assert not np.isnan(run.e2e_s).any()  # every request served, across both moves
    assert run.output_tokens == int(workload.output_tokens.sum())
    assert run.series_gpus.max() == 3  # TP1 and TP2 held together while moving
    assert 1 < run.mean_gpus < 3
    during_load = (run.series_t_s > grew_s - 10) & (run.series_t_s < grew_s)
    assert (run.series_gpus[during_load] == 3).all()  # the shadow engine draws power


def test_scaling_needs_its_sizes():
    profile = load_profile(PROFILE)
    policy = parse_policy("throttllem+scale", profile.gpu.supported_clocks_mhz())
    with pytest.raises(ValueError, match="engine's sizes"):
        simulate(_phases((5, 1.0)), profile, policy, Slo(2.0, 0.2, 60.0), object())  # type: ignore[arg-type]


def test_max_largest_runs_on_the_largest_size_at_the_highest_clock():
    setup = _scale_setup({"tp1": 1.0, "tp2": 4.0}, load_s=10.0, interval_s=5.0, grace_s=20.0,
                         drain_s=10.0)  # fmt: skip
    tp1 = load_profile("a100-40gb/llama-2-13b/tp1")
    clocks = tp1.gpu.supported_clocks_mhz()
    workload = _phases((30, 1.0))
    largest = simulate(workload, tp1, parse_policy("max-largest", clocks), Slo(2.0, 0.2, 60.0),
                       None, scaling=setup)  # fmt: skip
    routed = simulate(workload, tp1, parse_policy("max", clocks), Slo(2.0, 0.2, 60.0), None)
    assert (largest.series_gpus == 2).all()  # TP2 throughout, never TP1, never a move
    assert not largest.moves
    assert (largest.series_clock_mhz == max(clocks)).all()
    assert largest.energy_j > routed.energy_j  # twice the GPUs at the same clock
    assert largest.output_tokens == int(workload.output_tokens.sum())


def test_the_siblings_of_a_profile_are_its_other_tensor_parallel_sizes():
    assert sibling_profiles(PROFILE) == [f"a100-40gb/llama-2-13b/tp{n}" for n in (1, 2, 4)]


def test_binned_series_keep_the_time_weighted_mean():
    t_s = np.array([0.0, 0.1, 0.3, 0.35, 1.0, 2.0])
    clock = np.array([1410.0, 210.0, 900.0, 600.0, 1410.0, 1410.0])
    centres, means = binned(t_s, clock, bins=2)
    assert len(centres) == 2
    # Bin [0, 1): 0.1 s at 1410, 0.2 s at 210, 0.05 s at 900, 0.65 s at 600.
    assert means[0] == pytest.approx((0.1 * 1410 + 0.2 * 210 + 0.05 * 900 + 0.65 * 600) / 1.0)
    assert means[1] == pytest.approx(1410)


def test_the_governor_passes_also_while_an_iteration_runs(
    setting: tuple[Workload, Slo, TableIterationTimes], monkeypatch: pytest.MonkeyPatch
):
    """The live governor runs on the wall clock: a pass is due every window, also in the
    middle of a long prefill, so a request that arrives then gets its clock at once."""
    import throttllem.replay.simulate as simulate_module

    _, slo, model = setting
    profile = load_profile(PROFILE)
    passes_s: list[float] = []
    real_pass = simulate_module.clock_pass

    def recorded(steps, target_mhz, lock, now_s):  # type: ignore[no-untyped-def]
        passes_s.append(now_s)
        return real_pass(steps, target_mhz, lock, now_s)

    monkeypatch.setattr(simulate_module, "clock_pass", recorded)
    outputs = np.array([40, 40])
    workload = Workload(np.array([0.0, 0.05]), np.array([3500, 3500]), outputs, outputs.copy(),
                        np.zeros(2, dtype=bool))  # fmt: skip
    policy = parse_policy("throttllem", profile.gpu.supported_clocks_mhz())
    run = simulate(workload, profile, policy, slo, model)
    prefill_start_s = run.ttft_s[0] - run.prefill_s[0]
    assert run.prefill_s[0] > 0.25  # a long first iteration: more than two windows
    inside = [t for t in passes_s if prefill_start_s < t < run.ttft_s[0]]
    assert len(inside) >= 2

"""A power limit on the twin's GPUs: each iteration at the highest clock that fits it."""

import dataclasses
import itertools
import json
from importlib import resources

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from simulator.engine import Engine, EngineRequest
from simulator.gpu import UnsupportedPowerLimitError
from simulator.metrics import twin_registry
from simulator.physics import IterationModel, PowerModel
from simulator.profile import EngineProfile, GpuProfile, load_profile
from simulator.realtime import RealtimeEngine


def _quiet(name: str) -> EngineProfile:
    return dataclasses.replace(load_profile(name), iteration_noise=0.0)


TP2 = _quiet("a100-40gb/llama-2-13b/tp2")
PREFILL = (0, 0, 16 * 500, 16 * 500 * 500)  # the first iteration of `serve`: 16 prompts
DECODE = (16, 16 * 501, 0, 0)  # its second: 16 sequences over 501 cached tokens each


def serve(
    profile: EngineProfile, cap_w: float | None, requests: int = 16, gpus: slice = slice(None)
) -> tuple[Engine, list, float]:
    """`requests` requests (prompts of 500 tokens, 40 tokens each) under a cap on `gpus`."""
    engine = Engine(profile)
    for gpu in engine.gpus[gpus]:
        gpu.set_power_limit(cap_w)
    for index in range(requests):
        engine.submit(EngineRequest(str(index), 500, 40, 40))
    results, now_s = [], 0.0
    while engine.has_work:
        result = engine.step(now_s)
        results.append(result)
        now_s = result.ended_s
    return engine, results, now_s


def _energy_j(engine: Engine) -> float:
    return sum(gpu.energy_mj() for gpu in engine.gpus) / 1000


def test_a_cap_below_the_draw_slows_the_clock_and_holds_the_power_under_it():
    engine, results, busy_s = serve(TP2, 180.0)
    assert max(r.clock_mhz for r in results) < TP2.gpu.max_clock_mhz
    for gpu in engine.gpus:  # every GPU of the instance kept the cap while busy
        assert gpu.energy_mj() / 1000 / busy_s <= 180.0 + 1e-9
        assert gpu.power_limit_w == 180.0
    _, _, uncapped_s = serve(TP2, None)
    assert busy_s > uncapped_s
    assert _energy_j(engine) < _energy_j(serve(TP2, None)[0])


@pytest.mark.parametrize("above_peak_w", [0.0, 1.0, 105.0])
def test_a_cap_at_or_above_the_peak_draw_changes_nothing(above_peak_w: float):
    peak_w = PowerModel(TP2).busy_w(TP2.gpu.max_clock_mhz, 1.0)
    assert peak_w + above_peak_w <= TP2.gpu.power_limit_max_w
    capped, capped_results, capped_s = serve(TP2, peak_w + above_peak_w)
    free, free_results, free_s = serve(TP2, None)
    assert [r.duration_s for r in capped_results] == [r.duration_s for r in free_results]
    assert [r.clock_mhz for r in capped_results] == [TP2.gpu.max_clock_mhz] * len(free_results)
    assert capped_s == free_s and _energy_j(capped) == _energy_j(free)


@pytest.mark.parametrize(
    "name", ["a100-40gb/llama-2-13b/tp1", "a100-40gb/llama-2-13b/tp2", "h100-80gb/llama-3.1-8b/tp1"]
)
def test_a_lower_cap_never_makes_an_iteration_faster(name: str):
    profile = _quiet(name)
    low_w, high_w = profile.gpu.power_limit_min_w, profile.gpu.power_limit_max_w
    caps_w = [high_w - (high_w - low_w) * step / 12 for step in range(13)]  # max down to min
    runs = [serve(profile, cap_w, requests=8)[1] for cap_w in caps_w]
    for looser, tighter in itertools.pairwise(runs):
        assert len(tighter) == len(looser)  # the same iterations, only their pace differs
        for before, after in zip(looser, tighter, strict=True):
            assert after.duration_s >= before.duration_s
            assert after.clock_mhz <= before.clock_mhz
    assert sum(r.duration_s for r in runs[-1]) > sum(r.duration_s for r in runs[0])


def test_each_iteration_runs_as_fast_as_the_cap_allows():
    engine = Engine(TP2)
    for gpu in engine.gpus:
        gpu.set_power_limit(150.0)
    for index in range(16):
        engine.submit(EngineRequest(str(index), 500, 40, 40))
    now_s, step_w = 0.0, TP2.gpu.dynamic_power_w * 15 / TP2.gpu.max_clock_mhz
    for _ in range(5):  # the prefill, then decode: different activity, different clocks
        result = engine.step(now_s)
        now_s = result.ended_s
        drawn_w = engine.gpus[0].power_w()
        assert 150.0 - 2 * step_w <= drawn_w <= 150.0  # under the cap, within a step of it
    gpu = engine.gpus[0]
    assert gpu.clock_under_cap(1410, 1.0) < 1410
    gpu.set_power_limit(None)
    assert gpu.power_limit_w is None
    assert gpu.clock_under_cap(1410, 1.0) == 1410


@pytest.mark.parametrize("cap_w", [150.0, 230.0])  # both need a second round to settle
def test_the_iteration_runs_at_the_clock_its_gpus_draw_at(cap_w: float):
    """At the lower clock a cap forces, the SMs take a larger share of the iteration and
    draw more, so the clock is one where that iteration's own power fits the cap."""
    model, power, step_mhz = IterationModel(TP2), PowerModel(TP2), TP2.gpu.clock_step_mhz
    engine = Engine(TP2)
    for gpu in engine.gpus:
        gpu.set_power_limit(cap_w)
    for index in range(16):
        engine.submit(EngineRequest(str(index), 500, 40, 40))
    now_s = 0.0
    for work in (PREFILL, DECODE):
        result = engine.step(now_s)
        now_s = result.ended_s
        cost = model.cost(*work, result.clock_mhz)
        assert result.duration_s == cost.duration_s
        for gpu in engine.gpus:
            assert gpu.power_w() == power.busy_w(result.clock_mhz, cost.sm_share) <= cap_w
        faster_mhz = result.clock_mhz + step_mhz  # the next clock up does not fit
        assert power.busy_w(faster_mhz, model.cost(*work, faster_mhz).sm_share) > cap_w


def _first_iteration(cap_w: float, lock_mhz: int | None) -> tuple[float, int, Engine]:
    engine = Engine(TP2)
    for gpu in engine.gpus:
        gpu.set_power_limit(cap_w)
        if lock_mhz is not None:  # lands 200 ms into the prefill, which takes over 1 s
            gpu.lock_clock(lock_mhz, 0.0)
    for index in range(16):
        engine.submit(EngineRequest(str(index), 500, 40, 40))
    result = engine.step(0.0)
    return result.duration_s, result.clock_mhz, engine


def test_the_cap_holds_after_a_clock_switch_inside_an_iteration():
    free_s, capped_mhz, _ = _first_iteration(150.0, None)
    assert free_s > 1.0 and capped_mhz < 1200
    # A higher lock lands mid-iteration, but the cap still holds the rest to the same clock.
    switched_s, clock_mhz, engine = _first_iteration(150.0, 1200)
    assert switched_s == pytest.approx(free_s, rel=1e-12) and clock_mhz == capped_mhz
    for gpu in engine.gpus:
        assert gpu.energy_mj() / 1000 / switched_s <= 150.0
    # A lock below the capped clock still slows the rest of it down.
    slower_s, _, _ = _first_iteration(150.0, capped_mhz - 300)
    assert slower_s > free_s * 1.05


def test_a_cap_on_one_gpu_of_a_tp2_instance_paces_both():
    _, both, both_s = serve(TP2, 150.0)
    engine, one, one_s = serve(TP2, 150.0, gpus=slice(1, 2))
    assert engine.gpus[0].power_limit_w is None and engine.gpus[1].power_limit_w == 150.0
    assert [r.clock_mhz for r in one] == [r.clock_mhz for r in both]
    assert one_s == both_s > serve(TP2, None)[2]
    assert engine.gpus[1].energy_mj() / 1000 / one_s <= 150.0


@pytest.mark.parametrize("cap_w", [99.0, 401.0, -5.0])
def test_limits_outside_the_boards_range_are_refused(cap_w: float):
    engine = Engine(TP2)
    with pytest.raises(UnsupportedPowerLimitError, match="100-400 W"):
        engine.gpus[0].set_power_limit(cap_w)
    assert engine.gpus[0].power_limit_w is None  # a refused limit leaves none behind


def test_the_boards_range_is_the_one_nvidia_smi_reports():
    a100, h100 = TP2.gpu, load_profile("h100-80gb/llama-3.1-8b/tp1").gpu
    assert (a100.power_limit_min_w, a100.power_limit_max_w) == (100, 400)
    assert (h100.power_limit_min_w, h100.power_limit_max_w) == (200, 700)
    gpu = Engine(TP2).gpus[0]
    for edge_w in (100.0, 400.0):
        gpu.set_power_limit(edge_w)
        assert gpu.power_limit_w == edge_w
    h100_gpu = Engine(_quiet("h100-80gb/llama-3.1-8b/tp1")).gpus[0]
    for outside_w in (199.0, 701.0):
        with pytest.raises(UnsupportedPowerLimitError, match="200-700 W"):
            h100_gpu.set_power_limit(outside_w)


def test_a_gpu_profile_without_a_published_range_takes_only_its_tdp():
    path = resources.files("simulator") / "profiles" / "gpus" / "a100-sxm4-40gb.json"
    data = json.loads(path.read_text())
    del data["power_limit_w"]
    gpu = GpuProfile.from_json(data)
    assert (gpu.power_limit_min_w, gpu.power_limit_max_w) == (gpu.tdp_w, gpu.tdp_w)


def test_the_metrics_report_each_gpus_limit_in_force():
    runner = RealtimeEngine(Engine(TP2))
    runner.engine.gpus[1].set_power_limit(200.0)
    families = text_string_to_metric_families(generate_latest(twin_registry(runner)).decode())
    limits = next(f for f in families if f.name == "nv_gpu_power_limit")
    by_gpu = {s.labels["gpu_uuid"]: s.value for s in limits.samples}
    assert by_gpu == {"GPU-twin-0": TP2.gpu.tdp_w, "GPU-twin-1": 200.0}

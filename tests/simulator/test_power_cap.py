"""A power limit on the twin's GPUs: each iteration at the highest clock that fits it."""

import dataclasses

import pytest

from simulator.engine import Engine, Sequence
from simulator.gpu import UnsupportedPowerLimitError
from simulator.physics import PowerModel
from simulator.profile import EngineProfile, load_profile

TP2 = dataclasses.replace(load_profile("a100-40gb/llama-2-13b/tp2"), iteration_noise=0.0)


def serve(profile: EngineProfile, cap_w: float | None) -> tuple[Engine, list, float]:
    """A batch of 16 requests (prompts of 500 tokens, 40 tokens each) under a cap."""
    engine = Engine(profile)
    for gpu in engine.gpus:
        gpu.set_power_limit(cap_w)
    for index in range(16):
        engine.submit(Sequence(str(index), 500, 40, 40))
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


def test_a_cap_above_the_peak_draw_changes_nothing():
    peak_w = PowerModel(TP2).busy_w(TP2.gpu.max_clock_mhz, 1.0)
    capped, capped_results, capped_s = serve(TP2, min(400.0, peak_w + 1))
    free, free_results, free_s = serve(TP2, None)
    assert [r.duration_s for r in capped_results] == [r.duration_s for r in free_results]
    assert capped_s == free_s and _energy_j(capped) == _energy_j(free)


def test_a_lower_cap_never_serves_faster():
    durations = [serve(TP2, cap_w)[2] for cap_w in (300.0, 220.0, 160.0, 120.0, 100.0)]
    assert durations == sorted(durations)
    assert durations[-1] > durations[0]


def test_each_iteration_runs_as_fast_as_the_cap_allows():
    engine = Engine(TP2)
    for gpu in engine.gpus:
        gpu.set_power_limit(150.0)
    for index in range(16):
        engine.submit(Sequence(str(index), 500, 40, 40))
    now_s, step_w = 0.0, TP2.gpu.dynamic_power_w * 15 / TP2.gpu.max_clock_mhz
    for _ in range(5):  # the prefill, then decode: different activity, different clocks
        result = engine.step(now_s)
        now_s = result.ended_s
        drawn_w = engine.gpus[0].power_w()
        assert 150.0 - 2 * step_w <= drawn_w <= 150.0  # under the cap, within a step of it
    gpu = engine.gpus[0]
    assert gpu.clock_under_cap(1410, 1.0) < 1410
    gpu.set_power_limit(None)
    assert gpu.clock_under_cap(1410, 1.0) == 1410


@pytest.mark.parametrize("cap_w", [99.0, 401.0, -5.0])
def test_limits_outside_the_boards_range_are_refused(cap_w: float):
    engine = Engine(TP2)
    with pytest.raises(UnsupportedPowerLimitError, match="100-400 W"):
        engine.gpus[0].set_power_limit(cap_w)

import itertools

import pytest

from simulator.gpu import SimulatedGpu, UnsupportedClockError
from simulator.physics import PowerModel
from simulator.profile import load_profile

A100 = load_profile("a100-40gb/llama-2-13b/tp1")
H100 = load_profile("h100-80gb/llama-3.1-8b/tp1")


def make_gpu(profile=A100) -> SimulatedGpu:
    return SimulatedGpu(profile.gpu, PowerModel(profile))


def test_a100_clocks_run_from_1410_down_to_210_in_15_mhz_steps():
    clocks = A100.gpu.supported_clocks_mhz()
    assert (clocks[0], clocks[-1], len(clocks)) == (1410, 210, 81)
    assert all(a - b == 15 for a, b in itertools.pairwise(clocks))


def test_h100_clocks_reach_1980():
    assert H100.gpu.supported_clocks_mhz()[0] == 1980


def test_the_old_clock_holds_until_the_switch_latency_has_passed():
    gpu = make_gpu()
    gpu.lock_clock(1050, now_s=1.0)
    assert gpu.clock_mhz(1.0 + 0.199) == 1410
    assert gpu.clock_mhz(1.0 + 0.2) == 1050
    assert gpu.locked_clock_mhz == 1050


def test_reset_returns_to_the_default_clock():
    gpu = make_gpu()
    gpu.lock_clock(600, now_s=0.0)
    gpu.reset_clock(now_s=1.0)
    assert gpu.locked_clock_mhz is None
    assert gpu.clock_mhz(2.0) == gpu.default_clock_mhz == 1410


def test_an_unsupported_clock_is_refused_with_the_valid_range():
    gpu = make_gpu()
    with pytest.raises(UnsupportedClockError, match="210-1410 MHz"):
        gpu.lock_clock(1000, now_s=0.0)
    assert gpu.locked_clock_mhz is None


def test_energy_counter_integrates_power_over_time():
    gpu = make_gpu()
    gpu.idle_until(2.0)
    assert gpu.energy_mj() == pytest.approx(A100.gpu.idle_power_w * 2.0 * 1000)
    before_mj = gpu.energy_mj()
    gpu.busy_until(3.0, sm_share=0.5)
    assert gpu.power_w() > A100.gpu.idle_power_w
    assert gpu.energy_mj() - before_mj == pytest.approx(gpu.power_w() * 1000)


def test_energy_is_split_at_a_clock_switch_inside_a_busy_interval():
    gpu = make_gpu()
    gpu.lock_clock(1050, now_s=0.0)  # takes effect at 0.2 s
    gpu.busy_until(1.0, sm_share=0.5)
    power = PowerModel(A100)
    expected_mj = (0.2 * power.busy_w(1410, 0.5) + 0.8 * power.busy_w(1050, 0.5)) * 1000
    assert gpu.energy_mj() == pytest.approx(expected_mj)


def test_a_lower_clock_draws_less_power_under_the_same_load():
    fast, slow = make_gpu(), make_gpu()
    slow.lock_clock(1050, now_s=-1.0)
    fast.busy_until(1.0, sm_share=0.5)
    slow.busy_until(1.0, sm_share=0.5)
    assert slow.power_w() < fast.power_w() <= A100.gpu.tdp_w


def test_asking_again_for_the_clock_on_its_way_does_not_restart_the_switch():
    gpu = make_gpu()
    gpu.lock_clock(1050, now_s=0.0)
    gpu.lock_clock(1050, now_s=0.15)
    assert gpu.clock_mhz(0.2) == 1050
    gpu.lock_clock(1050, now_s=0.3)  # already in force: nothing happens
    assert gpu.clock_mhz(0.31) == 1050


def test_the_energy_counter_read_mid_iteration_holds_only_the_part_already_run():
    gpu = make_gpu()
    gpu.idle_until(1.0)
    before_mj = gpu.energy_mj()
    gpu.busy_until(1.1, sm_share=0.5)  # the engine accounts an iteration as it starts
    busy_w = gpu.power_w()
    assert gpu.energy_mj_at(1.04) == pytest.approx(before_mj + busy_w * 0.04 * 1000)
    assert gpu.energy_mj_at(1.2) == gpu.energy_mj()

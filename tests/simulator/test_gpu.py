import itertools

import pytest

from simulator.gpu import A100_SXM4_40GB, SimulatedGpu, UnsupportedClockError


def test_a100_clocks_run_from_1410_down_to_210_in_15_mhz_steps():
    clocks = A100_SXM4_40GB.supported_clocks_mhz()
    assert clocks[0] == 1410
    assert clocks[-1] == 210
    assert len(clocks) == 81
    assert all(a - b == 15 for a, b in itertools.pairwise(clocks))


def test_the_old_clock_holds_until_the_switch_latency_has_passed():
    gpu = SimulatedGpu(A100_SXM4_40GB, now_s=0.0)
    gpu.lock_clock(1050, now_s=1.0)
    assert gpu.clock_mhz(1.0 + 0.199) == 1410
    assert gpu.clock_mhz(1.0 + 0.2) == 1050
    assert gpu.locked_clock_mhz == 1050


def test_reset_returns_to_the_default_clock():
    gpu = SimulatedGpu(A100_SXM4_40GB)
    gpu.lock_clock(600, now_s=0.0)
    gpu.reset_clock(now_s=1.0)
    assert gpu.locked_clock_mhz is None
    assert gpu.clock_mhz(2.0) == gpu.default_clock_mhz == 1410


def test_an_unsupported_clock_is_refused_with_the_valid_range():
    gpu = SimulatedGpu(A100_SXM4_40GB)
    with pytest.raises(UnsupportedClockError, match="210-1410 MHz"):
        gpu.lock_clock(1000, now_s=0.0)
    assert gpu.locked_clock_mhz is None


def test_energy_counter_integrates_power_over_time():
    gpu = SimulatedGpu(A100_SXM4_40GB, now_s=0.0)
    gpu.run(until_s=2.0, utilization=0.0)
    assert gpu.energy_mj() == pytest.approx(A100_SXM4_40GB.idle_power_w * 2.0 * 1000)
    before_mj = gpu.energy_mj()
    gpu.run(until_s=3.0, utilization=1.0)
    assert gpu.power_w() > A100_SXM4_40GB.idle_power_w
    assert gpu.energy_mj() - before_mj == pytest.approx(gpu.power_w() * 1000)


def test_a_lower_clock_draws_less_power_under_the_same_load():
    fast, slow = SimulatedGpu(A100_SXM4_40GB), SimulatedGpu(A100_SXM4_40GB)
    slow.lock_clock(1050, now_s=0.0)
    fast.run(until_s=1.0, utilization=1.0)
    slow.run(until_s=1.0, utilization=1.0)
    assert slow.power_w() < fast.power_w()

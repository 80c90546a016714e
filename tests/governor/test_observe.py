"""Observe-only GPUs and the lazy fall back from control to observe, on a fake pynvml."""

import asyncio
import logging
from collections.abc import Callable

import pynvml
import pytest

from governor.gpu.base import GpuError
from governor.gpu.nvml import NvmlGpu
from governor.gpu.observe import FallbackToObserve, ObservedGpu, open_nvml_instance
from governor.loop import ClockGovernor, HighestClock
from tests.governor.fake_nvml import FakeHandle, FakeNvml

CLOCK_CHANGES = ("nvmlDeviceSetGpuLockedClocks", "nvmlDeviceResetGpuLockedClocks")
OBSERVE_LOG = "governor.gpu.observe"


@pytest.fixture
def nvml() -> FakeNvml:
    return FakeNvml(gpus=2)


def clock_changes(nvml: FakeNvml) -> list[str]:
    return [name for name, _ in nvml.calls if name in CLOCK_CHANGES]


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == OBSERVE_LOG and r.levelno == logging.WARNING]


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 (polling state another task mutates)
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


async def test_observed_gpu_reads_through_and_never_changes_a_clock(nvml, caplog):
    caplog.set_level(logging.DEBUG, logger=OBSERVE_LOG)
    nvml.gpus[1].power_mw = 100_000
    gpu = ObservedGpu(NvmlGpu.open(1, nvml=nvml))

    assert await gpu.supported_clocks_mhz() == [1410, 1395, 1110, 1005, 210]
    await gpu.lock_clock(1005)
    assert gpu.requested_clock_mhz == 1005
    assert await gpu.clock_mhz() == 1410  # the driver's clock, not the request
    assert await gpu.power_w() == pytest.approx(100.0)
    assert await gpu.energy_mj() == 12_345_678.0
    assert any("1005 MHz" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)

    await gpu.reset_clock()
    assert gpu.requested_clock_mhz is None
    assert clock_changes(nvml) == []
    assert nvml.gpus[1].locked_mhz is None

    await gpu.aclose()
    assert nvml.initialised == 0


async def test_observed_gpu_never_resets_a_clock_even_if_one_is_locked(nvml):
    nvml.gpus[0].locked_mhz = (1110, 1110)  # someone else's lock
    gpu = ObservedGpu(NvmlGpu.open(0, nvml=nvml))
    await gpu.reset_clock()
    assert nvml.gpus[0].locked_mhz == (1110, 1110)
    assert clock_changes(nvml) == []
    await gpu.aclose()


async def test_fallback_controls_the_gpu_while_it_is_allowed(nvml, caplog):
    gpu = FallbackToObserve(NvmlGpu.open(0, nvml=nvml))
    await gpu.lock_clock(1110)
    assert nvml.gpus[0].locked_mhz == (1110, 1110)
    assert gpu.requested_clock_mhz == 1110
    await gpu.reset_clock()
    assert nvml.gpus[0].locked_mhz is None
    assert not gpu.observing
    assert warnings_in(caplog) == []
    await gpu.aclose()


async def test_fallback_switches_once_on_a_permission_error(nvml, caplog):
    nvml.deny_clock_control = True
    gpu = FallbackToObserve(NvmlGpu.open(0, nvml=nvml))

    await gpu.lock_clock(1110)  # swallowed
    assert gpu.observing
    assert gpu.requested_clock_mhz == 1110
    [warning] = warnings_in(caplog)
    assert "CAP_SYS_ADMIN" in warning.getMessage()

    await gpu.lock_clock(1005)
    await gpu.reset_clock()
    await gpu.lock_clock(210)
    assert clock_changes(nvml) == ["nvmlDeviceSetGpuLockedClocks"]
    assert gpu.requested_clock_mhz == 210
    assert len(warnings_in(caplog)) == 1
    assert await gpu.power_w() == pytest.approx(251.5)  # reads still go through
    await gpu.aclose()


async def test_a_permission_error_on_reset_also_switches(nvml, caplog):
    gpu = FallbackToObserve(NvmlGpu.open(0, nvml=nvml))
    nvml.deny_clock_control = True
    await gpu.reset_clock()
    assert gpu.observing
    await gpu.lock_clock(1110)
    assert clock_changes(nvml) == ["nvmlDeviceResetGpuLockedClocks"]
    assert len(warnings_in(caplog)) == 1
    await gpu.aclose()


async def test_other_gpu_errors_propagate_and_do_not_switch(nvml, caplog):
    gpu = FallbackToObserve(NvmlGpu.open(0, nvml=nvml))
    nvml.errors["nvmlDeviceSetGpuLockedClocks"] = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(GpuError, match="fallen off the bus"):
        await gpu.lock_clock(1110)
    assert not gpu.observing
    nvml.errors["nvmlDeviceResetGpuLockedClocks"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(GpuError, match="not supported"):
        await gpu.reset_clock()
    assert not gpu.observing

    nvml.errors.clear()
    await gpu.lock_clock(1110)
    assert nvml.gpus[0].locked_mhz == (1110, 1110)
    assert warnings_in(caplog) == []
    await gpu.aclose()


async def test_an_instance_falls_back_together_with_one_warning(nvml, caplog):
    nvml.deny_clock_control = True
    gpus = open_nvml_instance([0, 1], "control", nvml=nvml)
    for _ in range(3):
        for gpu in gpus:
            await gpu.lock_clock(1110)
    assert all(isinstance(gpu, FallbackToObserve) and gpu.observing for gpu in gpus)
    # GPU 0 was refused; GPU 1 was never tried.
    assert nvml.called("nvmlDeviceSetGpuLockedClocks") == [(FakeHandle(0), 1110, 1110)]
    assert len(warnings_in(caplog)) == 1
    for gpu in gpus:
        await gpu.aclose()
    assert nvml.initialised == 0


async def test_a_sibling_lock_is_undone_when_the_instance_falls_back(nvml, caplog):
    nvml.gpus[1].deny_clock_control = True
    gpus = open_nvml_instance([0, 1], "control", nvml=nvml)
    for gpu in gpus:
        await gpu.lock_clock(1005)
    assert nvml.gpus[0].locked_mhz is None  # locked, then reset on falling back
    assert nvml.called("nvmlDeviceResetGpuLockedClocks") == [(FakeHandle(0),)]
    assert len(warnings_in(caplog)) == 1
    for gpu in gpus:
        await gpu.lock_clock(1110)
    assert nvml.gpus[0].locked_mhz is None
    for gpu in gpus:
        await gpu.aclose()


async def test_observe_mode_opens_observers(nvml):
    gpus = open_nvml_instance([1, 0], "observe", nvml=nvml)
    assert [type(gpu) for gpu in gpus] == [ObservedGpu, ObservedGpu]
    for gpu in gpus:
        await gpu.lock_clock(1005)
    assert clock_changes(nvml) == []
    assert len(nvml.called("nvmlInit")) == 1
    for gpu in gpus:
        await gpu.aclose()
    assert nvml.initialised == 0


def test_open_nvml_instance_rejects_bad_arguments(nvml):
    with pytest.raises(ValueError, match="'control' or 'observe'"):
        open_nvml_instance([0], "dry-run", nvml=nvml)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        open_nvml_instance([], "control", nvml=nvml)
    with pytest.raises(ValueError, match="repeat"):
        open_nvml_instance([0, 0], "control", nvml=nvml)
    assert nvml.calls == []


def test_a_failed_open_closes_the_gpus_already_opened(nvml):
    with pytest.raises(GpuError, match="GPU 5: open failed"):
        open_nvml_instance([0, 1, 5], "control", nvml=nvml)
    assert nvml.initialised == 0


async def test_the_governor_keeps_running_when_clock_control_is_refused(nvml, caplog):
    nvml.deny_clock_control = True
    gpus = open_nvml_instance([0, 1], "control", nvml=nvml)
    governor = ClockGovernor(gpus, HighestClock(), window_s=0.01)
    task = asyncio.create_task(governor.run())
    await wait_until(lambda: governor.status.decisions >= 2 and governor.status.power_w is not None)
    assert governor.status.applied_clock_mhz == 1410
    assert governor.status.power_w == pytest.approx(2 * 251.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock_changes(nvml) == ["nvmlDeviceSetGpuLockedClocks"]
    assert len(warnings_in(caplog)) == 1
    await governor.aclose()
    assert nvml.initialised == 0


async def test_the_governor_locks_and_resets_every_gpu_when_allowed(nvml):
    gpus = open_nvml_instance([0, 1], "control", nvml=nvml)
    governor = ClockGovernor(gpus, HighestClock(), window_s=0.01)
    task = asyncio.create_task(governor.run())
    await wait_until(lambda: governor.status.decisions >= 2)
    assert [gpu.locked_mhz for gpu in nvml.gpus] == [(1410, 1410), (1410, 1410)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [gpu.locked_mhz for gpu in nvml.gpus] == [None, None]
    await governor.aclose()

"""The NVML backend against a fake pynvml: no GPU is touched."""

import subprocess
import sys

import pynvml
import pytest

from governor.gpu.base import GpuError
from governor.gpu.nvml import (
    NVML_ERROR_MESSAGES,
    GpuPermissionError,
    NvmlGpu,
    gpu_error,
    nvml_users,
)
from tests.governor import fake_nvml
from tests.governor.fake_nvml import FakeHandle, FakeNvml


@pytest.fixture
def nvml() -> FakeNvml:
    return FakeNvml(gpus=2)


def test_the_fake_uses_pynvml_codes_and_error_classes():
    for name, code in fake_nvml.ERROR_CODES.items():
        assert getattr(pynvml, name) == code, name
    assert fake_nvml.NVML_CLOCK_GRAPHICS == pynvml.NVML_CLOCK_GRAPHICS
    assert fake_nvml.NVML_CLOCK_MEM == pynvml.NVML_CLOCK_MEM
    error = fake_nvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
    assert type(error).__name__ == type(pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)).__name__
    assert error.value == pynvml.NVML_ERROR_NO_PERMISSION


def test_importing_the_backends_does_not_load_nvml():
    code = (
        "import governor.gpu.nvml, governor.gpu.observe, pynvml; "
        "assert pynvml.nvmlLib is None, 'libnvidia-ml was loaded at import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_supported_clocks_are_those_of_the_current_memory_clock_highest_first(nvml):
    gpu = NvmlGpu.open(1, nvml=nvml)
    assert await gpu.supported_clocks_mhz() == [1410, 1395, 1110, 1005, 210]
    assert nvml.called("nvmlDeviceGetSupportedGraphicsClocks") == [(FakeHandle(1), 1593)]
    nvml.gpus[1].mem_mhz = 405
    assert await gpu.supported_clocks_mhz() == [405, 210]
    await gpu.aclose()


async def test_no_supported_clocks_is_an_error(nvml):
    nvml.gpus[0].supported_mhz[1593] = []
    gpu = NvmlGpu.open(0, nvml=nvml)
    with pytest.raises(GpuError, match="no supported graphics clocks at memory clock 1593 MHz"):
        await gpu.supported_clocks_mhz()
    await gpu.aclose()


async def test_lock_sets_min_and_max_on_its_own_gpu_and_reset_undoes_it(nvml):
    gpu = NvmlGpu.open(1, nvml=nvml)
    await gpu.lock_clock(1005)
    assert nvml.called("nvmlDeviceSetGpuLockedClocks") == [(FakeHandle(1), 1005, 1005)]
    assert nvml.gpus[1].locked_mhz == (1005, 1005)
    assert nvml.gpus[0].locked_mhz is None
    assert await gpu.clock_mhz() == 1005
    assert nvml.called("nvmlDeviceGetClockInfo")[-1] == (FakeHandle(1), pynvml.NVML_CLOCK_GRAPHICS)

    await gpu.reset_clock()
    assert nvml.called("nvmlDeviceResetGpuLockedClocks") == [(FakeHandle(1),)]
    assert nvml.gpus[1].locked_mhz is None
    assert await gpu.clock_mhz() == 1410
    await gpu.aclose()


async def test_power_is_converted_to_watts_and_energy_stays_in_millijoules(nvml):
    nvml.gpus[0].power_mw = 312_250
    nvml.gpus[0].energy_mj = 98_765_432
    gpu = NvmlGpu.open(0, nvml=nvml)
    power_w = await gpu.power_w()
    energy_mj = await gpu.energy_mj()
    assert power_w == pytest.approx(312.25)
    assert energy_mj == 98_765_432.0
    assert isinstance(energy_mj, float)
    await gpu.aclose()


@pytest.mark.parametrize("code", sorted(NVML_ERROR_MESSAGES))
async def test_every_mapped_nvml_error_becomes_a_gpu_error_with_its_message(nvml, code):
    gpu = NvmlGpu.open(1, nvml=nvml)
    nvml.errors["nvmlDeviceGetPowerUsage"] = code
    with pytest.raises(GpuError) as raised:
        await gpu.power_w()
    message = str(raised.value)
    assert NVML_ERROR_MESSAGES[code] in message
    assert "read power" in message
    assert "GPU 1" in message
    assert f"NVML error {code}" in message
    assert isinstance(raised.value.__cause__, fake_nvml.NVMLError)
    assert isinstance(raised.value, GpuPermissionError) == (code == pynvml.NVML_ERROR_NO_PERMISSION)
    del nvml.errors["nvmlDeviceGetPowerUsage"]
    await gpu.aclose()


def test_the_table_covers_the_codes_the_governor_is_likely_to_meet():
    expected = {
        "NO_PERMISSION",
        "NOT_SUPPORTED",
        "UNINITIALIZED",
        "INVALID_ARGUMENT",
        "GPU_IS_LOST",
        "DRIVER_NOT_LOADED",
        "LIBRARY_NOT_FOUND",
        "TIMEOUT",
        "UNKNOWN",
    }
    assert {getattr(pynvml, f"NVML_ERROR_{name}") for name in expected} <= set(NVML_ERROR_MESSAGES)
    assert len(set(NVML_ERROR_MESSAGES.values())) == len(NVML_ERROR_MESSAGES)


@pytest.mark.parametrize(
    ("function", "operation", "call"),
    [
        (
            "nvmlDeviceGetSupportedGraphicsClocks",
            "supported clocks",
            lambda g: g.supported_clocks_mhz(),
        ),
        ("nvmlDeviceSetGpuLockedClocks", "lock clock at 1110 MHz", lambda g: g.lock_clock(1110)),
        ("nvmlDeviceResetGpuLockedClocks", "reset clock", lambda g: g.reset_clock()),
        ("nvmlDeviceGetClockInfo", "read clock", lambda g: g.clock_mhz()),
        ("nvmlDeviceGetTotalEnergyConsumption", "read energy", lambda g: g.energy_mj()),
    ],
)
async def test_each_operation_names_itself_in_its_errors(nvml, function, operation, call):
    gpu = NvmlGpu.open(0, nvml=nvml)
    nvml.errors[function] = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(GpuError, match=f"NVML GPU 0: {operation} failed: the GPU has fallen off"):
        await call(gpu)
    await gpu.aclose()


async def test_an_unmapped_code_still_becomes_a_gpu_error(nvml):
    gpu = NvmlGpu.open(0, nvml=nvml)
    nvml.errors["nvmlDeviceGetPowerUsage"] = 4242
    with pytest.raises(
        GpuError, match=r"read power failed: unexpected NVML error \(NVML error 4242"
    ):
        await gpu.power_w()
    await gpu.aclose()


async def test_no_permission_is_a_permission_error_naming_what_is_needed(nvml):
    nvml.deny_clock_control = True
    gpu = NvmlGpu.open(0, nvml=nvml)
    with pytest.raises(GpuPermissionError) as raised:
        await gpu.lock_clock(1110)
    message = str(raised.value)
    assert "CAP_SYS_ADMIN" in message
    assert "cap_add: [SYS_ADMIN]" in message
    assert "nvidia-smi -acp UNRESTRICTED" in message
    assert "root" in message
    assert "lock clock at 1110 MHz" in message
    assert nvml.gpus[0].locked_mhz is None
    await gpu.aclose()


def test_real_pynvml_errors_map_the_same_way():
    """pynvml's own per-code subclasses, built without loading the library."""
    denied = gpu_error(pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION), "lock clock", 3)
    assert isinstance(denied, GpuPermissionError)
    assert "GPU 3" in str(denied)
    assert "CAP_SYS_ADMIN" in str(denied)
    lost = gpu_error(pynvml.NVMLError_GpuIsLost(), "read power", 0)
    assert not isinstance(lost, GpuPermissionError)
    assert NVML_ERROR_MESSAGES[pynvml.NVML_ERROR_GPU_IS_LOST] in str(lost)


async def test_nvml_is_initialised_once_and_shut_down_after_the_last_gpu_closes(nvml):
    first = NvmlGpu.open(0, nvml=nvml)
    second = NvmlGpu.open(1, nvml=nvml)
    assert len(nvml.called("nvmlInit")) == 1
    assert nvml_users(nvml) == 2

    await first.aclose()
    await first.aclose()  # idempotent: must not release the second GPU's share
    assert nvml.called("nvmlShutdown") == []
    assert nvml_users(nvml) == 1
    assert await second.power_w() == pytest.approx(251.5)

    await second.aclose()
    assert len(nvml.called("nvmlShutdown")) == 1
    assert nvml.initialised == 0
    assert nvml_users(nvml) == 0

    third = NvmlGpu.open(0, nvml=nvml)
    assert len(nvml.called("nvmlInit")) == 2
    await third.aclose()
    assert nvml.initialised == 0


async def test_separate_nvml_modules_are_counted_separately(nvml):
    other = FakeNvml(gpus=1)
    gpu = NvmlGpu.open(0, nvml=nvml)
    other_gpu = NvmlGpu.open(0, nvml=other)
    await other_gpu.aclose()
    assert other.initialised == 0
    assert nvml.initialised == 1
    await gpu.aclose()
    assert nvml.initialised == 0


async def test_a_closed_gpu_refuses_calls(nvml):
    gpu = NvmlGpu.open(0, nvml=nvml)
    await gpu.aclose()
    with pytest.raises(GpuError, match="GPU 0: read power failed: the GPU is closed"):
        await gpu.power_w()
    assert nvml.called("nvmlDeviceGetPowerUsage") == []


def test_opening_a_missing_gpu_fails_and_gives_nvml_back(nvml):
    with pytest.raises(GpuError, match="NVML GPU 7: open failed: NVML rejected an argument"):
        NvmlGpu.open(7, nvml=nvml)
    assert nvml.initialised == 0
    assert nvml_users(nvml) == 0


def test_a_missing_library_fails_at_open_with_the_fix(nvml):
    nvml.errors["nvmlInit"] = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    with pytest.raises(GpuError, match=r"GPU 0: nvmlInit failed: libnvidia-ml\.so was not found"):
        NvmlGpu.open(0, nvml=nvml)
    assert nvml_users(nvml) == 0
    del nvml.errors["nvmlInit"]
    gpu = NvmlGpu.open(0, nvml=nvml)
    assert nvml.initialised == 1
    gpu.close()
    assert nvml.initialised == 0

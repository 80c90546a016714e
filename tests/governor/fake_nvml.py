"""A fake `pynvml` for the NVML backend's tests: no driver, no GPU, a call log.

Like the real library, every device call fails with NVML_ERROR_UNINITIALIZED unless
`nvmlInit` has been called more times than `nvmlShutdown`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

# nvml.h's codes; test_nvml checks they match pynvml's.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_MEMORY = 20
NVML_ERROR_UNKNOWN = 999

NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_MEM = 2

ERROR_CODES = {name: value for name, value in globals().items() if name.startswith("NVML_ERROR_")}


class NVMLError(Exception):
    """Like pynvml's: built from a code, kept in `.value`, a subclass per known code."""

    by_code: ClassVar[dict[int, type[NVMLError]]] = {}
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError.by_code.get(value, cls)
        error = Exception.__new__(cls)
        error.value = value
        return error

    def __str__(self) -> str:
        return f"fake NVML error {self.value}"


for _name, _code in ERROR_CODES.items():
    _class_name = "NVMLError_" + "".join(p.capitalize() for p in _name[11:].split("_"))
    NVMLError.by_code[_code] = type(_class_name, (NVMLError,), {})


@dataclass
class FakeGpu:
    # Supported graphics clocks per memory clock, in NVML's (unsorted) order.
    supported_mhz: dict[int, list[int]] = field(
        default_factory=lambda: {
            1593: [1110, 1410, 210, 1005, 1395, 1410],
            405: [405, 210],
        }
    )
    mem_mhz: int = 1593
    default_clock_mhz: int = 1410
    locked_mhz: tuple[int, int] | None = None
    power_mw: int = 251_500
    energy_mj: int = 12_345_678
    deny_clock_control: bool = False

    @property
    def clock_mhz(self) -> int:
        return self.locked_mhz[1] if self.locked_mhz else self.default_clock_mhz


@dataclass(frozen=True)
class FakeHandle:
    index: int


class FakeNvml:
    """Pass an instance where the backend takes `nvml=`."""

    NVMLError = NVMLError

    def __init__(self, gpus: int = 2) -> None:
        for name, code in ERROR_CODES.items():
            setattr(self, name, code)
        self.NVML_CLOCK_GRAPHICS = NVML_CLOCK_GRAPHICS
        self.NVML_CLOCK_MEM = NVML_CLOCK_MEM
        self.gpus = [FakeGpu() for _ in range(gpus)]
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.initialised = 0
        # Set/reset of locked clocks fail with NO_PERMISSION (on all GPUs; see FakeGpu too).
        self.deny_clock_control = False
        # Function name -> error code it raises (until removed).
        self.errors: dict[str, int] = {}

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args in self.calls if called == name]

    def _enter(self, name: str, *args: Any, needs_init: bool = True) -> None:
        self.calls.append((name, args))
        if name in self.errors:
            raise NVMLError(self.errors[name])
        if needs_init and self.initialised == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: FakeHandle) -> FakeGpu:
        return self.gpus[handle.index]

    def _check_control(self, handle: FakeHandle) -> None:
        if self.deny_clock_control or self._gpu(handle).deny_clock_control:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)

    def nvmlInit(self) -> None:
        self._enter("nvmlInit", needs_init=False)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialised -= 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByIndex", index)
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(index)

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        self._enter("nvmlDeviceGetClockInfo", handle, clock_type)
        gpu = self._gpu(handle)
        if clock_type == NVML_CLOCK_GRAPHICS:
            return gpu.clock_mhz
        if clock_type == NVML_CLOCK_MEM:
            return gpu.mem_mhz
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetSupportedGraphicsClocks(self, handle: FakeHandle, mem_mhz: int) -> list[int]:
        self._enter("nvmlDeviceGetSupportedGraphicsClocks", handle, mem_mhz)
        clocks_mhz = self._gpu(handle).supported_mhz.get(mem_mhz)
        if clocks_mhz is None:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return list(clocks_mhz)

    def nvmlDeviceSetGpuLockedClocks(self, handle: FakeHandle, min_mhz: int, max_mhz: int) -> None:
        self._enter("nvmlDeviceSetGpuLockedClocks", handle, min_mhz, max_mhz)
        self._check_control(handle)
        if min_mhz > max_mhz:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        self._gpu(handle).locked_mhz = (min_mhz, max_mhz)

    def nvmlDeviceResetGpuLockedClocks(self, handle: FakeHandle) -> None:
        self._enter("nvmlDeviceResetGpuLockedClocks", handle)
        self._check_control(handle)
        self._gpu(handle).locked_mhz = None

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        self._enter("nvmlDeviceGetPowerUsage", handle)
        return self._gpu(handle).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        self._enter("nvmlDeviceGetTotalEnergyConsumption", handle)
        return self._gpu(handle).energy_mj

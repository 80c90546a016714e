"""Real NVIDIA GPUs through NVML (`pynvml`).

The NVML module is injectable so that tests run against a fake: nothing here touches
NVML until `NvmlGpu.open` is called. Every NVML call blocks, so the async methods run
them in a worker thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml

from governor.gpu.base import GpuError

T = TypeVar("T")

_PERMISSION_HINT = (
    "no permission to change GPU clocks: run as root or with the CAP_SYS_ADMIN capability "
    "(in containers: `cap_add: [SYS_ADMIN]`), or have an admin run "
    "`nvidia-smi -acp UNRESTRICTED` where the GPU supports it"
)

# NVML error codes (ABI-stable, as in nvml.h) and what they mean for the governor.
NVML_ERROR_MESSAGES: dict[int, str] = {
    pynvml.NVML_ERROR_UNINITIALIZED: "NVML is not initialised (never started, or already shut down)",
    pynvml.NVML_ERROR_INVALID_ARGUMENT: (
        "NVML rejected an argument (a clock outside the supported range, or a bad GPU index)"
    ),
    pynvml.NVML_ERROR_NOT_SUPPORTED: (
        "not supported by this GPU or driver (locking clocks needs Volta or newer; "
        "some boards report no power or energy)"
    ),
    pynvml.NVML_ERROR_NO_PERMISSION: _PERMISSION_HINT,
    pynvml.NVML_ERROR_NOT_FOUND: (
        "no such GPU (NVML counts every GPU on the host and ignores CUDA_VISIBLE_DEVICES)"
    ),
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded",
    pynvml.NVML_ERROR_TIMEOUT: "NVML timed out talking to the GPU",
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: (
        "libnvidia-ml.so was not found: install the NVIDIA driver, or in containers run "
        "with the NVIDIA container toolkit (`--gpus`)"
    ),
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: (
        "the NVIDIA driver is too old for this NVML call; upgrade the driver"
    ),
    pynvml.NVML_ERROR_GPU_IS_LOST: (
        "the GPU has fallen off the bus or stopped responding; it needs a reset or a reboot"
    ),
    pynvml.NVML_ERROR_RESET_REQUIRED: "the GPU needs a reset before it can be used again",
    pynvml.NVML_ERROR_OPERATING_SYSTEM: "the operating system blocked the request",
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "the NVML library and the kernel driver differ in version (driver upgraded "
        "without a reboot?)"
    ),
    pynvml.NVML_ERROR_MEMORY: "NVML ran out of memory",
    pynvml.NVML_ERROR_UNKNOWN: (
        "NVML reported an unknown error; check `nvidia-smi` and the kernel log (dmesg)"
    ),
}


class GpuPermissionError(GpuError):
    """NVML refused a clock change for lack of privilege (NVML_ERROR_NO_PERMISSION)."""


class _NvmlUsers:
    """`nvmlInit` once per NVML module; `nvmlShutdown` when its last user closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(module) -> (module, users); the module is kept so its id cannot be reused.
        self._users: dict[int, tuple[Any, int]] = {}

    def acquire(self, nvml: Any) -> None:
        with self._lock:
            _, users = self._users.get(id(nvml), (nvml, 0))
            if users == 0:
                nvml.nvmlInit()
            self._users[id(nvml)] = (nvml, users + 1)

    def release(self, nvml: Any) -> None:
        with self._lock:
            _, users = self._users[id(nvml)]
            if users > 1:
                self._users[id(nvml)] = (nvml, users - 1)
                return
            del self._users[id(nvml)]
            nvml.nvmlShutdown()

    def users(self, nvml: Any) -> int:
        with self._lock:
            return self._users.get(id(nvml), (nvml, 0))[1]


_NVML_USERS = _NvmlUsers()


def nvml_users(nvml: Any = pynvml) -> int:
    """How many open `NvmlGpu`s share this NVML module's initialisation."""
    return _NVML_USERS.users(nvml)


def gpu_error(error: Exception, operation: str, index: int) -> GpuError:
    """The `GpuError` for an NVMLError: the table's message, the operation and the GPU."""
    code: int = getattr(error, "value", pynvml.NVML_ERROR_UNKNOWN)
    try:
        detail = str(error)
    except Exception:  # pynvml's __str__ may call into the library
        detail = "?"
    message = NVML_ERROR_MESSAGES.get(code, "unexpected NVML error")
    text = f"NVML GPU {index}: {operation} failed: {message} (NVML error {code}: {detail})"
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return GpuPermissionError(text)
    return GpuError(text)


class NvmlGpu:
    """One physical GPU. Open with `NvmlGpu.open(index)`; close with `aclose()`."""

    def __init__(self, nvml: Any, index: int, handle: Any) -> None:
        self._nvml = nvml
        self._index = index
        self._handle = handle
        self._closed = False

    @classmethod
    def open(cls, index: int, nvml: Any = pynvml) -> NvmlGpu:
        """Initialise NVML (once per process) and look the GPU up by NVML index.

        Blocking; from async code, call it through `asyncio.to_thread`.
        """
        try:
            _NVML_USERS.acquire(nvml)
        except nvml.NVMLError as error:
            raise gpu_error(error, "nvmlInit", index) from error
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError as error:
            _NVML_USERS.release(nvml)
            raise gpu_error(error, "open", index) from error
        return cls(nvml, index, handle)

    @property
    def index(self) -> int:
        return self._index

    async def supported_clocks_mhz(self) -> list[int]:
        return await asyncio.to_thread(self._call, "supported clocks", self._supported_clocks_mhz)

    async def lock_clock(self, clock_mhz: int) -> None:
        await asyncio.to_thread(
            self._call,
            f"lock clock at {clock_mhz} MHz",
            lambda: self._nvml.nvmlDeviceSetGpuLockedClocks(self._handle, clock_mhz, clock_mhz),
        )

    async def reset_clock(self) -> None:
        await asyncio.to_thread(
            self._call,
            "reset clock",
            lambda: self._nvml.nvmlDeviceResetGpuLockedClocks(self._handle),
        )

    async def clock_mhz(self) -> int:
        clock_mhz = await asyncio.to_thread(
            self._call,
            "read clock",
            lambda: self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_GRAPHICS),
        )
        return int(clock_mhz)

    async def power_w(self) -> float:
        power_mw = await asyncio.to_thread(
            self._call, "read power", lambda: self._nvml.nvmlDeviceGetPowerUsage(self._handle)
        )
        return power_mw / 1000.0

    async def energy_mj(self) -> float:
        energy_mj = await asyncio.to_thread(
            self._call,
            "read energy",
            lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle),
        )
        return float(energy_mj)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Give up this GPU's share of NVML; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            _NVML_USERS.release(self._nvml)
        except self._nvml.NVMLError as error:
            raise gpu_error(error, "nvmlShutdown", self._index) from error

    def _supported_clocks_mhz(self) -> list[int]:
        # Graphics clocks depend on the memory clock: ask for those of the one in force.
        mem_mhz = self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_MEM)
        clocks_mhz = self._nvml.nvmlDeviceGetSupportedGraphicsClocks(self._handle, mem_mhz)
        if not clocks_mhz:
            raise GpuError(
                f"NVML GPU {self._index}: no supported graphics clocks at memory clock "
                f"{mem_mhz} MHz"
            )
        return sorted({int(c) for c in clocks_mhz}, reverse=True)

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        if self._closed:
            raise GpuError(f"NVML GPU {self._index}: {operation} failed: the GPU is closed")
        try:
            return call()
        except self._nvml.NVMLError as error:
            raise gpu_error(error, operation, self._index) from error

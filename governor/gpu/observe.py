"""Observe-only GPUs: read clocks, power and energy, but never change a clock.

`ObservedGpu` is the `observe` backend: the governor decides as usual, and the decision
is recorded instead of applied. `FallbackToObserve` wraps a controlling GPU and turns
into an observer the first time the driver refuses a clock change for lack of privilege,
so a governor without CAP_SYS_ADMIN keeps serving instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import pynvml

from governor.gpu.base import GpuClock, GpuError
from governor.gpu.nvml import GpuPermissionError, NvmlGpu

log = logging.getLogger(__name__)

Mode = Literal["control", "observe"]


class _ReadsThrough:
    """Clocks, power and energy are read from `inner` as they are."""

    inner: GpuClock

    async def supported_clocks_mhz(self) -> list[int]:
        return await self.inner.supported_clocks_mhz()

    async def clock_mhz(self) -> int:
        return await self.inner.clock_mhz()

    async def power_w(self) -> float:
        return await self.inner.power_w()

    async def energy_mj(self) -> float:
        return await self.inner.energy_mj()

    async def aclose(self) -> None:
        await self.inner.aclose()


class ObservedGpu(_ReadsThrough):
    """Reads pass through to `inner`; clock changes are only recorded."""

    def __init__(self, inner: GpuClock) -> None:
        self.inner = inner
        self.requested_clock_mhz: int | None = None

    async def lock_clock(self, clock_mhz: int) -> None:
        self.requested_clock_mhz = clock_mhz
        log.debug("observe: would lock the clock at %d MHz", clock_mhz)

    async def reset_clock(self) -> None:
        self.requested_clock_mhz = None
        log.debug("observe: would reset the clock")


class FallbackGroup:
    """The GPUs of one instance fall back together.

    Every GPU of a tensor-parallel instance must run at the same clock, so when one is
    refused, the others stop trying too, and any lock they already hold is undone: a
    lock left behind would outlive the governor, whose exit reset an observer skips.
    """

    def __init__(self) -> None:
        self.observing = False
        self.members: list[FallbackToObserve] = []

    async def fall_back(self, error: GpuPermissionError) -> None:
        if self.observing:
            return
        self.observing = True
        log.warning(
            "governor: GPU clock control refused; observing only from now on, clocks left "
            "to the driver (grant CAP_SYS_ADMIN to let the governor save energy): %s",
            error,
        )
        for member in self.members:
            await member.undo_lock()


class FallbackToObserve(_ReadsThrough):
    """Controls `inner` until the first `GpuPermissionError`, then only observes."""

    def __init__(self, inner: GpuClock, group: FallbackGroup | None = None) -> None:
        self.inner = inner
        self._observer = ObservedGpu(inner)
        self._group = group or FallbackGroup()
        self._group.members.append(self)
        self._holds_lock = False

    @property
    def observing(self) -> bool:
        return self._group.observing

    @property
    def requested_clock_mhz(self) -> int | None:
        return self._observer.requested_clock_mhz

    async def lock_clock(self, clock_mhz: int) -> None:
        await self._observer.lock_clock(clock_mhz)
        if self.observing:
            return
        try:
            await self.inner.lock_clock(clock_mhz)
        except GpuPermissionError as error:
            await self._group.fall_back(error)
            return
        self._holds_lock = True

    async def reset_clock(self) -> None:
        await self._observer.reset_clock()
        if self.observing:
            return
        try:
            await self.inner.reset_clock()
        except GpuPermissionError as error:
            await self._group.fall_back(error)
            return
        self._holds_lock = False

    async def undo_lock(self) -> None:
        """Reset a lock this wrapper set before its group fell back (best effort)."""
        if not self._holds_lock:
            return
        try:
            await self.inner.reset_clock()
        except GpuError as error:
            log.error("governor: could not undo a clock lock after falling back: %s", error)
            return
        self._holds_lock = False


def open_nvml_instance(indices: Sequence[int], mode: Mode, nvml: Any = pynvml) -> list[GpuClock]:
    """Open the GPUs of one instance by NVML index.

    "control" GPUs fall back to observing, together, on the first permission error
    (lazily: probing would mean changing a clock). Blocking; from async code, call it
    through `asyncio.to_thread`.
    """
    if mode not in ("control", "observe"):
        raise ValueError(f"GPU mode must be 'control' or 'observe', not {mode!r}")
    if not indices:
        raise ValueError("an instance needs at least one GPU index")
    if len(set(indices)) != len(indices):
        raise ValueError(f"GPU indices repeat: {list(indices)}")
    opened: list[NvmlGpu] = []
    try:
        for index in indices:
            opened.append(NvmlGpu.open(index, nvml=nvml))
    except GpuError:
        for gpu in opened:
            gpu.close()
        raise
    if mode == "observe":
        return [ObservedGpu(gpu) for gpu in opened]
    group = FallbackGroup()
    return [FallbackToObserve(gpu, group) for gpu in opened]

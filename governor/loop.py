"""The clock loop: every window (or when poked), decide the clock and apply it.

Whatever happens — cancellation, an error, shutdown — the GPUs are handed back to
their default clocks on the way out. Saving energy must never cost availability.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from governor.gpu.base import GpuClock, GpuError

log = logging.getLogger(__name__)


class FrequencyPolicy(Protocol):
    def target_clock_mhz(self, supported_clocks_mhz: Sequence[int], now_s: float) -> int: ...


class HighestClock:
    """Triton's default behaviour: always the highest clock. The SLO planner replaces it."""

    def target_clock_mhz(self, supported_clocks_mhz: Sequence[int], now_s: float) -> int:
        return max(supported_clocks_mhz)


@dataclass
class GovernorStatus:
    """What the loop last saw and did; the gateway's metrics read it at scrape time."""

    target_clock_mhz: int | None = None
    applied_clock_mhz: int | None = None
    current_clock_mhz: int | None = None
    power_w: float | None = None
    energy_mj: float | None = None
    decisions: int = 0
    last_decision_ms: float | None = None
    last_error: str | None = None


class ClockGovernor:
    def __init__(
        self,
        gpus: Sequence[GpuClock],
        policy: FrequencyPolicy,
        window_s: float,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        if not gpus:
            raise ValueError("a governor needs at least one GPU")
        self._gpus = list(gpus)
        self._policy = policy
        self._window_s = window_s
        self._clock_s = clock_s
        self._wake = asyncio.Event()
        self.status = GovernorStatus()

    def poke(self) -> None:
        """Decide now rather than at the end of the window (an admission or a completion)."""
        self._wake.set()

    async def run(self) -> None:
        supported: list[int] | None = None
        try:
            while True:
                try:
                    supported = supported or await self._gpus[0].supported_clocks_mhz()
                    await self._decide(supported)
                    await self._observe()
                except GpuError as error:
                    self.status.last_error = str(error)
                    log.warning("governor: %s", error)
                await self._sleep()
        finally:
            await self._reset_all()

    async def aclose(self) -> None:
        for gpu in self._gpus:
            await gpu.aclose()

    async def _decide(self, supported: list[int]) -> None:
        started_s = time.perf_counter()
        target_mhz = self._policy.target_clock_mhz(supported, self._clock_s())
        self.status.target_clock_mhz = target_mhz
        self.status.decisions += 1
        self.status.last_decision_ms = (time.perf_counter() - started_s) * 1000
        if target_mhz != self.status.applied_clock_mhz:
            for gpu in self._gpus:
                await gpu.lock_clock(target_mhz)
            self.status.applied_clock_mhz = target_mhz
            log.info("governor: clock locked at %d MHz", target_mhz)

    async def _observe(self) -> None:
        self.status.current_clock_mhz = await self._gpus[0].clock_mhz()
        self.status.power_w = sum([await gpu.power_w() for gpu in self._gpus])
        self.status.energy_mj = sum([await gpu.energy_mj() for gpu in self._gpus])
        self.status.last_error = None

    async def _sleep(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._window_s)
        self._wake.clear()

    async def _reset_all(self) -> None:
        for gpu in self._gpus:
            try:
                await gpu.reset_clock()
            except GpuError as error:
                log.error("governor: could not reset the clock on the way out: %s", error)
        self.status.applied_clock_mhz = None
        log.info("governor: clocks reset to default")

"""The clock loop: every window (or when poked), decide the clock and apply it.

Whatever happens — cancellation, an error, shutdown — the GPUs are handed back to
their default clocks on the way out. Saving energy must never cost availability.

Two guards keep the clock from flapping and the plan honest:

- Minimum dwell: a lower clock is applied only once `min_dwell_s` has passed since the
  last change. A higher clock is always applied at once: raising protects the SLOs.
- Switch latency: a new clock takes `switch_latency_s` to come into force, so the policy
  plans from `now + switch_latency_s`. This is conservative either way: it assumes no
  token is produced during the switch, while the deadlines keep approaching.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from governor.cancellation import raise_if_cancelled
from governor.gpu.base import GpuClock, GpuError

log = logging.getLogger(__name__)


class FrequencyPolicy(Protocol):
    def target_clock_mhz(
        self, supported_clocks_mhz: Sequence[int], now_s: float
    ) -> int | Awaitable[int]:
        """The clock to run at; may be a coroutine (the planner reads the scoreboard)."""
        ...


class HighestClock:
    """Triton's default behaviour: always the highest clock. The SLO planner replaces it."""

    def target_clock_mhz(self, supported_clocks_mhz: Sequence[int], now_s: float) -> int:
        return max(supported_clocks_mhz)


@dataclass
class GovernorStatus:
    """What the loop last saw and did; the gateway's metrics read it at scrape time.

    Decisions per second is the rate of `decisions`; `held_changes` counts lower clocks
    not applied (yet) because of the minimum dwell."""

    target_clock_mhz: int | None = None
    applied_clock_mhz: int | None = None
    current_clock_mhz: int | None = None
    power_w: float | None = None
    energy_mj: float | None = None
    decisions: int = 0
    clock_changes: int = 0
    held_changes: int = 0
    fenced_changes: int = 0  # refused: the fencing token was no longer current
    last_decision_ms: float | None = None
    last_error: str | None = None


class ClockGovernor:
    def __init__(
        self,
        gpus: Sequence[GpuClock],
        policy: FrequencyPolicy,
        window_s: float,
        clock_s: Callable[[], float] = time.monotonic,
        *,
        min_dwell_s: float = 0.0,
        switch_latency_s: float = 0.0,
        monotonic_s: Callable[[], float] = time.monotonic,
        on_decision: Callable[[], None] | None = None,
        may_actuate: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """`clock_s` is the policy's time (the scoreboard's: wall clock for the planner);
        `monotonic_s` times the dwell; `on_decision` is called after every pass (heartbeat);
        `may_actuate`, asked before every clock change, is the leader's fencing check: a
        governor that was replaced changes nothing even before it learns it lost the lead."""
        if not gpus:
            raise ValueError("a governor needs at least one GPU")
        if min_dwell_s < 0 or switch_latency_s < 0:
            raise ValueError("min_dwell_s and switch_latency_s must not be negative")
        self._gpus = list(gpus)
        self._policy = policy
        self._window_s = window_s
        self._clock_s = clock_s
        self._monotonic_s = monotonic_s
        self._min_dwell_s = min_dwell_s
        self._switch_latency_s = switch_latency_s
        self._on_decision = on_decision
        self._may_actuate = may_actuate
        self._last_change_s: float | None = None
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
                if self._on_decision is not None:
                    self._on_decision()
                raise_if_cancelled()  # a Redis read in the policy may have swallowed it
                await self._sleep()
        finally:
            await self._reset_all()

    async def aclose(self) -> None:
        for gpu in self._gpus:
            await gpu.aclose()

    async def _decide(self, supported: list[int]) -> None:
        started_s = time.perf_counter()
        chosen = self._policy.target_clock_mhz(supported, self._clock_s() + self._switch_latency_s)
        target_mhz = await chosen if inspect.isawaitable(chosen) else chosen
        self.status.target_clock_mhz = target_mhz
        self.status.decisions += 1
        self.status.last_decision_ms = (time.perf_counter() - started_s) * 1000
        applied_mhz = self.status.applied_clock_mhz
        if target_mhz == applied_mhz:
            return
        now_s = self._monotonic_s()
        lowering = applied_mhz is not None and target_mhz < applied_mhz
        if (
            lowering
            and self._last_change_s is not None
            and now_s - self._last_change_s < self._min_dwell_s
        ):
            self.status.held_changes += 1
            return
        if self._may_actuate is not None and not await self._may_actuate():
            self.status.fenced_changes += 1
            log.warning("governor: a newer leader holds the instance: %d MHz not applied",
                        target_mhz)  # fmt: skip
            return
        for gpu in self._gpus:
            await gpu.lock_clock(target_mhz)
        self.status.applied_clock_mhz = target_mhz
        self.status.clock_changes += 1
        self._last_change_s = now_s
        log.info("governor: clock locked at %d MHz", target_mhz)

    async def _observe(self) -> None:
        self.status.current_clock_mhz = await self._gpus[0].clock_mhz()
        self.status.power_w = sum([await gpu.power_w() for gpu in self._gpus])
        self.status.energy_mj = sum([await gpu.energy_mj() for gpu in self._gpus])
        self.status.last_error = None

    async def _sleep(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # lands as its timeout fires, and the loop then never resets the clocks.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._window_s):
                await self._wake.wait()
        self._wake.clear()

    async def _reset_all(self) -> None:
        for gpu in self._gpus:
            try:
                await gpu.reset_clock()
            except GpuError as error:
                log.error("governor: could not reset the clock on the way out: %s", error)
        self.status.applied_clock_mhz = None
        self._last_change_s = None
        log.info("governor: clocks reset to default")

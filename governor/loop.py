"""The clock loop: the governor's pass (slo_planner/clock_steps.py) on the wall clock.

Every window, or when poked, it asks the policy for a clock and applies what the pass
lets through (the minimum dwell, the switch latency). Whatever happens — cancellation,
an error, shutdown — the GPUs are handed back to their default clocks on the way out.
Saving energy must never cost availability.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from governor.energy_meter import EnergyMeter
from governor.gpu.base import GpuClock, GpuError
from slo_planner.clock_steps import ClockCounts, ClockSteps
from slo_scoreboard.cancellation import raise_if_cancelled

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
    """What the loop last saw and did; the metrics read it at scrape time. Decisions per
    second is the rate of `decisions`; `held_changes` counts lower clocks not applied
    (yet) because of the minimum dwell."""

    steps: ClockCounts = field(default_factory=ClockCounts)
    current_clock_mhz: int | None = None
    power_w: float | None = None
    energy_mj: float | None = None
    last_decision_ms: float | None = None
    meter: EnergyMeter | None = None  # the energy meter, if this governor bills windows

    @property
    def target_clock_mhz(self) -> int | None:
        return self.steps.target_clock_mhz

    @property
    def applied_clock_mhz(self) -> int | None:
        return self.steps.applied_clock_mhz

    @property
    def decisions(self) -> int:
        return self.steps.decisions

    @property
    def clock_changes(self) -> int:
        return self.steps.clock_changes

    @property
    def held_changes(self) -> int:
        return self.steps.held_changes


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
        meter: EnergyMeter | None = None,
    ) -> None:
        """`clock_s` is the policy's time (the scoreboard's: wall clock for the planner);
        `monotonic_s` times the dwell; `on_decision` is called after every pass (heartbeat);
        `may_actuate`, asked before every clock change, is the leader's fencing check: a
        governor that was replaced changes nothing even before it learns it lost the lead.
        Raising to the highest clock is not fenced: it is what losing the lead does anyway
        (the clocks reset), and the check reads the store, which may be what just failed.
        `meter`, after every pass that read the energy counter, bills its window to the
        requests on the board (governor/energy_meter.py); one that fails bills nothing."""
        if not gpus:
            raise ValueError("a governor needs at least one GPU")
        self._gpus = list(gpus)
        self._policy = policy
        self._steps = ClockSteps(window_s, min_dwell_s, switch_latency_s)
        self._clock_s = clock_s
        self._monotonic_s = monotonic_s
        self._on_decision = on_decision
        self._may_actuate = may_actuate
        self._wake = asyncio.Event()
        self._supported: list[int] | None = None
        self.status = GovernorStatus(self._steps.counts, meter=meter)

    @property
    def meter(self) -> EnergyMeter | None:
        return self.status.meter

    @meter.setter
    def meter(self, meter: EnergyMeter | None) -> None:
        self.status.meter = meter

    def poke(self) -> None:
        """Decide now rather than at the end of the window (an admission or a completion)."""
        self._steps.poke()
        self._wake.set()

    def due(self) -> bool:
        """Whether a pass is due now: a window after the last one, or poked."""
        return self._steps.due(self._monotonic_s())

    async def run(self) -> None:
        try:
            while True:
                await self.pass_once()
                raise_if_cancelled()  # a Redis read in the policy may have swallowed it
                await self._sleep()
        finally:
            await self._reset_all()

    async def pass_once(self) -> None:
        """One pass: decide, apply what the dwell lets through, observe the GPUs."""
        try:
            self._supported = self._supported or await self._gpus[0].supported_clocks_mhz()
            await self._decide(self._supported)
            await self._observe()
        except GpuError as error:
            self._steps.failed(self._monotonic_s())
            log.warning("governor: %s", error)
            if self.meter is not None:
                self.meter.gap()
        else:
            await self._meter_window()
        if self._on_decision is not None:
            self._on_decision()

    async def aclose(self) -> None:
        for gpu in self._gpus:
            await gpu.aclose()

    async def _decide(self, supported: list[int]) -> None:
        started_s = time.perf_counter()
        chosen = self._policy.target_clock_mhz(
            supported, self._steps.planning_time_s(self._clock_s())
        )
        target_mhz = await chosen if inspect.isawaitable(chosen) else chosen
        self.status.last_decision_ms = (time.perf_counter() - started_s) * 1000
        now_s = self._monotonic_s()
        apply_mhz = self._steps.decide(target_mhz, now_s)
        if apply_mhz is None:
            return
        may_actuate = self._may_actuate if apply_mhz < max(supported) else None
        if may_actuate is not None and not await may_actuate():
            log.warning("governor: a newer leader holds the instance: %d MHz not applied",
                        apply_mhz)  # fmt: skip
            return
        for gpu in self._gpus:
            await gpu.lock_clock(apply_mhz)
        self._steps.applied(apply_mhz, now_s)
        log.info("governor: clock locked at %d MHz", apply_mhz)

    async def _observe(self) -> None:
        self.status.current_clock_mhz = await self._gpus[0].clock_mhz()
        self.status.power_w = sum([await gpu.power_w() for gpu in self._gpus])
        self.status.energy_mj = sum([await gpu.energy_mj() for gpu in self._gpus])

    async def _meter_window(self) -> None:
        """Bill the window; metering is never worth a clock decision, so nothing it
        raises leaves here."""
        if self.meter is None or self.status.energy_mj is None:
            return
        try:
            await self.meter.observe(self.status.energy_mj, self._clock_s())
        except Exception:
            log.exception("governor: the energy meter failed; this window is not billed")
            self.meter.gap()

    async def _sleep(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # lands as its timeout fires, and the loop then never resets the clocks.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, self._steps.next_pass_s - self._monotonic_s())):
                await self._wake.wait()
        self._wake.clear()

    async def _reset_all(self) -> None:
        for gpu in self._gpus:
            try:
                await gpu.reset_clock()
            except GpuError as error:
                log.error("governor: could not reset the clock on the way out: %s", error)
        self._steps.reset()
        log.info("governor: clocks reset to default")

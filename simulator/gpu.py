"""A simulated GPU: supported clocks, locked clocks with a switch latency, a power limit,
power, energy.

It mirrors what NVML offers for one device. A power limit (as set by
`nvmlDeviceSetPowerManagementLimit`) acts at once: the firmware throttles within
milliseconds, so each iteration runs at the highest clock, up to the one in force, whose
power at that iteration's activity stays under the limit (the engine finds it with
`clock_under_cap`). Time is always passed in (`now_s`), so the
same object runs on the virtual clock of a replay and on the wall clock of the twin.
"""

from __future__ import annotations

from bisect import bisect_right

from simulator.physics import PowerModel
from simulator.profile import GpuProfile


class UnsupportedClockError(ValueError):
    """The requested clock is not one of the GPU's supported graphics clocks."""


class UnsupportedPowerLimitError(ValueError):
    """The requested power limit is outside the board's range."""


class SimulatedGpu:
    """One simulated device. Not thread-safe: the twin serialises access with its own lock."""

    def __init__(self, spec: GpuProfile, power: PowerModel, now_s: float = 0.0) -> None:
        self.spec = spec
        self._power_model = power
        self._supported = frozenset(spec.supported_clocks_mhz())
        self._clock_mhz = spec.max_clock_mhz
        self._locked_clock_mhz: int | None = None
        self._pending: tuple[float, int] | None = None  # (effective at, clock)
        self._accounted_until_s = now_s
        self._power_w = power.idle_w
        self._energy_mj = 0.0
        self._power_limit_w: float | None = None
        self._ascending_mhz = sorted(self._supported)

    @property
    def default_clock_mhz(self) -> int:
        return self.spec.max_clock_mhz

    @property
    def locked_clock_mhz(self) -> int | None:
        return self._locked_clock_mhz

    def clock_mhz(self, now_s: float) -> int:
        """The clock in force now; a requested switch holds off until its latency has passed."""
        if self._pending is not None and now_s >= self._pending[0]:
            self._clock_mhz = self._pending[1]
            self._pending = None
        return self._clock_mhz

    def pending_switch(self, now_s: float) -> tuple[float, int] | None:
        """The switch on its way after `now_s`: (when it lands, to which clock); or None."""
        self.clock_mhz(now_s)
        return self._pending

    def lock_clock(self, clock_mhz: int, now_s: float) -> None:
        if clock_mhz not in self._supported:
            raise UnsupportedClockError(
                f"{clock_mhz} MHz is not a supported clock of {self.spec.name} "
                f"({self.spec.min_clock_mhz}-{self.spec.max_clock_mhz} MHz "
                f"in {self.spec.clock_step_mhz} MHz steps)"
            )
        self._locked_clock_mhz = clock_mhz
        self._schedule(clock_mhz, now_s)

    def reset_clock(self, now_s: float) -> None:
        self._locked_clock_mhz = None
        self._schedule(self.default_clock_mhz, now_s)

    @property
    def power_limit_w(self) -> float | None:
        return self._power_limit_w

    def set_power_limit(self, watts: float | None) -> None:
        """Cap the board's power; None restores the default (no cap below the maximum)."""
        if (
            watts is not None
            and not self.spec.power_limit_min_w <= watts <= self.spec.power_limit_max_w
        ):
            raise UnsupportedPowerLimitError(
                f"{watts:g} W is not a power limit of {self.spec.name} "
                f"({self.spec.power_limit_min_w:g}-{self.spec.power_limit_max_w:g} W)"
            )
        self._power_limit_w = watts

    def clock_under_cap(self, clock_mhz: int, sm_share: float) -> int:
        """The highest supported clock, up to `clock_mhz`, whose busy power at `sm_share`
        stays within the power limit (the lowest clock if none does)."""
        limit_w = self._power_limit_w
        if limit_w is None or self._power_model.busy_w(clock_mhz, sm_share) <= limit_w:
            return clock_mhz
        clocks = self._ascending_mhz
        low, high = 0, max(0, bisect_right(clocks, clock_mhz) - 1)
        while low < high:  # the highest index whose power fits; power rises with the clock
            middle = (low + high + 1) // 2
            if self._power_model.busy_w(clocks[middle], sm_share) <= limit_w:
                low = middle
            else:
                high = middle - 1
        return clocks[low]

    def power_w(self) -> float:
        return self._power_w

    def energy_mj(self) -> float:
        """Cumulative energy since creation, in mJ, through the iteration under way (the
        engine accounts an iteration when it starts)."""
        return self._energy_mj

    def energy_mj_at(self, now_s: float) -> float:
        """The counter as a reader at `now_s` sees it, like
        nvmlDeviceGetTotalEnergyConsumption: without the part of an iteration under way
        that lies after `now_s` (its power holds over the iteration)."""
        ahead_s = self._accounted_until_s - now_s
        if ahead_s <= 0:
            return self._energy_mj
        return self._energy_mj - self._power_w * ahead_s * 1000.0

    def idle_until(self, until_s: float) -> None:
        self._account(until_s, busy_sm_share=None)

    def busy_until(self, until_s: float, sm_share: float) -> None:
        self._account(until_s, busy_sm_share=sm_share)

    def _account(self, until_s: float, busy_sm_share: float | None) -> None:
        """Integrate power up to `until_s`, splitting at a clock switch that falls inside."""
        while self._accounted_until_s < until_s:
            start_s = self._accounted_until_s
            clock_mhz = self.clock_mhz(start_s)
            end_s = until_s
            if self._pending is not None and self._pending[0] < until_s:
                end_s = self._pending[0]
            if busy_sm_share is None:
                self._power_w = self._power_model.idle_w
            else:
                clock_mhz = self.clock_under_cap(clock_mhz, busy_sm_share)
                self._power_w = self._power_model.busy_w(clock_mhz, busy_sm_share)
            self._energy_mj += self._power_w * (end_s - start_s) * 1000.0
            self._accounted_until_s = end_s

    def _schedule(self, clock_mhz: int, now_s: float) -> None:
        """Start a switch, unless the clock asked for is already in force or on its way
        (setting the same locked clock again is a no-op, as with NVML)."""
        current = self.clock_mhz(now_s)
        target = self._pending[1] if self._pending is not None else current
        if clock_mhz == target:
            return
        self._pending = (now_s + self.spec.clock_switch_latency_s, clock_mhz)

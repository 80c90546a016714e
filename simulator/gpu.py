"""A simulated GPU: supported clocks, locked clocks with a switch latency, power, energy.

It mirrors what NVML offers for one device. Time is always passed in (`now_s`), so the
same object runs on the virtual clock of a replay and on the wall clock of the twin.
"""

from __future__ import annotations

from dataclasses import dataclass


class UnsupportedClockError(ValueError):
    """The requested clock is not one of the GPU's supported graphics clocks."""


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet facts of one GPU model, plus the clock-switch latency seen in practice."""

    name: str
    min_clock_mhz: int
    max_clock_mhz: int
    clock_step_mhz: int
    idle_power_w: float
    max_power_w: float
    clock_switch_latency_s: float

    def supported_clocks_mhz(self) -> list[int]:
        """Supported graphics clocks, highest first, as NVML lists them."""
        return list(range(self.max_clock_mhz, self.min_clock_mhz - 1, -self.clock_step_mhz))


# NVIDIA A100 datasheet (400 W TDP, 210-1410 MHz in 15 MHz steps); the ~200 ms switch
# latency is the one the throttLL'eM paper measured on its A100s. The idle power is a
# placeholder until the calibrated profiles of the twin land.
A100_SXM4_40GB = GpuSpec(
    name="NVIDIA A100-SXM4-40GB",
    min_clock_mhz=210,
    max_clock_mhz=1410,
    clock_step_mhz=15,
    idle_power_w=60.0,
    max_power_w=400.0,
    clock_switch_latency_s=0.2,
)


class SimulatedGpu:
    """One simulated device. Not thread-safe: the twin serialises access with its own lock."""

    def __init__(self, spec: GpuSpec, now_s: float = 0.0) -> None:
        self.spec = spec
        self._clock_mhz = spec.max_clock_mhz
        self._locked_clock_mhz: int | None = None
        self._pending: tuple[float, int] | None = None  # (effective at, clock)
        self._energy_mj = 0.0
        self._last_s = now_s
        self._power_w = spec.idle_power_w
        self._supported = frozenset(spec.supported_clocks_mhz())

    @property
    def default_clock_mhz(self) -> int:
        return self.spec.max_clock_mhz

    @property
    def locked_clock_mhz(self) -> int | None:
        return self._locked_clock_mhz

    def clock_mhz(self, now_s: float) -> int:
        """The clock in force now; a requested switch holds off until its latency has passed."""
        self._apply_pending(now_s)
        return self._clock_mhz

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

    def power_w(self) -> float:
        return self._power_w

    def energy_mj(self) -> float:
        """Cumulative energy since creation, in mJ, like nvmlDeviceGetTotalEnergyConsumption."""
        return self._energy_mj

    def run(self, until_s: float, utilization: float) -> None:
        """Account the energy used from the last call until `until_s` at this utilization."""
        self._apply_pending(until_s)
        self._power_w = self._power_at(self._clock_mhz, utilization)
        elapsed_s = max(0.0, until_s - self._last_s)
        self._energy_mj += self._power_w * elapsed_s * 1000.0
        self._last_s = max(self._last_s, until_s)

    def _power_at(self, clock_mhz: int, utilization: float) -> float:
        relative_clock = clock_mhz / self.spec.max_clock_mhz
        dynamic_w = (self.spec.max_power_w - self.spec.idle_power_w) * relative_clock**2
        return self.spec.idle_power_w + dynamic_w * min(max(utilization, 0.0), 1.0)

    def _schedule(self, clock_mhz: int, now_s: float) -> None:
        self._apply_pending(now_s)
        self._pending = (now_s + self.spec.clock_switch_latency_s, clock_mhz)

    def _apply_pending(self, now_s: float) -> None:
        if self._pending is not None and now_s >= self._pending[0]:
            self._clock_mhz = self._pending[1]
            self._pending = None

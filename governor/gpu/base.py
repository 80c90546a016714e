"""What the governor needs from one GPU. Units: MHz, W, mJ."""

from __future__ import annotations

from typing import Protocol


class GpuError(RuntimeError):
    """A GPU backend failed; the message says what and, where known, how to fix it."""


class GpuClock(Protocol):
    async def supported_clocks_mhz(self) -> list[int]:
        """Supported graphics clocks, highest first."""
        ...

    async def lock_clock(self, clock_mhz: int) -> None: ...

    async def reset_clock(self) -> None:
        """Back to the driver's default clock management."""
        ...

    async def clock_mhz(self) -> int:
        """The graphics clock in force now."""
        ...

    async def power_w(self) -> float: ...

    async def energy_mj(self) -> float:
        """Cumulative energy since an arbitrary origin, in mJ."""
        ...

    async def aclose(self) -> None: ...

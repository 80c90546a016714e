"""Instance scaling, the paper's autoscaler: which engine size the request rate needs.

Each engine size (TP1, TP2, TP4, ...) has a profiled capacity: the requests per second
it sustains at the highest clock. Every interval the scaler measures the arrival rate
and picks the smallest size whose capacity, less a headroom, covers it. Growing happens
at once (a request rate past capacity breaks promises); shrinking only after the rate
has fitted the smaller size for a whole grace period, so a lull between bursts does not
tear down the engine the next burst needs.

The gateway and the scaler share two things through a `ScalingChannel`: the arrivals
counter the gateway adds to, and the route — the Triton model that new requests go to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_HEADROOM = 0.85  # run an engine at up to 85 % of its profiled capacity


@dataclass(frozen=True)
class EngineSize:
    label: str  # "tp2"
    triton_model: str  # the model that serves it: "ensemble-tp2"
    capacity_rps: float

    def __post_init__(self) -> None:
        if self.capacity_rps <= 0:
            raise ValueError(f"engine size {self.label!r}: capacity_rps must be positive")


def parse_engine_sizes(text: str) -> list[EngineSize]:
    """`[{"label": "tp1", "triton_model": "ensemble-tp1", "capacity_rps": 1.9}, ...]`."""
    try:
        rows = json.loads(text)
        sizes = [EngineSize(str(r["label"]), str(r["triton_model"]), float(r["capacity_rps"]))
                 for r in rows]  # fmt: skip
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise ValueError(
            "engine sizes must be a JSON list of objects with label, triton_model and "
            f"capacity_rps: {error}"
        ) from error
    if len({size.label for size in sizes}) != len(sizes):
        raise ValueError("engine sizes must have distinct labels")
    return sorted(sizes, key=lambda size: size.capacity_rps)


class ScalingPolicy:
    """The engine size for a request rate, with a grace period before shrinking."""

    def __init__(
        self, sizes: Sequence[EngineSize], headroom: float = DEFAULT_HEADROOM, grace_s: float = 60.0
    ) -> None:
        if not sizes:
            raise ValueError("instance scaling needs at least one engine size")
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        self.sizes = sorted(sizes, key=lambda size: size.capacity_rps)
        self.headroom = headroom
        self.grace_s = grace_s
        self._fits_smaller_since_s: float | None = None

    def needed(self, rate_rps: float) -> EngineSize:
        """The smallest size that carries `rate_rps` within its headroom (else the largest)."""
        for size in self.sizes:
            if rate_rps <= size.capacity_rps * self.headroom:
                return size
        return self.sizes[-1]

    def target(self, rate_rps: float, current: EngineSize, now_s: float) -> EngineSize:
        needed = self.needed(rate_rps)
        if needed.capacity_rps > current.capacity_rps:
            self._fits_smaller_since_s = None
            return needed
        if needed.capacity_rps == current.capacity_rps:
            self._fits_smaller_since_s = None
            return current
        if self._fits_smaller_since_s is None:
            self._fits_smaller_since_s = now_s
        if now_s - self._fits_smaller_since_s >= self.grace_s:
            self._fits_smaller_since_s = None
            return needed
        return current


class ScalingChannel(Protocol):
    """What gateways and the scaler share: arrivals counted, and the current route."""

    async def add_arrivals(self, count: int) -> None: ...

    async def arrivals(self) -> int:
        """All arrivals counted so far (a counter that only grows)."""
        ...

    async def route(self) -> str | None:
        """The Triton model new requests go to; None: the gateway's configured one."""
        ...

    async def set_route(self, triton_model: str) -> None: ...

    async def aclose(self) -> None: ...


class MemoryScalingChannel:
    """One process: the embedded governor and the gateway share this object."""

    def __init__(self) -> None:
        self._arrivals = 0
        self._route: str | None = None

    async def add_arrivals(self, count: int) -> None:
        self._arrivals += count

    async def arrivals(self) -> int:
        return self._arrivals

    async def route(self) -> str | None:
        return self._route

    async def set_route(self, triton_model: str) -> None:
        self._route = triton_model

    async def aclose(self) -> None:
        return None

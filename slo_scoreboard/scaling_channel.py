"""What the gateways and the instance scaler share: the arrivals counter the gateways add
to, and the route, the Triton model new requests go to. In memory for one process; in
Redis (scaling_redis.py) for workers and a governor on other hosts."""

from __future__ import annotations

from typing import Protocol


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

"""The twin's simulated GPUs, driven through their HTTP control API."""

from __future__ import annotations

from typing import Any

import httpx

from governor.gpu.base import GpuError


class TwinGpu:
    def __init__(self, client: httpx.AsyncClient, index: int = 0) -> None:
        self._client = client
        self._index = index

    @classmethod
    def connect(cls, control_url: str, index: int = 0, timeout_s: float = 2.0) -> TwinGpu:
        return cls(httpx.AsyncClient(base_url=control_url, timeout=timeout_s), index)

    async def supported_clocks_mhz(self) -> list[int]:
        return [int(c) for c in (await self._state())["supported_clocks_mhz"]]

    async def lock_clock(self, clock_mhz: int) -> None:
        await self._call("PUT", "/locked-clocks", json={"min_mhz": clock_mhz, "max_mhz": clock_mhz})

    async def reset_clock(self) -> None:
        await self._call("DELETE", "/locked-clocks")

    async def clock_mhz(self) -> int:
        return int((await self._state())["clock_mhz"])

    async def power_w(self) -> float:
        return float((await self._state())["power_w"])

    async def energy_mj(self) -> float:
        return float((await self._state())["energy_mj"])

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _state(self) -> dict[str, Any]:
        return await self._call("GET", "")

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = f"/gpus/{self._index}{path}"
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.TransportError as error:
            raise GpuError(
                f"simulated GPU {self._index} at {self._client.base_url} is unreachable: {error!r}"
            ) from error
        if response.status_code != 200:
            raise GpuError(
                f"simulated GPU {self._index}: HTTP {response.status_code}: {response.text}"
            )
        result: dict[str, Any] = response.json()
        return result

"""`ScalingChannel` in Redis, for gateway workers and a governor on other hosts.

Keys, under the instance's prefix like the scoreboard:

- `throttllem:{instance}:scaling:arrivals`: integer, every gateway's arrivals (INCRBY).
- `throttllem:{instance}:scaling:route`: string, the Triton model new requests go to.

Neither expires: a route outlives a restart of the scaler, so gateways keep sending
traffic to the engine that is loaded.
"""

from __future__ import annotations

from redis.asyncio import Redis

from slo_scoreboard.redis_client import connect_redis


class RedisScalingChannel:
    def __init__(self, client: Redis, instance: str) -> None:
        """On a client of the caller's; `connect` makes one the channel closes."""
        self._client = client
        self._arrivals_key = f"throttllem:{instance}:scaling:arrivals"
        self._route_key = f"throttllem:{instance}:scaling:route"

    async def add_arrivals(self, count: int) -> None:
        if count:
            await self._client.incrby(self._arrivals_key, count)

    async def arrivals(self) -> int:
        return int(await self._client.get(self._arrivals_key) or 0)

    async def route(self) -> str | None:
        value = await self._client.get(self._route_key)
        return value.decode() if isinstance(value, bytes) else value

    async def set_route(self, triton_model: str) -> None:
        await self._client.set(self._route_key, triton_model)

    @classmethod
    def connect(cls, url: str, instance: str) -> RedisScalingChannel:
        # redis-py's default timeouts and retry, as before: not the scoreboard's fail-fast ones.
        client = connect_redis(url, socket_timeout_s=None, connect_timeout_s=None, retries=None)
        return cls(client, instance)

    async def aclose(self) -> None:
        await self._client.aclose()

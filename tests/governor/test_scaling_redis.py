"""The scaling channel in a real Redis, as gateway workers and the governor share it."""

import redis.asyncio as aioredis

from slo_scoreboard.scaling_redis import RedisScalingChannel
from tests.conftest import REDIS_URL


async def test_arrivals_add_up_across_clients_and_the_route_is_shared(instance: str):
    gateway_a, gateway_b, scaler = (aioredis.Redis.from_url(REDIS_URL) for _ in range(3))
    try:
        a, b = RedisScalingChannel(gateway_a, instance), RedisScalingChannel(gateway_b, instance)
        governor = RedisScalingChannel(scaler, instance)
        assert await governor.arrivals() == 0
        assert await a.route() is None
        await a.add_arrivals(3)
        await b.add_arrivals(4)
        await a.add_arrivals(0)
        assert await governor.arrivals() == 7
        await governor.set_route("ensemble-tp2")
        assert (await a.route(), await b.route()) == ("ensemble-tp2", "ensemble-tp2")
    finally:
        for client in (gateway_a, gateway_b, scaler):
            await client.aclose()

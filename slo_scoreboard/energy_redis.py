"""The energy ledger in Redis, beside the scoreboard (slo_scoreboard/redis_store.py).

Keys, under the scoreboard's prefix `throttllem:{instance}:`:

- `energy:{request_id}`: hash `active`, `idle`, `held` (joules, joules, seconds credited
  so far), `seen` (tokens the governor has seen), `prefilled` (`1` once its prompt was
  billed); it expires with the request's entry TTL, re-armed at every credit, so an
  account whose worker died leaves nothing behind;
- `energy-prices`: hash, the latest window's prices (`slo_planner.energy_split`);
- `energy-departed`: hash `units`, `held`: the settled tails' work, cumulative.

Credit and settle are one Lua script each. The credit skips a request whose scoreboard
entry is gone (settled between the governor's read and its credit). After a failure,
calls fail at once for `RETRY_AFTER_S`: an answer never waits on a Redis that is down
for its energy (it goes without).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from slo_planner.energy_split import WindowPrices
from slo_scoreboard.energy_ledger import (
    Account,
    Credit,
    RequestEnergy,
    Settlement,
    settle_account,
)
from slo_scoreboard.redis_client import connect_redis, redis_address
from slo_scoreboard.redis_store import CONNECT_TIMEOUT_S, OPERATION_TIMEOUT_S
from slo_scoreboard.store import StateStoreError

# KEYS: prices. ARGV: request key prefix, account key prefix, TTL ms, the six price
# fields, then per credit: id, active, idle, held, seen, prefilled.
_CREDIT = """
local fields = {'end', 'per_unit', 'per_held', 'weight', 'carried', 'unattributed'}
for i, name in ipairs(fields) do
  redis.call('HSET', KEYS[1], name, ARGV[3 + i])
end
for i = 10, #ARGV, 6 do
  local id = ARGV[i]
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    local key = ARGV[2] .. id
    redis.call('HINCRBYFLOAT', key, 'active', ARGV[i + 1])
    redis.call('HINCRBYFLOAT', key, 'idle', ARGV[i + 2])
    redis.call('HINCRBYFLOAT', key, 'held', ARGV[i + 3])
    redis.call('HSET', key, 'seen', ARGV[i + 4], 'prefilled', ARGV[i + 5])
    redis.call('PEXPIRE', key, ARGV[3])
  end
end
return 1
"""

# KEYS: account, prices. Returns {account fields..., price fields...} (false: absent).
_CLOSE = """
local account = redis.call('HMGET', KEYS[1], 'active', 'idle', 'held', 'seen', 'prefilled')
redis.call('DEL', KEYS[1])
local prices = redis.call('HMGET', KEYS[2], 'end', 'per_unit', 'per_held', 'weight',
                          'carried', 'unattributed')
return {account, prices}
"""


RETRY_AFTER_S = 2.0


class RedisEnergyLedger:
    """`EnergyLedger` in Redis. Every failure surfaces as `StateStoreError`."""

    def __init__(self, client: Redis, url: str, instance: str, entry_ttl_s: float) -> None:
        self._client = client
        self._url = redis_address(url)
        prefix = f"throttllem:{instance}:"
        self._request_prefix = f"{prefix}request:"
        self._account_prefix = f"{prefix}energy:"
        self._prices_key = f"{prefix}energy-prices"
        self._departed_key = f"{prefix}energy-departed"
        self._ttl_ms = max(1, math.ceil(entry_ttl_s * 1000))
        self._credit = client.register_script(_CREDIT)
        self._close = client.register_script(_CLOSE)
        self._down_until_s = 0.0

    @classmethod
    def connect(cls, url: str, instance: str, entry_ttl_s: float) -> RedisEnergyLedger:
        client = connect_redis(url, socket_timeout_s=OPERATION_TIMEOUT_S,
                               connect_timeout_s=CONNECT_TIMEOUT_S, retries=1)  # fmt: skip
        return cls(client, url, instance, entry_ttl_s)

    async def aclose(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError) as exc:
            raise StateStoreError(
                f"Redis energy ledger at {self._url}: close failed: {exc}"
            ) from exc

    @contextmanager
    def _failures(self, operation: str) -> Iterator[None]:
        if time.monotonic() < self._down_until_s:
            raise StateStoreError(f"Redis energy ledger at {self._url}: down, not retried yet")
        try:
            yield
        except (RedisError, OSError) as exc:
            self._down_until_s = time.monotonic() + RETRY_AFTER_S
            raise StateStoreError(
                f"Redis energy ledger at {self._url}: {operation} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def departed_work(self) -> tuple[float, float]:
        with self._failures("departed_work"):
            units, held = await self._client.hmget(self._departed_key, ["units", "held"])
        return float(units or 0.0), float(held or 0.0)

    async def credit(self, prices: WindowPrices, credits: Sequence[Credit]) -> None:
        args: list[str | int | float] = [self._request_prefix, self._account_prefix, self._ttl_ms]
        args += [
            repr(prices.end_s), repr(prices.active_j_per_unit), repr(prices.idle_j_per_held_s),
            repr(prices.prefill_weight), repr(prices.carried_active_j),
            repr(prices.unattributed_j),
        ]  # fmt: skip
        for credit in credits:
            args += [
                credit.request_id, repr(credit.share.active_j), repr(credit.share.idle_j),
                repr(credit.held_s), repr(credit.seen_tokens), int(credit.prefilled),
            ]  # fmt: skip
        with self._failures("credit"):
            await self._credit(keys=[self._prices_key], args=args)

    async def settle(self, settlement: Settlement) -> RequestEnergy | None:
        key = f"{self._account_prefix}{settlement.request_id}"
        with self._failures("settle"):
            account_fields, price_fields = await self._close(keys=[key, self._prices_key])
            energy, tail = settle_account(
                _account(account_fields), _prices(price_fields), settlement
            )
            if tail is not None and (tail.units > 0 or tail.held_s > 0):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.hincrbyfloat(self._departed_key, "units", tail.units)
                    pipe.hincrbyfloat(self._departed_key, "held", tail.held_s)
                    await pipe.execute()
        return energy


def _account(fields: list[bytes | None]) -> Account | None:
    if fields[0] is None:
        return None
    active, idle, held, seen, prefilled = fields
    return Account(float(active or 0), float(idle or 0), float(held or 0), float(seen or 0),
                   prefilled == b"1")  # fmt: skip


def _prices(fields: list[bytes | None]) -> WindowPrices | None:
    if any(value is None for value in fields):
        return None
    end, per_unit, per_held, weight, carried, unattributed = (float(v or 0) for v in fields)
    return WindowPrices(end, per_unit, per_held, weight, carried, unattributed)

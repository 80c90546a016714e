"""The scoreboard in Redis, shared by every gateway worker and the stand-alone governor.

Key layout, all under `throttllem:{instance}:` (one scoreboard per engine instance):

- `throttllem:{instance}:request:{request_id}`: string, the `RequestEntry` as JSON, with a
  millisecond TTL of `entry_ttl_s`; its worker re-arms it (`refresh`), so a dead worker's
  requests vanish on their own.
- `throttllem:{instance}:requests`: set of the request ids. A member whose key has expired
  is pruned by the next `snapshot`, which then bumps the version.
- `throttllem:{instance}:version`: integer counter, incremented whenever the set of
  requests changes (admit, remove, expiry noticed); absent means 0.
- `throttllem:{instance}:workers`: hash, worker name -> `"<seconds> <state>"`: the Redis
  server's clock at its last announcement, and `plans`, `admits-all` (no predictors) or
  `retired`. A field older than `entry_ttl_s` is dropped by the next `roster` (its
  entries expired too).

Every read-check-write is one Lua script, so compare-and-add is atomic across workers.
The scripts build request keys from the prefix, so this needs a single Redis (or a
replicated primary), not Redis Cluster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

from redis.asyncio import Redis
from redis.exceptions import RedisError

from slo_scoreboard.redis_client import connect_redis, redis_address
from slo_scoreboard.roster import Roster, WorkerStatus
from slo_scoreboard.store import RequestEntry, Snapshot, StateStoreError

# Short, so a dead or unreachable Redis fails a request's state call in about a second
# instead of stalling it (the failover store then serves locally).
CONNECT_TIMEOUT_S = 1.0
OPERATION_TIMEOUT_S = 1.0
MAX_REMEMBERED_ENTRIES = 100_000  # far more than an engine holds at once

# KEYS: version, index, request key. ARGV: expected version, entry JSON, TTL ms, id.
_ADMIT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('INCR', KEYS[1])
return 1
"""

# KEYS: version, index. ARGV: request key prefix. Returns {version, {entry JSON, ...}}.
_SNAPSHOT = """
local ids = redis.call('SMEMBERS', KEYS[2])
local entries = {}
local pruned = 0
for _, id in ipairs(ids) do
  local text = redis.call('GET', ARGV[1] .. id)
  if text then
    entries[#entries + 1] = text
  else
    redis.call('SREM', KEYS[2], id)
    pruned = pruned + 1
  end
end
local version
if pruned > 0 then
  version = redis.call('INCR', KEYS[1])
else
  version = tonumber(redis.call('GET', KEYS[1]) or '0')
end
return {version, entries}
"""

# KEYS: request key, index, version. ARGV: id. Returns 1 if anything was removed.
_REMOVE = """
local removed = redis.call('DEL', KEYS[1]) + redis.call('SREM', KEYS[2], ARGV[1])
if removed > 0 then
  redis.call('INCR', KEYS[3])
  return 1
end
return 0
"""

# The server's clock as "<seconds>.<microseconds>": one clock for every worker's
# announcement and every reader, whatever the hosts' clocks say.
_NOW = """
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
"""

# KEYS: workers. ARGV: worker, its state.
_ANNOUNCE = (
    _NOW
    + """
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. ARGV[2])
return 1
"""
)

# KEYS: workers. ARGV: seconds after which a silent worker is dropped.
# Returns {now, {worker, "<seconds> <state>", ...}}.
_ROSTER = (
    _NOW
    + """
local fields = redis.call('HGETALL', KEYS[1])
local kept = {}
for i = 1, #fields, 2 do
  local seen = tonumber(string.match(fields[i + 1], '^%S+'))
  if seen and tonumber(now) - seen <= tonumber(ARGV[1]) then
    kept[#kept + 1] = fields[i]
    kept[#kept + 1] = fields[i + 1]
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
return {now, kept}
"""
)


class RedisStateStore:
    """`StateStore` in Redis. Every failure surfaces as `StateStoreError`, naming the URL."""

    def __init__(self, client: Redis, url: str, instance: str, entry_ttl_s: float) -> None:
        if not entry_ttl_s > 0:
            raise ValueError(f"entry_ttl_s must be positive, got {entry_ttl_s}")
        self._client = client
        self._url = redis_address(url)
        self._prefix = f"throttllem:{instance}:"
        self._request_prefix = f"{self._prefix}request:"
        self._index_key = f"{self._prefix}requests"
        self._version_key = f"{self._prefix}version"
        self._workers_key = f"{self._prefix}workers"
        self._ttl_s = entry_ttl_s
        self._ttl_ms = max(1, math.ceil(entry_ttl_s * 1000))
        self._admit = client.register_script(_ADMIT)
        self._snapshot = client.register_script(_SNAPSHOT)
        self._remove = client.register_script(_REMOVE)
        self._announce = client.register_script(_ANNOUNCE)
        self._roster = client.register_script(_ROSTER)
        # The entries this store wrote, as it wrote them: token counts update them without
        # reading them back (one round trip instead of two on every count).
        self._written: dict[str, RequestEntry] = {}

    @classmethod
    def connect(cls, url: str, instance: str, entry_ttl_s: float) -> RedisStateStore:
        """A store on `url`. Connects lazily: nothing is sent until the first call."""
        client = connect_redis(
            url,
            socket_timeout_s=OPERATION_TIMEOUT_S,
            connect_timeout_s=CONNECT_TIMEOUT_S,
            retries=1,  # a connection broken by a restart: once more on a fresh one
        )
        return cls(client, url, instance, entry_ttl_s)

    def __repr__(self) -> str:
        return f"RedisStateStore({self._url!r}, prefix={self._prefix!r})"

    def _request_key(self, request_id: str) -> str:
        return f"{self._request_prefix}{request_id}"

    @contextmanager
    def _failures(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise StateStoreError(
                f"Redis state store at {self._url}: {operation} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def snapshot(self) -> Snapshot:
        with self._failures("snapshot"):
            version, texts = await self._snapshot(
                keys=[self._version_key, self._index_key], args=[self._request_prefix]
            )
        try:
            entries = [RequestEntry.from_json(text) for text in texts]
        except (ValueError, TypeError) as exc:
            raise StateStoreError(
                f"Redis state store at {self._url}: unreadable entry under {self._prefix}: {exc}"
            ) from exc
        entries.sort(key=lambda entry: (entry.arrival_s, entry.request_id))
        return Snapshot(int(version), entries)

    async def admit(self, entry: RequestEntry, expected_version: int) -> bool:
        with self._failures("admit"):
            added = await self._admit(
                keys=[self._version_key, self._index_key, self._request_key(entry.request_id)],
                args=[expected_version, entry.to_json(), self._ttl_ms, entry.request_id],
            )
        if added:
            self._remember(entry)
        return bool(added)

    async def record_tokens(self, request_id: str, generated_tokens: int, now_s: float) -> None:
        """Rewrite the entry only if it is still there (XX), keeping its TTL.

        Only the owning worker writes an entry, one call at a time, so the entry as this
        store last wrote it is the entry; one it did not write is read first. Not one
        script: Lua's cjson would round the wall-clock floats.
        """
        key = self._request_key(request_id)
        with self._failures("record_tokens"):
            entry = self._written.get(request_id) or await self._read_entry(key)
            if entry is None:
                return
            first_token_s = entry.first_token_s if entry.first_token_s is not None else now_s
            updated = replace(entry, generated_tokens=generated_tokens, first_token_s=first_token_s,
                              counted_s=now_s)  # fmt: skip
            if updated == entry:
                return
            if await self._client.set(key, updated.to_json(), xx=True, keepttl=True):
                self._remember(updated)
            else:  # expired, or removed with the board (a Redis restarted empty)
                self._written.pop(request_id, None)

    async def _read_entry(self, key: str) -> RequestEntry | None:
        text = await self._client.get(key)
        if text is None:
            return None
        try:
            return RequestEntry.from_json(text)
        except (ValueError, TypeError) as exc:
            raise StateStoreError(
                f"Redis state store at {self._url}: unreadable entry {key}: {exc}"
            ) from exc

    def _remember(self, entry: RequestEntry) -> None:
        if len(self._written) >= MAX_REMEMBERED_ENTRIES:  # removals lost: start afresh
            self._written.clear()
        self._written[entry.request_id] = entry

    async def remove(self, request_id: str) -> None:
        self._written.pop(request_id, None)
        with self._failures("remove"):
            await self._remove(
                keys=[self._request_key(request_id), self._index_key, self._version_key],
                args=[request_id],
            )

    async def refresh(self, request_ids: Sequence[str]) -> None:
        if not request_ids:
            return
        with self._failures("refresh"):
            async with self._client.pipeline(transaction=False) as pipe:
                for request_id in request_ids:
                    pipe.pexpire(self._request_key(request_id), self._ttl_ms)
                await pipe.execute()

    async def announce(self, worker: str, plans: bool) -> None:
        state = _PLANS if plans else _ADMITS_ALL
        with self._failures("announce"):
            await self._announce(keys=[self._workers_key], args=[worker, state])

    async def retire(self, worker: str) -> None:
        with self._failures("retire"):
            await self._announce(keys=[self._workers_key], args=[worker, _RETIRED])

    async def roster(self) -> Roster:
        with self._failures("roster"):
            now, fields = await self._roster(keys=[self._workers_key], args=[self._ttl_s])
        try:
            workers = [
                _worker_status(name, value)
                for name, value in zip(fields[::2], fields[1::2], strict=True)
            ]
        except ValueError as exc:
            raise StateStoreError(
                f"Redis state store at {self._url}: unreadable roster {self._workers_key}: {exc}"
            ) from exc
        return Roster(float(now), workers)

    async def ping(self) -> bool:
        """Whether Redis answers; never raises."""
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def aclose(self) -> None:
        with self._failures("close"):
            await self._client.aclose()


_PLANS, _ADMITS_ALL, _RETIRED = "plans", "admits-all", "retired"


def _worker_status(name: bytes, value: bytes) -> WorkerStatus:
    seen_s, state = value.decode().split(" ")
    if state not in (_PLANS, _ADMITS_ALL, _RETIRED):
        raise ValueError(f"unknown worker state {state!r}")
    return WorkerStatus(name.decode(), float(seen_s), state == _PLANS, state == _RETIRED)

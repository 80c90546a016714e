"""Leader election: exactly one governor acts on the GPUs of one engine instance.

Key layout, under `throttllem:{instance}:` like the scoreboard (slo_scoreboard/redis_store.py):

- `throttllem:{instance}:governor:leader`: string, the leader's holder id, with a
  millisecond TTL of `ttl_s`; the leader re-arms it every `renew_every_s`.
- `throttllem:{instance}:governor:fence`: integer, incremented by every successful
  acquire and never expired, so fencing tokens grow across leaders. An actuator that
  checks `fence_is_current(token)` refuses the writes of a leader that was replaced.
  A Redis restarted without its data forgets the counter, so each new token is also at
  least the Redis server's clock in microseconds: tokens keep growing across restarts
  (while the server's clock does not step back).

Takeover time. A leader re-arms the key at least every `renew_every_s`, so when it dies
without releasing, the key expires at most `ttl_s` after its death; a follower tries
every `renew_every_s`, so it takes over within `ttl_s + renew_every_s` of the death:
1.5 s + 0.3 s = 1.8 s with the defaults, inside the 2 s the governor promises. After a
graceful release (shutdown), within one `renew_every_s`.

Losing contact with Redis counts as losing leadership: a leader that cannot renew stops
actuating at once (`on_lost`), well before its key could expire and a follower start.
Its lease is also bounded locally: `is_leader` turns False `ttl_s` after the last
successful acquire or renew was sent, even if nothing noticed yet.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from slo_scoreboard.cancellation import raise_if_cancelled
from slo_scoreboard.redis_client import connect_redis, redis_address

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 1.5
DEFAULT_RENEW_EVERY_S = 0.3

# KEYS: leader, fence. ARGV: holder, TTL ms. Returns the new fencing token, or 0 if the
# key is someone else's. Our own key is taken anew (with a new token): a leader whose
# renew timed out has already stepped down, and need not wait for its own key to expire.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local t = redis.call('TIME')
local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
local token = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, floor)
redis.call('SET', KEYS[2], string.format('%d', token))
return token
"""

# KEYS: leader, fence. ARGV: holder, TTL ms, our token. Returns 1 if still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[3] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: leader, fence. ARGV: holder, our token. Returns 1 if our key was deleted.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def default_holder_id() -> str:
    """Unique per process: two governors must never share a holder id."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leadership(Protocol):
    @property
    def holder(self) -> str: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def fencing_token(self) -> int | None: ...

    async def acquire(self) -> bool:
        """Try once to become leader; True if we are."""
        ...

    async def renew(self) -> bool:
        """Extend our lease; False if it is no longer ours (or cannot be confirmed)."""
        ...

    async def release(self) -> None: ...

    async def fence_is_current(self, token: int) -> bool:
        """Whether `token` belongs to the current leader; False when that is unknown."""
        ...


class RedisLeaderLock:
    """`Leadership` in Redis. Never raises on a Redis failure: it answers "not leader"."""

    def __init__(
        self,
        client_or_url: Redis | str,
        instance: str,
        holder_id: str,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        if isinstance(client_or_url, str):
            # Timeouts well under the TTL, so a hung Redis is noticed long before the
            # lease could run out; no retries, the election loop tries again anyway.
            timeout_s = min(1.0, ttl_s / 3)
            self._client = connect_redis(
                client_or_url, socket_timeout_s=timeout_s, connect_timeout_s=timeout_s, retries=0
            )
            self._owns_client = True
            self._url = redis_address(client_or_url)
        else:
            self._client = client_or_url
            self._owns_client = False
            self._url = repr(client_or_url)
        self._holder = holder_id
        self._leader_key = f"throttllem:{instance}:governor:leader"
        self._fence_key = f"throttllem:{instance}:governor:fence"
        self.ttl_s = ttl_s
        self._ttl_ms = max(1, math.ceil(ttl_s * 1000))
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._token: int | None = None  # our last term's token, kept for release
        self._held = False
        self._valid_until_s = -math.inf
        self._last_error: str | None = None

    def __repr__(self) -> str:
        return f"RedisLeaderLock({self._url!r}, key={self._leader_key!r}, holder={self._holder!r})"

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def is_leader(self) -> bool:
        return self._held and time.monotonic() < self._valid_until_s

    @property
    def fencing_token(self) -> int | None:
        return self._token if self.is_leader else None

    async def acquire(self) -> bool:
        if self.is_leader:
            return await self.renew()
        sent_s = time.monotonic()
        try:
            token = int(
                await self._acquire(
                    keys=[self._leader_key, self._fence_key], args=[self._holder, self._ttl_ms]
                )
            )
        except (RedisError, OSError) as exc:
            self._held = False
            self._note_error(exc)
            return False
        self._reachable()
        if token <= 0:
            self._held = False
            return False
        self._token, self._held = token, True
        self._valid_until_s = sent_s + self.ttl_s
        return True

    async def renew(self) -> bool:
        if not self._held:
            return False
        sent_s = time.monotonic()
        try:
            renewed = await self._renew(
                keys=[self._leader_key, self._fence_key],
                args=[self._holder, self._ttl_ms, self._token],
            )
        except (RedisError, OSError) as exc:
            self._held = False  # unconfirmed is lost: stop actuating now
            self._note_error(exc)
            return False
        self._reachable()
        if not renewed:
            self._held = False
            return False
        self._valid_until_s = sent_s + self.ttl_s
        return True

    async def release(self) -> None:
        """Delete the key if it is still ours; best effort (it expires anyway).

        Also after a renew that failed on an error: the key may still be ours, and
        deleting it spares a follower the wait for its expiry.
        """
        token, self._token, self._held = self._token, None, False
        if token is None:
            return
        try:
            await self._release(
                keys=[self._leader_key, self._fence_key], args=[self._holder, token]
            )
        except (RedisError, OSError) as exc:
            log.warning("leadership: could not release %r: %s", self, exc)

    async def fence_is_current(self, token: int) -> bool:
        try:
            current = await self._client.get(self._fence_key)
        except (RedisError, OSError) as exc:
            self._note_error(exc)
            return False
        return current is not None and int(current) == token

    async def aclose(self) -> None:
        """Close the client if this lock made it from a URL."""
        if self._owns_client:
            await self._client.aclose()

    def _note_error(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if error != self._last_error:  # once per outage, not every retry
            log.warning("leadership: Redis at %s unreachable: %s", self._url, error)
        self._last_error = error

    def _reachable(self) -> None:
        if self._last_error is not None:
            log.info("leadership: Redis at %s reachable again", self._url)
            self._last_error = None


class LeaderElection:
    """Keeps trying to lead, and tells the governor when it gains or loses the lead.

    `on_lost` is called before the lock is released, so our actuation has stopped
    before anyone else can start. It is called whenever we stop leading: a lost or
    unconfirmed lease, or `run()` ending while leading.
    """

    def __init__(
        self,
        lock: Leadership,
        renew_every_s: float = DEFAULT_RENEW_EVERY_S,
        on_elected: Callable[[int], Awaitable[None]] | None = None,
        on_lost: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if not renew_every_s > 0:
            raise ValueError(f"renew_every_s must be positive, got {renew_every_s}")
        self._lock = lock
        self._renew_every_s = renew_every_s
        self._on_elected = on_elected
        self._on_lost = on_lost
        self._leading = False

    @property
    def is_leader(self) -> bool:
        return self._leading and self._lock.is_leader

    @property
    def fencing_token(self) -> int | None:
        return self._lock.fencing_token if self._leading else None

    async def run(self) -> None:
        next_s = time.monotonic()
        try:
            while True:
                await self._step()
                raise_if_cancelled()
                next_s = max(next_s + self._renew_every_s, time.monotonic())
                await asyncio.sleep(next_s - time.monotonic())
        finally:
            await asyncio.shield(self._step_down())

    async def _step(self) -> None:
        if self._leading:
            if not await self._lock.renew():
                self._leading = False
                log.warning("leadership: %s lost the lead", self._lock.holder)
                await self._call_on_lost()
            return
        if not await self._lock.acquire():
            return
        token = self._lock.fencing_token
        if token is None:  # the lease ran out before we could look: not leading
            return
        self._leading = True
        log.info("leadership: %s elected with fencing token %d", self._lock.holder, token)
        if self._on_elected is not None:
            await self._on_elected(token)

    async def _step_down(self) -> None:
        if self._leading:
            self._leading = False
            await self._call_on_lost()
        await self._lock.release()

    async def _call_on_lost(self) -> None:
        if self._on_lost is None:
            return
        try:
            await self._on_lost()
        except Exception:
            log.exception("leadership: on_lost failed")

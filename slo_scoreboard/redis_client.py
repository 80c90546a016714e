"""The one place Redis clients are made, and how their URL appears in logs.

Every Redis user (the scoreboard, the scaling channel, the governor's leader lock) gets
its client from `connect_redis`, stating its own timeouts and retries; `redis_address`
is what they print instead of the URL, which may carry a password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def connect_redis(
    url: str,
    *,
    socket_timeout_s: float | None,
    connect_timeout_s: float | None,
    retries: int | None,
) -> Redis:
    """A client on `url`. Connects lazily: nothing is sent until the first command.

    `socket_timeout_s` bounds each command, `connect_timeout_s` each connect. `retries`
    is how many times a command that failed on a broken connection is sent again, at
    once, on a fresh one: a connection pooled before Redis restarted is broken, and only
    the command that uses it finds out, so with 0 every pooled connection fails one
    command after a restart. A timeout is never retried: an unresponsive Redis fails
    within `socket_timeout_s`. None leaves a setting at redis-py's default (for a
    timeout, that is not "no timeout"; for retries, timeouts are retried too).
    """
    options: dict[str, Any] = {}
    if socket_timeout_s is not None:
        options["socket_timeout"] = socket_timeout_s
    if connect_timeout_s is not None:
        options["socket_connect_timeout"] = connect_timeout_s
    if retries is not None:
        options["retry"] = Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,))
    return Redis.from_url(url, **options)


def redis_address(url: str) -> str:
    """Host and port only (the path of a unix socket): fit for logs, never a password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path

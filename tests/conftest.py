"""Fixtures shared by test folders."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.private_redis import PrivateRedis
from tests.servers import free_ports

REDIS_URL = "redis://127.0.0.1:6379/0"  # .ci/run starts one if none answers


@pytest.fixture
def instance() -> Iterator[str]:
    """An engine instance of the test's own in the real Redis; its keys go afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"throttllem:{name}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own, which it may kill and restart."""
    (port,) = free_ports(1)
    server = PrivateRedis(port, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()

"""RedisStateStore against the real Redis at 127.0.0.1:6379, one key prefix per test."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from slo_scoreboard.redis_client import connect_redis, redis_address
from slo_scoreboard.redis_store import RedisStateStore
from slo_scoreboard.store import RequestEntry, StateStoreError
from tests.servers import free_ports

REDIS_URL = "redis://127.0.0.1:6379/0"


def entry(request_id: str, **fields: object) -> RequestEntry:
    values: dict[str, object] = {
        "request_id": request_id,
        "arrival_s": 1_700_000_000.123456,
        "prompt_tokens": 12,
        "max_tokens": 64,
    }
    values.update(fields)
    return RequestEntry(**values)  # type: ignore[arg-type]


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
async def store(instance: str) -> AsyncIterator[RedisStateStore]:
    store = RedisStateStore.connect(REDIS_URL, instance, entry_ttl_s=10.0)
    yield store
    await store.aclose()


async def test_admit_snapshot_record_remove_round_trip(
    store: RedisStateStore, instance: str, raw: redis.Redis
):
    assert await store.ping()
    empty = await store.snapshot()
    assert (empty.version, empty.entries) == (0, [])

    first = entry("a", predicted_tokens=40, ttft_slo_s=0.5, e2e_deadline_s=1_700_000_003.25)
    assert await store.admit(first, expected_version=0)
    snap = await store.snapshot()
    assert snap.version == 1
    assert snap.entries == [first]
    assert snap.entries[0].tbt_slo_s == math.inf  # absent promises survive JSON as inf

    # A stale version adds nothing and leaves the version alone.
    assert not await store.admit(entry("b"), expected_version=0)
    assert await store.snapshot() == snap

    await store.record_tokens("a", 3, now_s=1_700_000_000.5)
    await store.record_tokens("a", 7, now_s=1_700_000_001.0)
    (recorded,) = (await store.snapshot()).entries
    assert (recorded.generated_tokens, recorded.first_token_s) == (7, 1_700_000_000.5)
    assert 0 < raw.pttl(f"throttllem:{instance}:request:a") <= 10_000  # TTL kept
    await store.record_tokens("ghost", 1, now_s=1.0)
    assert not raw.exists(f"throttllem:{instance}:request:ghost")  # never resurrected

    await store.remove("a")
    after = await store.snapshot()
    assert (after.version, after.entries) == (2, [])
    await store.remove("a")  # nothing left to remove: the version stays
    assert (await store.snapshot()).version == 2
    assert set(raw.keys(f"throttllem:{instance}:*")) == {f"throttllem:{instance}:version".encode()}


def gets(raw: redis.Redis) -> int:
    """GETs the Redis server has run so far, its scripts' included."""
    return int(raw.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


async def test_counting_tokens_of_an_entry_it_wrote_reads_nothing_back(
    store: RedisStateStore, instance: str, raw: redis.Redis
):
    assert await store.admit(entry("own"), expected_version=0)
    before = gets(raw)
    await store.record_tokens("own", 1, now_s=1_700_000_000.5)
    await store.record_tokens("own", 2, now_s=1_700_000_000.6)
    assert gets(raw) == before
    (recorded,) = (await store.snapshot()).entries
    assert (recorded.generated_tokens, recorded.first_token_s) == (2, 1_700_000_000.5)

    other = RedisStateStore.connect(REDIS_URL, instance, entry_ttl_s=10.0)
    try:  # an entry another store wrote (a worker restarted): read first, then counted
        before = gets(raw)
        await other.record_tokens("own", 5, now_s=1_700_000_001.0)
        assert gets(raw) == before + 1
        (recorded,) = (await store.snapshot()).entries
        assert (recorded.generated_tokens, recorded.first_token_s) == (5, 1_700_000_000.5)
    finally:
        await other.aclose()

    raw.delete(f"throttllem:{instance}:request:own")  # a Redis restarted empty, say
    await store.record_tokens("own", 6, now_s=1_700_000_002.0)
    assert not raw.exists(f"throttllem:{instance}:request:own")  # never resurrected


async def test_concurrent_admits_on_one_version_let_exactly_one_in(instance: str):
    stores = [RedisStateStore.connect(REDIS_URL, instance, 10.0) for _ in range(20)]
    try:
        version = (await stores[0].snapshot()).version
        results = await asyncio.gather(
            *(store.admit(entry(f"r{i}"), version) for i, store in enumerate(stores))
        )
        assert sum(results) == 1
        snap = await stores[0].snapshot()
        assert snap.version == version + 1
        assert [e.request_id for e in snap.entries] == [f"r{results.index(True)}"]
    finally:
        await asyncio.gather(*(store.aclose() for store in stores))


async def test_unrefreshed_entries_expire_and_change_the_version(instance: str):
    store = RedisStateStore.connect(REDIS_URL, instance, entry_ttl_s=0.5)
    try:
        assert await store.admit(entry("kept", arrival_s=1.0), 0)
        assert await store.admit(entry("dropped", arrival_s=2.0), 1)
        start_s = time.monotonic()
        checked_expiry = False
        while (elapsed_s := time.monotonic() - start_s) < 1.5:
            await store.refresh(["kept", "never-admitted"])
            if not checked_expiry and elapsed_s >= 0.7:
                snap = await store.snapshot()
                assert [e.request_id for e in snap.entries] == ["kept"]
                assert snap.version == 3  # the expiry was noticed and counted once
                checked_expiry = True
            await asyncio.sleep(0.2)
        snap = await store.snapshot()
        assert checked_expiry
        assert [e.request_id for e in snap.entries] == ["kept"]
        assert snap.version == 3
    finally:
        await store.aclose()


async def test_same_instance_shares_different_instances_are_isolated(instance: str):
    other_instance = f"{instance}-other"
    one = RedisStateStore.connect(REDIS_URL, instance, 10.0)
    two = RedisStateStore.connect(REDIS_URL, instance, 10.0)
    elsewhere = RedisStateStore.connect(REDIS_URL, other_instance, 10.0)
    try:
        assert await one.admit(entry("x", worker="h:1"), 0)
        seen = await two.snapshot()
        assert [e.request_id for e in seen.entries] == ["x"]
        assert await two.admit(entry("y", arrival_s=1_700_000_001.0, worker="h:2"), seen.version)
        assert [e.worker for e in (await one.snapshot()).entries] == ["h:1", "h:2"]
        assert not await one.admit(entry("z"), seen.version)  # two moved the version on

        isolated = await elsewhere.snapshot()
        assert (isolated.version, isolated.entries) == (0, [])
        assert await elsewhere.admit(entry("w"), 0)
        await elsewhere.remove("x")  # not its request: the shared scoreboard keeps it
        assert len((await one.snapshot()).entries) == 2
    finally:
        for store in (one, two, elsewhere):
            await store.aclose()
        with redis.Redis.from_url(REDIS_URL) as raw:
            keys = list(raw.scan_iter(match=f"throttllem:{other_instance}:*"))
            if keys:
                raw.delete(*keys)


async def test_unreachable_redis_fails_fast_with_the_url_and_no_password():
    (closed_port,) = free_ports(1)
    url = f"redis://user:s3cret@127.0.0.1:{closed_port}/0"
    store = RedisStateStore.connect(url, "unreachable", 10.0)
    try:
        start_s = time.monotonic()
        assert not await store.ping()
        calls = [
            store.snapshot(),
            store.admit(entry("a"), 0),
            store.record_tokens("a", 1, 1.0),
            store.remove("a"),
            store.refresh(["a"]),
        ]
        for call in calls:
            with pytest.raises(StateStoreError) as raised:
                await call
            message = str(raised.value)
            assert f"127.0.0.1:{closed_port}" in message
            assert "s3cret" not in message
        assert time.monotonic() - start_s < 3.0
    finally:
        await store.aclose()


async def test_an_unreadable_entry_is_a_state_store_error(
    store: RedisStateStore, instance: str, raw: redis.Redis
):
    raw.set(f"throttllem:{instance}:request:bad", b"not json", px=10_000)
    raw.sadd(f"throttllem:{instance}:requests", "bad")
    with pytest.raises(StateStoreError, match="unreadable entry"):
        await store.snapshot()


async def test_connect_redis_sets_only_the_options_it_is_given():
    client = connect_redis(REDIS_URL, socket_timeout_s=0.5, connect_timeout_s=0.25, retries=0)
    plain = connect_redis(REDIS_URL, socket_timeout_s=None, connect_timeout_s=None, retries=None)
    try:
        options = client.connection_pool.connection_kwargs
        assert (options["socket_timeout"], options["socket_connect_timeout"]) == (0.5, 0.25)
        assert options["retry"].get_retries() == 0
        assert not {"socket_timeout", "socket_connect_timeout", "retry"} & set(
            plain.connection_pool.connection_kwargs
        )
        assert await client.ping() and await plain.ping()
    finally:
        await client.aclose()
        await plain.aclose()


def test_redis_address_is_host_and_port_only():
    assert redis_address("redis://u:pw@h:6380/0") == "h:6380"
    assert redis_address("redis://:pw@h/1") == "h:6379"
    assert redis_address("rediss://h") == "h:6379"
    assert redis_address("unix://:pw@/run/redis.sock?db=1&password=pw") == "/run/redis.sock"


async def test_the_store_names_its_redis_by_address_only():
    store = RedisStateStore.connect("redis://u:s3cret@127.0.0.1:6379/0", "named", 10.0)
    try:
        assert repr(store) == "RedisStateStore('127.0.0.1:6379', prefix='throttllem:named:')"
    finally:
        await store.aclose()


async def test_the_roster_keeps_each_workers_state_and_drops_the_long_silent(
    instance: str, raw: redis.Redis
):
    store = RedisStateStore.connect(REDIS_URL, instance, entry_ttl_s=1.0)
    try:
        await store.announce("a", plans=True)
        await store.announce("b", plans=False)
        await store.retire("c")
        roster = await store.roster()
        states = {w.worker: (w.plans, w.retired) for w in roster.workers}
        assert states == {"a": (True, False), "b": (False, False), "c": (False, True)}
        assert all(abs(roster.now_s - w.seen_s) < 1.0 for w in roster.workers)
        await asyncio.sleep(1.1)  # past the entry TTL: silent workers are dropped
        await store.announce("a", plans=True)
        assert [w.worker for w in (await store.roster()).workers] == ["a"]
        assert raw.hkeys(f"throttllem:{instance}:workers") == [b"a"]
    finally:
        await store.aclose()


async def test_a_roster_field_without_a_time_is_dropped_one_of_unknown_state_is_an_error(
    store: RedisStateStore, instance: str, raw: redis.Redis
):
    key = f"throttllem:{instance}:workers"
    raw.hset(key, "garbled", b"not a roster value")
    assert (await store.roster()).workers == []
    assert raw.hkeys(key) == []
    seconds, microseconds = raw.time()
    raw.hset(key, "odd", f"{seconds}.{microseconds:06d} sleeping")
    with pytest.raises(StateStoreError, match="unreadable roster"):
        await store.roster()

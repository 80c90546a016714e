"""Leader election against the real Redis at 127.0.0.1:6379, one instance name per test."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis

from governor.leadership import (
    DEFAULT_RENEW_EVERY_S,
    DEFAULT_TTL_S,
    LeaderElection,
    RedisLeaderLock,
)
from tests.private_redis import PrivateRedis
from tests.servers import free_ports

REDIS_PORT = 6379
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
LEADER_PROCESS = Path(__file__).with_name("leader_process.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
async def make_lock(instance: str) -> AsyncIterator[Callable[..., RedisLeaderLock]]:
    locks: list[RedisLeaderLock] = []

    def make(holder: str, url: str = REDIS_URL, ttl_s: float = DEFAULT_TTL_S) -> RedisLeaderLock:
        locks.append(RedisLeaderLock(url, instance, holder, ttl_s=ttl_s))
        return locks[-1]

    yield make
    for lock in locks:
        await lock.aclose()


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 (polling state another task mutates)
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


def leader_key(instance: str) -> str:
    return f"throttllem:{instance}:governor:leader"


async def test_only_one_holder_leads_and_tokens_grow_across_leaders(
    make_lock: Callable[..., RedisLeaderLock], instance: str, raw: redis.Redis
):
    a, b = make_lock("A"), make_lock("B")
    assert not a.is_leader and a.fencing_token is None

    assert await a.acquire()
    assert not await b.acquire()
    assert a.is_leader and not b.is_leader
    assert raw.get(leader_key(instance)) == "A"
    assert 0 < raw.pttl(leader_key(instance)) <= DEFAULT_TTL_S * 1000
    first = a.fencing_token
    assert first is not None
    assert await a.acquire() and a.fencing_token == first  # already ours: same term

    tokens = [first]
    for new, old in [(b, a), (a, b), (b, a)]:
        await old.release()
        assert not old.is_leader
        assert await new.acquire()
        assert not await old.acquire()
        assert new.fencing_token is not None
        tokens.append(new.fencing_token)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert raw.get(f"throttllem:{instance}:governor:fence") == str(tokens[-1])


async def test_renew_fails_and_the_old_token_is_stale_once_another_holder_took_the_key(
    make_lock: Callable[..., RedisLeaderLock], instance: str, raw: redis.Redis
):
    a, b = make_lock("A"), make_lock("B")
    assert await a.acquire()
    assert await a.renew()
    old_token = a.fencing_token
    assert old_token is not None and await a.fence_is_current(old_token)

    raw.delete(leader_key(instance))  # A's key is gone (say it expired while A stalled)
    assert await b.acquire()
    new_token = b.fencing_token
    assert new_token is not None and new_token > old_token

    assert not await a.renew()
    assert not a.is_leader and a.fencing_token is None
    assert not await a.fence_is_current(old_token)
    assert await a.fence_is_current(new_token)
    assert await b.renew() and raw.get(leader_key(instance)) == "B"


async def test_release_deletes_only_our_own_key(
    make_lock: Callable[..., RedisLeaderLock], instance: str, raw: redis.Redis
):
    a, b = make_lock("A"), make_lock("B")
    assert await a.acquire()
    raw.delete(leader_key(instance))
    assert await b.acquire()

    await a.release()
    assert raw.get(leader_key(instance)) == "B"
    assert await b.renew() and b.is_leader

    await b.release()
    assert raw.get(leader_key(instance)) is None
    assert await a.acquire()


async def test_the_lease_lapses_locally_without_renewal(
    make_lock: Callable[..., RedisLeaderLock], instance: str, raw: redis.Redis
):
    a = make_lock("A", ttl_s=0.2)
    assert await a.acquire() and a.is_leader
    await asyncio.sleep(0.3)
    assert not a.is_leader and a.fencing_token is None
    assert raw.get(leader_key(instance)) is None
    assert not await a.renew()


async def test_unreachable_redis_answers_not_leader_quickly_without_raising(instance: str):
    (closed_port,) = free_ports(1)
    lock = RedisLeaderLock(f"redis://:s3cret@127.0.0.1:{closed_port}/0", instance, "A")
    assert "s3cret" not in repr(lock)
    started_s = time.monotonic()
    assert not await lock.acquire()
    assert not await lock.renew()
    assert not await lock.fence_is_current(1)
    await lock.release()
    assert not lock.is_leader and lock.fencing_token is None
    assert time.monotonic() - started_s < 3.0
    await lock.aclose()


class CuttableProxy:
    """A TCP proxy to Redis that can swallow all traffic, as a partitioned network does."""

    def __init__(self) -> None:
        self.cut = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", REDIS_PORT)
        self._writers += [client_w, redis_w]
        await asyncio.gather(self._pump(client_r, redis_w), self._pump(redis_r, client_w))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if not self.cut:
                    writer.write(data)
                    await writer.drain()
        writer.close()

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


async def test_losing_contact_while_leading_stops_the_lead_before_the_key_expires(
    make_lock: Callable[..., RedisLeaderLock], instance: str, raw: redis.Redis
):
    proxy = CuttableProxy()
    lock = make_lock("A", url=f"redis://127.0.0.1:{await proxy.start()}/0")
    events: list[tuple[str, int | None, float]] = []

    async def on_elected(token: int) -> None:
        events.append(("elected", token, time.monotonic()))

    async def on_lost() -> None:
        events.append(("lost", None, time.monotonic()))

    election = LeaderElection(lock, on_elected=on_elected, on_lost=on_lost)
    task = asyncio.create_task(election.run())
    try:
        await wait_until(lambda: len(events) == 1)
        first_token = events[0][1]
        assert election.is_leader

        cut_s = time.monotonic()
        proxy.cut = True
        await wait_until(lambda: len(events) == 2)
        lost_after_s = events[1][2] - cut_s
        # Within a renew period plus a socket timeout (ttl / 3), and before the key,
        # re-armed at most a renew period before the cut, could expire for a follower.
        assert events[1][0] == "lost" and not election.is_leader
        assert lost_after_s < DEFAULT_RENEW_EVERY_S + DEFAULT_TTL_S / 3 + 0.2
        assert raw.get(leader_key(instance)) == "A"

        proxy.cut = False  # contact back: our own key is taken anew, with a new token
        await wait_until(lambda: len(events) == 3)
        assert events[2][0] == "elected" and events[2][1] > first_token  # type: ignore[operator]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await proxy.aclose()


class ScriptedLock:
    """A `Leadership` whose answers the test sets, recording the calls it gets."""

    def __init__(self) -> None:
        self.renew_ok = True
        self.calls: list[str] = []
        self._leading = False

    @property
    def holder(self) -> str:
        return "scripted"

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def fencing_token(self) -> int | None:
        return 7 if self._leading else None

    async def acquire(self) -> bool:
        self.calls.append("acquire")
        self._leading = self.renew_ok
        return self._leading

    async def renew(self) -> bool:
        self.calls.append("renew")
        self._leading = self.renew_ok
        return self._leading

    async def release(self) -> None:
        self.calls.append("release")
        self._leading = False

    async def fence_is_current(self, token: int) -> bool:
        return self._leading and token == 7


async def test_election_reports_the_token_and_a_failed_renew_at_once():
    lock = ScriptedLock()
    events: list[str] = []

    async def on_elected(token: int) -> None:
        events.append(f"elected {token}")

    async def on_lost() -> None:
        events.append("lost")
        lock.calls.append("on_lost")

    election = LeaderElection(lock, renew_every_s=0.05, on_elected=on_elected, on_lost=on_lost)
    task = asyncio.create_task(election.run())
    await wait_until(lambda: lock.calls.count("renew") >= 2)
    assert events == ["elected 7"] and election.is_leader and election.fencing_token == 7

    failed_s = time.monotonic()
    lock.renew_ok = False
    await wait_until(lambda: events[-1] == "lost")
    assert time.monotonic() - failed_s < 0.2  # the next renew, one period later
    assert not election.is_leader and election.fencing_token is None

    lock.renew_ok = True
    await wait_until(lambda: events[-1] == "elected 7")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert events == ["elected 7", "lost", "elected 7", "lost"]
    assert lock.calls[-2:] == ["on_lost", "release"]  # actuation stops before the release


class CancelSwallowingLock(ScriptedLock):
    """Its renew eats the first cancel and answers, as redis-py can do mid-command."""

    def __init__(self) -> None:
        super().__init__()
        self.renewing = asyncio.Event()
        self.swallowed = False

    async def renew(self) -> bool:
        self.renewing.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed = True
        return await super().renew()


async def test_a_cancel_swallowed_inside_the_lock_still_ends_the_election():
    lock = CancelSwallowingLock()
    task = asyncio.create_task(LeaderElection(lock, renew_every_s=0.01).run())
    await asyncio.wait_for(lock.renewing.wait(), 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)  # not a TimeoutError: the first cancel counted
    assert lock.swallowed
    assert lock.calls[-1] == "release" and not lock.is_leader


async def test_a_failing_on_elected_ends_the_election_and_releases_the_lock(
    make_lock: Callable[..., RedisLeaderLock], instance: str, raw: redis.Redis
):
    lost: list[bool] = []

    async def on_elected(token: int) -> None:
        raise RuntimeError("could not start the governor")

    async def on_lost() -> None:
        lost.append(True)

    election = LeaderElection(make_lock("A"), on_elected=on_elected, on_lost=on_lost)
    with pytest.raises(RuntimeError, match="could not start"):
        await asyncio.wait_for(election.run(), 5.0)
    assert lost == [True] and not election.is_leader
    assert raw.get(leader_key(instance)) is None


async def test_a_graceful_release_hands_over_within_one_renew_period(
    make_lock: Callable[..., RedisLeaderLock], instance: str, raw: redis.Redis
):
    elected_s: dict[str, float] = {}
    key_at_lost: list[str | None] = []

    def election(holder: str) -> LeaderElection:
        async def on_elected(token: int) -> None:
            elected_s[holder] = time.monotonic()

        async def on_lost() -> None:
            key_at_lost.append(raw.get(leader_key(instance)))

        return LeaderElection(make_lock(holder), on_elected=on_elected, on_lost=on_lost)

    a_task = asyncio.create_task(election("A").run())
    await wait_until(lambda: "A" in elected_s)
    b_task = asyncio.create_task(election("B").run())
    await asyncio.sleep(DEFAULT_RENEW_EVERY_S)
    assert "B" not in elected_s

    released_s = time.monotonic()
    a_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await a_task
    assert key_at_lost == ["A"]  # A stopped before it let go of the key
    try:
        await wait_until(lambda: "B" in elected_s)
        assert elected_s["B"] - released_s < DEFAULT_RENEW_EVERY_S + 0.1
    finally:
        b_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await b_task
    assert raw.get(leader_key(instance)) is None


def test_a_follower_process_takes_over_within_2_s_of_the_leader_being_killed(
    instance: str, raw: redis.Redis
):
    lines: queue.Queue[tuple[str, list[str]]] = queue.Queue()
    seen: list[tuple[str, list[str]]] = []
    processes = {
        holder: subprocess.Popen(
            [sys.executable, str(LEADER_PROCESS), "--instance", instance, "--holder", holder],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for holder in ("A", "B")
    }

    def read(holder: str, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put((holder, line.split()))

    for holder, process in processes.items():
        threading.Thread(target=read, args=(holder, process.stdout), daemon=True).start()

    def first(
        matches: Callable[[str, list[str]], bool], timeout_s: float, since: int = 0
    ) -> tuple[str, list[str]]:
        """The first line from `seen[since]` on that matches, reading more as needed."""
        deadline_s = time.monotonic() + timeout_s
        while True:
            for holder, fields in seen[since:]:
                if matches(holder, fields):
                    return holder, fields
            if (left_s := deadline_s - time.monotonic()) <= 0:
                raise AssertionError(f"no such line within {timeout_s} s; saw {seen}")
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=left_s))

    def said(word: str, holders: set[str]) -> Callable[[str, list[str]], bool]:
        return lambda holder, fields: holder in holders and fields[:1] == [word]

    try:
        leader, fields = first(said("elected", {"A", "B"}), timeout_s=10.0)
        (follower,) = {"A", "B"} - {leader}
        old_token = int(fields[1])
        first(said("ready", {follower}), timeout_s=10.0)
        time.sleep(2 * DEFAULT_RENEW_EVERY_S)  # the follower tries, and must fail
        while not lines.empty():
            seen.append(lines.get_nowait())
        assert not any(said("elected", {follower})(*line) for line in seen), seen

        since = len(seen)
        killed_s = time.time()
        processes[leader].kill()
        assert raw.get(leader_key(instance)) == leader  # it died holding the key
        _, fields = first(said("elected", {follower}), timeout_s=5.0, since=since)
        took_over_s = float(fields[2]) - killed_s
        print(f"takeover after SIGKILL: {took_over_s:.3f} s")
        assert took_over_s < 2.0
        assert int(fields[1]) > old_token
    finally:
        for process in processes.values():
            process.kill()
            process.wait(timeout=5.0)
            assert process.stdout is not None
            process.stdout.close()


async def test_tokens_keep_growing_across_a_redis_restarted_without_its_data(
    make_lock: Callable[..., RedisLeaderLock], private_redis: PrivateRedis
):
    """Before, the counter restarted at 1: a stale leader's token 1 would match again."""
    before = make_lock("A", url=private_redis.url)
    assert await before.acquire()
    old_token = before.fencing_token
    assert old_token is not None
    private_redis.restart()
    after = make_lock("B", url=private_redis.url)
    assert await after.acquire()
    assert after.fencing_token is not None and after.fencing_token > old_token
    assert not await after.fence_is_current(old_token)

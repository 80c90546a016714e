"""Admission: a request reaches the engine only when the planner says every promise holds.

Those that must wait sit in a bounded queue ordered by their first-token deadline; one
task per worker admits from its head whenever a request leaves the board, and every
window in any case. A request that would miss its own promise even at the highest clock
is not made to wait (waiting cannot help it): it is served at once and counted as lost.
Without predictors there is no planner, and everything is admitted at once.

The same task keeps this worker's scoreboard entries alive (their TTL in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import QueueFullError
from gateway.metrics import GatewayMetrics
from gateway.planning import AdmissionPlanner, Verdict
from gateway.state import RequestEntry, StateStore
from governor.cancellation import raise_if_cancelled

log = logging.getLogger(__name__)

_RACES_BEFORE_QUEUEING = 8  # compare-and-add retries when other workers keep admitting


@dataclass(frozen=True)
class Admitted:
    lost: bool  # admitted knowing it misses a promise
    waited_s: float


@dataclass(order=True)
class _Waiter:
    deadline_s: float
    sequence: int
    entry: RequestEntry = field(compare=False)
    queued_at_s: float = field(compare=False)
    admitted: asyncio.Future[Admitted] = field(compare=False)


class Admission:
    def __init__(
        self,
        store: StateStore,
        planner: AdmissionPlanner | None,
        metrics: GatewayMetrics,
        *,
        max_queue: int,
        retry_after_s: int,
        window_s: float,
        refresh_every_s: float,
        wall_clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._planner = planner
        self._metrics = metrics
        self._max_queue = max_queue
        self._retry_after_s = retry_after_s
        self._window_s = window_s
        self._refresh_every_s = refresh_every_s
        self._now_s = wall_clock_s
        self._queue: list[_Waiter] = []
        self._sequence = itertools.count()
        self._wake = asyncio.Event()
        self._owned: set[str] = set()
        self._attempt = asyncio.Lock()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._queue if not w.admitted.done())

    async def enter(self, entry: RequestEntry) -> Admitted:
        """Put `entry` on the scoreboard, waiting for room if need be.

        Raises QueueFullError when too many wait already. If the caller is cancelled
        (the client left), nothing of it stays on the board or in the queue."""
        started_s = time.monotonic()
        if not self._queue:  # nobody ahead of it: try at once
            lost = await self._try(entry)
            if lost is not None:
                return self._admitted(entry, lost, started_s)
        if self.waiting >= self._max_queue:
            self._metrics.admissions.labels("queue_full").inc()
            raise QueueFullError(
                f"{self.waiting} requests are waiting for admission already; retry later",
                self._retry_after_s,
            )
        waiter = _Waiter(
            deadline_s=entry.arrival_s + entry.ttft_slo_s,
            sequence=next(self._sequence),
            entry=entry,
            queued_at_s=started_s,
            admitted=asyncio.get_running_loop().create_future(),
        )
        heapq.heappush(self._queue, waiter)
        self._metrics.queue_length.set(self.waiting)
        self._wake.set()
        try:
            return await asyncio.shield(waiter.admitted)
        except asyncio.CancelledError:
            if waiter.admitted.done() and not waiter.admitted.cancelled():
                await self.release(entry.request_id)  # admitted just as the client left
            else:
                waiter.admitted.cancel()
            raise
        finally:
            self._metrics.queue_length.set(self.waiting)

    async def release(self, request_id: str) -> None:
        """It left the engine: off the board, and the head of the queue may go."""
        self._owned.discard(request_id)
        await self._store.remove(request_id)
        self._wake.set()

    async def run(self) -> None:
        """Admit from the queue's head on every release, arrival or window; refresh TTLs."""
        refreshed_s = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._window_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._admit_from_queue()
                if time.monotonic() - refreshed_s >= self._refresh_every_s and self._owned:
                    await self._store.refresh(list(self._owned))
                    refreshed_s = time.monotonic()
            except Exception:  # the queue must keep moving whatever one attempt did
                log.exception("admission: an attempt failed; retrying next window")
            raise_if_cancelled()  # a Redis call may have swallowed the shutdown's cancel

    async def _admit_from_queue(self) -> None:
        while self._queue:
            head = self._queue[0]
            if head.admitted.done():  # its client left
                heapq.heappop(self._queue)
                continue
            lost = await self._try(head.entry)
            if lost is None:
                return  # the most urgent cannot go yet; nobody jumps ahead of it
            heapq.heappop(self._queue)
            self._metrics.queue_length.set(self.waiting)
            if head.admitted.done():  # it left while we admitted it
                await self.release(head.entry.request_id)
                continue
            head.admitted.set_result(self._admitted(head.entry, lost, head.queued_at_s))

    async def _try(self, entry: RequestEntry) -> bool | None:
        """Admit it if the planner allows: whether it is lost; None if it must wait.

        One attempt at a time per worker: concurrent attempts of one worker would only
        move each other's version and retry; across workers, compare-and-add decides."""
        async with self._attempt:
            return await self._try_alone(entry)

    async def _try_alone(self, entry: RequestEntry) -> bool | None:
        for _ in range(_RACES_BEFORE_QUEUEING):
            snapshot = await self._store.snapshot()
            verdict = Verdict.ADMIT
            if self._planner is not None:
                verdict = self._planner.verdict(snapshot.entries, entry, self._now_s())
            if verdict is Verdict.WAIT:
                return None
            if await self._store.admit(entry, snapshot.version):
                self._owned.add(entry.request_id)
                return verdict is Verdict.LOST
        return None  # other workers keep changing the board: queue, and retry shortly

    def _admitted(self, entry: RequestEntry, lost: bool, started_s: float) -> Admitted:
        waited_s = time.monotonic() - started_s
        self._metrics.queue_time_s.observe(waited_s)
        self._metrics.admissions.labels("lost" if lost else "admitted").inc()
        return Admitted(lost=lost, waited_s=waited_s)

"""Admission: a request reaches the engine only when the planner says every promise holds.

The queue's rules — deadline order, only the head tried, a lost request served at once,
everything at once without predictors — are the planner's (slo_planner/admission_queue.py);
this is their driver on the wall clock against the scoreboard. One task per worker
admits from the queue's head whenever a request leaves the board, and every window in
any case; across workers, the scoreboard's compare-and-add decides who got the room.

The same task keeps this worker's scoreboard entries alive (their TTL in Redis) and
announces the worker on the roster (slo_scoreboard/roster.py), saying whether it plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import QueueFullError
from gateway.metrics import GatewayMetrics
from predictor.board import Board, Requests
from slo_planner.admission import AdmissionPlanner, Verdict
from slo_planner.admission_queue import AdmissionQueue
from slo_scoreboard.board import board_of, requests_of
from slo_scoreboard.cancellation import raise_if_cancelled
from slo_scoreboard.roster import ANNOUNCE_EVERY_S
from slo_scoreboard.store import RequestEntry, Snapshot, StateStore

log = logging.getLogger(__name__)

_RACES_BEFORE_QUEUEING = 8  # compare-and-add retries when other workers keep admitting

WORKER = f"{socket.gethostname()}:{os.getpid()}"  # this process on the scoreboard


@dataclass(frozen=True)
class Admitted:
    lost: bool  # admitted knowing it misses a promise
    waited_s: float
    board: Board | None = None  # the board it was admitted onto (None: no planner)


@dataclass
class _Waiter:
    entry: RequestEntry
    queued_at_s: float
    admitted: asyncio.Future[Admitted]


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
        worker: str = WORKER,
    ) -> None:
        self._store = store
        self._planner = planner
        self._metrics = metrics
        self._retry_after_s = retry_after_s
        self._window_s = window_s
        self._refresh_every_s = refresh_every_s
        self._now_s = wall_clock_s
        self._worker = worker
        self._queue: AdmissionQueue[_Waiter] = AdmissionQueue(
            planner, _rows_of, max_waiting=max_queue, abandoned=_client_left
        )
        self._wake = asyncio.Event()
        self._owned: set[str] = set()
        self._attempt = asyncio.Lock()

    @property
    def waiting(self) -> int:
        return self._queue.waiting

    async def enter(self, entry: RequestEntry) -> Admitted:
        """Put `entry` on the scoreboard, waiting for room if need be.

        Raises QueueFullError when too many wait already. If the caller is cancelled
        (the client left), nothing of it stays on the board or in the queue."""
        started_s = time.monotonic()
        if self._queue.empty:  # nobody ahead of it: try at once
            tried = await self._try_at_once(entry)
            if tried is not None:
                lost, board = tried
                return self._admitted(entry, lost, started_s, board)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(entry, queued_at_s=started_s, admitted=loop.create_future())
        if not self._queue.enqueue(waiter, deadline_s=entry.arrival_s + entry.ttft_slo_s):
            self._metrics.admissions.labels("queue_full").inc()
            raise QueueFullError(
                f"{self.waiting} requests are waiting for admission already; retry later",
                self._retry_after_s,
            )
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
        """Admit from the queue's head on every release, arrival or window; refresh TTLs
        and announce this worker. Leaves the roster when cancelled (shutdown)."""
        refreshed_s = announced_s = -math.inf
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self._window_s, ANNOUNCE_EVERY_S)):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self.admit_waiting()
                    if time.monotonic() - announced_s >= ANNOUNCE_EVERY_S:
                        await self._store.announce(self._worker, self._planner is not None)
                        announced_s = time.monotonic()
                    if time.monotonic() - refreshed_s >= self._refresh_every_s and self._owned:
                        await self._store.refresh(list(self._owned))
                        refreshed_s = time.monotonic()
                except Exception:  # the queue must keep moving whatever one attempt did
                    log.exception("admission: an attempt failed; retrying next window")
                raise_if_cancelled()  # a Redis call may have swallowed the shutdown's cancel
        finally:
            with contextlib.suppress(Exception):
                await self._store.retire(self._worker)

    async def admit_waiting(self) -> None:
        # An empty queue reads no board: a Redis round trip saved on every release and window.
        while self.waiting and await self._admit_head():
            pass

    async def _admit_head(self) -> bool:
        """Admit the queue's head if the planner lets it go now: whether one went."""
        async with self._attempt:
            for _ in range(_RACES_BEFORE_QUEUEING):
                snapshot = await self._store.snapshot()
                board = self._board(snapshot)
                going = self._queue.next_to_admit(board)
                if going is None:
                    return False
                head, verdict = going
                if not await self._store.admit(head.entry, snapshot.version):
                    continue  # another worker changed the board: decide again
                self._queue.pop_head()
                self._owned.add(head.entry.request_id)
                self._metrics.queue_length.set(self.waiting)
                if head.admitted.done():  # it left while we admitted it
                    await self.release(head.entry.request_id)
                else:
                    lost = verdict is Verdict.LOST
                    admitted = self._admitted(head.entry, lost, head.queued_at_s, board)
                    head.admitted.set_result(admitted)
                return True
            return False  # other workers keep changing the board: retry shortly

    async def _try_at_once(self, entry: RequestEntry) -> tuple[bool, Board | None] | None:
        """Admit it if the planner allows: whether it is lost, and the board it joined;
        None if it must wait.

        One attempt at a time per worker: concurrent attempts of one worker would only
        move each other's version and retry; across workers, compare-and-add decides."""
        async with self._attempt:
            candidate = requests_of([entry])
            for _ in range(_RACES_BEFORE_QUEUEING):
                snapshot = await self._store.snapshot()
                board = self._board(snapshot)
                verdict = self._queue.verdict(board, candidate)
                if verdict is Verdict.WAIT:
                    return None
                if await self._store.admit(entry, snapshot.version):
                    self._owned.add(entry.request_id)
                    return verdict is Verdict.LOST, board
            return None  # other workers keep changing the board: queue, and retry shortly

    def _board(self, snapshot: Snapshot) -> Board | None:
        """None without a planner: there is nothing to plan, the queue admits everyone."""
        planner = self._planner
        if planner is None:
            return None
        return board_of(snapshot.entries, self._now_s(), planner.engine)

    def _admitted(self, entry: RequestEntry, lost: bool, started_s: float,
                  board: Board | None) -> Admitted:  # fmt: skip
        waited_s = time.monotonic() - started_s
        self._metrics.queue_time_s.observe(waited_s)
        self._metrics.admissions.labels("lost" if lost else "admitted").inc()
        return Admitted(lost=lost, waited_s=waited_s, board=board)


def _rows_of(waiter: _Waiter) -> Requests:
    return requests_of([waiter.entry])


def _client_left(waiter: _Waiter) -> bool:
    return waiter.admitted.done()

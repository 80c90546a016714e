"""Runs the engine on the wall clock, in a thread of its own.

Iterations are paced against an absolute schedule (each starts when the previous one
ended, not when the thread woke up), so sleep jitter does not accumulate; how late each
iteration's tokens actually went out is kept as the pacing drift. Tokens reach each
request's asyncio queue, on whichever event loop it was submitted from, at the end of
the iteration that produced them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from simulator.engine import Engine, EngineRequest
from simulator.iteration_log import IterationLog

_TOKEN, _END = True, False
_MAX_CATCH_UP_S = 0.05  # behind by more than this (an overloaded host): start afresh
T = TypeVar("T")


@dataclass
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[bool]


@dataclass
class PacingStats:
    iterations: int = 0
    total_drift_s: float = 0.0
    max_drift_s: float = 0.0

    @property
    def mean_drift_s(self) -> float:
        return self.total_drift_s / self.iterations if self.iterations else 0.0


class RealtimeEngine:
    def __init__(self, engine: Engine, clock_s: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self._clock_s = clock_s
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._subscribers: dict[str, _Subscriber] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="twin-engine", daemon=True)
        self.pacing = PacingStats()
        self.log = IterationLog(engine)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._work:
            self._stopping = True
            self._work.notify_all()
        self._thread.join(timeout=5)

    def locked(self, action: Callable[[Engine, float], T]) -> T:
        """Run `action(engine, now_s)` under the engine lock (control API, metrics)."""
        with self._lock:
            return action(self.engine, self._clock_s())

    async def generate(
        self, sequence: EngineRequest, prompt: str | None = None
    ) -> AsyncIterator[int]:
        """Yield the index of each token of `sequence` as the engine emits it; `prompt`
        names it in the iteration log.

        Raises RequestRejectedError at once if the engine can never serve it.
        """
        queue: asyncio.Queue[bool] = asyncio.Queue()
        with self._work:
            self.engine.submit(sequence)
            if prompt is not None:
                self.log.name(sequence.request_id, prompt)
            self._subscribers[sequence.request_id] = _Subscriber(asyncio.get_running_loop(), queue)
            self._work.notify_all()
        try:
            index = 0
            while await queue.get() is _TOKEN:
                yield index
                index += 1
        finally:
            with self._lock:
                self._subscribers.pop(sequence.request_id, None)
                self.engine.cancel(sequence.request_id)
                self.log.forget(sequence.request_id)

    def _run(self) -> None:
        next_start_s = self._clock_s()
        while True:
            with self._work:
                while not self.engine.has_work and not self._stopping:
                    self.log.record(self.engine, self.engine.step(self._clock_s()))  # idle
                    self._work.wait(timeout=0.1)
                    next_start_s = self._clock_s()
                if self._stopping:
                    return
                next_start_s = max(next_start_s, self._clock_s() - _MAX_CATCH_UP_S)
                result = self.engine.step(next_start_s)
                self.log.record(self.engine, result)
            self._sleep_until(result.ended_s)
            drift_s = self._clock_s() - result.ended_s
            next_start_s = result.ended_s
            with self._lock:
                self._record_drift(drift_s)
                for request_id in result.emitted:
                    self._deliver(request_id, _TOKEN)
                for request_id in result.finished:
                    self._deliver(request_id, _END)

    def _record_drift(self, drift_s: float) -> None:
        self.pacing.iterations += 1
        self.pacing.total_drift_s += drift_s
        self.pacing.max_drift_s = max(self.pacing.max_drift_s, drift_s)

    def _deliver(self, request_id: str, event: bool) -> None:
        subscriber = self._subscribers.get(request_id)
        if subscriber is None:
            return
        try:
            subscriber.loop.call_soon_threadsafe(subscriber.queue.put_nowait, event)
        except RuntimeError:  # its event loop has closed: nobody is listening any more
            self._subscribers.pop(request_id, None)

    def _sleep_until(self, deadline_s: float) -> None:
        while (remaining_s := deadline_s - self._clock_s()) > 0:
            time.sleep(min(remaining_s, 0.05))

"""Runs the engine on the wall clock, in a thread of its own.

Iterations are paced against an absolute schedule (each one starts when the previous
one ended, not when the thread woke up), so sleep jitter does not accumulate as drift.
Tokens reach each request's asyncio queue, on whichever event loop it was submitted
from, at the end of the iteration that produced them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from simulator.engine import Engine, Sequence, StepResult
from simulator.gpu import SimulatedGpu

_TOKEN, _END = True, False
T = TypeVar("T")


@dataclass
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[bool]


class RealtimeEngine:
    def __init__(self, engine: Engine, clock_s: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._clock_s = clock_s
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._subscribers: dict[str, _Subscriber] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="twin-engine", daemon=True)
        self.last_step: StepResult | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._work:
            self._stopping = True
            self._work.notify_all()
        self._thread.join(timeout=5)

    def now_s(self) -> float:
        return self._clock_s()

    def with_gpu(self, action: Callable[[SimulatedGpu, float], T]) -> T:
        """Run `action(gpu, now_s)` under the engine lock (control API calls)."""
        with self._lock:
            return action(self._engine.gpu, self._clock_s())

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": self._engine.running,
                "waiting": self._engine.waiting,
                "iterations": self._engine.iterations,
            }

    async def generate(self, sequence: Sequence) -> AsyncIterator[int]:
        """Yield the index of each token of `sequence` as the engine emits it."""
        queue: asyncio.Queue[bool] = asyncio.Queue()
        with self._work:
            self._subscribers[sequence.request_id] = _Subscriber(asyncio.get_running_loop(), queue)
            self._engine.submit(sequence)
            self._work.notify_all()
        try:
            index = 0
            while await queue.get() is _TOKEN:
                yield index
                index += 1
        finally:
            with self._lock:
                self._subscribers.pop(sequence.request_id, None)
                self._engine.cancel(sequence.request_id)

    def _run(self) -> None:
        next_start_s = self._clock_s()
        while True:
            with self._work:
                while not self._engine.has_work and not self._stopping:
                    self._engine.step(self._clock_s())  # account idle energy
                    self._work.wait(timeout=0.1)
                    next_start_s = self._clock_s()
                if self._stopping:
                    return
                next_start_s = max(next_start_s, self._clock_s() - 0.05)
                result = self._engine.step(next_start_s)
            self._sleep_until(result.ended_s)
            next_start_s = result.ended_s
            with self._lock:
                self.last_step = result
                for request_id in result.emitted:
                    self._deliver(request_id, _TOKEN)
                for request_id in result.finished:
                    self._deliver(request_id, _END)

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

"""The engine twin: in-flight batching, one iteration at a time, on a clock passed in.

Every iteration schedules waiting requests into free batch slots (their prefill runs in
the same iteration as the decode of the running ones), then every running request emits
one token, and requests that reached their true output length leave the batch.
`step()` never sleeps: the caller owns time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from simulator.gpu import SimulatedGpu


@dataclass
class Sequence:
    """One request inside the engine. `output_tokens` is the true length, known only here."""

    request_id: str
    prompt_tokens: int
    output_tokens: int
    generated_tokens: int = 0

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens


class IterationTiming(Protocol):
    def iteration_s(
        self, context_tokens: list[int], prefill_tokens: int, clock_mhz: int, max_clock_mhz: int
    ) -> float: ...


@dataclass(frozen=True)
class SimpleTiming:
    """A first, uncalibrated iteration-time model: a fixed part, a per-sequence part and a
    prefill part, of which `clock_bound_fraction` stretches as 1/f when the clock drops.
    """

    base_ms: float = 18.0
    per_sequence_ms: float = 0.15
    prefill_ms_per_token: float = 0.05
    clock_bound_fraction: float = 0.3

    def iteration_s(
        self, context_tokens: list[int], prefill_tokens: int, clock_mhz: int, max_clock_mhz: int
    ) -> float:
        at_max_clock_ms = (
            self.base_ms
            + self.per_sequence_ms * len(context_tokens)
            + self.prefill_ms_per_token * prefill_tokens
        )
        stretch = (1 - self.clock_bound_fraction) + self.clock_bound_fraction * (
            max_clock_mhz / clock_mhz
        )
        return at_max_clock_ms * stretch / 1000.0


@dataclass(frozen=True)
class StepResult:
    """What one iteration did. Tokens are emitted at `started_s + duration_s`."""

    started_s: float
    duration_s: float
    clock_mhz: int
    batch_size: int
    emitted: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()

    @property
    def ended_s(self) -> float:
        return self.started_s + self.duration_s


@dataclass
class Engine:
    gpu: SimulatedGpu
    timing: IterationTiming = field(default_factory=SimpleTiming)
    max_batch_size: int = 64
    iterations: int = 0
    _waiting: deque[Sequence] = field(default_factory=deque)
    _running: dict[str, Sequence] = field(default_factory=dict)

    def submit(self, sequence: Sequence) -> None:
        if sequence.output_tokens < 1:
            raise ValueError("a sequence must generate at least one token")
        self._waiting.append(sequence)

    def cancel(self, request_id: str) -> None:
        self._running.pop(request_id, None)
        self._waiting = deque(s for s in self._waiting if s.request_id != request_id)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def step(self, now_s: float) -> StepResult:
        """Run one iteration starting at `now_s`; an idle engine returns an empty result."""
        clock_mhz = self.gpu.clock_mhz(now_s)
        if not self.has_work:
            self.gpu.run(now_s, utilization=0.0)
            return StepResult(started_s=now_s, duration_s=0.0, clock_mhz=clock_mhz, batch_size=0)
        prefill_tokens = self._schedule_waiting()
        batch = list(self._running.values())
        duration_s = self.timing.iteration_s(
            [s.context_tokens for s in batch],
            prefill_tokens,
            clock_mhz,
            self.gpu.spec.max_clock_mhz,
        )
        self.gpu.run(now_s, utilization=0.0)
        self.gpu.run(now_s + duration_s, utilization=1.0)
        finished = []
        for sequence in batch:
            sequence.generated_tokens += 1
            if sequence.generated_tokens >= sequence.output_tokens:
                finished.append(sequence.request_id)
                del self._running[sequence.request_id]
        self.iterations += 1
        return StepResult(
            started_s=now_s,
            duration_s=duration_s,
            clock_mhz=clock_mhz,
            batch_size=len(batch),
            emitted=tuple(s.request_id for s in batch),
            finished=tuple(finished),
        )

    def _schedule_waiting(self) -> int:
        prefill_tokens = 0
        while self._waiting and len(self._running) < self.max_batch_size:
            sequence = self._waiting.popleft()
            self._running[sequence.request_id] = sequence
            prefill_tokens += sequence.prompt_tokens
        return prefill_tokens

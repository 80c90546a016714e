"""The engine twin: TensorRT-LLM's in-flight batching, one iteration at a time.

Each iteration first lets the running requests grow by one token (pausing the newest
ones under `max_utilization` if the KV cache runs out), then schedules waiting requests
into free batch slots in arrival order, their prefill running in the same iteration as
the others' decode. Every scheduled request emits one token; those that reach their true
output length leave. `step()` never sleeps: the caller owns time.

Bookkeeping is O(1) per iteration however large the batch: a request's context grows by
one token per iteration, so the iteration at which it finishes and those at which it
needs a new KV block are known when it is scheduled.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from simulator.gpu import SimulatedGpu
from simulator.physics import IterationCost, IterationModel, PowerModel
from simulator.profile import EngineProfile

POLICIES = ("guaranteed_no_evict", "max_utilization")


class RequestRejectedError(ValueError):
    """The engine cannot take this request; the message says why."""


@dataclass
class EngineRequest:
    """One request inside the engine. `output_tokens` is the true length, known only here."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    output_tokens: int
    generated_tokens: int = 0
    # Set while running: the iteration it was scheduled at and its context then.
    start_iteration: int = -1
    start_context_tokens: int = 0
    start_generated_tokens: int = 0

    def generated_after(self, completed_iterations: int) -> int:
        return self.start_generated_tokens + completed_iterations - self.start_iteration

    def context_after(self, completed_iterations: int) -> int:
        return self.prompt_tokens + self.generated_after(completed_iterations)


@dataclass(frozen=True)
class StepResult:
    """What one iteration did. Its tokens are emitted at `started_s + duration_s`."""

    started_s: float
    duration_s: float
    clock_mhz: int
    batch_size: int = 0
    prefill_requests: int = 0
    prefill_tokens: int = 0
    kv_blocks: int = 0  # in use during the iteration, its finishers' included
    emitted: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()
    paused: tuple[str, ...] = ()
    # The context each request scheduled in it prefilled: the last `prefill_requests` of
    # `emitted`, in order (a paused request resumes with its prompt and tokens so far).
    prefilled_tokens: tuple[int, ...] = ()

    @property
    def ended_s(self) -> float:
        return self.started_s + self.duration_s


@dataclass
class Engine:
    profile: EngineProfile
    seed: int = 0
    policy: str = ""
    gpus: list[SimulatedGpu] = field(default_factory=list)
    started_s: float = 0.0  # when its GPUs were taken: their energy counts from then
    iterations: int = 0
    kv_used_blocks: int = 0
    last_step: StepResult | None = None
    _waiting: deque[EngineRequest] = field(default_factory=deque)
    _running: dict[str, EngineRequest] = field(default_factory=dict)
    _reserved_blocks: int = 0
    _context_tokens: int = 0
    _block_crossings: list[int] = field(default_factory=list)
    _finishing: defaultdict[int, list[str]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        self.policy = self.policy or self.profile.scheduler_policy
        if self.policy not in POLICIES:
            raise ValueError(f"unknown scheduler policy {self.policy!r}; use one of {POLICIES}")
        power = PowerModel(self.profile)
        if not self.gpus:
            self.gpus = [
                SimulatedGpu(self.profile.gpu, power, self.started_s)
                for _ in range(self.profile.tensor_parallel)
            ]
        self._model = IterationModel(self.profile)
        self._tokens_per_block = self.profile.tokens_per_block
        self._block_crossings = [0] * self._tokens_per_block
        self.kv_capacity_blocks = self.profile.kv_capacity_blocks
        self._noise = _Noise(self.profile.iteration_noise, self.seed)

    # -- requests -----------------------------------------------------------------

    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise RequestRejectedError if a request of this shape can never be served."""
        window = self.profile.model.context_window_tokens
        if max_tokens < 1:
            raise RequestRejectedError(f"max_tokens must be at least 1, got {max_tokens}")
        if prompt_tokens < 1:
            raise RequestRejectedError("the prompt must have at least one token")
        if prompt_tokens + max_tokens > window:
            raise RequestRejectedError(
                f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"context window of {self.profile.model.name} ({window} tokens)"
            )
        if self._blocks(prompt_tokens + max_tokens) > self.kv_capacity_blocks:
            raise RequestRejectedError(
                f"the request needs more KV cache than the engine has "
                f"({self.kv_capacity_blocks} blocks of {self._tokens_per_block} tokens)"
            )

    def submit(self, sequence: EngineRequest) -> None:
        self.check(sequence.prompt_tokens, sequence.max_tokens)
        if not 1 <= sequence.output_tokens <= sequence.max_tokens:
            raise RequestRejectedError("output_tokens must lie in 1..max_tokens")
        self._waiting.append(sequence)

    def cancel(self, request_id: str) -> None:
        if request_id in self._running:
            self._release(self._running.pop(request_id))
        else:
            self._waiting = deque(s for s in self._waiting if s.request_id != request_id)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    def running_sequences(self) -> list[EngineRequest]:
        """The requests in the batch, in the order they were scheduled."""
        return list(self._running.values())

    def waiting_sequences(self) -> list[EngineRequest]:
        """The requests waiting for a slot, the next to start first."""
        return list(self._waiting)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def clock_mhz(self, now_s: float) -> int:
        """The slowest GPU of the instance paces every iteration."""
        return min(gpu.clock_mhz(now_s) for gpu in self.gpus)

    # -- iterations ---------------------------------------------------------------

    def step(self, now_s: float) -> StepResult:
        """Run one iteration starting at `now_s`; an idle engine returns an empty result."""
        clock_mhz = self.clock_mhz(now_s)
        if not self.has_work:
            for gpu in self.gpus:
                gpu.idle_until(now_s)
            return StepResult(started_s=now_s, duration_s=0.0, clock_mhz=clock_mhz)
        for gpu in self.gpus:
            gpu.idle_until(now_s)
        iteration = self.iterations
        decode_sequences = len(self._running)
        decode_context_tokens = self._context_tokens
        self.kv_used_blocks += self._block_crossings[iteration % self._tokens_per_block]
        paused = self._pause_until_cache_fits() if self.policy == "max_utilization" else ()
        if paused:
            decode_sequences = len(self._running)
            decode_context_tokens = self._context_tokens
        prefilled = self._schedule(iteration)
        prefill_tokens = sum(prefilled)
        prefill_square = sum(context * context for context in prefilled)
        scheduled = len(prefilled)
        cost = self._model.cost(
            decode_sequences, decode_context_tokens, prefill_tokens, prefill_square, clock_mhz
        )
        capped = self._power_limited()
        if capped:
            clock_mhz, cost = self._under_cap(clock_mhz, cost, decode_sequences,
                                              decode_context_tokens, prefill_tokens,
                                              prefill_square)  # fmt: skip
        noise = self._noise.next()
        duration_s = cost.duration_s * noise
        switch = self._switch_landing(now_s, now_s + duration_s)
        if switch is not None:  # the rest of the iteration's work runs at the new clock
            landed_s, new_clock_mhz = switch
            done = (landed_s - now_s) / duration_s
            rest = self._model.cost(decode_sequences, decode_context_tokens, prefill_tokens,
                                    prefill_square, new_clock_mhz)  # fmt: skip
            if capped:
                _, rest = self._under_cap(new_clock_mhz, rest, decode_sequences,
                                          decode_context_tokens, prefill_tokens,
                                          prefill_square)  # fmt: skip
            duration_s = landed_s - now_s + (1 - done) * rest.duration_s * noise
        for gpu in self.gpus:
            gpu.busy_until(now_s + duration_s, cost.sm_share)
        emitted = tuple(self._running)
        kv_blocks = self.kv_used_blocks
        self._context_tokens += len(emitted)
        self.iterations += 1
        finished = self._finish(iteration)
        result = StepResult(
            started_s=now_s,
            duration_s=duration_s,
            clock_mhz=clock_mhz,
            batch_size=len(emitted),
            prefill_requests=scheduled,
            prefill_tokens=prefill_tokens,
            kv_blocks=kv_blocks,
            emitted=emitted,
            finished=finished,
            paused=paused,
            prefilled_tokens=prefilled,
        )
        self.last_step = result
        return result

    def _power_limited(self) -> bool:
        """Whether any GPU has a power limit: the one check an uncapped iteration pays."""
        for gpu in self.gpus:  # noqa: SIM110 (a plain loop costs half of any() with a generator)
            if gpu.power_limit_w is not None:
                return True
        return False

    def _under_cap(
        self, clock_mhz: int, cost: IterationCost, *work: int
    ) -> tuple[int, IterationCost]:
        """The clock and cost of an iteration under the GPUs' power limits: the highest
        clock whose power at the iteration's own activity fits. A lower clock raises the
        SM share (SM work stretches as 1/f), so the search repeats until it settles."""
        for _ in range(8):
            capped_mhz = min(gpu.clock_under_cap(clock_mhz, cost.sm_share) for gpu in self.gpus)
            if capped_mhz >= clock_mhz:
                break
            clock_mhz, cost = capped_mhz, self._model.cost(*work, capped_mhz)
        return clock_mhz, cost

    def _switch_landing(self, start_s: float, end_s: float) -> tuple[float, int] | None:
        """A clock switch that lands inside an iteration: when, and the instance's clock
        after it (the slowest GPU's). A GPU changes its clock between kernels, not between
        iterations, so an iteration speeds up or slows down from that instant."""
        pending = [gpu.pending_switch(start_s) for gpu in self.gpus]
        landings = [switch[0] for switch in pending if switch is not None]
        if not landings or max(landings) >= end_s:
            return None
        after = [switch[1] if switch is not None else gpu.clock_mhz(start_s)
                 for gpu, switch in zip(self.gpus, pending, strict=True)]  # fmt: skip
        return max(landings), min(after)

    def _schedule(self, iteration: int) -> tuple[int, ...]:
        """Start what fits; the context each started request prefills, in order."""
        prefilled: list[int] = []
        while self._waiting and len(self._running) < self.profile.max_batch_size:
            sequence = self._waiting[0]
            context = sequence.prompt_tokens + sequence.generated_tokens
            needed_now = self._blocks(context + 1)
            if self.policy == "guaranteed_no_evict":
                reserve = self._blocks(sequence.prompt_tokens + sequence.max_tokens)
                if self._reserved_blocks + reserve > self.kv_capacity_blocks:
                    break
            elif self.kv_used_blocks + needed_now > self.kv_capacity_blocks:
                break
            self._waiting.popleft()
            self._start(sequence, iteration, context, needed_now)
            prefilled.append(context)
        return tuple(prefilled)

    def _start(self, sequence: EngineRequest, iteration: int, context: int, blocks: int) -> None:
        sequence.start_iteration = iteration
        sequence.start_context_tokens = context
        sequence.start_generated_tokens = sequence.generated_tokens
        self._running[sequence.request_id] = sequence
        self._context_tokens += context
        self.kv_used_blocks += blocks
        self._reserved_blocks += self._reservation(sequence)
        self._block_crossings[self._crossing_key(sequence)] += 1
        remaining = sequence.output_tokens - sequence.generated_tokens
        self._finishing[iteration + remaining - 1].append(sequence.request_id)

    def _finish(self, iteration: int) -> tuple[str, ...]:
        finished = []
        for request_id in self._finishing.pop(iteration, ()):
            sequence = self._running.get(request_id)
            if (
                sequence is None
                or sequence.generated_after(self.iterations) != sequence.output_tokens
            ):
                continue  # cancelled, or paused and rescheduled since
            del self._running[request_id]
            self._release(sequence)
            finished.append(request_id)
        return tuple(finished)

    def _pause_until_cache_fits(self) -> tuple[str, ...]:
        """max_utilization: evict the newest requests until this iteration's growth fits."""
        paused: list[str] = []
        while self.kv_used_blocks > self.kv_capacity_blocks and len(self._running) > 1:
            request_id = next(reversed(self._running))
            sequence = self._running.pop(request_id)
            growing = self._crossing_key(sequence) == self.iterations % self._tokens_per_block
            self._release(sequence)
            if growing:
                self.kv_used_blocks -= 1  # its new block of this iteration was counted above
            self._waiting.appendleft(sequence)
            paused.append(request_id)
        return tuple(paused)

    def _release(self, sequence: EngineRequest) -> None:
        """Take a running sequence's tokens and blocks off the books."""
        sequence.generated_tokens = sequence.generated_after(self.iterations)
        context = sequence.prompt_tokens + sequence.generated_tokens
        self._context_tokens -= context
        self.kv_used_blocks -= self._blocks(context)
        self._reserved_blocks -= self._reservation(sequence)
        self._block_crossings[self._crossing_key(sequence)] -= 1
        sequence.start_iteration = -1

    def _crossing_key(self, sequence: EngineRequest) -> int:
        """Iterations i with i % tokens_per_block == key are those in which this sequence's
        context reaches a block boundary and its next token needs a new block."""
        return (sequence.start_iteration - sequence.start_context_tokens) % self._tokens_per_block

    def _reservation(self, sequence: EngineRequest) -> int:
        if self.policy != "guaranteed_no_evict":
            return 0
        return self._blocks(sequence.prompt_tokens + sequence.max_tokens)

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self._tokens_per_block)


class _Noise:
    """Seeded multiplicative log-normal noise, drawn in blocks (one numpy call per 4,096)."""

    def __init__(self, sigma: float, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._sigma = sigma
        self._values: list[float] = []

    def next(self) -> float:
        if self._sigma == 0:
            return 1.0
        if not self._values:
            self._values = np.exp(self._rng.normal(0.0, self._sigma, 4096)).tolist()
        return self._values.pop()

"""The board: every request the engine holds or will hold, as arrays.

Running requests are in the batch now, in the order the engine scheduled them; queued
ones wait for a slot, in order. Times are absolute seconds on whatever clock the caller
uses (wall or virtual); `now_s` is when the next iteration starts. SLOs are per request:
time to first token (TTFT), time between tokens (TBT), and an end-to-end deadline. Each
request also carries the `max_tokens` the engine was sent, which sets what TensorRT-LLM's
`guaranteed_no_evict` scheduler reserves for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from predictor.arrays import FloatArray, IntArray


def _floats(values: npt.ArrayLike = ()) -> FloatArray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _ints(values: npt.ArrayLike = ()) -> IntArray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


class SchedulerPolicy(enum.StrEnum):
    """TensorRT-LLM's batch schedulers (its `batch_scheduler_policy`)."""

    GUARANTEED_NO_EVICT = "guaranteed_no_evict"  # start only what its reservation fits
    MAX_UTILIZATION = "max_utilization"  # start what fits now; pause the newest on overflow


@dataclass(frozen=True)
class Requests:
    """Columns over requests; running and queued boards use the same shape. Without
    `max_tokens`, a request asks for no more than it is believed to produce."""

    arrival_s: FloatArray = field(default_factory=_floats)
    prompt_tokens: IntArray = field(default_factory=_ints)
    generated_tokens: IntArray = field(default_factory=_ints)
    remaining_tokens: IntArray = field(default_factory=_ints)  # predicted, >= 1
    ttft_slo_s: FloatArray = field(default_factory=_floats)
    tbt_slo_s: FloatArray = field(default_factory=_floats)
    e2e_deadline_s: FloatArray = field(default_factory=_floats)  # absolute
    max_tokens: IntArray = field(default_factory=_ints)  # the engine's limit, >= generated
    # The first iteration it may start in: 0 for a request that has arrived; later for
    # one expected to arrive.
    earliest_start: IntArray = field(default_factory=_ints)
    # Its rest at the planning quantile of its length: the batch is projected on the
    # expected rest, and its own promises are checked as if it ran this long (or the
    # expected rest, if longer), so that a long answer's deadline is safe with the
    # planned probability.
    remaining_at_risk_tokens: IntArray = field(default_factory=_ints)

    def __post_init__(self) -> None:
        if len(self.max_tokens) == 0 and len(self.arrival_s):
            believed = self.generated_tokens + self.remaining_tokens
            object.__setattr__(self, "max_tokens", believed.astype(np.int64))
        if len(self.earliest_start) == 0 and len(self.arrival_s):
            object.__setattr__(self, "earliest_start", np.zeros(len(self), dtype=np.int64))
        if len(self.remaining_at_risk_tokens) == 0 and len(self.arrival_s):
            object.__setattr__(self, "remaining_at_risk_tokens", self.remaining_tokens.copy())

    def __len__(self) -> int:
        return len(self.arrival_s)

    @classmethod
    def of(
        cls,
        *,
        arrival_s: npt.ArrayLike = (),
        prompt_tokens: npt.ArrayLike = (),
        generated_tokens: npt.ArrayLike = (),
        remaining_tokens: npt.ArrayLike = (),
        ttft_slo_s: npt.ArrayLike = (),
        tbt_slo_s: npt.ArrayLike = (),
        e2e_deadline_s: npt.ArrayLike = (),
        max_tokens: npt.ArrayLike = (),
        earliest_start: npt.ArrayLike = (),
        remaining_at_risk_tokens: npt.ArrayLike = (),
    ) -> Requests:
        """Requests from any array-likes (lists, scalars), as float64 and int64 columns."""
        return cls(
            arrival_s=_floats(arrival_s),
            prompt_tokens=_ints(prompt_tokens),
            generated_tokens=_ints(generated_tokens),
            remaining_tokens=_ints(remaining_tokens),
            ttft_slo_s=_floats(ttft_slo_s),
            tbt_slo_s=_floats(tbt_slo_s),
            e2e_deadline_s=_floats(e2e_deadline_s),
            max_tokens=_ints(max_tokens),
            earliest_start=_ints(earliest_start),
            remaining_at_risk_tokens=_ints(remaining_at_risk_tokens),
        )

    def append(self, other: Requests) -> Requests:
        return Requests(
            **{
                name: np.concatenate([getattr(self, name), getattr(other, name)])
                for name in self.__dataclass_fields__
            }
        )

    @property
    def context_tokens(self) -> IntArray:
        return self.prompt_tokens + self.generated_tokens

    def reserved_blocks(self, tokens_per_block: int) -> IntArray:
        """What `guaranteed_no_evict` reserves for each: its prompt plus `max_tokens`."""
        return -(-(self.prompt_tokens + self.max_tokens) // tokens_per_block)


@dataclass(frozen=True)
class Board:
    now_s: float
    running: Requests
    queued: Requests
    max_batch: int
    kv_capacity_blocks: int
    tokens_per_block: int = 64
    scheduler_policy: SchedulerPolicy = SchedulerPolicy.GUARANTEED_NO_EVICT
    # The last `expected_rows` queued rows are arrivals expected, not yet real: each is
    # planned to be served from its arrival on at the highest clock (the governor raises
    # the clock when it comes), so the clock now needs only to keep that possible.
    expected_rows: int = 0

    def with_queued(self, request: Requests) -> Board:
        """The board with `request` queued behind everyone else."""
        if self.expected_rows:
            raise ValueError("a real request cannot queue behind expected ones")
        return replace(self, queued=self.queued.append(request))

    def with_expected(self, expected: Requests) -> Board:
        """The board with the arrivals `expected` queued behind everyone else."""
        return replace(self, queued=self.queued.append(expected),
                       expected_rows=self.expected_rows + len(expected))  # fmt: skip

    @property
    def size(self) -> int:
        return len(self.running) + len(self.queued)

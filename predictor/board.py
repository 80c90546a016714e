"""The board: every request the engine holds or will hold, as arrays.

Running requests are in the batch now; queued ones wait for a slot, in order. Times are
absolute seconds on whatever clock the caller uses (wall or virtual); `now_s` is when
the next iteration starts. SLOs are per request: time to first token (TTFT), time
between tokens (TBT), and an end-to-end deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from predictor.arrays import FloatArray, IntArray


def _floats(values: npt.ArrayLike = ()) -> FloatArray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _ints(values: npt.ArrayLike = ()) -> IntArray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class Requests:
    """Columns over requests; running and queued boards use the same shape."""

    arrival_s: FloatArray = field(default_factory=_floats)
    prompt_tokens: IntArray = field(default_factory=_ints)
    generated_tokens: IntArray = field(default_factory=_ints)
    remaining_tokens: IntArray = field(default_factory=_ints)  # predicted, >= 1
    ttft_slo_s: FloatArray = field(default_factory=_floats)
    tbt_slo_s: FloatArray = field(default_factory=_floats)
    e2e_deadline_s: FloatArray = field(default_factory=_floats)  # absolute

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


@dataclass(frozen=True)
class Board:
    now_s: float
    running: Requests
    queued: Requests
    max_batch: int
    kv_capacity_blocks: int
    tokens_per_block: int = 64

    def with_queued(self, request: Requests) -> Board:
        """The board with `request` queued behind everyone else."""
        return replace(self, queued=self.queued.append(request))

    @property
    def size(self) -> int:
        return len(self.running) + len(self.queued)

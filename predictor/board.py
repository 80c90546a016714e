"""The board: every request the engine holds or will hold, as arrays.

Running requests are in the batch now; queued ones wait for a slot, in order. Times are
absolute seconds on whatever clock the caller uses (wall or virtual); `now_s` is when
the next iteration starts. SLOs are per request: time to first token (TTFT), time
between tokens (TBT), and an end-to-end deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


def _floats(values: object = ()) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _ints(values: object = ()) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class Requests:
    """Columns over requests; running and queued boards use the same shape."""

    arrival_s: np.ndarray = field(default_factory=_floats)
    prompt_tokens: np.ndarray = field(default_factory=_ints)
    generated_tokens: np.ndarray = field(default_factory=_ints)
    remaining_tokens: np.ndarray = field(default_factory=_ints)  # predicted, >= 1
    ttft_slo_s: np.ndarray = field(default_factory=_floats)
    tbt_slo_s: np.ndarray = field(default_factory=_floats)
    e2e_deadline_s: np.ndarray = field(default_factory=_floats)  # absolute

    def __len__(self) -> int:
        return len(self.arrival_s)

    @classmethod
    def of(cls, **columns: object) -> Requests:
        floats = {"arrival_s", "ttft_slo_s", "tbt_slo_s", "e2e_deadline_s"}
        return cls(**{k: (_floats(v) if k in floats else _ints(v)) for k, v in columns.items()})

    def append(self, other: Requests) -> Requests:
        return Requests(
            **{
                name: np.concatenate([getattr(self, name), getattr(other, name)])
                for name in self.__dataclass_fields__
            }
        )

    @property
    def context_tokens(self) -> np.ndarray:
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

"""The policies a replay compares: how the clock is chosen, and whether admission gates.

- `max`: Triton's default. Highest clock, every request straight into the engine.
- `static:<MHz>`: one fixed clock, no gating. `static-best` is the lowest fixed clock
  that keeps the SLOs on this trace, found by a sweep (report.py).
- `reactive`: a utilization-driven DVFS governor, the Linux `ondemand` rule over the
  engine's load (the fuller of batch and KV cache): at 80 % or more the highest clock,
  below that a clock in proportion. It reacts to load; it cannot see promises.
- `throttllem`: ours. Admission through the planner, and the lowest clock at which every
  admitted request keeps its promises, on the gateway's predicted lengths.
- `throttllem+scale`: ours, with instance scaling between the engine's sizes (TP1, TP2,
  TP4 of the same model): the smallest that carries the arrival rate (scaling.py).
- `oracle`: ours with the true lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from governor.planner import lowest_frequency
from governor.policy import at_or_above
from predictor.board import Board

ONDEMAND_UP_THRESHOLD = 0.8

POLICY_NAMES = (
    "max", "static:<MHz>", "static-best", "reactive", "throttllem", "throttllem+scale", "oracle",
)  # fmt: skip


@dataclass(frozen=True)
class EngineLoad:
    """What a load-driven governor can see of the engine."""

    batch: int
    max_batch: int
    kv_used_blocks: int
    kv_capacity_blocks: int

    @property
    def utilization(self) -> float:
        return max(self.batch / self.max_batch, self.kv_used_blocks / self.kv_capacity_blocks)


@dataclass(frozen=True)
class Policy:
    name: str
    gated: bool = False  # admission through the planner
    fixed_clock_mhz: int | None = None  # static
    reactive: bool = False
    true_lengths: bool = False  # oracle: the planner sees the engine's true lengths
    scaling: bool = False  # throttllem+scale: instance scaling between engine sizes
    margin: float = 0.2  # planned clocks keep this share of every budget to spare (settings)

    def clock_mhz(
        self,
        clocks_mhz: Sequence[int],
        load: EngineLoad,
        board: Board | None,
        model: object,
        previous_mhz: int | None = None,
    ) -> int:
        """The clock for the next window. `board` is the planner's view (gated policies);
        `previous_mhz`, the clock chosen last, only speeds the planner's search up."""
        highest = max(clocks_mhz)
        if self.fixed_clock_mhz is not None:
            return self.fixed_clock_mhz
        if self.reactive:
            if load.utilization >= ONDEMAND_UP_THRESHOLD:
                return highest
            return at_or_above(
                round(highest * load.utilization / ONDEMAND_UP_THRESHOLD), clocks_mhz
            )
        if not self.gated:
            return highest
        if board is None or board.size == 0:
            return highest  # ready for the next arrival's prefill (governor/policy.py)
        # As the live governor (governor/policy.py): lost promises are renegotiated.
        near = None
        if previous_mhz is not None:
            near = int(np.searchsorted(model.clocks_mhz, previous_mhz))  # type: ignore[attr-defined]
        decision = lowest_frequency(board, model, margin=self.margin, near_index=near)  # type: ignore[arg-type]
        return at_or_above(decision.clock_mhz, clocks_mhz)


def parse_policy(name: str, clocks_mhz: Sequence[int]) -> Policy:
    if name == "max":
        return Policy("max")
    if name == "reactive":
        return Policy("reactive", reactive=True)
    if name == "throttllem":
        return Policy("throttllem", gated=True)
    if name == "throttllem+scale":
        return Policy("throttllem+scale", gated=True, scaling=True)
    if name == "oracle":
        return Policy("oracle", gated=True, true_lengths=True)
    if name.startswith("static:"):
        try:
            clock_mhz = int(name.removeprefix("static:"))
        except ValueError:
            clock_mhz = -1
        if clock_mhz not in clocks_mhz:
            raise ValueError(f"{name}: not a supported clock ({min(clocks_mhz)}-{max(clocks_mhz)} "
                             "MHz in the GPU's steps)")  # fmt: skip
        return Policy(name, fixed_clock_mhz=clock_mhz)
    raise ValueError(f"unknown policy {name!r}; use {', '.join(POLICY_NAMES)}")

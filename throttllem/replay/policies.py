"""The policies a replay compares: how the clock is chosen, and whether admission gates.

- `max`: Triton's default. Highest clock, every request straight into the engine.
- `max-largest`: `max` on the engine's largest size (TP4 of Llama-2-13B on A100s): the
  paper's baseline for instance scaling, which is what a deployment without scaling
  provisions for its peak.
- `static:<MHz>`: one fixed clock, no gating. `static-best` is the lowest fixed clock
  that keeps the SLOs on this trace, found by a sweep (report.py).
- `reactive`: a utilization-driven DVFS governor, the Linux `ondemand` rule over the
  engine's load (the fuller of batch and KV cache): at 80 % or more the highest clock,
  below that a clock in proportion. It reacts to load; it cannot see promises.
- `slo-feedback`: the rule of VoltanaLLM and GreenLLM (2025). Every window, the lowest
  clock at which the performance model's iteration time for the engine's current batch
  and KV cache meets the TPOT SLO (keeping the same margin as ours), and the highest clock
  while any request waits in the engine for its first token. No admission gate, no
  length prediction: it sees the present, not the requests' futures.
- `power-cap:<W>`: NVIDIA Dynamo's Power Planner sets per-GPU power limits instead of
  clocks; under the cap the GPU runs at the highest clock whose power at the iteration's
  activity stays under it (the twin's GPU). `power-cap-best` is the lowest cap within
  1 pp of max's attainment, found by a sweep (report.py).
- `throttllem`: ours. Admission through the planner, and the lowest clock at which every
  admitted request keeps its promises, on the gateway's predicted lengths.
- `throttllem+scale`: ours, with instance scaling between the engine's sizes (TP1, TP2,
  TP4 of the same model): the smallest that carries the arrival rate (scaling.py).
- `oracle`: ours with the true lengths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from predictor.board import Board
from slo_planner.clock import ClockPlanner, at_or_above, lowest_clock_for_iteration
from slo_planner.feasibility import IterationTimes
from slo_planner.settings import PlannerSettings

ONDEMAND_UP_THRESHOLD = 0.8
DEFAULT_MARGIN = PlannerSettings().governor_margin  # what a deployment plans with
DEFAULT_ARRIVAL_HORIZON_S = PlannerSettings().governor_arrival_horizon_s
DEFAULT_ARRIVAL_QUANTILE = PlannerSettings().governor_arrival_quantile

POLICY_NAMES = (
    "max", "max-largest", "static:<MHz>", "static-best", "reactive", "slo-feedback", "power-cap:<W>",
    "power-cap-best", "throttllem", "throttllem+scale", "oracle",
)  # fmt: skip


@dataclass(frozen=True)
class EngineLoad:
    """What a load-driven governor can see of the engine."""

    batch: int
    max_batch: int
    kv_used_blocks: int
    kv_capacity_blocks: int
    waiting: int = 0  # in the engine's queue, before their first token

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
    largest_size: bool = False  # max-largest: runs on the largest of the engine's sizes
    slo_feedback: bool = False  # the lowest clock meeting TPOT now, highest while any wait
    power_cap_w: float | None = None  # a power limit on every GPU, clocks left at default
    margin: float = DEFAULT_MARGIN  # planned clocks keep this share of every budget to spare
    arrival_horizon_s: float = DEFAULT_ARRIVAL_HORIZON_S  # expected arrivals planned for
    arrival_quantile: float = DEFAULT_ARRIVAL_QUANTILE

    @property
    def needs_sizes(self) -> bool:
        """Whether the replay must know the engine's sizes (scaling.ScaleSetup)."""
        return self.scaling or self.largest_size

    def clock_planner(self, model: IterationTimes | None) -> ClockPlanner | None:
        """The live governor's planner, for the gated policies."""
        if not self.gated or model is None:
            return None
        planning = PlannerSettings(governor_margin=self.margin,
                                   governor_arrival_horizon_s=self.arrival_horizon_s,
                                   governor_arrival_quantile=self.arrival_quantile)  # fmt: skip
        return ClockPlanner(model, self.margin, arrivals=planning.arrival_model())

    def clock_mhz(
        self,
        clocks_mhz: Sequence[int],
        load: EngineLoad,
        board: Board | None,
        planner: ClockPlanner | None,
        model: IterationTimes | None,
        tbt_slo_s: float = math.inf,
    ) -> int:
        """The clock for the next window. `board` is the planner's view and `planner` the
        live governor's (gated policies); `model` and `tbt_slo_s`, the TPOT SLO, are what
        `slo-feedback` holds the iteration time to."""
        highest = max(clocks_mhz)
        if self.fixed_clock_mhz is not None:
            return self.fixed_clock_mhz
        if self.slo_feedback:
            if load.waiting or load.batch == 0 or model is None:
                return highest
            budget_s = (1 - self.margin) * tbt_slo_s
            model_mhz = lowest_clock_for_iteration(model, load.batch, load.kv_used_blocks,
                                                   budget_s)  # fmt: skip
            return at_or_above(model_mhz, clocks_mhz)
        if self.reactive:
            if load.utilization >= ONDEMAND_UP_THRESHOLD:
                return highest
            return at_or_above(
                round(highest * load.utilization / ONDEMAND_UP_THRESHOLD), clocks_mhz
            )
        if planner is None or board is None:
            return highest
        return planner.choose(
            board, clocks_mhz
        ).clock_mhz  # as the live governor (governor/policy.py)


def parse_policy(
    name: str, clocks_mhz: Sequence[int], power_limits_w: tuple[float, float] | None = None
) -> Policy:
    """`power_limits_w`: the GPU's (min, max) power limit, which `power-cap:<W>` must keep."""
    if name == "max":
        return Policy("max")
    if name == "max-largest":
        return Policy("max-largest", largest_size=True)
    if name == "slo-feedback":
        return Policy("slo-feedback", slo_feedback=True)
    if name.startswith("power-cap:"):
        try:
            cap_w = float(name.removeprefix("power-cap:"))
        except ValueError:
            cap_w = math.nan
        low_w, high_w = power_limits_w if power_limits_w is not None else (0.0, math.inf)
        if not low_w <= cap_w <= high_w:
            raise ValueError(f"{name}: not a power limit the GPU accepts ({low_w:.0f}-"
                             f"{high_w:.0f} W)")  # fmt: skip
        return Policy(name, power_cap_w=cap_w)
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

"""The planner's settings: the engine it plans for, and how much it keeps to spare (part
of `THROTTLLEM_*`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from predictor.board import SchedulerPolicy
from slo_planner.admission import EngineShape
from slo_planner.arrivals import ArrivalModel
from slo_planner.length_risk import ConformalLevel


class PlannerSettings(BaseModel):
    engine_max_batch: int = Field(
        256, ge=1, description="The engine's largest batch (TensorRT-LLM max_batch_size)."
    )
    engine_kv_capacity_blocks: int = Field(
        100_000, ge=1, description="KV-cache blocks the engine has (its paged KV pool)."
    )
    engine_tokens_per_block: int = Field(
        64, ge=1, description="Tokens per KV-cache block (TensorRT-LLM tokens_per_block)."
    )
    engine_scheduler_policy: SchedulerPolicy = Field(
        SchedulerPolicy.GUARANTEED_NO_EVICT,
        description="The engine's batch scheduler (TensorRT-LLM batch_scheduler_policy), "
        "which the planner's projection reproduces: guaranteed_no_evict starts a request "
        "only when its prompt plus max_tokens fits the cache beside the others' "
        "reservations; max_utilization starts what fits now and pauses the newest when "
        "the cache runs out.",
    )
    governor_margin: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of every promise's budget the planned clock keeps to spare, so "
        "that the next arrival still fits at the highest clock (admission uses the exact "
        "promises).",
    )
    governor_arrival_horizon_s: float = Field(
        4.0,
        ge=0,
        description="Seconds of expected arrivals the planned clock leaves room for (their "
        "count from the recent arrival rate, their prompts, lengths and promises from the "
        "recent mix); 0 plans on the requests on the board alone.",
    )
    governor_arrival_quantile: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="The planned count of expected arrivals is this quantile of a Poisson "
        "count at the recent rate over the horizon: near capacity, bursts, not the mean, "
        "are what make first tokens wait.",
    )
    governor_length_quantile: float = Field(
        0.9,
        ge=0.5,
        lt=1,
        description="Each request's own promises are planned on this quantile of its "
        "remaining length (the batch on the median), the level calibrated online from the "
        "requests that finish (adaptive conformal inference) so that this share of answers "
        "really ends within it; 0.5 plans on the median.",
    )
    prefill_us_per_token: float = Field(
        0.0,
        ge=0,
        description="Microseconds a prompt token adds to its iteration at the highest clock "
        "(the decode profile leaves prefill out); `throttllem run` measures the twin's.",
    )
    prefill_ns_per_square_token: float = Field(
        0.0,
        ge=0,
        description="Nanoseconds a prompt's attention adds to its iteration at the highest "
        "clock per square of its length (each token attends to those before it); "
        "`throttllem run` measures the twin's.",
    )

    def arrival_model(self) -> ArrivalModel | None:
        """The expected arrivals the planned clock leaves room for; None: none."""
        if self.governor_arrival_horizon_s <= 0:
            return None
        return ArrivalModel(self.governor_arrival_horizon_s, self.governor_arrival_quantile)

    def length_risk(self) -> ConformalLevel | None:
        """The calibrated level the promises are planned at; None: the median."""
        if self.governor_length_quantile <= 0.5:
            return None
        return ConformalLevel(self.governor_length_quantile)

    @property
    def engine_shape(self) -> EngineShape:
        return EngineShape(
            max_batch=self.engine_max_batch,
            kv_capacity_blocks=self.engine_kv_capacity_blocks,
            tokens_per_block=self.engine_tokens_per_block,
            scheduler_policy=self.engine_scheduler_policy,
        )

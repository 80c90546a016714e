"""The governor's settings: its GPUs, its decision window and guards, instance scaling
(part of `THROTTLLEM_*`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from slo_planner.scaling import EngineSize, parse_engine_sizes


class GpuBackendKind(StrEnum):
    simulated = "simulated"
    nvml = "nvml"
    observe = "observe"
    none = "none"


class GovernorSettings(BaseModel):
    gpu_backend: GpuBackendKind = Field(
        GpuBackendKind.none,
        description="GPU clock backend of the governor: `simulated` (the twin's control "
        "API), `nvml` (real GPUs; `throttllem govern` only), `observe` (NVML, decide but "
        "never change a clock; `throttllem govern` only) or `none` (no governor).",
    )
    gpu_control_url: str = Field(
        "http://127.0.0.1:8013", description="Base URL of the twin's GPU control API."
    )
    gpu_indices: list[int] = Field(
        default_factory=lambda: [0],
        description="GPUs of the tensor-parallel instance; all get the same clock.",
    )
    governor_window_ms: float = Field(
        100.0, gt=0, description="How often the governor re-decides the clock, in ms."
    )
    governor_min_dwell_ms: float = Field(
        500.0,
        ge=0,
        description="Least time between two clock changes when lowering, in ms (raising is "
        "always immediate).",
    )
    gpu_switch_latency_ms: float = Field(
        200.0,
        ge=0,
        description="Time a clock change takes to come into force, in ms; the planner's "
        "timeline starts after it.",
    )
    governor_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port on which `throttllem govern` serves Prometheus metrics (clock, "
        "power, energy, decisions), at `host`; none: no endpoint.",
    )
    autoscale: bool = Field(
        False,
        description="Instance scaling: move traffic between engine sizes by request rate "
        "(Triton only; needs `engine_sizes`).",
    )
    engine_sizes: Annotated[list[EngineSize], NoDecode] = Field(
        default_factory=list,
        description='Engine sizes for instance scaling, JSON: `[{"label": "tp1", '
        '"triton_model": "ensemble-tp1", "capacity_rps": 1.9}, ...]`; capacity_rps is the '
        "profiled requests/s at the highest clock (`throttllem capacity` for the twin).",
    )
    scale_interval_s: float = Field(
        10.0, gt=0, description="How often instance scaling compares the rate with capacity."
    )
    scale_headroom: float = Field(
        0.85, gt=0, le=1, description="Share of an engine's capacity it is loaded to at most."
    )
    scale_grace_s: float = Field(
        60.0, ge=0, description="How long the rate must fit a smaller size before shrinking."
    )
    scale_drain_s: float = Field(
        60.0,
        ge=0,
        description="How long an engine left behind keeps serving its requests before "
        "it is unloaded.",
    )
    energy_attribution: bool = Field(
        True,
        description="Bill every governor window's GPU energy to the requests that ran in "
        "it and tell each answer its share (`usage.energy_j`, `x-energy-j`; "
        "docs/energy.md); off: no metering, no energy fields.",
    )
    energy_idle_power_w: float | None = Field(
        None,
        ge=0,
        description="Idle power of one GPU, W, for the idle share of the attributed "
        "energy; none: the lowest mean power of any governor window seen.",
    )
    energy_prefill_weight: float | None = Field(
        None,
        ge=0,
        description="Work units of one prefilled prompt token, against one generated "
        "token, when splitting energy; none: from the performance model (0 without one).",
    )
    triton_repository_token: str | None = Field(
        None,
        description="Value of the `triton-access-token` header for Triton's repository API "
        "(Triton run with --http-restricted-api=model-repository:...; PyTriton does).",
    )

    @field_validator("engine_sizes", mode="before")
    @classmethod
    def _engine_sizes(cls, value: object) -> object:
        return parse_engine_sizes(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _scaling_needs_sizes(self) -> GovernorSettings:
        if self.autoscale and not self.engine_sizes:
            raise ValueError("THROTTLLEM_AUTOSCALE needs THROTTLLEM_ENGINE_SIZES")
        return self

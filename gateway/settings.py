"""All configuration, one class, read from `THROTTLLEM_*` environment variables.

docs/configuration.md holds `settings_reference()`; a test keeps the two in step.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from governor.scaling import EngineSize, parse_engine_sizes


class BackendKind(str, Enum):
    triton = "triton"
    openai = "openai"  # any OpenAI-compatible server: vLLM, Triton's OpenAI frontend, ...


class GpuBackendKind(str, Enum):
    simulated = "simulated"
    nvml = "nvml"
    observe = "observe"
    none = "none"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THROTTLLEM_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the gateway listens on.")

    backend_kind: BackendKind = Field(
        BackendKind.triton,
        description="Kind of inference server behind the gateway: `triton` (the generate "
        "extension) or `openai` (any OpenAI-compatible server).",
    )
    backend_url: str = Field(
        "http://127.0.0.1:8010",
        description="Base URL of the inference server (Triton HTTP, or the OpenAI-compatible "
        "server's root, without `/v1`).",
    )
    upstream_model: str | None = Field(
        None,
        description="Model name sent to an OpenAI-compatible server; default: `served_model_name`.",
    )
    backend_api_key: str | None = Field(
        None, description="Bearer key the gateway presents to an OpenAI-compatible server."
    )
    triton_model: str = Field(
        "ensemble", description="Triton model the gateway calls (the TensorRT-LLM ensemble)."
    )
    served_model_name: str = Field(
        "llama-2-13b", description="Model name clients use and `/v1/models` lists."
    )
    backend_timeout_s: float = Field(
        600.0, gt=0, description="Longest a single generation may take upstream, in seconds."
    )
    backend_connect_timeout_s: float = Field(
        5.0, gt=0, description="Time allowed to connect to the inference server, in seconds."
    )

    tokenizer_path: Path | None = Field(
        None,
        description="tokenizer.json of the served model; default: the bundled Llama 3 tokenizer.",
    )
    length_model_path: Path | None = Field(
        None,
        description="ONNX output-length model (onnx_models/length-*.onnx); none: no length "
        "predictions, and the governor holds default clocks.",
    )
    performance_model_path: Path | None = Field(
        None,
        description="ONNX performance model (onnx_models/performance-*.onnx); none: the "
        "governor holds default clocks.",
    )
    default_max_tokens: int = Field(
        16, ge=1, description="max_tokens for requests that do not set it (OpenAI's default)."
    )

    context_window_tokens: int = Field(
        4096, ge=1, description="The served model's context: prompt plus max_tokens must fit."
    )
    chat_template_path: Path | None = Field(
        None,
        description="Jinja chat template (Hugging Face style) for /v1/chat/completions; "
        "default: Llama 3's.",
    )

    slo_ttft_ms: float = Field(
        2000.0, gt=0, description="Default time-to-first-token SLO (header `x-slo-ttft-ms`)."
    )
    slo_tpot_ms: float = Field(
        200.0, gt=0, description="Default time-per-output-token SLO (header `x-slo-tpot-ms`)."
    )
    slo_e2e_ms: float | None = Field(
        None,
        gt=0,
        description="Default end-to-end SLO (header `x-slo-e2e-ms`); none: no deadline.",
    )
    max_queue: int = Field(
        256, ge=0, description="Requests that may wait for admission; more get a 429."
    )
    retry_after_s: int = Field(
        1, ge=1, description="`Retry-After` sent with a 429 when the queue is full, in seconds."
    )
    engine_max_batch: int = Field(
        256, ge=1, description="The engine's largest batch (TensorRT-LLM max_batch_size)."
    )
    engine_kv_capacity_blocks: int = Field(
        100_000, ge=1, description="KV-cache blocks the engine has (its paged KV pool)."
    )
    engine_tokens_per_block: int = Field(
        64, ge=1, description="Tokens per KV-cache block (TensorRT-LLM tokens_per_block)."
    )

    redis_url: str | None = Field(
        None,
        description="Redis for the scoreboard shared by workers and the governor "
        "(`redis://host:6379/0`); none: in memory, one worker.",
    )
    instance: str = Field(
        "default",
        description="The engine instance this gateway feeds; its scoreboard's key in Redis.",
    )
    state_entry_ttl_s: float = Field(
        10.0,
        gt=0,
        description="A request's scoreboard entry expires this long after its worker last "
        "refreshed it (a dead worker leaves nothing behind).",
    )

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys clients must present (a JSON list or comma-separated); "
        "empty: no authentication.",
    )
    admin_token: str | None = Field(
        None, description="Bearer token of the `/admin/*` endpoints; none: they are off."
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Largest request body accepted; larger get a 413."
    )
    log_prompts: bool = Field(
        False, description="Log prompts and answers (off: they never reach the logs)."
    )

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
    governor_margin: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of every promise's budget the planned clock keeps to spare, so "
        "that the next arrival still fits at the highest clock (admission uses the exact "
        "promises).",
    )
    prefill_us_per_token: float = Field(
        0.0,
        ge=0,
        description="Microseconds a prompt token adds to its iteration at the highest clock "
        "(the decode profile leaves prefill out); `throttllem run` measures the twin's.",
    )
    governor_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port on which `throttllem govern` serves Prometheus metrics (clock, "
        "power, energy, decisions), at `host`; none: no endpoint.",
    )
    gpu_switch_latency_ms: float = Field(
        200.0,
        ge=0,
        description="Time a clock change takes to come into force, in ms; the planner's "
        "timeline starts after it.",
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
    def _scaling_needs_sizes(self) -> Settings:
        if self.autoscale and not self.engine_sizes:
            raise ValueError("THROTTLLEM_AUTOSCALE needs THROTTLLEM_ENGINE_SIZES")
        if self.autoscale and self.backend_kind is not BackendKind.triton:
            raise ValueError("THROTTLLEM_AUTOSCALE works with the Triton backend only")
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _key_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [key.strip() for key in text.split(",") if key.strip()]
        return value


def settings_reference() -> str:
    """The Markdown table of every setting, as docs/configuration.md shows it."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Enum):
            default = default.value
        shown = "(none)" if default is None else f"`{default}`"
        rows.append(f"| `THROTTLLEM_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_reference(), end="")

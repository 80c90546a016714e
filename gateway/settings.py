"""The gateway's settings: where it listens, the server behind it, the promises it makes
by default, its limits (part of `THROTTLLEM_*`, composed by throttllem/settings.py)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode


class BackendKind(StrEnum):
    triton = "triton"
    openai = "openai"  # any OpenAI-compatible server: vLLM, Triton's OpenAI frontend, ...


class UpstreamClientKind(StrEnum):
    httptools = "httptools"  # gateway/backends/http_client.py
    aiohttp = "aiohttp"


class GatewaySettings(BaseModel):
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
    upstream_client: UpstreamClientKind = Field(
        UpstreamClientKind.httptools,
        description="HTTP client the gateway speaks to the inference server with: "
        "`httptools` (its own, over httptools' parser) or `aiohttp`.",
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

    @field_validator("api_keys", mode="before")
    @classmethod
    def _key_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [key.strip() for key in text.split(",") if key.strip()]
        return value

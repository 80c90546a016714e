"""OpenAI request schemas for the fields the gateway accepts, and the response builders."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationFields(BaseModel):
    """What completions and chat completions share. Unknown fields are refused rather than
    silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    # OpenAI's range (a signed 64-bit integer); the Triton backend maps it onto the
    # engine's unsigned one.
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _n_is_one(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(GenerationFields):
    """`POST /v1/completions`."""

    prompt: str | list[str]
    max_tokens: int | None = Field(None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return prompt

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


FinishReason = Literal["stop", "length"]


def new_completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


# OpenAI's usage object, and with energy attribution on (docs/energy.md) the joules the
# GPUs spent on the answer: `energy_j` in all, `energy_idle_j` of it their idle share,
# and `predicted_energy_j`, what the planner expected when it admitted it.
Usage = dict[str, int | float]
ENERGY_DECIMALS = 4


def usage(
    prompt_tokens: int,
    completion_tokens: int,
    energy_j: float | None = None,
    energy_idle_j: float | None = None,
    predicted_energy_j: float | None = None,
) -> Usage:
    counts: Usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if energy_j is not None and energy_idle_j is not None:
        counts["energy_j"] = round(energy_j, ENERGY_DECIMALS)
        counts["energy_idle_j"] = round(energy_idle_j, ENERGY_DECIMALS)
        if predicted_energy_j is not None:
            counts["predicted_energy_j"] = round(predicted_energy_j, ENERGY_DECIMALS)
    return counts


def completion(
    completion_id: str,
    model: str,
    text: str,
    finish_reason: FinishReason | None,
    usage_counts: Usage | None = None,
    created_s: int | None = None,
) -> dict[str, Any]:
    """One completion object; a stream chunk is the same shape with the delta text."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "text_completion",
        "created": created_s if created_s is not None else int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage_counts is not None:
        body["usage"] = usage_counts
    return body

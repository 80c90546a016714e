"""`POST /v1/chat/completions`: the request schema and the response builders.

Streaming sends, in order (all with the same id and `created`):

1. `chat_chunk(..., {"role": "assistant", "content": ""}, None, ...)`
2. `chat_chunk(..., {"content": text}, None, ...)` for each piece of text
3. `chat_chunk(..., {}, finish_reason, ...)`
4. with `stream_options.include_usage`: `chat_usage_chunk(...)`, whose `choices` is empty
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.schemas import FinishReason, GenerationFields, Usage

Role = Literal["system", "developer", "user", "assistant"]

TEXT_PART_SEPARATOR = "\n"
"""Joins the text parts of one message's content, as vLLM does."""


class ChatMessage(BaseModel):
    """One message; list content is reduced to its text at validation, so `content` is a str."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, content: Any) -> Any:
        if isinstance(content, list):
            return join_text_parts(content)
        return content

    def template_dict(self) -> dict[str, str]:
        """The message as a chat template sees it; `developer` is OpenAI's newer `system`."""
        role = "system" if self.role == "developer" else self.role
        message = {"role": role, "content": self.content}
        if self.name is not None:
            message["name"] = self.name
        return message


def join_text_parts(parts: list[Any]) -> str:
    if not parts:
        raise ValueError("content must not be an empty list")
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            raise ValueError("each content part must be an object")
        kind = part.get("type")
        if kind != "text":
            raise ValueError(f"content part type {kind!r} is not supported: only 'text' is")
        unknown = sorted(set(part) - {"type", "text"})
        if unknown:
            raise ValueError(f"unknown field(s) in a text content part: {', '.join(unknown)}")
        text = part.get("text")
        if not isinstance(text, str):
            raise ValueError("a text content part needs a string 'text'")
        texts.append(text)
    return TEXT_PART_SEPARATOR.join(texts)


class ChatCompletionRequest(GenerationFields):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @field_validator("messages")
    @classmethod
    def _some_messages(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not messages:
            raise ValueError("messages must not be empty")
        return messages

    @model_validator(mode="after")
    def _one_token_limit(self) -> ChatCompletionRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        return self

    @property
    def max_tokens_asked(self) -> int | None:
        """The output limit under either name (`max_tokens` is the older one); None if unset."""
        return self.max_completion_tokens if self.max_tokens is None else self.max_tokens

    @property
    def template_messages(self) -> list[dict[str, str]]:
        return [message.template_dict() for message in self.messages]


def new_chat_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_completion(
    completion_id: str,
    model: str,
    content: str,
    finish_reason: FinishReason,
    usage_counts: Usage | None,
    created_s: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created_s if created_s is not None else int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage_counts is not None:
        body["usage"] = usage_counts
    return body


def chat_chunk(
    completion_id: str,
    model: str,
    delta: dict[str, str],
    finish_reason: FinishReason | None,
    created_s: int,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created_s,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def chat_usage_chunk(
    completion_id: str, model: str, usage_counts: Usage, created_s: int
) -> dict[str, Any]:
    """The last chunk with `stream_options.include_usage`: no choices, only the usage."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created_s,
        "model": model,
        "choices": [],
        "usage": usage_counts,
    }

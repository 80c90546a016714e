"""`POST /v1/chat/completions`: messages through the model's chat template, then the same
path as completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.chat_schemas import (
    ChatCompletionRequest,
    chat_chunk,
    chat_completion,
    chat_usage_chunk,
    new_chat_id,
)
from gateway.chat_template import ChatTemplateError
from gateway.errors import InvalidRequestError
from gateway.schemas import FinishReason, Usage
from gateway.services import ServicesDep
from gateway.serving import Asked, created_now, serve

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, services: ServicesDep
) -> Response:
    try:
        prompt = services.chat_template.render(body.template_messages)
    except ChatTemplateError as error:
        raise InvalidRequestError(f"the chat template refused the messages: {error}",
                                  param="messages") from error  # fmt: skip
    asked = Asked.of(body, prompt, body.max_tokens_asked, fill_context=True)
    return await serve(request, services, asked, ChatShape(body.model))


class ChatShape:
    """Chunks: the assistant's role first, then content deltas, an empty delta with the
    finish reason, and the usage (if asked) in a chunk with no choices."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = new_chat_id()
        self.created_s = created_now()

    def whole(self, text: str, finish_reason: FinishReason, counts: Usage) -> dict[str, Any]:  # fmt: skip
        return chat_completion(self.id, self.model, text, finish_reason, counts, self.created_s)

    def opening(self) -> list[dict[str, Any]]:
        role = {"role": "assistant", "content": ""}
        return [chat_chunk(self.id, self.model, role, None, self.created_s)]

    def delta(self, text: str) -> dict[str, Any]:
        return chat_chunk(self.id, self.model, {"content": text}, None, self.created_s)

    def finish(self, finish_reason: FinishReason) -> dict[str, Any]:
        return chat_chunk(self.id, self.model, {}, finish_reason, self.created_s)

    def usage(self, counts: Usage) -> dict[str, Any]:
        return chat_usage_chunk(self.id, self.model, counts, self.created_s)

"""`POST /v1/completions`, streamed (SSE, ending in `data: [DONE]`) and not streamed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.schemas import (
    CompletionRequest,
    FinishReason,
    Usage,
    completion,
    new_completion_id,
)
from gateway.services import ServicesDep
from gateway.serving import Asked, created_now, serve

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, services: ServicesDep
) -> Response:
    asked = Asked.of(body, body.prompt_text, body.max_tokens)
    return await serve(request, services, asked, CompletionShape(body.model))


class CompletionShape:
    def __init__(self, model: str) -> None:
        self.model = model
        self.id = new_completion_id()
        self.created_s = created_now()

    def whole(self, text: str, finish_reason: FinishReason, counts: Usage) -> dict[str, Any]:  # fmt: skip
        return completion(self.id, self.model, text, finish_reason, counts, self.created_s)

    def opening(self) -> list[dict[str, Any]]:
        return []

    def delta(self, text: str) -> dict[str, Any]:
        return completion(self.id, self.model, text, None, created_s=self.created_s)

    def finish(self, finish_reason: FinishReason) -> dict[str, Any]:
        return completion(self.id, self.model, "", finish_reason, created_s=self.created_s)

    def usage(self, counts: Usage) -> dict[str, Any]:
        final = completion(self.id, self.model, "", None, created_s=self.created_s)
        final["choices"] = []
        final["usage"] = counts
        return final

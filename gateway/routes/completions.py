"""`POST /v1/completions`, streamed (SSE, ending in `data: [DONE]`) and not streamed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.backends.base import GenerationChunk, GenerationRequest
from gateway.errors import GatewayError, NotFoundError
from gateway.generation import Generation
from gateway.schemas import CompletionRequest, completion, new_completion_id, usage
from gateway.services import Services, ServicesDep

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, services: ServicesDep
) -> JSONResponse | StreamingResponse:
    if body.model != services.settings.served_model_name:
        raise NotFoundError(
            f"the model {body.model!r} does not exist; this gateway serves "
            f"{services.settings.served_model_name!r}",
            param="model",
            code="model_not_found",
        )
    generation = await _start(services, body)
    chunks = generation.chunks()
    try:
        first = await anext(chunks)  # errors before the first token get a proper status code
    except StopAsyncIteration:
        first = None
    except BaseException:
        await chunks.aclose()
        raise
    if body.stream:
        return StreamingResponse(
            _sse(generation, body, first, chunks), media_type="text/event-stream"
        )
    text = "".join([first.text] if first else []) + "".join([c.text async for c in chunks])
    counts = usage(generation.prompt_tokens, generation.completion_tokens)
    return JSONResponse(
        completion(new_completion_id(), body.model, text, generation.finish_reason, counts)
    )


async def _start(services: Services, body: CompletionRequest) -> Generation:
    max_tokens = body.max_tokens or services.settings.default_max_tokens
    prompt = body.prompt_text
    prompt_tokens, predicted_tokens = await asyncio.to_thread(
        _read_prompt, services, prompt, max_tokens
    )
    request = GenerationRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )
    return Generation(services, request, prompt_tokens, predicted_tokens)


def _read_prompt(services: Services, prompt: str, max_tokens: int) -> tuple[int, int | None]:
    """Count the prompt's tokens and predict the answer's length (off the event loop)."""
    token_ids = services.tokenizer.encode(prompt)
    length = services.predictions.length
    predicted = length.predict(token_ids, max_tokens).point() if length is not None else None
    return len(token_ids), predicted


async def _sse(
    generation: Generation,
    body: CompletionRequest,
    first: GenerationChunk | None,
    rest: AsyncIterator[GenerationChunk],
) -> AsyncIterator[str]:
    completion_id = new_completion_id()
    created_s = int(time.time())
    try:
        if first is not None:
            yield _event(
                completion(completion_id, body.model, first.text, None, created_s=created_s)
            )
        async for chunk in rest:
            yield _event(
                completion(completion_id, body.model, chunk.text, None, created_s=created_s)
            )
        yield _event(
            completion(completion_id, body.model, "", generation.finish_reason, created_s=created_s)
        )
        if body.include_usage:
            final = completion(completion_id, body.model, "", None, created_s=created_s)
            final["choices"] = []
            final["usage"] = usage(generation.prompt_tokens, generation.completion_tokens)
            yield _event(final)
    except GatewayError as error:
        yield _event(error.body())
    finally:
        await rest.aclose()
    yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"

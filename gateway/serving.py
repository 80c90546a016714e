"""What `/v1/completions` and `/v1/chat/completions` share: from a prompt to a response.

Tokenize and predict (off the event loop, unless a short prompt is cheaper on it), check
the context window, wait for admission, stream from the backend, and answer whole or as
SSE. A client that leaves at any point — queued, waiting for the first token, mid-stream —
cancels the upstream request and takes its entry off the scoreboard at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.backends.base import GenerationChunk, GenerationRequest
from gateway.errors import GatewayError, InvalidRequestError, NotFoundError
from gateway.generation import Generation
from gateway.schemas import FinishReason, GenerationFields, Usage, usage
from gateway.services import Services
from gateway.slo import RequestSlo
from predictor.length import planning_quantiles

log = logging.getLogger(__name__)
T = TypeVar("T")

# Up to about this many characters, encoding a prompt on the event loop (some 0.3 µs a
# character) costs less than the hop to a worker thread and back (0.1-0.2 ms of CPU).
INLINE_PROMPT_MAX_CHARS = 512
ENERGY_HEADER = "x-energy-j"  # a non-streamed answer's usage.energy_j, for proxies and logs


@dataclass(frozen=True)
class Asked:
    """What the client asked for, whichever endpoint it came through."""

    model: str
    prompt: str
    max_tokens: int | None  # None: the settings' default, or the rest of the context
    stream: bool
    include_usage: bool
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    fill_context: bool = False  # chat: no max_tokens means up to the context window

    @classmethod
    def of(cls, body: GenerationFields, prompt: str, max_tokens: int | None,
           fill_context: bool = False) -> Asked:  # fmt: skip
        """From the fields completions and chat completions share."""
        return cls(
            model=body.model,
            prompt=prompt,
            max_tokens=max_tokens,
            stream=body.stream,
            include_usage=body.include_usage,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop_sequences,
            seed=body.seed,
            ignore_eos=body.ignore_eos,
            fill_context=fill_context,
        )


class ResponseShape(Protocol):
    """How one endpoint dresses the answer (completion or chat completion)."""

    def whole(self, text: str, finish_reason: FinishReason, counts: Usage) -> dict[str, Any]: ...  # fmt: skip
    def opening(self) -> list[dict[str, Any]]: ...
    def delta(self, text: str) -> dict[str, Any]: ...
    def finish(self, finish_reason: FinishReason) -> dict[str, Any]: ...
    def usage(self, counts: Usage) -> dict[str, Any]: ...


class ClientGone(Exception):
    """The client disconnected before the answer started."""


async def serve(
    http_request: Request, services: Services, asked: Asked, shape: ResponseShape
) -> Response:
    settings = services.settings
    if asked.model != settings.served_model_name:
        raise NotFoundError(
            f"the model {asked.model!r} does not exist; this gateway serves "
            f"{settings.served_model_name!r}",
            param="model",
            code="model_not_found",
        )
    if services.scaling is not None:
        services.scaling.arrived()
    slo = RequestSlo.from_headers(http_request.headers, settings)
    request_id: str = http_request.state.request_id
    prompt_tokens, max_tokens, predicted = await _read_prompt_off_loop(services, asked)
    if settings.log_prompts:
        log.info("request %s prompt %r", request_id, asked.prompt)
    generation = Generation(
        services,
        GenerationRequest(
            prompt=asked.prompt,
            max_tokens=max_tokens,
            temperature=asked.temperature,
            top_p=asked.top_p,
            stop=asked.stop,
            seed=asked.seed,
            ignore_eos=asked.ignore_eos,
        ),
        request_id,
        prompt_tokens,
        predicted.point if predicted is not None else None,
        slo,
        length_quantiles=predicted.quantiles if predicted is not None else None,
    )
    chunks = generation.chunks()
    try:
        if asked.stream:
            first = await _unless_disconnected(http_request, _admit_and_start(generation, chunks))
            return _EventStream(_events(generation, chunks, first, asked, shape))
        text = await _unless_disconnected(http_request, _whole_text(generation, chunks))
        await _finish(generation, chunks)
    except ClientGone:
        await _finish(generation, chunks)
        return Response(status_code=499)
    except BaseException:
        await _finish(generation, chunks)
        raise
    counts = usage_of(generation)
    if settings.log_prompts:
        log.info("request %s answer %r", request_id, text)
    headers = {}
    if generation.energy is not None:
        headers[ENERGY_HEADER] = f"{counts['energy_j']}"
    return JSONResponse(shape.whole(text, generation.finish_reason, counts), headers=headers)


def usage_of(generation: Generation) -> Usage:
    """Its token counts, and its energy where the ledger vouched for one."""
    energy = generation.energy
    if energy is None:
        return usage(generation.prompt_tokens, generation.completion_tokens)
    return usage(generation.prompt_tokens, generation.completion_tokens, energy.total_j,
                 energy.idle_j, generation.predicted_energy_j)  # fmt: skip


@dataclass(frozen=True)
class PredictedLength:
    point: int
    quantiles: tuple[int, ...]  # at predictor.length.PLANNING_LEVELS


async def _read_prompt_off_loop(
    services: Services, asked: Asked
) -> tuple[int, int, PredictedLength | None]:
    """`_read_prompt` in a worker thread, unless it is cheaper than the hop: a short prompt
    and no length model (its ONNX run takes most of a millisecond)."""
    if services.predictions.length is None and len(asked.prompt) <= INLINE_PROMPT_MAX_CHARS:
        return _read_prompt(services, asked)
    return await asyncio.to_thread(_read_prompt, services, asked)


def _read_prompt(services: Services, asked: Asked) -> tuple[int, int, PredictedLength | None]:
    """Prompt tokens, max_tokens, and the predicted answer length (blocking: the
    prediction's distribution is read here too, off the event loop)."""
    settings = services.settings
    token_ids = services.tokenizer.encode(asked.prompt)
    max_tokens = _max_tokens(asked, len(token_ids), settings.context_window_tokens,
                             settings.default_max_tokens)  # fmt: skip
    length = services.predictions.length
    if length is None:
        return len(token_ids), max_tokens, None
    prediction = length.predict(token_ids, max_tokens)
    predicted = PredictedLength(prediction.point(), planning_quantiles(prediction))
    return len(token_ids), max_tokens, predicted


def _max_tokens(asked: Asked, prompt_tokens: int, window: int, default: int) -> int:
    room = window - prompt_tokens
    if asked.max_tokens is None and asked.fill_context and room >= 1:
        return room
    max_tokens = asked.max_tokens if asked.max_tokens is not None else default
    if max_tokens > room:
        raise InvalidRequestError(
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} "
            "in the completion). Please reduce the prompt or max_tokens.",
            param="max_tokens" if prompt_tokens < window else "prompt",
            code="context_length_exceeded",
        )
    return max_tokens


async def _admit_and_start(
    generation: Generation, chunks: AsyncIterator[GenerationChunk]
) -> GenerationChunk | None:
    """Admission, then the first chunk: errors up to here still get a proper status."""
    await generation.admit()
    return await anext(chunks, None)


async def _whole_text(generation: Generation, chunks: AsyncIterator[GenerationChunk]) -> str:
    """Admission, then the whole answer: one disconnect watcher covers both."""
    await generation.admit()
    return "".join([chunk.text async for chunk in chunks])


async def _finish(generation: Generation, chunks: AsyncIterator[GenerationChunk]) -> None:
    """Close the upstream stream and leave the board, even inside a cancelled scope."""
    with anyio.CancelScope(shield=True):
        try:
            await chunks.aclose()  # type: ignore[attr-defined]
        finally:
            await generation.close()


async def _unless_disconnected(http_request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled if the client disconnects first (then ClientGone)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(http_request.receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _events(
    generation: Generation,
    chunks: AsyncIterator[GenerationChunk],
    first: GenerationChunk | None,
    asked: Asked,
    shape: ResponseShape,
) -> AsyncIterator[str]:
    try:
        for opening in shape.opening():
            yield _event(opening)
        if first is not None and first.text:
            yield _event(shape.delta(first.text))
        async for chunk in chunks:
            if chunk.text:
                yield _event(shape.delta(chunk.text))
        await _finish(generation, chunks)
        yield _event(shape.finish(generation.finish_reason))
        if asked.include_usage:
            yield _event(shape.usage(usage_of(generation)))
    except GatewayError as error:  # mid-stream: the status is sent; an error event says it
        yield _event(error.body())
    finally:
        await _finish(generation, chunks)
    yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class _EventStream(StreamingResponse):
    """SSE that always listens for the client leaving, so a stream waiting on the engine
    is cancelled at once (Starlette only listens on older ASGI servers)."""

    def __init__(self, events: AsyncIterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as task_group:

            async def stream_then_stop() -> None:
                await self.stream_response(send)
                task_group.cancel_scope.cancel()

            task_group.start_soon(stream_then_stop)
            await _disconnect(receive)
            task_group.cancel_scope.cancel()


def created_now() -> int:
    return int(time.time())

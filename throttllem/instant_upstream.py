"""An inference server that answers at once: the gateway's benchmark and tests run against it.

It speaks Triton's generate extension (the TensorRT-LLM `ensemble`'s inputs and outputs)
and OpenAI's `/v1/completions`, and generates `max_tokens` tokens of `"tok "` with no
delay, so any latency measured through it is the gateway's and the transport's. A prompt
counts one token per whitespace-separated word. The last requests it received are kept
in `app.state.received` for tests.

Paced (`--token-interval-ms`), Triton's `generate_stream` sends one token every interval,
its text the sender's `time.monotonic_ns()`: a client on the same machine can then time
each token's trip through whatever sits in between.

    python -m throttllem.instant_upstream --port 8010 [--model NAME] [--token-interval-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TOKEN = "tok "
DEFAULT_MAX_TOKENS = 16  # OpenAI's
RECEIVED_KEPT = 64


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class _BadRequest(Exception):
    pass


def instant_upstream_app(
    model_name: str = "llama-2-13b", triton_model: str = "ensemble", token_interval_ms: float = 0.0
) -> Starlette:
    """`model_name` is what `/v1/*` serves; `triton_model` what `/v2/models/*` serves."""
    received: deque[ReceivedRequest] = deque(maxlen=RECEIVED_KEPT)

    async def read_body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError as error:
            raise _BadRequest(f"the body is not JSON: {error}") from error
        if not isinstance(body, dict):
            raise _BadRequest("the body is not a JSON object")
        received.append(ReceivedRequest(request.url.path, dict(request.headers), body))
        return body

    async def ready(request: Request) -> Response:
        return Response(status_code=200)

    async def triton_model_ready(request: Request) -> Response:
        if request.path_params["model"] != triton_model:
            return _triton_error(f"unknown model '{request.path_params['model']}'", 404)
        return Response(status_code=200)

    async def triton_generate(request: Request) -> Response:
        try:
            body = await read_body(request)
            prompt_tokens, max_tokens = _triton_inputs(request, body, triton_model)
        except _BadRequest as error:
            return _triton_error(str(error), 400)
        return JSONResponse({"model_name": triton_model, "model_version": "1",
                             "text_output": TOKEN * max_tokens, "num_input_tokens": prompt_tokens,
                             "num_output_tokens": max_tokens})  # fmt: skip

    async def triton_generate_stream(request: Request) -> Response:
        try:
            body = await read_body(request)
            prompt_tokens, max_tokens = _triton_inputs(request, body, triton_model)
        except _BadRequest as error:
            return _triton_error(str(error), 400)
        event = {"model_name": triton_model, "model_version": "1", "text_output": TOKEN,
                 "num_output_tokens": 1, "num_input_tokens": prompt_tokens}  # fmt: skip
        if token_interval_ms > 0:
            events = _stamped(event, max_tokens, token_interval_ms / 1000)
        else:
            events = _repeat(_sse(event), max_tokens)
        return StreamingResponse(events, media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": 0, "owned_by": "throttllem"}
        ]})  # fmt: skip

    async def completions(request: Request) -> Response:
        try:
            body = await read_body(request)
            prompt_tokens, max_tokens = _openai_inputs(body)
        except _BadRequest as error:
            return _openai_error(str(error), "BadRequestError", 400)
        if body.get("model") != model_name:
            return _openai_error(
                f"The model `{body.get('model')}` does not exist.", "NotFoundError", 404
            )
        if not body.get("stream"):
            return JSONResponse(
                _completion(model_name, TOKEN * max_tokens, "length")
                | {"usage": _usage(prompt_tokens, max_tokens)}
            )
        options = body.get("stream_options") or {}
        return StreamingResponse(
            _completion_events(
                model_name,
                prompt_tokens,
                max_tokens,
                include_usage=bool(options.get("include_usage")),
                continuous_usage=bool(options.get("continuous_usage_stats")),
            ),
            media_type="text/event-stream",
        )

    app = Starlette(
        routes=[
            Route("/v2/health/ready", ready),
            Route("/v2/health/live", ready),
            Route("/v2/models/{model}/ready", triton_model_ready),
            Route("/v2/models/{model}/generate", triton_generate, methods=["POST"]),
            Route("/v2/models/{model}/generate_stream", triton_generate_stream, methods=["POST"]),
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )
    app.state.received = received
    return app


def _triton_inputs(request: Request, body: dict[str, Any], triton_model: str) -> tuple[int, int]:
    if request.path_params["model"] != triton_model:
        raise _BadRequest(f"unknown model '{request.path_params['model']}'")
    text = body.get("text_input")
    max_tokens = body.get("max_tokens")
    if not isinstance(text, str):
        raise _BadRequest("text_input must be a string")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise _BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    return len(text.split()), max_tokens


def _openai_inputs(body: dict[str, Any]) -> tuple[int, int]:
    prompt = body.get("prompt")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not isinstance(prompt, str):
        raise _BadRequest("prompt must be a string")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise _BadRequest(f"max_tokens must be at least 1, got {max_tokens!r}.")
    return len(prompt.split()), max_tokens


async def _repeat(event: bytes, times: int) -> AsyncIterator[bytes]:
    for _ in range(times):
        yield event


async def _stamped(event: dict[str, Any], times: int, interval_s: float) -> AsyncIterator[bytes]:
    """One token every `interval_s`, its text the moment it is sent."""
    for index in range(times):
        if index:
            await asyncio.sleep(interval_s)
        yield _sse(event | {"text_output": f"{time.monotonic_ns()} "})


async def _completion_events(
    model: str, prompt_tokens: int, max_tokens: int, include_usage: bool, continuous_usage: bool
) -> AsyncIterator[bytes]:
    """One token a chunk, the last with finish_reason; usage as vLLM sends it; `[DONE]`."""
    for generated in range(1, max_tokens + 1):
        chunk = _completion(model, TOKEN, "length" if generated == max_tokens else None)
        if include_usage and continuous_usage:
            chunk["usage"] = _usage(prompt_tokens, generated)
        yield _sse(chunk)
    if include_usage:
        yield _sse(_completion(model, None, None) | {"usage": _usage(prompt_tokens, max_tokens)})
    yield b"data: [DONE]\n\n"


def _completion(model: str, text: str | None, finish_reason: str | None) -> dict[str, Any]:
    choices = [] if text is None else [
        {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    ]  # fmt: skip
    return {"id": "cmpl-instant", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices}  # fmt: skip


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _triton_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _openai_error(message: str, error_type: str, status: int) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "param": None, "code": status}},
        status_code=status,
    )


def serve_instant_upstream(
    host: str, port: int, model_name: str = "llama-2-13b", token_interval_ms: float = 0.0
) -> None:
    uvicorn.run(
        instant_upstream_app(model_name, token_interval_ms=token_interval_ms),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m throttllem.instant_upstream", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8010, help="port (default: 8010)")
    parser.add_argument("--model", default="llama-2-13b", help="model name /v1 serves")
    parser.add_argument("--token-interval-ms", type=float, default=0.0,
                        help="pace generate_stream, each token's text its send time (default: 0, "
                        "all at once)")  # fmt: skip
    args = parser.parse_args(argv)
    serve_instant_upstream(args.host, args.port, args.model, args.token_interval_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

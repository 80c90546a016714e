"""Any OpenAI-compatible server (vLLM, Triton's OpenAI frontend, ...) through `/v1/completions`.

Field mapping (GenerationRequest -> completions body):

    prompt       -> prompt               max_tokens  -> max_tokens
    temperature  -> temperature          top_p       -> top_p
    stop         -> stop                 seed        -> seed
    ignore_eos   -> ignore_eos = true, min_tokens = max_tokens (vLLM's names)
    (always)     -> model, stream = true,
                    stream_options = {include_usage: true, continuous_usage_stats: true}

Counting: with `continuous_usage_stats` vLLM puts the cumulative `usage` in every chunk,
so each chunk's `output_tokens` is the growth of `usage.completion_tokens` since the last
count, and `prompt_tokens` is `usage.prompt_tokens`. A server that sends usage only in
its final chunk (`choices: []`, the OpenAI way) or not at all gives text chunks with
`output_tokens = None`, which the gateway counts as one token each; the final usage
then corrects the total: its chunk carries the difference between the server's count
and what was counted so far (never negative). Chunks that change nothing are dropped.

The stream ends at `data: [DONE]`; one that ends without it was cut short, and fails. A
server that answers the streamed request with one JSON completion (`application/json`)
is read as one chunk; any other body fails. An error after the stream started arrives as an
`{"error": ...}` event (older vLLM: `{"object": "error", ...}`) under HTTP 200, so every
event is checked. Triton's OpenAI frontend ignores `continuous_usage_stats` and sends
usage only at the end; it refuses unknown top-level fields, and knows `ignore_eos` and
`min_tokens`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from gateway.backends.base import GenerationChunk, GenerationRequest, arrived_together
from gateway.backends.http_client import UpstreamConnectionError, decode_json
from gateway.backends.sse import sse_batches
from gateway.backends.upstream import UpstreamClient, UpstreamClientKind, upstream_client
from gateway.errors import BackendError, BackendUnavailableError, InvalidRequestError

DONE = "[DONE]"


class OpenAICompatibleBackend:
    cancels_on_close = True  # vLLM and Triton's OpenAI frontend abort a closed stream

    def __init__(self, client: UpstreamClient, model: str, continuous_usage: bool = True) -> None:
        self._client = client
        self._model = model
        self._continuous_usage = continuous_usage

    @classmethod
    def connect(
        cls,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
        continuous_usage: bool = True,
        client_kind: UpstreamClientKind = UpstreamClientKind.httptools,
    ) -> OpenAICompatibleBackend:
        """`base_url` is the server's root, without `/v1`."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        client = upstream_client(client_kind, base_url, headers, timeout_s, connect_timeout_s)
        return cls(client, model, continuous_usage)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        body = completions_body(request, self._model, self._continuous_usage)
        counter = _TokenCounter()
        answered = False
        try:
            async with self._client.stream("POST", "/v1/completions", body) as response:
                answered = True
                if response.status != 200:
                    body_read = await response.read()
                    raise _error_from_status(response.status, body_read, response.url, self._model)
                content_type = response.headers.get("content-type", "")
                if content_type.startswith("application/json"):
                    if chunk := _whole_answer(await response.read(), counter):
                        yield chunk
                    return
                if not content_type.startswith("text/event-stream"):
                    raise BackendError(
                        f"the upstream answered a stream with {content_type or 'no content type'}"
                        ", neither an event stream nor a JSON completion"
                    )
                async for events in sse_batches(response.iter_bytes()):
                    before_done, done = _until_done(events)
                    for chunk in arrived_together(before_done, counter.parse):
                        yield chunk
                    if done:
                        return
                raise BackendError("the upstream's stream ended without [DONE]: cut short")
        except UpstreamConnectionError as error:
            where = f"the OpenAI-compatible server at {self._client.base_url}"
            if answered:  # it took the request: the server failed, not the network path
                raise BackendError(f"{where} broke off its answer: {error!r}") from error
            raise BackendUnavailableError(f"{where} is unreachable: {error!r}") from error

    async def ready(self) -> bool:
        """The model is listed by `/v1/models`; a server without that route: `/health` is 200."""
        try:
            status, body = await self._client.request("GET", "/v1/models")
            if status == 404:
                return (await self._client.request("GET", "/health"))[0] == 200
        except UpstreamConnectionError:
            return False
        listing = decode_json(body) if status == 200 else None
        models = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(models, list):
            return False
        return any(isinstance(m, dict) and m.get("id") == self._model for m in models)

    async def aclose(self) -> None:
        await self._client.aclose()


def completions_body(
    request: GenerationRequest, model: str, continuous_usage: bool = True
) -> dict[str, Any]:
    stream_options: dict[str, bool] = {"include_usage": True}
    if continuous_usage:
        stream_options["continuous_usage_stats"] = True
    body: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens,
        "stream": True,
        "stream_options": stream_options,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = request.stop
    if request.seed is not None:
        body["seed"] = request.seed
    if request.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = request.max_tokens
    return body


class _TokenCounter:
    """Turns events into chunks whose `output_tokens` add up to the server's own count."""

    def __init__(self) -> None:
        self.counted_tokens = 0  # what consumers have been told, text chunks without usage: 1
        self.prompt_tokens: int | None = None

    def parse(self, data: str) -> GenerationChunk | None:
        return self.chunk(_event(data))

    def chunk(self, event: dict[str, Any]) -> GenerationChunk | None:
        choices = event.get("choices") or []
        text = str(choices[0].get("text") or "") if choices and isinstance(choices[0], dict) else ""
        usage = event.get("usage")
        completion_tokens = _int_or_none(usage.get("completion_tokens")) if usage else None
        prompt_tokens = _int_or_none(usage.get("prompt_tokens")) if usage else None
        new_prompt_tokens = prompt_tokens is not None and prompt_tokens != self.prompt_tokens
        if prompt_tokens is not None:
            self.prompt_tokens = prompt_tokens
        output_tokens: int | None = None
        if completion_tokens is not None:
            output_tokens = max(0, completion_tokens - self.counted_tokens)
            self.counted_tokens += output_tokens
        elif text:
            self.counted_tokens += 1  # the gateway counts a text chunk without a count as one
        if not text and not output_tokens and not new_prompt_tokens:
            return None
        return GenerationChunk(text=text, output_tokens=output_tokens, prompt_tokens=prompt_tokens)


def _whole_answer(body: bytes, counter: _TokenCounter) -> GenerationChunk | None:
    """A completion sent whole: its text and usage, as one chunk."""
    event = _event(body.decode("utf-8", errors="replace"))
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendError(f"the upstream answered JSON that is not a completion: {body[:200]!r}")
    return counter.chunk(event)


def _until_done(events: list[str]) -> tuple[list[str], bool]:
    """The events before `[DONE]`, and whether it came."""
    for index, data in enumerate(events):
        if data.strip() == DONE:
            return events[:index], True
    return events, False


def _event(data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except json.JSONDecodeError as error:
        raise BackendError(
            f"the upstream sent an event that is not JSON: {data[:200]!r}"
        ) from error
    if not isinstance(event, dict):
        raise BackendError(f"the upstream sent an event that is not an object: {data[:200]!r}")
    if "error" in event or event.get("object") == "error":  # the latter: older vLLM
        raise BackendError(f"the upstream failed mid-stream: {upstream_message(event)}")
    return event


def _error_from_status(status: int, body: bytes, url: str, model: str) -> Exception:
    answer = decode_json(body)
    if answer is not None:
        message = upstream_message(answer)
    else:
        message = _first_line(body.decode(errors="replace"))
    if status in (400, 422):
        return InvalidRequestError(f"the upstream refused the request: {message}")
    if status in (401, 403):
        return BackendError(
            f"the upstream refused the gateway's key (HTTP {status}); check "
            f"THROTTLLEM_BACKEND_API_KEY: {message}"
        )
    if status == 404:
        return BackendUnavailableError(
            f"the upstream at {url} answered 404 ({message}): is model {model!r} "
            "served there, and is the backend URL the server's root, without /v1?"
        )
    return BackendError(f"the upstream answered HTTP {status}: {message}")


def upstream_message(body: object) -> str:
    """The first line of the error in OpenAI's shape, vLLM's, or FastAPI's `detail`."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return _first_line(str(error["message"]))
        if error is not None:
            return _first_line(str(error))
        if "message" in body:
            return _first_line(str(body["message"]))
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
            message = str(first.get("msg", first))
            return _first_line(f"{where}: {message}" if where else message)
        if detail is not None:
            return _first_line(str(detail))
    return _first_line(json.dumps(body))


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
